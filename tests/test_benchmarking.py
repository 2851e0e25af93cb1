"""The benchmark harness shared by ``fusedops bench``, bench/ and the demo: counts, the accuracy
check, run_case."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fusedops
from fusedops import benchmarking as bm
from fusedops.benchmarking import Case, cases, counts

# Small specs of every op (no torch.compile baseline: nothing here compiles).
SMALL_SPECS = [
    cases.EMBEDDING_SMALL,
    cases.EMBEDDING_SMALL_SINUSOID,
    dataclasses.replace(cases.EMBEDDING_SMALL, name="bwd", backward=True),
    cases.Int8Spec("small", batch=2, seq=3, dim=16, vocab=11, group_size=8, compile=False),
    cases.ROPE_SMALL,
    cases.ATTENTION_SMALL,
]
# Made-up ceilings (the runner divides by them) and a short timing budget: nothing here measures.
CEILINGS = bm.Ceilings(copy_gb_s=10.0, matmul_tflop_s={"float32": 1.0})
FAST = bm.TimingPlan(warmup_ms=1, rep_ms=5, min_reps=2)


def test_counts_by_hand():
    # ids 4 x 8 B, token rows 4 x 8 x 4 B, 3 positional rows, output 4 x 8 x 4 B
    assert counts.min_bytes_embedding(4, 8, dtype=torch.float32, pos_rows=3) == 32 + 128 + 96 + 128
    # grad_out 4 x 8 x 2 B, ids 4 x 8 B, the [10, 8] gradient 10 x 8 x 2 B
    assert counts.min_bytes_embedding_backward(4, 8, 10, dtype=torch.bfloat16) == 64 + 32 + 160
    # per token: id 8 B, int8 row 16 B, 2 fp32 scales, bf16 output row 32 B
    int8 = counts.min_bytes_int8_embedding(
        3, 16, 2, scale_dtype=torch.float32, out_dtype=torch.bfloat16
    )
    assert int8 == 3 * (8 + 16 + 8 + 32)
    # q, k read and written: 2 x 1 x (2 + 1) x 5 x 8 x 4 B; cos, sin: 2 x 5 x 4 x 4 B
    assert counts.min_bytes_rope(1, 2, 1, 5, 8, 8, dtype=torch.float32) == 960 + 160
    assert counts.attention_flops(2, 3, 4, 5, 8) == 4 * 2 * 3 * 4 * 5 * 8 // 2
    assert counts.attention_flops(2, 3, 4, 5, 8, causal=False, backward=True) == 3.5 * 3840


def test_compare_fails_beyond_tolerance_on_nan_and_on_dtype():
    expected = torch.linspace(-3, 3, 50, dtype=torch.float64)
    actual = expected.to(torch.bfloat16)
    assert bm.compare(actual, expected, torch.bfloat16).ok
    atol, rtol = bm.TOLERANCES[torch.bfloat16]
    off = actual.clone()
    off[7] += 2 * (atol + rtol * 3)
    bad = bm.compare(off, expected, torch.bfloat16)
    assert not bad.ok and "1 of 50" in bad.detail
    off[7] = float("nan")
    assert not bm.compare(off, expected, torch.bfloat16).ok
    assert not bm.compare(expected.float(), expected, torch.bfloat16).ok  # wrong dtype


@pytest.mark.parametrize("spec", SMALL_SPECS, ids=lambda s: f"{s.op}-{s.name}")
def test_small_case_checks_and_times_on_cpu(spec):
    case = Case(spec, torch.float32)
    records = bm.run_case(case, "cpu", ceilings=CEILINGS, plan=FAST)
    timed = [r for r in records if r.status == "ok"]
    assert [r.impl for r in timed] == [n for n in case.impl_names if n in {r.impl for r in timed}]
    assert {bm.FUSED, bm.EAGER} <= {r.impl for r in timed}
    fused = records[0]
    assert fused.impl == bm.FUSED and fused.median_ms > 0 and fused.backend == "cpp"
    assert fused.max_err is not None and fused.max_err < 1e-3
    eager = next(r for r in timed if r.impl == bm.EAGER)
    assert fused.speedup[bm.EAGER] == pytest.approx(eager.median_ms / fused.median_ms)
    assert bm.COMPILE not in fused.speedup  # the small specs leave compile out
    assert (fused.gb_s is None) == (spec.op == "attention")
    assert (fused.tflop_s is None) != (spec.op == "attention")
    rate, ceiling = (fused.tflop_s, 1.0) if spec.op == "attention" else (fused.gb_s, 10.0)
    assert fused.ceiling_value == ceiling and fused.frac_of_ceiling == pytest.approx(rate / ceiling)
    # Peers that cannot run here are reported, not raised (Liger needs CUDA and its package).
    for r in records:
        if r.impl == "liger":
            assert r.status in ("not installed", "not runnable") and r.detail
    table = bm.format_table(records)
    assert f"{fused.median_ms:.4g}" in table


@pytest.mark.parametrize("spec", SMALL_SPECS, ids=lambda s: f"{s.op}-{s.name}")
def test_check_catches_a_wrong_fused_output(spec, monkeypatch):
    public = {
        "embedding": "fused_embedding",
        "int8_embedding": "int8_embedding",
        "rope": "apply_rotary",
        "attention": "attention",
    }[spec.op]
    right = getattr(fusedops, public)

    def wrong(*args, **kwargs):
        out = right(*args, **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
        # the last element of the first output: 2x + 1 (so its gradient is off as well)
        bump = torch.zeros_like(outs[0])
        bump.view(-1)[-1] = 1.0
        outs = (outs[0] * (1 + bump) + bump, *outs[1:])
        return outs if isinstance(out, tuple) else outs[0]

    monkeypatch.setattr(fusedops, public, wrong)
    case = Case(spec, torch.float32)
    records = bm.run_case(case, "cpu", ceilings=CEILINGS, plan=FAST)
    assert (records[0].impl, records[0].status) == (bm.FUSED, "mismatch")
    assert "max abs error" in records[0].detail and records[0].max_err > 0.1
    # Nothing of the case is timed: the peers after a wrong fused output are not even called.
    assert all(r.median_ms is None for r in records)
    assert all(r.status in ("not installed", "not runnable") for r in records[1:])
    with pytest.raises(bm.Mismatch, match=case.id):
        bm.check_case(case, case.build("cpu"))
