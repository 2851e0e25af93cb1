"""The peers of ``fusedops bench``: their groups, and how Liger-Kernel and flash-attention are
bound, reported missing or not runnable, checked against the reference and timed.

Neither package is needed: fake ``liger_kernel`` / ``flash_attn`` modules are put in
``sys.modules``. A right fake computes what the real function computes (in the real function's
layout), so a record ``ok`` proves the adapter's argument order and layout transposes; a wrong
fake (rotating the wrong way, ignoring the causal mask, a wrong softmax scale) must give
``mismatch`` and no timing while fusedops' own record stays ``ok``. The adapters refuse any
device but CUDA, so the run-on-CPU tests replace :func:`fusedops.benchmarking.peers.require_cuda`
with a no-op.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from fusedops import reference
from fusedops.benchmarking import peers, runner, sweeps
from fusedops.benchmarking.attention_cases import DecodeSpec, WindowSpec
from fusedops.benchmarking.cases import AttentionSpec, EmbeddingSpec, RopeSpec
from fusedops.benchmarking.ceilings import Ceilings
from fusedops.benchmarking.harness import Case
from fusedops.benchmarking.peers import FLASH_ATTN, LIGER, PEER_GROUPS, PeerUnavailable
from fusedops.benchmarking.results import ERROR, MISMATCH, NOT_INSTALLED, NOT_RUNNABLE, OK, Record

CEILINGS = Ceilings(10.0, {"float32": 1.0, "bfloat16": 1.0, "float16": 1.0})
PLAN = runner.TimingPlan(warmup_ms=1, rep_ms=5, min_reps=2)
CPU = torch.device("cpu")

ROPE = RopeSpec("tiny", 1, 4, 2, 16, 32, compile=False)
EMBEDDING = EmbeddingSpec("tiny", 1, 16, 32, 100, pos_rows=64, compile=False)
ATTENTION = AttentionSpec("tiny", 1, 4, 2, 32, 32, 32, compile=False)
ATTENTION_BWD = AttentionSpec("tiny-bwd", 1, 4, 2, 32, 32, 32, backward=True, compile=False)
WINDOW = WindowSpec("tiny-window", 1, 2, 64, 32, window=16)
DECODE = DecodeSpec("tiny", 1, 64, heads_q=4, heads_kv=2, dim=32)
DECODE_PAGED = DecodeSpec("tiny-paged", 1, 512, heads_q=4, heads_kv=2, dim=32, block_size=256)
DECODE_PAGED_16 = DecodeSpec("tiny-paged16", 1, 64, heads_q=4, heads_kv=2, dim=32, block_size=16)


def _install(monkeypatch, name: str, **attrs: object) -> ModuleType:
    """A fake module ``name`` with ``attrs`` in ``sys.modules`` (and on its parent)."""
    module = ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    parent, _, child = name.rpartition(".")
    if parent:
        monkeypatch.setattr(sys.modules[parent], child, module, raising=False)
    return module


@pytest.fixture
def on_cuda_anywhere(monkeypatch) -> None:
    """Let the adapters bind on the CPU (they refuse any device but CUDA)."""
    monkeypatch.setattr(peers, "require_cuda", lambda device, what: None)


def _run(spec, dtype: torch.dtype, group: str) -> dict[str, Record]:
    """``run_case`` of ``spec`` on the CPU with fusedops and the peer ``group`` only."""
    records = runner.run_case(Case(spec, dtype), CPU, ceilings=CEILINGS, plan=PLAN, peers=[group])
    assert len({r.impl for r in records}) == len(records)
    return {r.impl: r for r in records}


def _assert_timed_against(records: dict[str, Record], peer: str) -> None:
    """fusedops and ``peer`` both checked ok and timed, with speedups of each other."""
    fused, other = records["fusedops"], records[peer]
    for r in (fused, other):
        assert r.status == OK, r.detail
        assert r.median_ms > 0 and r.reps >= PLAN.min_reps and r.max_err is not None
        assert r.frac_of_ceiling > 0
    assert fused.speedup == {peer: pytest.approx(other.median_ms / fused.median_ms)}
    assert other.speedup == {"fusedops": pytest.approx(fused.median_ms / other.median_ms)}


def _assert_mismatch(records: dict[str, Record], peer: str) -> None:
    """``peer`` checked, found off and not timed; fusedops ok and timed alone."""
    fused, other = records["fusedops"], records[peer]
    assert other.status == MISMATCH and other.detail, other.detail
    assert other.median_ms is None and other.speedup == {} and other.max_err > 0
    assert fused.status == OK and fused.median_ms > 0 and fused.speedup == {}


# ---------------------------------------------------------------------------------------------
# Groups


def test_peer_groups_and_their_members():
    assert PEER_GROUPS == ("eager", "compile", "sdpa", "liger", "flash_attn")
    for group in PEER_GROUPS:
        assert peers.peer_group(group) == group
    assert peers.peer_group("F.embedding") == "eager"
    for name in ("sdpa-mask", "sdpa_flash", "sdpa_efficient", "sdpa_math"):
        assert peers.peer_group(name) == "sdpa"
    assert peers.peer_group("fusedops") is None
    assert peers.peer_group("triton") is None


def test_every_peer_of_every_sweep_has_a_group():
    """``--compare`` filters by group: an implementation without one would never run."""
    names = set()
    for op in sweeps.OPS:
        for tier in sweeps.TIERS:
            for spec in sweeps.sweep_specs(op, tier):
                names.update(Case(spec, torch.float32).impl_names)
    assert "fusedops" in names and {"liger", "flash_attn", "sdpa-mask"} <= names
    assert sorted(n for n in names - {"fusedops"} if peers.peer_group(n) not in PEER_GROUPS) == []


def test_sdpa_backends_are_cuda_only():
    assert peers.sdpa_backends(CPU) == []


# ---------------------------------------------------------------------------------------------
# Missing and not runnable


def test_missing_package_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    for bind, package in (
        (lambda: peers.liger_rope(CPU), "liger_kernel (liger-kernel)"),
        (lambda: peers.liger_embedding(CPU), "liger_kernel (liger-kernel)"),
        (lambda: peers.flash_attn_causal(CPU, torch.bfloat16), "flash_attn (flash-attn)"),
        (lambda: peers.flash_attn_kvcache(CPU, torch.bfloat16), "flash_attn (flash-attn)"),
    ):
        with pytest.raises(PeerUnavailable) as exc:
            bind()
        assert exc.value.status == NOT_INSTALLED
        assert exc.value.reason.startswith(f"{package} is not importable")
        assert str(exc.value) == f"{NOT_INSTALLED}: {exc.value.reason}"


def test_missing_peers_are_records_not_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    for spec, group in ((ROPE, LIGER), (ATTENTION, FLASH_ATTN)):
        records = _run(spec, torch.float32, group)
        assert list(records) == ["fusedops", group]
        assert records["fusedops"].status == OK
        missing = records[group]
        assert missing.status == NOT_INSTALLED and "is not importable" in missing.detail
        assert missing.median_ms is None


def _liger_rope(sign: float = 1.0) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``liger_rotary_pos_emb``: transformers' rotate-half RoPE (``sign=-1``: the wrong way)."""

    def rotary(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim) * sign

        def rotate_half(x: torch.Tensor) -> torch.Tensor:
            first, second = x.chunk(2, dim=-1)
            return torch.cat((-second, first), dim=-1)

        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    return rotary


def _install_liger(monkeypatch, rope=None, embedding_function=None) -> None:
    _install(monkeypatch, "liger_kernel")
    _install(monkeypatch, "liger_kernel.transformers")
    _install(monkeypatch, "liger_kernel.transformers.rope", liger_rotary_pos_emb=rope)
    if embedding_function is not None:
        _install(monkeypatch, "liger_kernel.ops")
        _install(monkeypatch, "liger_kernel.ops.experimental")
        _install(
            monkeypatch,
            "liger_kernel.ops.experimental.embedding",
            LigerEmbeddingFunction=embedding_function,
        )


def _flash_attn_func(*, causal_mask: bool = True):
    """``flash_attn_func`` on ``[B, S, H, D]`` (bottom-right causal mask, ``window_size=(left,
    right)``, GQA by head groups) through SDPA; ``causal_mask=False`` ignores ``causal`` and the
    window (a wrong peer). Records the keyword arguments of each call."""
    calls: list[dict] = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                        window_size=(-1, -1)):  # fmt: skip
        calls.append({"causal": causal, "window_size": window_size, "shape": tuple(q.shape)})
        assert q.dtype in (torch.float16, torch.bfloat16)
        sq, sk = q.shape[1], k.shape[1]
        row = torch.arange(sq)[:, None] + (sk - sq)  # each query's position among the keys
        col = torch.arange(sk)[None, :]
        keep = torch.ones(sq, sk, dtype=torch.bool)
        left, right = window_size
        if causal_mask:
            if causal:
                keep &= col <= row
            if left >= 0:
                keep &= col >= row - left
            if right >= 0:
                keep &= col <= row + right
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=keep, enable_gqa=True)
        return out.transpose(1, 2)

    flash_attn_func.calls = calls
    return flash_attn_func


def _flash_attn_with_kvcache(softmax_scale: float | None = None):
    """``flash_attn_with_kvcache`` as :func:`fusedops.reference.attention_with_kvcache` (the
    same layouts); a ``softmax_scale`` overrides the caller's (a wrong peer)."""
    calls: list[dict] = []

    def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None,
                                rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                                cache_leftpad=None, block_table=None, softmax_scale=None,
                                causal=False, **kwargs):  # fmt: skip
        calls.append({"causal": causal, "paged": block_table is not None, **kwargs})
        assert cache_seqlens.dtype == torch.int32 and q.dim() == 4
        return reference.attention_with_kvcache(
            q, k_cache, v_cache, k, v, cache_seqlens=cache_seqlens, block_table=block_table,
            causal=causal, softmax_scale=scale if scale is not None else softmax_scale,
        )  # fmt: skip

    scale = softmax_scale
    flash_attn_with_kvcache.calls = calls
    return flash_attn_with_kvcache


def _install_flash(monkeypatch, func=None, kvcache=None) -> None:
    _install(
        monkeypatch,
        "flash_attn",
        flash_attn_func=func or _flash_attn_func(),
        flash_attn_with_kvcache=kvcache or _flash_attn_with_kvcache(),
    )


def test_installed_peers_are_not_runnable_on_cpu(monkeypatch):
    _install_liger(monkeypatch, rope=_liger_rope())
    _install_flash(monkeypatch)
    with pytest.raises(PeerUnavailable) as exc:
        peers.require_cuda(CPU, "X")
    assert (exc.value.status, exc.value.reason) == (NOT_RUNNABLE, "X runs on CUDA only, not on cpu")
    for spec, dtype, group, what in (
        (ROPE, torch.float32, LIGER, "Liger-Kernel"),
        (EMBEDDING, torch.float32, LIGER, "Liger-Kernel"),
        (ATTENTION, torch.bfloat16, FLASH_ATTN, "flash-attention"),
        (DECODE, torch.bfloat16, FLASH_ATTN, "flash-attention"),
    ):
        records = _run(spec, dtype, group)
        assert records["fusedops"].status == OK
        assert records[group].status == NOT_RUNNABLE
        assert records[group].detail == f"{what} runs on CUDA only, not on cpu"


# ---------------------------------------------------------------------------------------------
# Liger-Kernel, bound on the CPU


@pytest.mark.usefixtures("on_cuda_anywhere")
def test_liger_rope_right_is_timed_wrong_is_a_mismatch(monkeypatch):
    _install_liger(monkeypatch, rope=_liger_rope())
    records = _run(ROPE, torch.float32, LIGER)
    assert list(records) == ["fusedops", LIGER]
    _assert_timed_against(records, LIGER)
    assert records[LIGER].max_err < 1e-5

    _install_liger(monkeypatch, rope=_liger_rope(sign=-1.0))
    _assert_mismatch(_run(ROPE, torch.float32, LIGER), LIGER)


@pytest.mark.usefixtures("on_cuda_anywhere")
def test_liger_embedding_gets_weight_then_ids(monkeypatch):
    class Right:
        @staticmethod
        def apply(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            assert weight.dim() == 2 and ids.dtype == torch.int64
            return F.embedding(ids, weight)

    class OffByOneRow:
        @staticmethod
        def apply(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return F.embedding((ids + 1) % weight.shape[0], weight)

    _install_liger(monkeypatch, rope=_liger_rope(), embedding_function=Right)
    _assert_timed_against(_run(EMBEDDING, torch.float32, LIGER), LIGER)
    _install_liger(monkeypatch, rope=_liger_rope(), embedding_function=OffByOneRow)
    _assert_mismatch(_run(EMBEDDING, torch.float32, LIGER), LIGER)


@pytest.mark.usefixtures("on_cuda_anywhere")
def test_liger_without_an_embedding_is_not_installed(monkeypatch):
    _install_liger(monkeypatch, rope=_liger_rope())  # no liger_kernel.ops.experimental
    records = _run(EMBEDDING, torch.float32, LIGER)
    assert records["fusedops"].status == OK
    assert records[LIGER].status == NOT_INSTALLED
    detail = records[LIGER].detail
    assert "liger_kernel.ops.experimental.embedding" in detail, detail
    assert "LigerEmbeddingFunction" in detail, detail


@pytest.mark.usefixtures("on_cuda_anywhere")
def test_liger_raising_is_an_error_record(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("triton   is\nmissing")

    _install_liger(monkeypatch, rope=broken)
    records = _run(ROPE, torch.float32, LIGER)
    assert records[LIGER].status == ERROR
    assert records[LIGER].detail == "RuntimeError: triton is missing"
    assert records["fusedops"].status == OK and records["fusedops"].speedup == {}


# ---------------------------------------------------------------------------------------------
# flash-attention, bound on the CPU


@pytest.mark.usefixtures("on_cuda_anywhere")
def test_flash_attn_refuses_fp32(monkeypatch):
    _install_flash(monkeypatch)
    for spec in (ATTENTION, DECODE):
        records = _run(spec, torch.float32, FLASH_ATTN)
        assert records["fusedops"].status == OK
        assert records[FLASH_ATTN].status == NOT_RUNNABLE
        assert "supports float16/bfloat16 only, not torch.float32" in records[FLASH_ATTN].detail


@pytest.mark.usefixtures("on_cuda_anywhere")
@pytest.mark.parametrize("spec", [ATTENTION, ATTENTION_BWD], ids=["forward", "backward"])
def test_flash_attn_func_right_is_timed_wrong_is_a_mismatch(monkeypatch, spec):
    func = _flash_attn_func()
    _install_flash(monkeypatch, func=func)
    records = _run(spec, torch.bfloat16, FLASH_ATTN)
    assert list(records) == ["fusedops", FLASH_ATTN]
    _assert_timed_against(records, FLASH_ATTN)
    assert records[FLASH_ATTN].tflop_s > 0 and records[FLASH_ATTN].ceiling == "matmul_bfloat16"
    # Called in its own layout [B, S, H, D], causal, no window.
    assert func.calls[0] == {"causal": True, "window_size": (-1, -1), "shape": (1, 32, 4, 32)}

    _install_flash(monkeypatch, func=_flash_attn_func(causal_mask=False))
    _assert_mismatch(_run(spec, torch.bfloat16, FLASH_ATTN), FLASH_ATTN)


@pytest.mark.usefixtures("on_cuda_anywhere")
def test_flash_attn_sliding_window(monkeypatch):
    func = _flash_attn_func()
    _install_flash(monkeypatch, func=func)
    records = _run(WINDOW, torch.bfloat16, FLASH_ATTN)
    _assert_timed_against(records, FLASH_ATTN)
    # fusedops' sliding_window=16 keeps the last 16 keys: flash-attention's (15, 0).
    assert func.calls[0] == {"causal": True, "window_size": (15, 0), "shape": (1, 64, 2, 32)}

    _install_flash(monkeypatch, func=_flash_attn_func(causal_mask=False))
    _assert_mismatch(_run(WINDOW, torch.bfloat16, FLASH_ATTN), FLASH_ATTN)


@pytest.mark.usefixtures("on_cuda_anywhere")
@pytest.mark.parametrize("spec", [DECODE, DECODE_PAGED], ids=["dense", "paged256"])
def test_flash_attn_with_kvcache_right_is_timed_wrong_is_a_mismatch(monkeypatch, spec):
    kvcache = _flash_attn_with_kvcache()
    _install_flash(monkeypatch, kvcache=kvcache)
    records = _run(spec, torch.bfloat16, FLASH_ATTN)
    assert list(records) == ["fusedops", FLASH_ATTN]
    _assert_timed_against(records, FLASH_ATTN)
    assert records[FLASH_ATTN].gb_s > 0 and records[FLASH_ATTN].ceiling == "copy"
    assert kvcache.calls[0] == {"causal": True, "paged": bool(spec.block_size)}

    _install_flash(monkeypatch, kvcache=_flash_attn_with_kvcache(softmax_scale=1.0))
    _assert_mismatch(_run(spec, torch.bfloat16, FLASH_ATTN), FLASH_ATTN)


@pytest.mark.usefixtures("on_cuda_anywhere")
def test_flash_attn_paged_cache_needs_blocks_of_256(monkeypatch):
    kvcache = _flash_attn_with_kvcache()
    _install_flash(monkeypatch, kvcache=kvcache)
    records = _run(DECODE_PAGED_16, torch.bfloat16, FLASH_ATTN)
    assert records["fusedops"].status == OK
    assert records[FLASH_ATTN].status == NOT_RUNNABLE
    assert "block_size % 256 == 0, not 16" in records[FLASH_ATTN].detail
    assert kvcache.calls == []


@pytest.mark.usefixtures("on_cuda_anywhere")
def test_kvcache_peer_that_does_not_append_is_a_mismatch(monkeypatch):
    """A decode peer that skips writing the new k/v into the cache (and so attends to one key
    fewer) fails its check, although fusedops, run first, already wrote that slot."""
    right = _flash_attn_with_kvcache()

    def no_append(q, k_cache, v_cache, k=None, v=None, **kwargs):
        return right(q, k_cache, v_cache, None, None, **kwargs)

    _install_flash(monkeypatch, kvcache=no_append)
    _assert_mismatch(_run(DECODE, torch.bfloat16, FLASH_ATTN), FLASH_ATTN)


# ---------------------------------------------------------------------------------------------
# Peers installed but not as the adapters expect (these describe open bugs: see the report)


@pytest.mark.usefixtures("on_cuda_anywhere")
@pytest.mark.parametrize(
    ("spec", "group", "missing"),
    [
        (ATTENTION, FLASH_ATTN, "flash_attn_func"),  # flash-attn 1.x has neither function
        (DECODE, FLASH_ATTN, "flash_attn_with_kvcache"),
        (ROPE, LIGER, "liger_kernel.transformers"),  # a liger_kernel without its rope module
    ],
    ids=["flash_attn_func", "flash_attn_with_kvcache", "liger-rope-module"],
)
def test_peer_package_without_the_function_is_reported_not_raised(
    monkeypatch, spec, group, missing
):
    _install(monkeypatch, "liger_kernel")  # a bare package: no submodules
    _install(monkeypatch, "flash_attn")  # no functions
    records = _run(spec, torch.bfloat16, group)
    assert records["fusedops"].status == OK
    assert records[group].status in (NOT_INSTALLED, ERROR)
    assert missing in records[group].detail
