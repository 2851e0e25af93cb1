"""Fake (meta) implementations of the C++ ops of ``fusedops._C``.

The C++ schemas name this module (``set_python_module``), so torch imports it whenever a fake
tensor reaches one of those ops (``torch.compile``, ``opcheck``, meta tensors).
"""

from __future__ import annotations

import torch


@torch.library.register_fake("fusedops::cpp_embedding_fwd")
def _embedding_fwd_fake(
    input_ids, weight, scale, pos_weight, positions, position_offset, pos_mode, sinusoid_base
):
    return weight.new_empty((*input_ids.shape, weight.shape[1]))


@torch.library.register_fake("fusedops::cpp_embedding_bwd")
def _embedding_bwd_fake(grad_out, indices, num_rows, scale, padding_idx):
    return grad_out.new_empty((num_rows, grad_out.shape[-1]))
