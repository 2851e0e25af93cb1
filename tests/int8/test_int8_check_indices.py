"""int8_embedding_fwd's ``check_indices`` switch and the kernels' masking of bad indices.

The CPU op range-checks ids and positions whatever ``check_indices`` says. The CUDA op skips its
check (and its device sync) when ``check_indices=False``; the kernel then masks what is out of
range: a bad id gives a zero token term, a bad position a zero positional term (csrc/int8_math.h,
the rule fused_embedding's Triton kernel follows). The CPU kernel runs the same masking code, so
``fusedops._C._int8_embedding_fwd_masked_cpu`` (the CPU kernel without the checks) pins the
semantics on any machine; on a GPU the CUDA op must match it and be capturable in a CUDA graph.
"""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import assert_close, sinusoid_atol
from torch.utils._python_dispatch import TorchDispatchMode

import fusedops
import fusedops._C
import fusedops.ops.cpp_fakes  # the fake impl opcheck needs
from fusedops import reference
from fusedops.constants import POS_LEARNED, POS_NONE, POS_SINUSOID, SINUSOID_MAX_POSITION
from fusedops.ops import _common

OP = torch.ops.fusedops.int8_embedding_fwd
MODES = {"none": POS_NONE, "learned": POS_LEARNED, "sinusoid": POS_SINUSOID}
V, D, P = 13, 32, 9  # rows of the token table, features, rows of the learned table
BAD_IDS = [-1, V, V + 7, 2**40]


def _tables(group_size, out_dtype=torch.float32, dim=D, seed=0):
    """qweight [V, dim] int8, scales [V, G], pos_weight [P, dim] in out_dtype."""
    gen = torch.Generator().manual_seed(seed)
    qweight, scales = fusedops.quantize_embedding(
        torch.randn(V, dim, generator=gen), group_size=group_size
    )
    pos_weight = torch.randn(P, dim, generator=gen).to(out_dtype)
    return qweight, scales, pos_weight


def _args(ids, qweight, scales, pos_weight, positions, mode, out_dtype, scale=1.5):
    """The op's positional arguments (without check_indices)."""
    pw = pos_weight if mode == "learned" else None
    pos = positions if mode != "none" else None
    return (ids, qweight, scales, scale, pw, pos, 0, MODES[mode], 1e4, out_dtype)


def _masked_expected(ids, qweight, scales, pos_weight, positions, mode, out_dtype, scale=1.5):
    """The masking rule in plain PyTorch: a zero token row (q = 0, scale 0) for a bad id, a zero
    positional term for a bad position; otherwise the fp32 reference."""
    dim = qweight.shape[1]
    id_ok = (ids >= 0) & (ids < V)
    # An appended all-zero row (q = 0, scale 0) is what a masked id reads as.
    q_ext = torch.cat([qweight, torch.zeros(1, dim, dtype=torch.int8)])
    s_ext = torch.cat([scales, torch.zeros(1, scales.shape[1], dtype=scales.dtype)])
    ids_ext = torch.where(id_ok, ids, V)
    kwargs = {"out_dtype": out_dtype, "scale": scale}
    if mode == "none":
        return reference.int8_embedding(ids_ext, q_ext, s_ext, **kwargs)
    limit = P if mode == "learned" else SINUSOID_MAX_POSITION
    pos_ok = (positions >= 0) & (positions < limit)
    if mode == "learned":
        pw_ext = torch.cat([pos_weight, torch.zeros(1, dim, dtype=pos_weight.dtype)])
        pos_ext = torch.where(pos_ok, positions, P)
        return reference.int8_embedding(
            ids_ext, q_ext, s_ext, pos_weight=pw_ext, positions=pos_ext, **kwargs
        )
    with_pos = reference.int8_embedding(
        ids_ext,
        q_ext,
        s_ext,
        sinusoidal=True,
        positions=torch.where(pos_ok, positions, 0),
        **kwargs,
    )
    without_pos = reference.int8_embedding(ids_ext, q_ext, s_ext, **kwargs)
    return torch.where(pos_ok[..., None], with_pos, without_pos)


def _bad_inputs(mode, id_dtype, seed=0):
    """ids [2, 6] and positions [2, 6] with out-of-range values mixed in."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, 6), generator=gen)
    ids[0, 1], ids[1, 4] = BAD_IDS[0], BAD_IDS[1]
    ids[1, 0] = BAD_IDS[2] if id_dtype == torch.int32 else BAD_IDS[3]
    limit = P if mode == "learned" else SINUSOID_MAX_POSITION
    positions = torch.randint(0, min(limit, 40), (2, 6), generator=gen)
    positions[0, 2], positions[1, 1] = -3, limit
    positions[1, 5] = limit + 12345 if id_dtype == torch.int32 else 2**40
    return ids.to(id_dtype), positions.to(id_dtype)


def test_schema_has_check_indices_defaulting_to_true():
    args = {arg.name: arg for arg in OP.default._schema.arguments}
    assert args["check_indices"].default_value is True
    assert args["vocab_start"].default_value is None  # the trailing shard argument


@pytest.mark.parametrize("check_indices", [True, False])
def test_cpu_always_checks(check_indices):
    qweight, scales, pos_weight = _tables(8)
    ids, positions = _bad_inputs("learned", torch.int64)
    good_ids = ids.clamp(0, V - 1)
    with pytest.raises(
        IndexError, match=rf"int8_embedding: input_ids contains id -1 outside \[0, {V}\)"
    ):
        OP(*_args(ids, qweight, scales, pos_weight, None, "none", torch.float32), check_indices)
    with pytest.raises(IndexError, match=rf"int8_embedding: position -3 outside .*\[0, {P}\)"):
        OP(
            *_args(good_ids, qweight, scales, pos_weight, positions, "learned", torch.float32),
            check_indices,
        )
    limit = SINUSOID_MAX_POSITION
    far = torch.full_like(positions, limit - 1)
    far[0, 3] = limit
    with pytest.raises(IndexError, match=rf"int8_embedding: sinusoid position {limit} outside"):
        OP(*_args(good_ids, qweight, scales, None, far, "sinusoid", torch.float32), check_indices)


@pytest.mark.parametrize("mode", list(MODES))
def test_cpu_check_indices_false_gives_the_same_values(mode):
    qweight, scales, pos_weight = _tables(16, torch.bfloat16)
    ids, positions = _bad_inputs(mode, torch.int64)
    ids, positions = ids.clamp(0, V - 1), positions.clamp(0, P - 1)
    args = _args(ids, qweight, scales, pos_weight, positions, mode, torch.bfloat16)
    expected = OP(*args)
    assert torch.equal(OP(*args, False), expected)
    assert torch.equal(fusedops._C._int8_embedding_fwd_masked_cpu(*args), expected)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize(
    ("group_size", "out_dtype"),
    [(None, torch.float32), (8, torch.float16), (16, torch.bfloat16), (32, torch.float32)],
)
def test_masking_rule(mode, id_dtype, group_size, out_dtype):
    """The CPU kernel without its checks: bad ids and positions are masked, never read."""
    qweight, scales, pos_weight = _tables(group_size, out_dtype)
    ids, positions = _bad_inputs(mode, id_dtype)
    args = _args(ids, qweight, scales, pos_weight, positions, mode, out_dtype)
    out = fusedops._C._int8_embedding_fwd_masked_cpu(*args)
    expected = _masked_expected(ids, qweight, scales, pos_weight, positions, mode, out_dtype)
    assert out.dtype == out_dtype and out.shape == (2, 6, D)
    assert_close(out, expected, atol_extra=sinusoid_atol(mode, 40))
    if mode != "sinusoid":  # the same fp32 roundings: bit-exact
        assert torch.equal(out, expected)
    if mode == "learned":
        # Token (0, 1): a masked id, a valid position -> exactly the positional row.
        assert torch.equal(out[0, 1], pos_weight[positions[0, 1]])
        # Token (0, 2): a valid id, a masked position -> exactly the token term.
        token = reference.int8_embedding(
            ids[0, 2:3], qweight, scales, scale=1.5, out_dtype=out_dtype
        )
        assert torch.equal(out[0, 2], token[0])


def test_opcheck_with_check_indices_false():
    qweight, scales, pos_weight = _tables(8)
    ids, positions = _bad_inputs("learned", torch.int64)
    args = _args(
        ids.clamp(0, V - 1),
        qweight,
        scales,
        pos_weight,
        positions.clamp(0, P - 1),
        "learned",
        torch.float32,
    )
    torch.library.opcheck(OP.default, (*args, False))


class _OpArgs(TorchDispatchMode):
    """Records the arguments of every int8_embedding_fwd call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is OP.default:
            self.calls.append(args)
        return func(*args, **(kwargs or {}))

    def check_indices(self) -> list[bool]:
        """check_indices of each call (the dispatcher leaves out trailing defaults: True)."""
        return [bool(args[10]) if len(args) > 10 else True for args in self.calls]


def test_capture_skips_the_host_checks(monkeypatch):
    """The CUDA-graph rule on CPU: int8_embedding routes check_indices through
    host_index_checks, which turns it off while the current stream captures. Emulated here by a
    capturing stream and a "cuda" device seen by that helper: the extension op then receives
    check_indices=False, and the reference backend skips its host range check."""
    int8_ops = sys.modules["fusedops.ops.int8_embedding"]
    seen = []

    def as_if_cuda(check_indices, device):
        seen.append((check_indices, device.type))
        return _common.host_index_checks(check_indices, torch.device("cuda"))

    monkeypatch.setattr(int8_ops, "host_index_checks", as_if_cuda)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    qweight, scales, pos_weight = _tables(8)
    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(1))
    positions = torch.randint(0, P, (2, 6), generator=torch.Generator().manual_seed(2))
    kwargs = {"scale": 1.5, "pos_weight": pos_weight, "positions": positions}
    with _OpArgs() as spy:
        out = fusedops.int8_embedding(ids, qweight, scales, **kwargs)
    assert spy.check_indices() == [False]  # as the extension op receives it
    assert torch.equal(out, reference.int8_embedding(ids, qweight, scales, **kwargs))
    # The reference backend: a sinusoid position past the range raises outside a capture; here
    # the host check is skipped and the (unmasked) reference computes it.
    far = torch.full((2, 6), SINUSOID_MAX_POSITION)
    with fusedops.use_backend("reference"):
        out = fusedops.int8_embedding(ids, qweight, scales, sinusoidal=True, positions=far)
    expected = reference.int8_embedding(ids, qweight, scales, sinusoidal=True, positions=far)
    assert torch.equal(out, expected)
    assert seen == [(True, "cpu"), (True, "cpu")]
    # Not capturing: the checks run (IndexError) and the op gets check_indices=True.
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    with fusedops.use_backend("reference"), pytest.raises(IndexError, match="int8_embedding"):
        fusedops.int8_embedding(ids, qweight, scales, sinusoidal=True, positions=far)
    with _OpArgs() as spy:
        fusedops.int8_embedding(ids, qweight, scales, **kwargs)
    assert spy.check_indices() == [True]


@pytest.mark.cuda
class TestCuda:
    @pytest.fixture(autouse=True)
    def _cuda_build(self):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(
            "fusedops::int8_embedding_fwd", "CUDA"
        ):
            pytest.skip("fusedops._C was built without CUDA")

    @pytest.mark.parametrize("mode", list(MODES))
    # D = 32: the 16-byte vectorized kernel; D = 30 (groups of 10): the per-element kernel.
    @pytest.mark.parametrize(("group_size", "dim"), [(None, 32), (16, 32), (10, 30)])
    def test_unchecked_masks_like_the_cpu_kernel(self, mode, group_size, dim):
        qweight, scales, pos_weight = _tables(group_size, dim=dim)
        ids, positions = _bad_inputs(mode, torch.int64)
        args = _args(ids, qweight, scales, pos_weight, positions, mode, torch.float32)
        expected = fusedops._C._int8_embedding_fwd_masked_cpu(*args)
        cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        out = OP(*cuda_args, False)
        assert_close(out.cpu(), expected, atol_extra=sinusoid_atol(mode, 40))

    def test_checked_raises(self):
        qweight, scales, pos_weight = _tables(8)
        ids, _ = _bad_inputs("none", torch.int64)
        args = _args(ids, qweight, scales, pos_weight, None, "none", torch.float32)
        cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(IndexError, match="int8_embedding: input_ids contains id"):
            OP(*cuda_args)

    def test_unchecked_call_is_graph_capturable(self):
        qweight, scales, pos_weight = (t.cuda() for t in _tables(16))
        ids = torch.randint(0, V, (2, 6), device="cuda")
        positions = torch.randint(0, P, (2, 6), device="cuda")
        args = (
            ids,
            qweight,
            scales,
            1.5,
            pos_weight,
            positions,
            0,
            POS_LEARNED,
            1e4,
            torch.float32,
            False,
        )
        OP(*args)  # warm-up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = OP(*args)
        ids.copy_(torch.randint(0, V, (2, 6), device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        expected = reference.int8_embedding(
            ids, qweight, scales, scale=1.5, pos_weight=pos_weight, positions=positions
        )
        assert torch.equal(out, expected)

    @pytest.mark.parametrize("mode", ["learned", "sinusoid"])
    def test_checked_call_is_graph_capturable(self, mode):
        """check_indices=True (the default) inside a capture: the host check is skipped (no
        sync), replays compute the new ids, and an id made bad after the capture is masked;
        bit for bit the CPU kernel's values (the same arithmetic, no FMA)."""
        tables = _tables(16)
        qweight, scales, pos_weight = (t.cuda() for t in tables)
        ids = torch.randint(0, V, (2, 6), device="cuda")
        positions = torch.randint(0, P, (2, 6), device="cuda")
        kwargs = {"scale": 1.5, "positions": positions}
        kwargs.update({"pos_weight": pos_weight} if mode == "learned" else {"sinusoidal": True})
        fusedops.int8_embedding(ids, qweight, scales, **kwargs)  # warm-up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fusedops.int8_embedding(ids, qweight, scales, **kwargs)
        for bad in (None, V + 3):
            ids.copy_(torch.randint(0, V, (2, 6), device="cuda"))
            if bad is not None:
                ids[0, 0] = bad
            graph.replay()
            torch.cuda.synchronize()
            args = _args(ids.cpu(), *tables, positions.cpu(), mode, torch.float32)
            expected = fusedops._C._int8_embedding_fwd_masked_cpu(*args)
            assert torch.equal(out.cpu(), expected), bad
