"""``fusedops demo``, ``fusedops generate`` and ``fusedops bench``: fusedops on real models, on
each op, and as a benchmark of a device.

    python -m fusedops.cli demo [--quick]
    python -m fusedops.cli generate --model smollm2 --prompt "Hello" [--max-new-tokens 64]
    python -m fusedops.cli bench [--quick] [--ops rope,attention] [--out DIR]
    python -m fusedops.cli bench compare A/results.json B/results.json

``bench`` sweeps the ops against the device's measured ceilings and the peers, and writes
results.json, results.csv, report.md and plots (:mod:`fusedops.benchmarking.command`).

``demo`` first runs two real models offline (:mod:`fusedops.integrations.hf_models`), unpatched
and ``fusedops.patch``'ed, through :mod:`fusedops.benchmarking.models`: SmolLM2-135M-Instruct
(greedy text, tokens identical, max logit difference, prefill and decode speed; fp32, and bf16
where the device has native bf16 matmuls) and all-MiniLM-L6-v2 (sentence-embedding cosine to
unpatched, time per batch and embedding-table memory, also with an INT8 word table). Then the
per-op table. It exits with status 1 when any parity check fails.

In the per-op table, each row is one benchmark case of :mod:`fusedops.benchmarking.cases` (the
specs ``bench/`` runs): the fused op on the device's backend, checked against the reference
computed in fp64 from the same inputs (attention: within 2x the eager formula's own error plus
a floor; INT8: also within half a quantization step of the fp32 table), and timed against the
eager baseline and ``torch.compile`` of it. On a machine without a GPU the Triton kernels also
run, on small cases, through Triton's interpreter (switched on here, before the kernels are
imported); their time says nothing about GPU speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

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
from fusedops.benchmarking import models as mb  # noqa: E402
from fusedops.integrations import hf_models  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def _run_ops(device: torch.device, quick: bool) -> list[bm.Record]:
    """The per-op cases through the benchmark runner (``fusedops bench``'s): fusedops checked
    against the reference, timed against eager and ``torch.compile`` of it."""
    flop_dtypes = sorted(
        {case.dtype for case, _ in _demo_cases(quick) if case.op == "attention"}, key=str
    )
    ceilings = bm.measure_ceilings(device, flop_dtypes)
    records: list[bm.Record] = []
    for case, min_time in _demo_cases(quick):
        interpreted = case.backend_on(device) == "triton" and device.type != "cuda"
        label = "triton (interpreter)" if interpreted else case.backend_on(device)
        _progress(f"[op] running {case.id} on {label} ...")
        plan = bm.TimingPlan(warmup_ms=min_time * 100, rep_ms=min_time * 1e3, min_reps=2)
        rows = bm.run_case(case, device, ceilings=ceilings, plan=plan, peers=_DEMO_PEERS)
        for row in rows:
            if interpreted and row.impl == bm.FUSED:  # numpy on the CPU: says nothing of GPUs
                row.speedup, row.gb_s, row.tflop_s, row.frac_of_ceiling = {}, None, None, None
                row.backend = label
        records += rows
    return records


_DEMO_PEERS = (bm.EAGER, bm.COMPILE)


_START = time.perf_counter()


def _progress(line: str) -> None:
    """A progress line, stamped with the seconds since the command started."""
    print(f"[{time.perf_counter() - _START:5.0f} s] {line}", flush=True)


def _bf16_support(device: torch.device) -> tuple[bool, str]:
    """Whether the demo runs bf16 on ``device``, and the line that says why."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"bf16: {'supported' if ok else 'not supported'} by {bm.device_label(device)}"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if native:
        return True, "bf16: native on this CPU (AVX-512 BF16 / AMX): the bf16 rows run too"
    return False, (
        "bf16: skipped: this CPU has no AVX-512 BF16 or AMX, so bf16 matmuls would be emulated "
        "(slower than fp32)"
    )


def _model_demo(device: torch.device, quick: bool) -> tuple[list[str], list[tuple[str, bool]]]:
    """Run the real models; returns the tables to print and the parity checks."""
    bf16, bf16_line = _bf16_support(device)
    dtypes = [torch.float32] + ([torch.bfloat16] if bf16 and not quick else [])
    _progress(bf16_line + ("" if not bf16 or not quick else " (not with --quick)"))
    rounds = {"prefill_rounds": 1, "decode_rounds": 1} if quick else {}
    causal: list[mb.CausalComparison] = []
    _progress("[SmolLM2-135M-Instruct] loading ...")
    model, tokenizer = hf_models.load_causal_lm(hf_models.SMOLLM2)
    model.to(device)
    for dtype in dtypes:
        _progress(f"[SmolLM2-135M-Instruct, {bm.dtype_name(dtype)}]")
        reference = causal[0].reference if causal else None  # fp32 logits: the yardstick
        model.to(dtype)
        causal.append(
            mb.compare_causal(model, tokenizer, reference=reference, log=_progress, **rounds)
        )
    del model
    _progress("[all-MiniLM-L6-v2] loading, patching two copies (one with an INT8 table) ...")
    encoder, tokenizer = hf_models.load_encoder(hf_models.MINILM)
    enc = mb.compare_encoder(encoder.to(device), tokenizer)
    checks = []
    for c in causal:
        name = f"SmolLM2 {bm.dtype_name(c.dtype)}"
        if c.tokens_must_match:
            checks.append(
                (f"{name}: greedy tokens identical patched vs unpatched", c.tokens_identical)
            )
            checks.append(
                (
                    f"{name}: static cache (attention_with_kvcache): greedy tokens identical",
                    c.static_tokens_identical,
                )
            )
        against = "unpatched" if c.tokens_must_match else "fp32 unpatched"
        bound = f"{c.ref_err:.3g} <= {c.bound:.3g} ({c.bound_text})"
        checks.append((f"{name}: logits vs {against}: max diff {bound}", c.logits_ok))
    for variant, bar in enc.BARS.items():
        cos = enc.cosine[variant]
        checks.append((f"MiniLM {variant}: cosine {cos:.7f} >= {bar}", cos >= bar))
    return [_format_causal(causal), _format_encoder(enc)], checks


def _format_causal(rows: list[mb.CausalComparison]) -> str:
    un, pa = mb.UNPATCHED, mb.PATCHED
    lines = [f"SmolLM2-135M-Instruct, greedy, chat prompt {mb.CHAT_PROMPT!r}"]
    for r in rows:
        for variant in (un, pa):
            text = r.generations[variant].text.replace("\n", " ")
            lines.append(f"  {bm.dtype_name(r.dtype):>8} {variant:>9}: {text!r}")
    header = ["dtype", "tokens identical", "max logit diff", "prefill ms (512 tok)"]
    header += ["", "decode tok/s (64 tok)", "", "patched speed"]
    sub = ["", "", "(max |logit|)", "unpatched", "patched", "unpatched", "patched"]
    sub += ["prefill / decode"]
    n_decode = mb.DECODE_TOKENS
    cells = [sub]
    for r in rows:
        pre_u, pre_p = r.prefill[un].median_ms, r.prefill[pa].median_ms
        dec_u = n_decode / (r.decode[un].median_ms * 1e-3)
        dec_p = n_decode / (r.decode[pa].median_ms * 1e-3)
        cells.append(
            [
                bm.dtype_name(r.dtype),
                _tokens_cell(r),
                f"{r.logits_err:.2g} ({r.logits_max:.1f})",
                f"{pre_u:.1f}",
                f"{pre_p:.1f}",
                f"{dec_u:.1f}",
                f"{dec_p:.1f}",
                f"{pre_u / pre_p:.2f}x / {dec_p / dec_u:.2f}x",
            ]
        )
    table = bm.text_table(header, cells, "<<>>>>>>")
    counts = ", ".join(f"{k} {v}" for k, v in rows[0].report.counts.items())
    note = (
        f"medians of interleaved runs; patched = fusedops.patch (replaced: {counts}); "
        f"decode = {n_decode} greedy steps after a {mb.DECODE_PROMPT_TOKENS}-token prompt"
    )
    return "\n".join([*lines, "", table, note])


def _tokens_cell(r: mb.CausalComparison) -> str:
    if r.tokens_identical:
        return "yes"
    return "NO" if r.tokens_must_match else "no (rounding; not required)"


def _format_encoder(r: mb.EncoderComparison) -> str:
    header = ["all-MiniLM-L6-v2", "min cosine to unpatched", "ms per batch", "embedding table"]
    header += ["bar"]
    cells = []
    for variant in (mb.UNPATCHED, mb.PATCHED, mb.PATCHED_INT8):
        bar = r.BARS.get(variant)
        cells.append(
            [
                variant,
                f"{r.cosine[variant]:.7f}",
                f"{r.timings[variant].median_ms:.2f}",
                f"{r.table_bytes[variant] / 2**20:.1f} MiB",
                "-" if bar is None else f">= {bar}",
            ]
        )
    title = (
        f"all-MiniLM-L6-v2: {r.batch_shape[0]} sentences padded to {r.batch_shape[1]} tokens, "
        "mean-pooled normalized sentence embeddings"
    )
    return bm.text_table(header, cells, "<>>><", title=title)


def _format_checks(checks: list[tuple[str, bool]]) -> str:
    cells = [[name, "pass" if ok else "FAIL"] for name, ok in checks]
    return bm.text_table(["parity check", "result"], cells, "<<", title="Summary")


def demo(quick: bool = False) -> int:
    device = torch.device("cuda" if _HAS_CUDA else "cpu")
    print(
        f"fusedops {fusedops.__version__} demo on {bm.device_label(device)}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )
    try:
        tables, checks = _model_demo(device, quick)
    except (hf_models.MissingPackageError, FileNotFoundError) as exc:
        print(f"fusedops demo: {exc}", file=sys.stderr)
        return 1
    records = _run_ops(device, quick)
    for table in tables:
        print()
        print(table)
    print()
    print(bm.format_table(records, title="Per op (the cases `fusedops bench` runs)"))
    fused = [r for r in records if r.impl == bm.FUSED]
    bad = [r for r in fused if r.status != "ok"]
    for r in bad:
        print(f"\nFAILED {r.op} {r.case} {r.dtype} {r.shape}: {r.detail}", file=sys.stderr)
    checks.append(
        (
            f"per-op table: {len(fused) - len(bad)} of {len(fused)} cases match the reference "
            "(attention: within 2x the eager formula's error; INT8: also within half a "
            "quantization step)",
            not bad,
        )
    )
    print()
    print(_format_checks(checks))
    failed = [name for name, ok in checks if not ok]
    if failed:
        print(f"\nFAILED: {len(failed)} parity check(s)", file=sys.stderr)
        return 1
    print("\nall parity checks pass")
    return 0


def generate(args: argparse.Namespace) -> int:
    """``fusedops generate``: greedy text from a Hugging Face causal LM, patched by default."""
    device = torch.device("cuda" if _HAS_CUDA else "cpu")
    if args.no_patch and args.int8_embedding:
        print(
            "fusedops generate: --int8-embedding needs patching (drop --no-patch)", file=sys.stderr
        )
        return 2
    if args.max_new_tokens < 1:
        print(
            f"fusedops generate: --max-new-tokens must be >= 1, got {args.max_new_tokens}",
            file=sys.stderr,
        )
        return 2
    try:
        model, tokenizer = hf_models.load_causal_lm(args.model, dtype=DTYPES[args.dtype])
    except (hf_models.MissingPackageError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"fusedops generate: {exc}", file=sys.stderr)
        return 2
    if tokenizer is None:
        print(f"fusedops generate: {args.model} has no tokenizer files", file=sys.stderr)
        return 2
    model.to(device)
    report = None
    if not args.no_patch:
        try:
            report = fusedops.patch(model, int8_embedding=args.int8_embedding)
        except (ValueError, RuntimeError) as exc:
            print(f"fusedops generate: {exc} (--no-patch runs the model as is)", file=sys.stderr)
            return 2
    inputs = mb.chat_inputs(tokenizer, args.prompt, device)
    result = mb.generate_greedy(model, tokenizer, inputs, args.max_new_tokens, args.cache)
    print(result.text)
    print()
    n_prompt, n_new = inputs["input_ids"].shape[1], len(result.tokens)
    rate = "-" if result.decode_tokens_per_s is None else f"{result.decode_tokens_per_s:.1f}"
    state = "unpatched (--no-patch)" if report is None else "patched"
    print(
        f"{state}, {args.dtype} on {bm.device_label(device)}, {args.cache} cache: prompt "
        f"{n_prompt} tokens, "
        f"prefill {result.prefill_ms:.1f} ms; {n_new} new tokens, decode {rate} tokens/s"
    )
    if report is not None:
        print()
        print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None and _INTERPRETER_TOO_LATE:
        # TRITON_INTERPRET=1 is in os.environ now: start over with it (see the top).
        os.execv(sys.executable, [sys.executable, "-m", "fusedops.cli", *sys.argv[1:]])
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list[:1] == ["bench"]:  # its own parser (and `bench compare`)
        from fusedops.benchmarking.command import main as bench_main

        return bench_main(args_list[1:])
    parser = argparse.ArgumentParser(prog="fusedops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "bench",
        help="benchmark the ops on this device (fusedops bench --help; fusedops bench compare)",
    )
    demo_p = sub.add_parser("demo", help="run, check and time the fused ops on this machine")
    demo_p.add_argument("--quick", action="store_true", help="fewer cases, shorter timing")
    gen_p = sub.add_parser(
        "generate", help="greedy text from a Hugging Face causal LM, patched, with its speed"
    )
    gen_p.add_argument(
        "--model",
        required=True,
        help="a Hugging Face model folder, or 'smollm2' (SmolLM2-135M-Instruct, offline)",
    )
    gen_p.add_argument("--prompt", required=True, help="user message (chat template if any)")
    gen_p.add_argument("--max-new-tokens", type=int, default=64, help="default: 64")
    gen_p.add_argument("--no-patch", action="store_true", help="run the model unpatched")
    gen_p.add_argument(
        "--int8-embedding", action="store_true", help="patch with an INT8 input embedding table"
    )
    gen_p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    gen_p.add_argument(
        "--cache",
        choices=("dynamic", "static"),
        default="dynamic",
        help="Hugging Face's KV cache (default: dynamic); patched static-cache decode steps "
        "run fusedops.attention_with_kvcache",
    )
    args = parser.parse_args(args_list)
    if args.command == "demo":
        return demo(quick=args.quick)
    if args.command == "generate":
        return generate(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
