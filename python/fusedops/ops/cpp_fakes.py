"""Fake (meta) implementations of the C++ ops of ``fusedops._C``.

The C++ schemas name this module (``set_python_module``), so torch imports it whenever a fake
tensor reaches one of those ops (``torch.compile``, ``opcheck``, meta tensors).
"""

from __future__ import annotations

import contextlib

import torch

with contextlib.suppress(ImportError):  # the schemas the int8 check below looks for
    import fusedops._C  # noqa: F401


@torch.library.register_fake("fusedops::cpp_embedding_fwd")
def _embedding_fwd_fake(
    input_ids, weight, scale, pos_weight, positions, position_offset, pos_mode, sinusoid_base
):
    return weight.new_empty((*input_ids.shape, weight.shape[1]))


@torch.library.register_fake("fusedops::cpp_embedding_bwd")
def _embedding_bwd_fake(grad_out, indices, num_rows, scale, padding_idx):
    return grad_out.new_empty((num_rows, grad_out.shape[-1]))


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
):
    # out: [*input_ids.shape, D] in out_dtype, on the table's device
    return qweight.new_empty((*input_ids.shape, qweight.shape[1]), dtype=out_dtype)


# An extension built before INT8 support has no such op; registering a fake for a missing
# schema raises, so register only when it exists (fusedops.ops.int8_embedding then reports
# "rebuild" instead of this module failing to import).
if hasattr(torch.ops.fusedops, "int8_embedding_fwd"):
    torch.library.register_fake("fusedops::int8_embedding_fwd")(_int8_embedding_fwd_fake)


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


# Same guard as the INT8 op: an extension built before RoPE support has no such schema.
if hasattr(torch.ops.fusedops, "cpp_rope"):
    torch.library.register_fake("fusedops::cpp_rope")(_rope_fake)
