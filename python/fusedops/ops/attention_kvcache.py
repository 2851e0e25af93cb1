"""Attention over a KV cache (decode, chunked prefill) as a ``torch.library`` custom op.

``attention_with_kvcache`` has the semantics of flash-attention's ``flash_attn_with_kvcache``:
q and the new k are rotated (RoPE) at positions ``cache_seqlens[b] + t``, the new k/v are
written **in place** into the cache slots ``[cache_seqlens[b], cache_seqlens[b] + Sq)``, then
the ``Sq`` queries attend the ``L_b = cache_seqlens[b] + Sq`` cached keys with bottom-right
alignment (query ``t`` sits at key position ``t + L_b - Sq``). The cache is dense
``[B, S_max, Hkv, D]`` or paged ``[num_blocks, block_size, Hkv, D]`` with a block table. Backends:

* ``triton`` (CUDA, or CPU through Triton's interpreter): ``kernels/attention_decode.py``,
  ``kvcache_append`` (RoPE + cache write, one launch) then ``attention_decode`` (split-K
  flash-decoding, the splits combined by their log-sum-exp on the device). The key lengths
  ``cache_seqlens + Sq`` stay on the device: no host sync but the optional index check.
* ``cpp`` (the ``auto`` choice on CPU) is plain PyTorch with the same semantics: RoPE through
  :func:`fusedops.apply_rotary`, ``index_put_`` into the cache, then the CPU implementation of
  :func:`fusedops.attention` (SDPA, or its plain-PyTorch softcap path) over each sequence's
  ``L_b`` keys: views of a dense cache, a gather of a paged one's blocks; one batched call when
  every sequence holds the same number of keys, one call per sequence otherwise (slots past
  ``L_b`` are never read). ``num_splits`` does not apply.
* ``reference``: :func:`fusedops.reference.attention_with_kvcache`.

The custom op ``fusedops::attention_with_kvcache`` declares ``k_cache`` and ``v_cache`` as
mutated arguments. It is inference-only, like flash-attention's: there is no autograd formula,
and inputs that require grad (with grad mode on) are rejected.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

import fusedops
from fusedops import reference
from fusedops._backend import OpBackends, resolve_backend
from fusedops.ops._common import (
    FLOAT_DTYPES,
    check_dtype,
    check_same_device,
    check_tensor,
    empty_output,
    host_index_checks,
    unit_stride,
)
from fusedops.ops._dispatch import implementation, needs_grad, run
from fusedops.ops.attention import (
    _sdpa_forward,
    _softcap_forward,
    check_heads,
    check_options,
    check_scale,
)

OP = "attention_with_kvcache"
BACKENDS = OpBackends()  # "cpp" is plain PyTorch: no extension op
INDEX_DTYPE = torch.int32  # cache_seqlens and block_table, as flash-attention takes them
# SM count the split heuristic assumes under Triton's interpreter (no device to ask): small,
# because the interpreter runs the programs one after another.
INTERPRETER_SM_COUNT = 8


class _Layout(NamedTuple):
    """What validation learnt about a call (all host-side, from shapes and scalars)."""

    batch: int
    seq_q: int
    heads_q: int
    heads_kv: int
    dim: int
    seq_new: int  # Sq when k/v are given, else 0
    block_size: int  # 0 for a dense cache
    num_blocks: int  # 0 for a dense cache
    capacity: int  # keys per sequence: S_max, or max_blocks * block_size
    rot_rows: int  # rows of rotary_cos/sin, 0 without rotary


# ------------------------------------------------------------------------------------------
# The plain-PyTorch implementation (backend "cpp")
# ------------------------------------------------------------------------------------------


def _slots(k_cache, block_table, pos):
    """Index tuple of the cache rows of key positions ``pos [B, N]`` (every position inside
    its sequence's blocks: the append's slots)."""
    batch = pos.shape[0]
    if block_table is None:
        rows = torch.arange(batch, device=pos.device).unsqueeze(1)  # [B, 1]
        return rows, pos
    bs = k_cache.shape[1]
    blocks = torch.gather(block_table, 1, torch.div(pos, bs, rounding_mode="floor"))
    return blocks.long(), pos % bs


def _keys(cache, block_table, rows, length):
    """Key slots ``[0, length)`` of the sequences ``rows`` (a slice of the batch) as
    ``[len(rows), Hkv, length, D]``: a view of a dense cache, a gather of the sequences' first
    ``ceil(length / block_size)`` blocks of a paged one. Slots past ``length`` are never read
    (never-written slots may hold anything, NaN included)."""
    if block_table is None:
        return cache[rows, :length].transpose(1, 2)
    bs = cache.shape[1]
    table = block_table[rows, : -(-length // bs)].long()  # [n, blocks]
    return cache[table].flatten(1, 2)[:, :length].transpose(1, 2)


def _attend(q, keys, values, causal, scale, sliding_window, softcap, need_lse):
    """``(out [n, Hq, Sq, D], lse [n, Hq, Sq] or None)`` of ``q [n, Hq, Sq, D]`` over all of
    ``keys``/``values`` ``[n, Hkv, L, D]`` (bottom-right causal over the L keys): the CPU
    implementation of :func:`fusedops.attention` (SDPA, or plain PyTorch with a softcap)."""
    if keys.shape[2] == 0:  # no key: every row is empty
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        return q.new_zeros(q.shape), lse if need_lse else None
    if softcap is not None:
        return _softcap_forward(q, keys, values, None, causal, scale, sliding_window, softcap)
    return _sdpa_forward(q, keys, values, None, causal, scale, need_lse, sliding_window)


def _cpu(q, k_cache, v_cache, k, v, cache_seqlens, block_table, rotary_cos, rotary_sin,
         interleaved, causal, scale, sliding_window, softcap, num_splits, need_lse):  # fmt: skip
    """The ``cpp`` backend on validated, range-checked inputs: ``(out, lse or None)``
    (``num_splits`` does not apply). Sequences of one length run as one batch over the cache's
    first ``L`` slots; otherwise each sequence runs over its own ``L_b`` keys (a batch padded to
    the longest would read the shorter sequences' never-written slots: NaN there would reach
    their rows through SDPA's masked products)."""
    seq_q = q.shape[1]
    lens = cache_seqlens.long()  # [B]
    if k is not None:
        pos = lens.unsqueeze(1) + torch.arange(seq_q, device=q.device)  # [B, Sq]
        if rotary_cos is not None:
            q, k = fusedops.apply_rotary(
                q.transpose(1, 2), k.transpose(1, 2), rotary_cos, rotary_sin, positions=pos,
                interleaved=interleaved, rotary_dim=2 * rotary_cos.shape[1], check_indices=False,
            )  # fmt: skip
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, Sq, H, D]
        index = _slots(k_cache, block_table, pos)
        k_cache.index_put_(index, k)
        v_cache.index_put_(index, v)
        lens = lens + seq_q
    q = q.transpose(1, 2)  # [B, Hq, Sq, D]
    lengths = lens.tolist()  # CPU tensors: no sync
    options = (causal, scale, sliding_window, softcap, need_lse)
    if len(set(lengths)) == 1:
        every = slice(None)
        out, lse = _attend(q, _keys(k_cache, block_table, every, lengths[0]),
                           _keys(v_cache, block_table, every, lengths[0]), *options)  # fmt: skip
    else:
        parts = [
            _attend(q[b : b + 1], _keys(k_cache, block_table, slice(b, b + 1), n),
                    _keys(v_cache, block_table, slice(b, b + 1), n), *options)
            for b, n in enumerate(lengths)
        ]  # fmt: skip
        out = torch.cat([o for o, _ in parts])
        lse = torch.cat([x for _, x in parts]) if need_lse else None
    return out.transpose(1, 2).contiguous(), lse


# ------------------------------------------------------------------------------------------
# The Triton implementation
# ------------------------------------------------------------------------------------------


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SM_COUNT


def _triton(q, k_cache, v_cache, k, v, cache_seqlens, block_table, rotary_cos, rotary_sin,
            interleaved, causal, scale, sliding_window, softcap, num_splits, need_lse):  # fmt: skip
    """The Triton kernels (``need_lse`` aside: the kernel always writes the lse)."""
    from fusedops.kernels.attention_decode import (
        attention_decode,
        decode_num_splits,
        kvcache_append,
    )

    batch, seq_q, heads_q, dim = q.shape
    heads_kv = k_cache.shape[2]
    seqlens_k = cache_seqlens
    if k is not None:
        q_rot = empty_output(tuple(q.shape), q.dtype, q.device) if rotary_cos is not None else None
        kvcache_append(
            q, k, v, k_cache, v_cache, q_rot, cache_seqlens, block_table, rotary_cos, rotary_sin,
            interleaved=interleaved,
        )  # fmt: skip
        q = q if q_rot is None else q_rot
        seqlens_k = cache_seqlens + seq_q  # int32 [B], on the device
    if num_splits == 0:
        max_keys = k_cache.shape[1] * (1 if block_table is None else block_table.shape[1])
        rows = seq_q * (heads_q // heads_kv)
        num_splits = decode_num_splits(batch, heads_kv, rows, max_keys, _sm_count(q.device))
    out = empty_output((batch, seq_q, heads_q, dim), q.dtype, q.device)
    lse = empty_output((batch, heads_q, seq_q), torch.float32, q.device)
    attention_decode(
        q, k_cache, v_cache, out, lse, seqlens_k=seqlens_k, block_table=block_table,
        causal=causal, softmax_scale=scale, sliding_window=sliding_window, softcap=softcap,
        num_splits=num_splits,
    )  # fmt: skip
    return out, lse


_IMPLEMENTATIONS = {"cpp": _cpu, "triton": _triton}


# ------------------------------------------------------------------------------------------
# Index checks (data-dependent: one host sync on a device)
# ------------------------------------------------------------------------------------------


def _capacity_text(lay: _Layout) -> str:
    if not lay.block_size:
        return f"the cache capacity S_max={lay.capacity}"
    blocks = lay.capacity // lay.block_size
    return f"the block table's capacity {blocks} blocks x {lay.block_size} = {lay.capacity}"


def _check_length(b: int, length: int, lay: _Layout) -> None:
    """Sequence ``b`` holds ``length`` keys before the call: ``>= 0``, room for the ``Sq_new``
    new ones (ValueError), rotary positions ``length + t`` inside the table (IndexError)."""
    if length < 0:
        raise ValueError(f"{OP}: cache_seqlens must be >= 0, got {length} at batch {b}")
    if length + lay.seq_new > lay.capacity:
        where = _capacity_text(lay)
        raise ValueError(
            f"{OP}: cache_seqlens[{b}] + Sq_new = {length} + {lay.seq_new} exceeds {where}"
        )
    if lay.rot_rows and length + lay.seq_q > lay.rot_rows:
        raise IndexError(
            f"{OP}: rotary position {length + lay.seq_q - 1} (cache_seqlens[{b}] + Sq - 1) "
            f"outside rotary_cos/rotary_sin [0, {lay.rot_rows})"
        )


def check_kvcache_indices(cache_seqlens, block_table, lay: _Layout) -> None:
    """Range checks that read ``cache_seqlens`` and ``block_table`` (one host sync): the
    lengths (:func:`_check_length`) and the used block-table entries, in ``[0, num_blocks)``
    (IndexError)."""
    lens = cache_seqlens.long()  # [B]
    total = lens + lay.seq_new
    bad_len = (lens < 0) | (total > lay.capacity)
    if lay.rot_rows:
        bad_len = bad_len | (lens + lay.seq_q > lay.rot_rows)
    flags = [bad_len.any()]
    if block_table is not None:
        columns = torch.arange(block_table.shape[1], device=lens.device)
        needed = torch.div(total + lay.block_size - 1, lay.block_size, rounding_mode="floor")
        used = columns.unsqueeze(0) < needed.unsqueeze(1)  # [B, max_blocks]
        bad_block = used & ((block_table < 0) | (block_table >= lay.num_blocks))
        flags.append(bad_block.any())
    bad = torch.stack(flags).tolist()  # the one host sync
    if bad[0]:
        b = int(bad_len.nonzero()[0, 0])
        _check_length(b, int(lens[b]), lay)
    if len(bad) > 1 and bad[1]:
        b, j = (int(x) for x in bad_block.nonzero()[0])
        raise IndexError(
            f"{OP}: block_table[{b}, {j}] = {int(block_table[b, j])} outside "
            f"[0, {lay.num_blocks}) (num_blocks of the paged cache)"
        )


# ------------------------------------------------------------------------------------------
# The custom op
# ------------------------------------------------------------------------------------------


def _attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor | None,
    rotary_cos: torch.Tensor | None,
    rotary_sin: torch.Tensor | None,
    rotary_interleaved: bool,
    causal: bool,
    softmax_scale: float,
    sliding_window: int | None,
    softcap: float | None,
    num_splits: int,
    return_lse: bool,
    check_indices: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, Sq, Hq, D], lse)`` of validated inputs (stride(-1) == 1, ``cache_seqlens``
    int32 ``[B]``), ``lse [B, Hq, Sq]`` fp32 with ``return_lse``, else empty; writes the new
    k/v into ``k_cache``/``v_cache``. The index checks run first, before any write, when
    ``check_indices`` (not while a CUDA graph is being captured: ``host_index_checks``) and
    always on the ``cpp`` backend (no device to sync there)."""
    impl = implementation(OP, _IMPLEMENTATIONS, backend)
    if host_index_checks(check_indices, q.device) or backend == "cpp":
        lay = _layout_of(q, k_cache, k, block_table, rotary_cos)
        check_kvcache_indices(cache_seqlens, block_table, lay)
    out, lse = impl(
        q, k_cache, v_cache, k, v, cache_seqlens, block_table, rotary_cos, rotary_sin,
        rotary_interleaved, causal, softmax_scale, sliding_window, softcap, num_splits, return_lse,
    )  # fmt: skip
    return out, lse if return_lse else q.new_empty(0, dtype=torch.float32)


attention_with_kvcache_op = torch.library.custom_op(
    "fusedops::attention_with_kvcache", _attention_with_kvcache, mutates_args=("k_cache", "v_cache")
)


@attention_with_kvcache_op.register_fake
def _(q, k_cache, v_cache, k, v, cache_seqlens, block_table, rotary_cos, rotary_sin,
      rotary_interleaved, causal, softmax_scale, sliding_window, softcap, num_splits, return_lse,
      *args):  # fmt: skip
    b, s, h, d = q.shape
    lse_shape = (b, h, s) if return_lse else (0,)
    return q.new_empty((b, s, h, d)), q.new_empty(lse_shape, dtype=torch.float32)


# ------------------------------------------------------------------------------------------
# Validation and the public function
# ------------------------------------------------------------------------------------------


def _layout_of(q, k_cache, k, block_table, rotary_cos) -> _Layout:
    batch, seq_q, heads_q, dim = q.shape
    paged = block_table is not None
    block_size = k_cache.shape[1] if paged else 0
    capacity = block_table.shape[1] * block_size if paged else k_cache.shape[1]
    return _Layout(
        batch, seq_q, heads_q, k_cache.shape[2], dim, 0 if k is None else seq_q, block_size,
        k_cache.shape[0] if paged else 0, capacity,
        0 if rotary_cos is None else rotary_cos.shape[0],
    )  # fmt: skip


def _check_float(name: str, t: torch.Tensor, q: torch.Tensor) -> None:
    check_tensor(OP, name, t)
    if t.dtype != q.dtype:
        raise TypeError(f"{OP}: {name} dtype {t.dtype} differs from q dtype {q.dtype}")
    check_same_device(OP, name, t, q.device)
    if t.dim() != 4:
        raise ValueError(f"{OP}: {name} must be 4-D, got shape {tuple(t.shape)}")


def _check_caches(q, k_cache, v_cache, block_table):
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check_float(name, t, q)
        if t.stride(-1) != 1:
            raise ValueError(
                f"{OP}: {name} must have a contiguous last dim (stride(-1) == 1: it is written "
                f"in place), got strides {t.stride()}"
            )
    if k_cache.shape != v_cache.shape:
        raise ValueError(
            f"{OP}: k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} "
            f"and {tuple(v_cache.shape)}"
        )
    batch, _, heads_q, dim = q.shape
    lead, _, heads_kv, k_dim = k_cache.shape
    form = "[num_blocks, block_size, Hkv, D]" if block_table is not None else "[B, S_max, Hkv, D]"
    if k_dim != dim or (block_table is None and lead != batch):
        raise ValueError(
            f"{OP}: k_cache {tuple(k_cache.shape)} must be {form} matching q {tuple(q.shape)} "
            "([B, Sq, Hq, D])"
        )
    check_heads(OP, heads_q, heads_kv, dim)


def _check_index_tensor(name: str, t: torch.Tensor, shape: tuple, device: torch.device) -> None:
    check_tensor(OP, name, t)
    check_dtype(OP, name, t, (INDEX_DTYPE,))
    check_same_device(OP, name, t, device)
    if t.dim() != len(shape) or any(want is not None and n != want for n, want in
                                    zip(t.shape, shape, strict=True)):  # fmt: skip
        text = ", ".join("max_blocks" if n is None else str(n) for n in shape)
        raise ValueError(f"{OP}: {name} must be [{text}], got shape {tuple(t.shape)}")


def _check_new_kv(q, k_cache, k, v):
    if (k is None) != (v is None):
        raise ValueError(f"{OP}: pass both k and v (new keys/values) or neither")
    if k is None:
        return
    want = (q.shape[0], q.shape[1], k_cache.shape[2], q.shape[3])
    for name, t in (("k", k), ("v", v)):
        _check_float(name, t, q)
        if tuple(t.shape) != want:
            raise ValueError(
                f"{OP}: {name} must be [B, Sq, Hkv, D] = {list(want)}, got {tuple(t.shape)}"
            )


def _check_rotary(q, k, rotary_cos, rotary_sin):
    if rotary_cos is None and rotary_sin is None:
        return
    if rotary_cos is None or rotary_sin is None:
        raise ValueError(f"{OP}: pass both rotary_cos and rotary_sin or neither")
    if k is None:
        raise ValueError(
            f"{OP}: rotary_cos/rotary_sin need the new k and v (RoPE is applied to q and the "
            "new keys only; the cached keys are already rotated)"
        )
    for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        check_tensor(OP, name, t)
        check_dtype(OP, name, t, FLOAT_DTYPES)
        check_same_device(OP, name, t, q.device)
    if rotary_cos.shape != rotary_sin.shape or rotary_cos.dim() != 2:
        raise ValueError(
            f"{OP}: rotary_cos and rotary_sin must both be [S_rot, rotary_dim / 2], got "
            f"{tuple(rotary_cos.shape)} and {tuple(rotary_sin.shape)}"
        )
    half = rotary_cos.shape[1]
    if not 1 <= half <= q.shape[3] // 2:
        raise ValueError(
            f"{OP}: rotary_dim = 2 x rotary_cos.shape[1] = {2 * half} must be in "
            f"[2, D={q.shape[3]}]"
        )


def _check_flags(num_splits: object, **flags: object) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{OP}: {name} must be a bool, got {value!r}")
    if isinstance(num_splits, bool) or not isinstance(num_splits, int):
        raise TypeError(f"{OP}: num_splits must be an int, got {num_splits!r}")
    if num_splits < 0:
        raise ValueError(f"{OP}: num_splits must be >= 0 (0 = automatic), got {num_splits}")


def _seqlens_tensor(cache_seqlens, lay: _Layout, device) -> torch.Tensor:
    """``cache_seqlens`` as int32 ``[B]``; a Python int is range-checked here, in plain Python
    (no sync, nothing for ``torch.compile`` to trace)."""
    if isinstance(cache_seqlens, torch.Tensor):
        _check_index_tensor("cache_seqlens", cache_seqlens, (lay.batch,), device)
        return cache_seqlens.contiguous()
    if isinstance(cache_seqlens, bool) or not isinstance(cache_seqlens, int):
        raise TypeError(
            f"{OP}: cache_seqlens must be an int32 tensor [B] or an int, got {cache_seqlens!r}"
        )
    if lay.batch:
        _check_length(0, cache_seqlens, lay)  # the same for every sequence
    return torch.full((lay.batch,), cache_seqlens, dtype=INDEX_DTYPE, device=device)


def attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    cache_seqlens: torch.Tensor | int,
    block_table: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    rotary_interleaved: bool = False,
    causal: bool = True,
    softmax_scale: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    num_splits: int = 0,
    return_lse: bool = False,
    check_indices: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of new queries over a KV cache, appending the new keys/values in place
    (flash-attention's ``flash_attn_with_kvcache``: RoPE, cache append and attention in one call).

    Args:
        q: ``[B, Sq, Hq, D]`` fp32/fp16/bf16, ``stride(-1) == 1`` (else copied).
        k_cache, v_cache: dense ``[B, S_max, Hkv, D]`` or, with ``block_table``, paged
            ``[num_blocks, block_size, Hkv, D]``; q's dtype and device, ``stride(-1) == 1``
            (written in place; views such as Hugging Face's ``StaticCache`` tensors
            ``[B, Hkv, S_max, D].transpose(1, 2)`` work). ``Hq % Hkv == 0`` (GQA/MQA).
        k, v: new keys/values ``[B, Sq, Hkv, D]`` or None. When given they are written into
            cache slots ``[cache_seqlens[b], cache_seqlens[b] + Sq)`` of sequence ``b`` (k after
            RoPE), and the sequence has ``L_b = cache_seqlens[b] + Sq`` keys; else
            ``L_b = cache_seqlens[b]``.
        cache_seqlens: int32 ``[B]`` tensor (on q's device) or a Python int for every sequence:
            the keys already in the cache.
        block_table: int32 ``[B, max_blocks]``: key ``j`` of sequence ``b`` lives in block
            ``block_table[b, j // block_size]``, row ``j % block_size``. Entries past a
            sequence's ``ceil(L_b / block_size)`` blocks are never read.
        rotary_cos, rotary_sin: ``[S_rot, rotary_dim / 2]`` (``rotary_dim <= D``): q and the new
            k are rotated at positions ``cache_seqlens[b] + t`` (needs k/v); features past
            ``rotary_dim`` are left alone.
        rotary_interleaved: GPT-J pairs ``(2i, 2i + 1)`` instead of GPT-NeoX halves.
        causal: bottom-right causal mask (query ``t`` sees keys ``j <= t + L_b - Sq``).
        softmax_scale: defaults to ``1 / sqrt(D)``.
        sliding_window: ``w >= 1`` (needs ``causal``): keys ``p - w < j <= p`` only.
        softcap: ``c > 0``: scores become ``c * tanh(scale * q.k / c)``.
        num_splits: split-K programs per (batch, kv head) on the Triton path; 0 picks from the
            device's SM count and the shapes. Ignored on CPU (one plain-PyTorch pass).
        return_lse: also return ``lse [B, Hq, Sq]`` fp32 (``-inf`` for a row with no key).
        check_indices: check ``cache_seqlens`` against the cache capacity and the rotary
            table, and the used ``block_table`` entries against ``num_blocks``, before anything
            is written (one host sync on a GPU; it runs inside the custom op, so
            ``torch.compile(fullgraph=True)`` works either way). False skips it on the Triton
            path (the kernels then leave slots outside the cache unwritten and unread), and so
            does a CUDA graph capture (the call is capturable after one warm-up); the CPU and
            reference paths always check.
    Returns:
        ``out [B, Sq, Hq, D]`` in q's dtype (math in fp32; a row with no allowed key is
        zeros, whatever the cache holds past ``L_b``: those slots are never read; NaNs follow
        :func:`fusedops.attention`'s rule), and ``lse`` when ``return_lse``.
    Raises:
        TypeError / ValueError for bad dtypes, shapes, layouts, devices or options, ValueError
        for ``cache_seqlens + Sq`` past the cache, IndexError for block-table entries or rotary
        positions out of range: messages start with ``attention_with_kvcache:`` and name the
        argument. Nothing is written to the cache when a call is rejected. Inference only: a
        ValueError when an input requires grad (no backward, as in flash-attention).
    """
    check_tensor(OP, "q", q)
    check_dtype(OP, "q", q, FLOAT_DTYPES)
    if q.dim() != 4:
        raise ValueError(f"{OP}: q must be 4-D [B, Sq, Hq, D], got shape {tuple(q.shape)}")
    if block_table is not None:
        _check_index_tensor("block_table", block_table, (q.shape[0], None), q.device)
    _check_caches(q, k_cache, v_cache, block_table)
    _check_new_kv(q, k_cache, k, v)
    _check_rotary(q, k, rotary_cos, rotary_sin)
    softcap = check_options(OP, causal, sliding_window, softcap, return_lse)
    _check_flags(num_splits, rotary_interleaved=rotary_interleaved, check_indices=check_indices)
    scale = check_scale(OP, softmax_scale, q.shape[3])
    if block_table is not None and k_cache.shape[1] < 1:
        raise ValueError(f"{OP}: the paged cache has block_size 0: {tuple(k_cache.shape)}")
    if torch.is_grad_enabled() and needs_grad(q, k, v, k_cache, v_cache):
        raise ValueError(
            f"{OP}: inference only (no backward, as in flash-attention): an input requires "
            "grad; call it under torch.no_grad() or pass detached tensors"
        )
    lay = _layout_of(q, k_cache, k, block_table, rotary_cos)
    lens = _seqlens_tensor(cache_seqlens, lay, q.device)
    # A Python int was checked on the host already; a block table still needs its data read.
    checks = check_indices and (isinstance(cache_seqlens, torch.Tensor) or block_table is not None)
    table = None if block_table is None else block_table.contiguous()
    q = unit_stride(q)
    k, v = (None, None) if k is None else (unit_stride(k), unit_stride(v))
    if rotary_cos is not None:
        rotary_cos, rotary_sin = unit_stride(rotary_cos), unit_stride(rotary_sin)
    backend = resolve_backend(OP, q.device, BACKENDS)
    if backend == "reference":
        check_kvcache_indices(lens, table, lay)  # always: the reference syncs anyway
        result = reference.attention_with_kvcache(
            q, k_cache, v_cache, k, v, cache_seqlens=lens, block_table=table,
            rotary_cos=rotary_cos, rotary_sin=rotary_sin, rotary_interleaved=rotary_interleaved,
            causal=causal, softmax_scale=scale, sliding_window=sliding_window, softcap=softcap,
            return_lse=True,
        )  # fmt: skip
        out, lse = result
    elif q.numel() == 0:
        out = q.new_zeros(q.shape)
        lse = q.new_full((lay.batch, lay.heads_q, lay.seq_q), float("-inf"), dtype=torch.float32)
    else:
        out, lse = run(
            attention_with_kvcache_op, _attention_with_kvcache, False,
            q, k_cache, v_cache, k, v, lens, table, rotary_cos, rotary_sin, rotary_interleaved,
            causal, scale, sliding_window, softcap,
            num_splits, return_lse, checks, backend,
        )  # fmt: skip
    return (out, lse) if return_lse else out
