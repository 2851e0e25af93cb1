"""``fusedops demo``: run the fused ops on this machine, check them, and time them.

    python -m fusedops.cli demo [--quick]

Each row is one benchmark case of :mod:`fusedops.benchmarking.cases` (the specs ``bench/``
runs): the fused op on the device's backend, checked against the reference computed in fp64
from the same inputs (attention: within 2x the eager formula's own error plus a floor; INT8:
also within half a quantization step of the fp32 table), and timed against the eager baseline
and ``torch.compile`` of it. On a machine without a GPU the Triton kernels also run, on small
cases, through Triton's interpreter (switched on here, before the kernels are imported); their
time says nothing about GPU speed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import torch

_HAS_CUDA = torch.cuda.is_available()
# Triton's interpreter must be on before triton.language is imported (its @jit'd standard
# functions, tl.max / tl.sum, are created in one mode). `python -m fusedops.cli` and the
# `fusedops` script import the fusedops package, hence triton, before this line: main() then
# re-executes the command once with the variable set.
_INTERPRETER_TOO_LATE = (
    not _HAS_CUDA and "TRITON_INTERPRET" not in os.environ and "triton.language" in sys.modules
)
if not _HAS_CUDA:  # must precede the first import of fusedops (and its kernels)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fusedops.caches import set_default_cache_dirs  # noqa: E402

set_default_cache_dirs()

import fusedops  # noqa: E402
from fusedops import benchmarking as bm  # noqa: E402
from fusedops.benchmarking import Case, cases  # noqa: E402


@dataclass
class DemoRow:
    case: Case
    backend: str
    accuracy: bm.Accuracy
    timings: dict[str, bm.Timing]
    note: str = ""

    def ms(self, impl: str) -> float | None:
        timing = self.timings.get(impl)
        return None if timing is None else timing.median_ms


def _demo_cases(quick: bool) -> list[tuple[Case, float]]:
    """``(case, seconds of timed calls per implementation)`` in the order shown."""
    min_time = 0.3 if quick else 1.0
    embedding = [Case(cases.EMBEDDING_LEARNED, torch.float32)]
    if not quick:
        embedding += [
            Case(cases.EMBEDDING_SINUSOID, torch.float32),
            Case(cases.EMBEDDING_LEARNED, torch.bfloat16),
        ]
    main = [
        *embedding,
        Case(cases.ROPE_PREFILL, torch.float32),
        Case(cases.ATTENTION_CAUSAL, torch.float32),
        Case(cases.INT8_PER_ROW, torch.float32),
    ]
    out = [(case, min_time) for case in main]
    if not _HAS_CUDA:
        small = (
            cases.EMBEDDING_SMALL,
            cases.EMBEDDING_SMALL_SINUSOID,
            cases.ROPE_SMALL,
            cases.ATTENTION_SMALL,
        )
        out += [(Case(spec, torch.float32, backend="triton"), 0.1) for spec in small]
    return out


def _backend_label(case: Case, device: torch.device) -> str:
    backend = case.backend_on(device)
    if backend == "triton" and device.type != "cuda":
        return "triton (interpreter)"
    return device.type if backend == "auto" else backend


def _run(case: Case, device: torch.device, min_time: float) -> DemoRow:
    workload = case.build(device)
    accuracy = workload.check()
    impls = [impl for impl in workload.impls if impl.name in (bm.FUSED, bm.EAGER, bm.COMPILE)]
    timings = bm.time_impls(impls, device, min_time=min_time, rounds=1, warmup=1)
    return DemoRow(case, _backend_label(case, device), accuracy, timings, workload.note)


def _format(rows: list[DemoRow], device: torch.device) -> str:
    header = ["op", "backend", "device", "dtype", "shape", "max err", "fusedops ms", "eager ms"]
    header += ["compile ms", "vs eager", "vs compile", "notes"]
    cells = []
    for r in rows:
        fused, eager, compiled = r.ms(bm.FUSED), r.ms(bm.EAGER), r.ms(bm.COMPILE)
        assert fused is not None and eager is not None
        # The interpreter runs kernels in numpy on the CPU: its time says nothing about speed.
        vs_eager = "-" if "interpreter" in r.backend else f"{eager / fused:.2f}x"
        cells.append(
            [
                f"{r.case.op} ({r.case.name})",
                r.backend,
                device.type,
                bm.dtype_name(r.case.dtype),
                r.case.shape,
                f"{r.accuracy.max_err:.2e}",
                f"{fused:.3f}",
                f"{eager:.3f}",
                "-" if compiled is None else f"{compiled:.3f}",
                vs_eager,
                "-" if compiled is None else f"{compiled / fused:.2f}x",
                r.note or "-",
            ]
        )
    return bm.text_table(header, cells, "<<<<<>>>>>><")


def demo(quick: bool = False) -> int:
    device = torch.device("cuda" if _HAS_CUDA else "cpu")
    print(
        f"fusedops {fusedops.__version__} demo on {bm.device_label(device)}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )
    rows = []
    for case, min_time in _demo_cases(quick):
        print(f"  running {case.id} on {_backend_label(case, device)} ...", flush=True)
        rows.append(_run(case, device, min_time))
    print()
    print(_format(rows, device))
    bad = [r for r in rows if not r.accuracy.ok]
    if bad:
        for r in bad:
            print(f"\nFAILED {r.case.id}: {r.accuracy.detail}", file=sys.stderr)
        print(f"\nFAILED: {len(bad)} row(s) disagree with the reference", file=sys.stderr)
        return 1
    print(
        "\nall rows match the reference (attention: within 2x the eager formula's error; "
        "INT8: also within half a quantization step of the fp32 table)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None and _INTERPRETER_TOO_LATE:
        # TRITON_INTERPRET=1 is in os.environ now: start over with it (see the top).
        os.execv(sys.executable, [sys.executable, "-m", "fusedops.cli", *sys.argv[1:]])
    parser = argparse.ArgumentParser(prog="fusedops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo_p = sub.add_parser("demo", help="run, check and time the fused ops on this machine")
    demo_p.add_argument("--quick", action="store_true", help="fewer cases, shorter timing")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(quick=args.quick)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
