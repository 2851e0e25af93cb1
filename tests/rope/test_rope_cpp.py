"""fusedops::cpp_rope (the C++ CPU kernel) against a plain-PyTorch computation of the formulas.

The oracle computes the rotation op by op in fp32 (two products, one add/sub, then one cast to
the input dtype), the same roundings the kernel is specified to use, so the outputs must be
*equal*, for every dtype, on both the AVX2 rows and the portable rows (forced with
FUSEDOPS_ROPE_GENERIC=1); an fp64 reference with the dtype's tolerance checks the oracle itself.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_close

import fusedops  # loads fusedops._C
import fusedops.ops.cpp_fakes  # noqa: F401  (the fake of cpp_rope, for opcheck)

OP = torch.ops.fusedops.cpp_rope
ISAS = ["auto", "generic"]
# (B, Hq, Hk, S, D, R): full and partial rotary, R/2 with and without a tail past the vector
# width, S crossing the 16-token block, decode (S = 1, heads split across threads), GQA.
SHAPES = [
    (2, 3, 1, 19, 64, 64),
    (1, 4, 2, 1, 128, 128),
    (2, 2, 3, 7, 80, 40),
    (1, 1, 1, 5, 6, 6),
    (3, 9, 3, 33, 128, 64),
    (1, 2, 1, 4, 10, 2),
]
# cos/sin forms (kernel view of each): cache [P, R/2]; HF-duplicated cache [P, R] (half: first
# R/2 columns; interleaved: repeat_interleave(2), read with column stride 2); gathered
# [B, S, R/2]; gathered [1, S, R] duplicated (batch stride 0).
FORMS = ["cache", "cache_dup", "gathered", "gathered1_dup"]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    if request.param == "generic":
        monkeypatch.setenv("FUSEDOPS_ROPE_GENERIC", "1")
    else:
        monkeypatch.delenv("FUSEDOPS_ROPE_GENERIC", raising=False)
    return request.param


def _angles(batch, seq, half, max_pos, gen, *, positions=None, offset=0):
    """Random cos/sin cache [max_pos, R/2] and the per-token values [B, S, R/2] it yields."""
    cache_c = torch.randn(max_pos, half, generator=gen)
    cache_s = torch.randn(max_pos, half, generator=gen)
    if positions is None:
        pos = torch.arange(seq).add(offset).expand(batch, seq)
    else:
        pos = positions.long().expand(batch, seq)
    return cache_c, cache_s, cache_c[pos], cache_s[pos]


def _table(form, logical, tok, interleaved, dtype):
    """(tensor, strides) in the kernel form for one of FORMS. logical: cache [P, R/2];
    tok: the gathered values [B, S, R/2]."""
    if form == "cache":
        t = logical.to(dtype)
        return t, [0, t.stride(0), 1]
    if form == "cache_dup":
        if interleaved:
            t = logical.repeat_interleave(2, dim=-1).to(dtype)  # [P, R]
            return t, [0, t.stride(0), 2]
        t = torch.cat([logical, logical], -1).to(dtype)  # [P, R]
        return t, [0, t.stride(0), 1]
    if form == "gathered":
        t = tok.to(dtype).contiguous()  # [B, S, R/2]
        return t, list(t.stride())
    # gathered1_dup: [1, S, R] shared by the batch (HF passes cos[None] like this)
    row = tok[:1]
    if interleaved:
        t = row.repeat_interleave(2, dim=-1).to(dtype)
        return t, [0, t.stride(1), 2]
    t = torch.cat([row, row], -1).to(dtype)
    return t, [0, t.stride(1), 1]


def _oracle(x, c, s, rotary, interleaved, backward):
    """Op-by-op fp32 rotation (the kernel's roundings). x [B, H, S, D]; c, s [B or 1, S, R/2]."""
    c = c.float()[:, None]  # [B, 1, S, R/2]
    s = s.float()[:, None]
    if backward:
        s = -s
    xf = x.float()
    if interleaved:
        a, b = xf[..., 0:rotary:2], xf[..., 1:rotary:2]
    else:
        a, b = xf[..., : rotary // 2], xf[..., rotary // 2 : rotary]
    ya = a * c - b * s
    yb = b * c + a * s
    rot = torch.stack([ya, yb], -1).flatten(-2) if interleaved else torch.cat([ya, yb], -1)
    return torch.cat([rot, xf[..., rotary:]], -1).to(x.dtype)


def _fp64(x, c, s, rotary, interleaved, backward):
    """The same formulas in fp64 (checks the oracle)."""
    c = c.double()[:, None]
    s = s.double()[:, None] * (-1.0 if backward else 1.0)
    xd = x.double()
    if interleaved:
        a, b = xd[..., 0:rotary:2], xd[..., 1:rotary:2]
        rot = torch.stack([a * c - b * s, b * c + a * s], -1).flatten(-2)
    else:
        a, b = xd[..., : rotary // 2], xd[..., rotary // 2 : rotary]
        rot = torch.cat([a * c - b * s, b * c + a * s], -1)
    return torch.cat([rot, xd[..., rotary:]], -1)


def _poisoned(like):
    return torch.full_like(like, float("nan"), memory_format=torch.contiguous_format)


def _run(
    q,
    k,
    c,
    cs,
    s,
    ss,
    *,
    positions=None,
    offset=0,
    cache=True,
    interleaved=False,
    rotary=None,
    backward=False,
    out_q=None,
    out_k=None,
):
    rotary = q.shape[-1] if rotary is None else rotary
    out_q = _poisoned(q) if out_q is None else out_q
    if k is not None and out_k is None:
        out_k = _poisoned(k)
    OP(q, k, c, s, cs, ss, positions, offset, cache, interleaved, rotary, backward, out_q, out_k)
    return out_q, out_k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_formulas(isa, shape, form, interleaved, dtype):
    bsz, hq, hk, seq, dim, rotary = shape
    gen = torch.Generator().manual_seed(hash((shape, form, interleaved)) % 2**31)
    q = torch.randn(bsz, hq, seq, dim, generator=gen).to(dtype)
    k = torch.randn(bsz, hk, seq, dim, generator=gen).to(dtype)
    max_pos = seq + 11
    cache_mode = form.startswith("cache")
    positions = None
    offset = 0
    if cache_mode:
        # Alternate per-token positions and an offset (KV-cache decode).
        if (seq + dim) % 2:
            positions = torch.randint(0, max_pos, (bsz, seq), generator=gen)
        else:
            offset = 11
    cache_c, cache_s, tok_c, tok_s = _angles(
        bsz, seq, rotary // 2, max_pos, gen, positions=positions, offset=offset
    )
    tdtype = dtype if form.endswith("dup") else torch.float32  # HF tables come in q's dtype
    c, cs = _table(form, cache_c, tok_c, interleaved, tdtype)
    s, ss = _table(form, cache_s, tok_s, interleaved, tdtype)
    tok_c = tok_c.to(tdtype)
    tok_s = tok_s.to(tdtype)
    q0, k0 = q.clone(), k.clone()
    for backward in (False, True):
        out_q, out_k = _run(
            q,
            k,
            c,
            cs,
            s,
            ss,
            positions=positions,
            offset=offset,
            cache=cache_mode,
            interleaved=interleaved,
            rotary=rotary,
            backward=backward,
        )
        for out, x, name in ((out_q, q, "q"), (out_k, k, "k")):
            expected = _oracle(x, tok_c, tok_s, rotary, interleaved, backward)
            msg = f"{name} backward={backward}"
            diff = (out.float() - expected.float()).abs().max()
            assert torch.equal(out, expected), f"{msg}: max difference {diff}"
            assert_close(out, _fp64(x, tok_c, tok_s, rotary, interleaved, backward), msg=msg)
    assert torch.equal(q, q0) and torch.equal(k, k0), "inputs were modified"


def _cache_case(bsz, hq, hk, seq, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(bsz, hq, seq, dim, generator=gen).to(dtype)
    k = torch.randn(bsz, hk, seq, dim, generator=gen).to(dtype)
    cache_c, cache_s, tok_c, tok_s = _angles(bsz, seq, dim // 2, seq + 3, gen, offset=2)
    return q, k, cache_c, cache_s, tok_c, tok_s


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_inplace_and_k_none(isa, interleaved, dtype):
    q, k, cc, cs_, tc, ts = _cache_case(2, 5, 2, 21, 48, dtype)
    strides = [0, cc.stride(0), 1]
    exp_q = _oracle(q, tc, ts, 48, interleaved, False)
    exp_k = _oracle(k, tc, ts, 48, interleaved, False)
    # out_q IS q (and out_k is k): rotated in place.
    qi, ki = q.clone(), k.clone()
    _run(qi, ki, cc, strides, cs_, strides, offset=2, interleaved=interleaved, out_q=qi, out_k=ki)
    assert torch.equal(qi, exp_q) and torch.equal(ki, exp_k)
    # k None: a single tensor.
    out_q, out_k = _run(q, None, cc, strides, cs_, strides, offset=2, interleaved=interleaved)
    assert out_k is None and torch.equal(out_q, exp_q)
    # In place with partial rotary: the pass-through features stay as they are.
    qi = q.clone()
    _run(
        qi,
        None,
        cc[:, :8],
        strides,
        cs_[:, :8],
        strides,
        offset=2,
        rotary=16,
        interleaved=interleaved,
        out_q=qi,
    )
    assert torch.equal(qi, _oracle(q, tc[..., :8], ts[..., :8], 16, interleaved, False))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_strided_layouts(isa, interleaved, dtype):
    """[B, S, H, D] tensors seen as [B, H, S, D] (transpose(1, 2)), padded rows, and outputs
    whose strides differ from the inputs'."""
    bsz, hq, hk, seq, dim = 2, 6, 2, 17, 64
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(bsz, seq, hq, dim, generator=gen).to(dtype).transpose(1, 2)
    k = torch.randn(bsz, seq, hk, dim + 8, generator=gen).to(dtype)[..., :dim].transpose(1, 2)
    positions = (torch.arange(seq)[None] * 3).int()  # [1, S] int32, shared by the batch
    cache_c, cache_s, tc, ts = _angles(bsz, seq, dim // 2, 64, gen, positions=positions)
    st = [0, cache_c.stride(0), 1]
    exp_q = _oracle(q, tc, ts, dim, interleaved, False)
    exp_k = _oracle(k, tc, ts, dim, interleaved, False)
    # Contiguous outputs from strided inputs.
    out_q, out_k = _run(
        q, k, cache_c, st, cache_s, st, positions=positions, interleaved=interleaved
    )
    assert torch.equal(out_q, exp_q) and torch.equal(out_k, exp_k)
    # Outputs in the [B, S, H, D] layout too.
    oq = torch.full((bsz, seq, hq, dim), float("nan"), dtype=dtype).transpose(1, 2)
    ok = torch.full((bsz, seq, hk, dim), float("nan"), dtype=dtype).transpose(1, 2)
    _run(
        q,
        k,
        cache_c,
        st,
        cache_s,
        st,
        positions=positions,
        interleaved=interleaved,
        out_q=oq,
        out_k=ok,
    )
    assert torch.equal(oq, exp_q) and torch.equal(ok, exp_k)
    # In place on the transposed views.
    qi = q.transpose(1, 2).clone().transpose(1, 2)
    ki = k.transpose(1, 2).clone().transpose(1, 2)
    assert qi.stride() == q.stride()
    _run(
        qi,
        ki,
        cache_c,
        st,
        cache_s,
        st,
        positions=positions,
        interleaved=interleaved,
        out_q=qi,
        out_k=ki,
    )
    assert torch.equal(qi, exp_q) and torch.equal(ki, exp_k)


def test_large_parallel(isa):
    """Enough tokens to split across threads, positions differing per batch row (int64)."""
    q, k, cc, cs_, _, _ = _cache_case(3, 8, 2, 130, 128, torch.float32, seed=5)
    positions = torch.randint(0, cc.shape[0], (3, 130))
    st = [0, cc.stride(0), 1]
    out_q, out_k = _run(q, k, cc, st, cs_, st, positions=positions)
    tc, ts = cc[positions], cs_[positions]
    assert torch.equal(out_q, _oracle(q, tc, ts, 128, False, False))
    assert torch.equal(out_k, _oracle(k, tc, ts, 128, False, False))


def test_fp16_bf16_tables_with_fp32_operands(isa):
    """cos/sin may be of another float dtype than q (converted exactly to fp32)."""
    q, k, cc, cs_, tc, ts = _cache_case(1, 2, 1, 9, 32, torch.float32, seed=7)
    for tdtype in (torch.float16, torch.bfloat16):
        c, s = cc.to(tdtype), cs_.to(tdtype)
        st = [0, c.stride(0), 1]
        out_q, _ = _run(q, k, c, st, s, st, offset=2)
        assert torch.equal(out_q, _oracle(q, tc.to(tdtype), ts.to(tdtype), 32, False, False))


@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_empty_inputs(interleaved):
    """No batch, no tokens or no q heads: nothing is read or written (an offset past the cache
    names no position when there are no tokens), and k heads are rotated without q heads."""
    gen = torch.Generator().manual_seed(8)
    cache_c, cache_s, tok_c, tok_s = _angles(1, 3, 4, 5, gen, offset=2)  # [5, 4], [1, 3, 4]
    st = [0, 4, 1]
    for shape, offset in (((0, 2, 3, 8), 0), ((1, 2, 0, 8), 10)):
        q = torch.randn(shape)
        out_q, _ = _run(q, None, cache_c, st, cache_s, st, offset=offset, interleaved=interleaved)
        assert out_q.shape == shape
    q, k = torch.randn(1, 0, 3, 8), torch.randn(1, 2, 3, 8)  # Hq = 0, Hk = 2
    out_q, out_k = _run(q, k, cache_c, st, cache_s, st, offset=2, interleaved=interleaved)
    assert out_q.shape == q.shape
    assert torch.equal(out_k, _oracle(k, tok_c, tok_s, 8, interleaved, False))


def _err_case():
    q = torch.randn(2, 3, 4, 8)
    k = torch.randn(2, 1, 4, 8)
    c = torch.randn(6, 4)
    return q, k, c, [0, 4, 1]


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(positions=torch.tensor([[0, 1, 6, 2]])), IndexError, "position 6 outside"),
        (
            dict(positions=torch.tensor([[0, -1, 2, 2]], dtype=torch.int32)),
            IndexError,
            "position -1 outside",
        ),
        (dict(offset=3), IndexError, "position 6"),
        (dict(offset=-1), IndexError, "position -1"),
        (dict(rotary=7), ValueError, "rotary_dim"),
        (dict(rotary=10), ValueError, "rotary_dim"),
        (dict(k=torch.randn(2, 1, 5, 8)), ValueError, "must match q"),
        (dict(k=torch.randn(2, 1, 4, 8, dtype=torch.float16)), TypeError, "k dtype"),
        (dict(q=torch.randn(2, 3, 4, 8, dtype=torch.float64)), TypeError, "q must be"),
        (dict(cs=[0, 4, 2]), ValueError, "too small"),
        (dict(c=torch.randn(6, 3)), ValueError, "too small"),
        (dict(positions=torch.zeros(3, 4, dtype=torch.long)), ValueError, "positions must be"),
        (dict(positions=torch.zeros(1, 4)), TypeError, "int32 or int64"),
        (dict(out_k=None), ValueError, "out_k"),
    ],
    ids=lambda v: str(v)[:40] if not isinstance(v, dict) else ",".join(v),
)
def test_errors_name_the_op(change, exc, match):
    q, k, c, st = _err_case()
    kw = dict(q=q, k=k, c=c, cs=st, positions=None, offset=0, rotary=8)
    kw.update(change)
    qq, kk = kw["q"], kw["k"]
    out_q = torch.empty_like(qq)
    out_k = kw["out_k"] if "out_k" in kw else torch.empty_like(kk)
    c, cs = kw["c"], kw["cs"]
    with pytest.raises(exc, match=match) as info:
        OP(
            qq,
            kk,
            c,
            c,
            cs,
            cs,
            kw["positions"],
            kw["offset"],
            True,
            False,
            kw["rotary"],
            False,
            out_q,
            out_k,
        )
    assert "apply_rotary" in str(info.value)


def test_gathered_errors():
    q, k, _, _ = _err_case()
    g = torch.randn(2, 4, 4)
    st = list(g.stride())

    def call(c, cs, positions=None):
        outs = (torch.empty_like(q), torch.empty_like(k))
        OP(q, k, c, g, cs, st, positions, 0, False, False, 8, False, *outs)

    with pytest.raises(ValueError, match="apply_rotary: positions"):
        call(g, st, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"apply_rotary: gathered cos/sin must be \[B or 1, S"):
        call(torch.randn(3, 4, 4), st)
    with pytest.raises(ValueError, match="too small"):  # batch stride past the [B, S, R/2] tensor
        call(g, [32, 4, 1])


def test_overlapping_outputs_rejected():
    q, _, c, st = _err_case()
    k = torch.randn_like(q)
    out_q = torch.empty_like(q)
    with pytest.raises(ValueError, match="apply_rotary: out_q overlaps out_k"):
        OP(q, k, c, c, st, st, None, 0, True, False, 8, False, out_q, out_q)
    with pytest.raises(ValueError, match="apply_rotary: out_q overlaps k"):
        OP(q, k, c, c, st, st, None, 0, True, False, 8, False, k, torch.empty_like(k))
    alias = q.as_strided(q.shape, (96, 8, 24, 1))  # q's memory as [B, S, H, D]
    with pytest.raises(ValueError, match="apply_rotary: out_q aliases q"):
        OP(q, None, c, c, st, st, None, 0, True, False, 8, False, alias, None)


def test_inplace_overlap_of_strided_views():
    """In place on views of one [B, S, H, D] buffer: head slices that share a head are
    rejected (ATen calls such views "too hard" to compare), disjoint ones rotate correctly,
    and an output that reaches an element twice is rejected."""
    _, _, c, st = _err_case()
    qkv = torch.randn(2, 4, 5, 8)
    q, k = qkv[:, :, 0:3].transpose(1, 2), qkv[:, :, 2:4].transpose(1, 2)  # head 2 in both
    before = qkv.clone()
    with pytest.raises(ValueError, match="apply_rotary: out_q overlaps out_k"):
        OP(q, k, c, c, st, st, None, 1, True, False, 8, False, q, k)
    assert torch.equal(qkv, before)
    k = qkv[:, :, 3:5].transpose(1, 2)
    want_q = _oracle(q, c[None, 1:5], c[None, 1:5], 8, False, False)
    want_k = _oracle(k, c[None, 1:5], c[None, 1:5], 8, False, False)
    OP(q, k, c, c, st, st, None, 1, True, False, 8, False, q, k)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    sliding = torch.randn(64).as_strided((1, 1, 4, 8), (64, 64, 4, 1))  # rows share 4 elements
    with pytest.raises(ValueError, match="apply_rotary: out_q has overlapping elements"):
        OP(sliding, None, c, c, st, st, None, 0, True, False, 8, False, sliding, None)


@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(interleaved, dtype):
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(2, 3, 5, 16, generator=gen).to(dtype)
    k = torch.randn(2, 1, 5, 16, generator=gen).to(dtype)
    cache = torch.randn(9, 8, generator=gen)
    st = [0, 8, 1]
    positions = torch.randint(0, 9, (2, 5), generator=gen)
    gathered = torch.randn(1, 5, 16, generator=gen).to(dtype)
    gst = [0, 16, 2 if interleaved else 1]
    cases = [
        (q, k, cache, cache, st, st, None, 2, True, interleaved, 16, False),
        (q, k, cache, cache, st, st, positions, 0, True, interleaved, 16, True),
        # rotary 8 < D: the first 4 columns of the cache (the op reads through the strides)
        (q, None, cache, cache, st, st, positions, 0, True, interleaved, 8, False),
        (q, k, gathered, gathered, gst, gst, None, 0, False, interleaved, 16, False),
    ]
    for args in cases:
        out_k = None if args[1] is None else torch.empty_like(k)
        torch.library.opcheck(OP.default, (*args, torch.empty_like(q), out_k))
    # In place: out_q is q, out_k is k.
    qi, ki = q.clone(), k.clone()
    torch.library.opcheck(
        OP.default, (qi, ki, cache, cache, st, st, None, 1, True, interleaved, 16, False, qi, ki)
    )
