"""Per-call time of each public op at decode size on CPU, against the raw kernel call alone.

    python bench/overhead.py [--json out.json] [--threads 2] [--cpu-time]

Prints a markdown table: the median time of one call (microseconds) of the public function
(``torch.no_grad()`` and, where the op has a gradient, with inputs that require grad: the
forward call only), of the raw C++ op / SDPA call it ends in, and their difference (the Python
work per call). Shapes: embedding B=8 S=1 D=768 V=50257 with a learned positional table;
RoPE B=2 Hq=32 Hk=8 S=1 D=128 at position 1023; attention B=8 Hq=32 Hkv=8 Sq=1 Sk=4096
D=128 and a tiny B=1 H=1 Sq=1 Sk=16 D=64 case where dispatch dominates. fp32 throughout.
``--cpu-time`` times with the calling thread's CPU clock instead of the wall clock: steadier on
a busy machine (time spent descheduled is not counted), but work on other threads is not
counted either (the large attention case runs on several).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import fusedops
import fusedops._C  # registers the raw C++ ops timed here
from fusedops.constants import POS_LEARNED

# Embedding / INT8 embedding (a decode step of GPT-2 small).
EMB_B, EMB_S, EMB_D, EMB_V, EMB_P, EMB_OFFSET = 8, 1, 768, 50257, 2048, 1023
# RoPE (a Llama-style decode step).
ROPE_B, ROPE_HQ, ROPE_HK, ROPE_D, ROPE_MAX, ROPE_OFFSET = 2, 32, 8, 128, 4096, 1023


def time_call(
    fn: Callable[[], object], clock: Callable[[], int] = time.perf_counter_ns, budget_s: float = 0.4
) -> float:
    """Median over batches of the mean time of one call, in microseconds."""
    for _ in range(3):
        fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    per_batch = max(1, min(2000, int(2e-3 / once)))  # batches of ~2 ms
    batches = max(5, min(200, int(budget_s / (once * per_batch))))
    samples = []
    for _ in range(batches):
        start = clock()
        for _ in range(per_batch):
            fn()
        samples.append((clock() - start) / per_batch / 1e3)
    return statistics.median(samples)


def _int8_args(qweight, scales, ids, pos_weight) -> tuple:
    args = (ids, qweight, scales, 1.0, pos_weight, None, EMB_OFFSET, POS_LEARNED, 10000.0)
    return (*args, torch.float32, True)  # ..., out_dtype, check_indices


def cases() -> list[tuple[str, str, Callable[[], object], Callable[[], object]]]:
    """``(op, mode, public call, raw call)`` rows."""
    rows = []
    ids = torch.randint(0, EMB_V, (EMB_B, EMB_S))
    weight = torch.randn(EMB_V, EMB_D)
    pos_weight = torch.randn(EMB_P, EMB_D)
    weight_g = weight.clone().requires_grad_()
    pos_g = pos_weight.clone().requires_grad_()

    def emb(w, p):
        return lambda: fusedops.fused_embedding(
            ids, w, pos_weight=p, position_offset=EMB_OFFSET, scale=1.0
        )

    raw_emb = lambda: torch.ops.fusedops.cpp_embedding_fwd.default(
        ids, weight, 1.0, pos_weight, None, EMB_OFFSET, POS_LEARNED, 10000.0
    )
    rows.append(("fused_embedding", "no_grad", emb(weight, pos_weight), raw_emb))
    rows.append(("fused_embedding", "grad", emb(weight_g, pos_g), raw_emb))

    qweight, scales = fusedops.quantize_embedding(weight)
    int8_args = _int8_args(qweight, scales, ids, pos_weight)
    rows.append(
        (
            "int8_embedding",
            "no_grad",
            lambda: fusedops.int8_embedding(
                ids, qweight, scales, pos_weight=pos_weight, position_offset=EMB_OFFSET
            ),
            lambda: torch.ops.fusedops.int8_embedding_fwd.default(*int8_args),
        )
    )

    cos, sin = fusedops.rope_cos_sin(ROPE_D, ROPE_MAX)  # [P, D/2]
    q = torch.randn(ROPE_B, ROPE_HQ, 1, ROPE_D)
    k = torch.randn(ROPE_B, ROPE_HK, 1, ROPE_D)
    q_g, k_g = q.clone().requires_grad_(), k.clone().requires_grad_()
    out_q, out_k = torch.empty_like(q), torch.empty_like(k)
    strides = [0, cos.stride(0), cos.stride(1)]

    def rope(qq, kk):
        return lambda: fusedops.apply_rotary(qq, kk, cos, sin, position_offset=ROPE_OFFSET)

    raw_rope = lambda q=q, k=k: torch.ops.fusedops.cpp_rope.default(
        q, k, cos, sin, strides, strides, None, ROPE_OFFSET, True, False, ROPE_D, False,
        out_q, out_k,
    )  # fmt: skip
    rows.append(("apply_rotary", "no_grad", rope(q, k), raw_rope))
    rows.append(("apply_rotary", "grad", rope(q_g, k_g), raw_rope))

    for name, (b, hq, hkv, sk, d) in (
        ("attention decode", (8, 32, 8, 4096, 128)),
        ("attention tiny", (1, 1, 1, 16, 64)),
    ):
        q = torch.randn(b, hq, 1, d)
        k = torch.randn(b, hkv, sk, d)
        v = torch.randn(b, hkv, sk, d)
        grads = [t.clone().requires_grad_() for t in (q, k, v)]
        scale = 1.0 / math.sqrt(d)
        gqa = hq != hkv

        def attn(qq, kk, vv):
            return lambda: fusedops.attention(qq, kk, vv, causal=True)

        raw = lambda q=q, k=k, v=v, gqa=gqa, scale=scale: F.scaled_dot_product_attention(
            q, k, v, scale=scale, enable_gqa=gqa
        )
        rows.append((name, "no_grad", attn(q, k, v), raw))
        rows.append((name, "grad", attn(*grads), raw))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true", help="time with the thread's CPU clock")
    args = parser.parse_args()
    clock = time.thread_time_ns if args.cpu_time else time.perf_counter_ns
    torch.set_num_threads(args.threads)
    results = []
    print("| op | mode | public call (us) | raw kernel call (us) | Python overhead (us) |")
    print("|---|---|---:|---:|---:|")
    for op, mode, public, raw in cases():
        try:
            with torch.set_grad_enabled(mode == "grad"):
                t_public = time_call(public, clock)
            with torch.no_grad():
                t_raw = time_call(raw, clock)
        except Exception as exc:  # e.g. an extension built from older sources
            print(f"| {op} | {mode} | error: {type(exc).__name__}: {exc} | | |")
            continue
        results.append({"op": op, "mode": mode, "public_us": t_public, "raw_us": t_raw})
        print(f"| {op} | {mode} | {t_public:.1f} | {t_raw:.1f} | {t_public - t_raw:.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
