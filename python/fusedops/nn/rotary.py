"""``RotaryEmbedding``: a module holding a RoPE cos/sin cache and applying the fused rotation."""

from __future__ import annotations

import torch
from torch import nn

from fusedops.ops import apply_rotary
from fusedops.ops._common import check_real_scalar
from fusedops.rope_tables import rope_cos_sin


class RotaryEmbedding(nn.Module):
    """Rotary position embedding of ``q``/``k`` with a precomputed cos/sin cache.

    ``forward(q [B, Hq, S, D], k [B, Hk, S, D] | None, positions=None, position_offset=0)``
    returns ``(q_out, k_out)`` as :func:`fusedops.apply_rotary` with the buffers ``cos``/``sin``
    ``[max_positions, rotary_dim / 2]`` built by :func:`fusedops.rope_cos_sin` (any Hugging Face
    rope type through ``scaling``). The buffers are not saved in the state dict (they are a
    function of the arguments) and follow ``.to(device)``.

    Args:
        head_dim: D.
        max_positions: rows of the cache (largest position + 1).
        base: frequency base (Hugging Face's ``rope_theta``).
        scaling: Hugging Face ``rope_scaling`` dict (``rope_type`` and its keys) or None.
        interleaved: GPT-J pairs instead of the NeoX/Llama half layout.
        rotary_dim: rotate the first ``rotary_dim`` features only (default ``head_dim``).
    """

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        base: float = 10000.0,
        scaling: dict | None = None,
        interleaved: bool = False,
        rotary_dim: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        rot = head_dim if rotary_dim is None else rotary_dim
        valid = isinstance(rot, int) and not isinstance(rot, bool)
        if not valid or rot < 2 or rot % 2 or rot > head_dim:
            raise ValueError(
                f"RotaryEmbedding: rotary_dim must be even and in [2, head_dim={head_dim}], "
                f"got {rot!r}"
            )
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.base = float(check_real_scalar("RotaryEmbedding", "base", base, positive=True))
        self.scaling = dict(scaling) if scaling else None
        self.interleaved = interleaved
        self.rotary_dim = rot
        # The frequencies depend only on R (Hugging Face: dim = int(head_dim * factor)).
        cos, sin = rope_cos_sin(
            rot, max_positions, base=self.base, scaling=self.scaling, device=device, dtype=dtype
        )  # [P, R/2] each
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        position_offset: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``q [B, Hq, S, D]``, ``k [B, Hk, S, D]`` or None -> rotated ``(q, k)``."""
        return apply_rotary(
            q,
            k,
            self.cos,
            self.sin,
            positions=positions,
            position_offset=position_offset,
            interleaved=self.interleaved,
            rotary_dim=self.rotary_dim,
        )

    def extra_repr(self) -> str:
        parts = [f"head_dim={self.head_dim}", f"max_positions={self.max_positions}"]
        parts.append(f"base={self.base:g}")
        if self.rotary_dim != self.head_dim:
            parts.append(f"rotary_dim={self.rotary_dim}")
        if self.interleaved:
            parts.append("interleaved=True")
        if self.scaling:
            parts.append(f"rope_type={self.scaling.get('rope_type', 'default')!r}")
        return ", ".join(parts)
