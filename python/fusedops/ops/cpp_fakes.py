"""Fake (meta) implementations of the C++ ops of ``fusedops._C``.

The C++ schemas name this module (``set_python_module``), so torch imports it whenever a fake
tensor reaches one of those ops (``torch.compile``, ``opcheck``, meta tensors).
"""

from __future__ import annotations

import torch

import fusedops._C  # noqa: F401  (defines the schemas registered below)


@torch.library.register_fake("fusedops::cpp_embedding_fwd")
def _embedding_fwd_fake(
    input_ids,
    weight,
    scale,
    pos_weight,
    positions,
    position_offset,
    pos_mode,
    sinusoid_base,
    vocab_start=None,
):
    # out: [*input_ids.shape, D] in the table's dtype
    return weight.new_empty((*input_ids.shape, weight.shape[1]))


@torch.library.register_fake("fusedops::cpp_embedding_bwd")
def _embedding_bwd_fake(grad_out, indices, num_rows, scale, padding_idx, vocab_start=0):
    # grad_table: [num_rows, D]
    return grad_out.new_empty((num_rows, grad_out.shape[-1]))


@torch.library.register_fake("fusedops::cpp_factorized_embedding_fwd")
def _factorized_embedding_fwd_fake(
    input_ids,
    a,
    b,
    hot_slots,
    hot_rows,
    scale,
    pos_weight,
    positions,
    position_offset,
    pos_mode,
    sinusoid_base,
):
    # out: [*input_ids.shape, D] in the factors' dtype
    return b.new_empty((*input_ids.shape, b.shape[1]))


@torch.library.register_fake("fusedops::cpp_factorized_embedding_bwd")
def _factorized_embedding_bwd_fake(
    grad_out, input_ids, a, b, hot_slots, num_hot, scale, padding_idx, needs
):
    # (grad_a [V, r], grad_b [r, D], grad_hot_rows [num_hot, D]); empty where not needed
    shapes = (a.shape, b.shape, (num_hot, b.shape[1]))
    return tuple(
        grad_out.new_empty(shape if need else (0,))
        for shape, need in zip(shapes, needs, strict=True)
    )


@torch.library.register_fake("fusedops::cpp_embedding_layernorm_fwd")
def _embedding_layernorm_fwd_fake(
    input_ids,
    weight,
    pos_weight,
    positions,
    position_offset,
    type_weight,
    token_type_ids,
    ln_weight,
    ln_bias,
    eps,
):
    # out: [*input_ids.shape, D] in the table's dtype; mean, rstd: [*input_ids.shape] fp32
    stats = weight.new_empty(input_ids.shape, dtype=torch.float32)
    return weight.new_empty((*input_ids.shape, weight.shape[1])), stats, torch.empty_like(stats)


@torch.library.register_fake("fusedops::cpp_embedding_layernorm_bwd")
def _embedding_layernorm_bwd_fake(
    grad_out,
    input_ids,
    weight,
    pos_weight,
    positions,
    position_offset,
    type_weight,
    token_type_ids,
    ln_weight,
    ln_bias,
    mean,
    rstd,
    padding_idx,
    needs,
):
    # Gradients of (weight, pos_weight, type_weight, ln_weight, ln_bias); [0] where not needed.
    params = (weight, pos_weight, type_weight, ln_weight, ln_bias)
    return tuple(
        weight.new_empty(p.shape if (need and p is not None) else (0,))
        for p, need in zip(params, needs, strict=True)
    )


@torch.library.register_fake("fusedops::int8_embedding_fwd")
def _int8_embedding_fwd_fake(
    input_ids,
    qweight,
    scales,
    scale,
    pos_weight,
    positions,
    position_offset,
    pos_mode,
    sinusoid_base,
    out_dtype,
    check_indices=True,
    vocab_start=None,
):
    # out: [*input_ids.shape, D] in out_dtype, on the table's device
    return qweight.new_empty((*input_ids.shape, qweight.shape[1]), dtype=out_dtype)


@torch.library.register_fake("fusedops::cpp_rope")
def _rope_fake(
    q,
    k,
    cos,
    sin,
    cos_strides,
    sin_strides,
    positions,
    position_offset,
    cache,
    interleaved,
    rotary_dim,
    backward,
    out_q,
    out_k,
):
    # Writes out_q / out_k in place; returns nothing.
    return None
