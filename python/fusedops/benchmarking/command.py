"""``fusedops bench``: sweep the ops on one device, against the measured ceilings and the peers,
and write ``results.json``, ``results.csv``, ``report.md`` and PNG plots.

    fusedops bench [--ops embedding,int8,rope,attention,decode,model|all] [--device cuda|cpu|cuda:N]
                   [--dtype fp32,bf16,fp16] [--quick | --full] [--out DIR]
                   [--compare eager,compile,sdpa,liger,flash_attn] [--warmup-ms MS] [--rep-ms MS]
                   [-k TEXT] [--list] [--threads N] [--quiet]
    fusedops bench compare A/results.json B/results.json

A run measures the device's copy bandwidth and matmul throughput per dtype first
(:mod:`~fusedops.benchmarking.ceilings`), then for every case of the sweep
(:mod:`~fusedops.benchmarking.sweeps`) checks fusedops and each peer against the reference and
times those that pass (:func:`~fusedops.benchmarking.runner.run_case`). A peer that is not
installed or cannot run here is reported, never raised. The exit status is 1 when a fusedops
output differs from the reference or fusedops raised, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fusedops.benchmarking import environment, sweeps
from fusedops.benchmarking.ceilings import measure_ceilings
from fusedops.benchmarking.harness import FUSED, Case, dtype_name
from fusedops.benchmarking.peers import COMPILE, PEER_GROUPS, peer_group
from fusedops.benchmarking.report import format_table
from fusedops.benchmarking.results import ERROR, OK, Record, error_text, write_csv, write_json
from fusedops.benchmarking.runner import TimingPlan, run_case

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """A comma-separated list of ``allowed`` names (``all``: every one), in ``allowed`` order."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if "all" in items:
        return list(allowed)
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"{what}: unknown {', '.join(map(repr, bad)) or 'empty list'}; "
            f"choose from {','.join(allowed)} or all"
        )
    return [name for name in allowed if name in items]


def _dtypes(text: str) -> list[torch.dtype]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in DTYPES]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"--dtype: unknown {', '.join(map(repr, bad)) or 'empty list'}; choose from "
            "fp32, bf16, fp16"
        )
    return list(dict.fromkeys(DTYPES[t] for t in items))


def _positive_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite time in ms, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusedops bench",
        description="Sweep fusedops' ops on one device against its measured ceilings and the "
        "peers; write results.json, results.csv, report.md and PNG plots. "
        "`fusedops bench compare A/results.json B/results.json` compares two runs.",
    )
    parser.add_argument(
        "--ops",
        type=lambda t: _names(t, sweeps.OPS, "--ops"),
        default=list(sweeps.OPS),
        help=f"comma-separated: {','.join(sweeps.OPS)} or all (default: all)",
    )
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--dtype",
        type=_dtypes,
        default=None,
        help="comma-separated fp32,bf16,fp16 (default: bf16 on CUDA, fp32 on CPU)",
    )
    tier = parser.add_mutually_exclusive_group()
    tier.add_argument(
        "--quick", action="store_true", help="a few small shapes per op (minutes on a CPU)"
    )
    tier.add_argument("--full", action="store_true", help="the whole cross product of shapes")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: bench-results/<device-name>-<date>/)",
    )
    parser.add_argument(
        "--compare",
        type=lambda t: _names(t, PEER_GROUPS, "--compare"),
        default=None,
        help=f"peers, comma-separated: {','.join(PEER_GROUPS)} or all (default: all; with "
        "--quick all but compile, which costs 20-45 s per shape on a CPU)",
    )
    parser.add_argument(
        "--warmup-ms",
        type=_positive_ms,
        default=25.0,
        help="untimed calls per implementation, in ms (default: 25)",
    )
    parser.add_argument(
        "--rep-ms",
        type=_positive_ms,
        default=None,
        help="timed calls per implementation, in ms (default: 100 on CUDA, 200 on CPU)",
    )
    parser.add_argument(
        "-k",
        "--filter",
        action="append",
        default=[],
        help="only cases whose id contains this text (repeatable: any of them)",
    )
    parser.add_argument("--list", action="store_true", help="list the selected case ids and exit")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (for logs): errors and paths only"
    )
    return parser


def resolve_device(parser: argparse.ArgumentParser, name: str | None) -> torch.device:
    """The ``--device`` as a :class:`torch.device` (argparse error if it is unusable)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: not a device: {name!r} (cuda, cuda:N or cpu)")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device: {name!r} is not supported (cuda, cuda:N or cpu)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {name}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            parser.error(f"--device {name}: this machine has {count} CUDA device(s)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def select_cases(
    ops: Sequence[str], tier: sweeps.Tier, dtypes: Sequence[torch.dtype], filters: Sequence[str]
) -> list[tuple[str, Case]]:
    """``(sweep op, case)`` for every spec of every op and dtype whose id matches a filter."""
    out = []
    for op in ops:
        for spec in sweeps.sweep_specs(op, tier):
            for dtype in dtypes:
                case = Case(spec, dtype)
                if not filters or any(text in case.id for text in filters):
                    out.append((op, case))
    return out


def default_out_dir(env: dict[str, Any]) -> Path:
    """``bench-results/<device-name>-<date>``, the name lower-cased with runs of other
    characters turned into ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")[:60] or "device"
    return Path("bench-results") / f"{slug}-{datetime.date.today().isoformat()}"


def peer_summary(records: Sequence[Record], selected: Sequence[str]) -> dict[str, str]:
    """Per selected peer group: ``ran (impl, ...)``, or why it did not (the first reason)."""
    summary: dict[str, str] = {}
    for group in selected:
        mine = [r for r in records if peer_group(r.impl) == group]
        ran = sorted({r.impl for r in mine if r.status == OK})
        if ran:
            summary[group] = f"ran ({', '.join(ran)})"
        elif mine:
            summary[group] = f"{mine[0].status}: {mine[0].detail}"
        else:
            summary[group] = "not applicable to the selected ops"
    return summary


def _run_one(
    op: str, case: Case, device: torch.device, plan: TimingPlan, peers: list[str], ceilings: Any
) -> list[Record]:
    """:func:`run_case`, with fusedops raising recorded as an ``error`` row."""
    if COMPILE in peers:
        # Each case compiles afresh: a shared cache would hit dynamo's recompile limit over a
        # sweep and fall back to eager without saying so.
        torch._dynamo.reset()
    try:
        return run_case(case, device, ceilings=ceilings, plan=plan, peers=peers, op=op)
    except Exception as exc:  # fusedops itself failed: report it, go on, exit 1 at the end
        family, size, size_name = case.spec.axis
        text = error_text(exc, 500)
        return [
            Record(op, case.name, family, size, size_name, case.shape, dtype_name(case.dtype),
                   FUSED, backend=case.backend_on(device), status=ERROR, detail=text)
        ]  # fmt: skip


def write_outputs(
    out_dir: Path, env: dict[str, Any], records: Sequence[Record], log: Any
) -> list[Path]:
    """``results.json``, ``results.csv``, the PNG plots and ``report.md`` (with the plots
    embedded) in ``out_dir``."""
    from fusedops.benchmarking.markdown import write_report

    paths = [write_json(out_dir / "results.json", env, records)]
    paths.append(write_csv(out_dir / "results.csv", records))
    images: dict[str, str] = {}
    try:
        from fusedops.benchmarking.plots import write_plots
    except ImportError as exc:  # matplotlib missing: say so, write the rest
        log(f"fusedops bench: no plots: {exc} (pip install matplotlib)")
    else:
        plots = write_plots(out_dir, env, records)
        images = {name: path.name for name, path in plots.items()}
        paths += list(plots.values())
    paths.insert(2, write_report(out_dir / "report.md", env, records, images=images))
    return paths


def _sweep(
    args: argparse.Namespace,
    args_list: Sequence[str],
    device: torch.device,
    tier: str,
    dtypes: Sequence[torch.dtype],
    peers: list[str],
    plan: TimingPlan,
    cases: Sequence[tuple[str, Case]],
) -> tuple[list[Record], dict[str, Any]]:
    """Measure the ceilings, describe the environment, run every case: ``(records, env)``."""
    ceilings = measure_ceilings(device, list(dtypes))
    env = environment.describe(device)
    env.update(
        command="fusedops bench " + " ".join(args_list),
        sweep=tier,
        ops=list(args.ops),
        dtypes=[dtype_name(d) for d in dtypes],
        timing={
            "method": "CUDA events, L2 flushed before each call"
            if device.type == "cuda"
            else "wall clock (time.perf_counter) per call",
            "warmup_ms": plan.warmup_ms,
            "rep_ms": plan.rep_ms,
        },
        ceilings=ceilings.to_dict(),
    )
    records: list[Record] = []
    bar = _progress(len(cases), disable=args.quiet)
    for op, case in cases:
        bar.set_description(op)
        bar.set_postfix_str(f"{dtype_name(case.dtype)} {case.shape}", refresh=True)
        records += _run_one(op, case, device, plan, peers, ceilings)
        bar.update(1)
    bar.close()
    env["peers"] = peer_summary(records, peers)
    return records, env


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fusedops bench`` (``argv`` without the ``bench`` word)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["compare"]:
        from fusedops.benchmarking.comparison import main_compare

        return main_compare(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    device = resolve_device(parser, args.device)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    tier: sweeps.Tier = "quick" if args.quick else "full" if args.full else "default"
    dtypes = args.dtype or [torch.bfloat16 if device.type == "cuda" else torch.float32]
    peers = args.compare
    if peers is None:
        peers = [p for p in PEER_GROUPS if not (args.quick and p == COMPILE)]
    default_rep = 100.0 if device.type == "cuda" else 200.0
    plan = TimingPlan(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms or default_rep)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: {args.out} is a file, not a folder")
    cases = select_cases(args.ops, tier, dtypes, args.filter)
    if not cases:
        parser.error("no case matches the selected --ops / -k")
    if args.list:
        print("\n".join(f"{op}: {case.id}" for op, case in cases))
        return 0

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    start = time.perf_counter()
    if not args.quiet:
        log(f"fusedops bench: {len(cases)} cases on {device}; measuring the ceilings ...")
    # Kernels launch and CUDA events record on the current device: make it --device's.
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        records, env = _sweep(args, args_list, device, tier, dtypes, peers, plan, cases)
    env["seconds"] = round(time.perf_counter() - start, 1)
    out_dir = args.out or default_out_dir(env)
    paths = write_outputs(out_dir, env, records, log)
    if not args.quiet:
        print(format_table(records, title=f"fusedops bench on {env['device_name']}"))
        print()
    failed = [r for r in records if r.impl == FUSED and r.status != OK]
    for r in failed:
        log(f"FAILED {r.op} {r.case} {r.dtype} {r.shape}: {r.status}: {r.detail}")
    print(f"wrote {', '.join(str(p) for p in paths)} in {env['seconds']:.0f} s")
    return 1 if failed else 0


def _progress(total: int, *, disable: bool) -> Any:
    """A tqdm progress bar on stderr (a no-op one when ``disable``, or, said on stderr, when
    tqdm is not installed)."""
    if disable:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        print("fusedops bench: no progress bar: tqdm is not installed", file=sys.stderr)
        return _NoBar()
    return tqdm(total=total, file=sys.stderr, unit="case", dynamic_ncols=True)


class _NoBar:
    def set_description(self, *_: Any, **__: Any) -> None:
        pass

    def set_postfix_str(self, *_: Any, **__: Any) -> None:
        pass

    def update(self, *_: Any) -> None:
        pass

    def close(self) -> None:
        pass
