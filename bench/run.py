"""Run benchmark cases in one process, write a CSV and print the tables.

    python bench/run.py --out bench/results.csv [--op rope] [-k decode]

Cases come from ``CASES`` in each ``bench/bench_<op>.py`` (the same registry pytest-benchmark
runs). For every case the fusedops output is checked against the reference first (a mismatch
stops the run with exit status 1), then every implementation (``fusedops``, ``eager``,
``compile`` = ``torch.compile`` of eager, warmed first, and op-specific baselines) is timed with
:func:`fusedops.benchmarking.run_case`. Rows give median/p20/p80 ms, GB/s of the minimum bytes,
the fraction of the device's measured copy bandwidth (TFLOP/s for attention), and speedups
against eager and compile. A second table gives microseconds per call of the decode-size cases,
a third the whole-model cases of ``bench_models.py`` (patched vs unpatched, ms and tokens/s).

The first run builds the ``torch.compile`` graphs (20-45 s each on 2 CPU cores); they are cached
under ``<sys.prefix>/fusedops-cache`` (:mod:`fusedops.caches`), so later runs are much faster.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

from fusedops.caches import set_default_cache_dirs

set_default_cache_dirs()

from fusedops import benchmarking as bm  # noqa: E402
from fusedops.benchmarking.models import ModelSpec, model_table  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent


def discover_cases(ops: list[str] | None) -> list[bm.Case]:
    """``CASES`` of every ``bench/bench_<op>.py`` (all ops, or those named in ``ops``)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    cases: list[bm.Case] = []
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        module = importlib.import_module(path.stem)
        cases.extend(getattr(module, "CASES", []))
    if ops:
        cases = [case for case in cases if case.op in ops]
    return cases


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.csv", help="CSV path")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to run on (default: cuda if available, else cpu)",
    )
    parser.add_argument("--op", action="append", help="only this op (repeatable)")
    parser.add_argument(
        "-k",
        "--filter",
        action="append",
        default=[],
        help="only cases whose id contains this text (repeatable: any of them); see --list",
    )
    parser.add_argument(
        "--min-time", type=float, default=1.0, help="seconds of timed calls per implementation"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile baselines")
    parser.add_argument(
        "--reference-only",
        action="store_true",
        help="time only the baselines (when fusedops' extension is not built yet)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (torch.set_num_threads; default: torch's choice). On a shared "
        "machine, fewer threads than cores avoids parallel regions stalled by preemption",
    )
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = [
        case
        for case in discover_cases(args.op)
        if not args.filter or any(text in case.id for text in args.filter)
    ]
    if args.list:
        print("\n".join(case.id for case in cases))
        return 0
    if not cases:
        print("bench/run.py: no cases selected", file=sys.stderr)
        return 2
    skip = set()
    if args.no_compile:
        skip.add(bm.COMPILE)
    if args.reference_only:
        skip.add(bm.FUSED)

    start = time.perf_counter()
    ceiling = bm.copy_bandwidth_gbs(device)
    title = (
        f"device {bm.device_label(device)}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; copy ceiling {ceiling:.1f} GB/s; "
        f"fusedops = {'Triton' if device.type == 'cuda' else 'C++ (fusedops._C)'} kernels"
    )
    print(title, flush=True)
    rows: list[bm.Row] = []
    decode_rows: list[bm.Row] = []
    for case in cases:
        try:
            case_rows = bm.run_case(
                case,
                device,
                min_time=args.min_time,
                rounds=args.rounds,
                skip=skip,
                log=lambda line: print(line, flush=True),
            )
        except bm.Mismatch as exc:
            print(f"\nbench/run.py: FAILED CHECK, nothing timed:\n{exc}", file=sys.stderr)
            return 1
        except bm.Unavailable as exc:
            print(
                f"\nbench/run.py: {case.id}: {exc}\n"
                "Build and install fusedops (pip install --no-build-isolation -e .), or pass "
                "--reference-only to time only the baselines.",
                file=sys.stderr,
            )
            return 1
        rows.extend(case_rows)
        if case.tags >= bm.DECODE:
            decode_rows.extend(case_rows)
    bm.write_csv(rows, args.out)
    print()
    print(bm.format_table(rows, title=title))
    if decode_rows:
        print()
        print(bm.format_per_call_table(decode_rows, title="Decode size: microseconds per call"))
    model_specs = {case.name: case.spec for case in cases if case.op == ModelSpec.op}
    model_rows = [row for row in rows if row.op == ModelSpec.op]
    if model_rows:
        print()
        print(model_table(model_rows, model_specs))
    print(f"\nwrote {args.out} ({len(rows)} rows) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
