"""RoPE in Hugging Face models: the modeling file's ``apply_rotary_pos_emb`` runs
:func:`fusedops.apply_rotary` inside patched models only.

Attention layers call a module-level function of their modeling file
(``modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)``), so the function itself is swapped,
once per modeling file, for a dispatcher. The dispatcher runs the fused op while a patched
attention layer is running (forward hooks keep a count of them) and the original function
otherwise, so an unpatched model of the same family in the same process is unaffected. The
swap is reference-counted per file: the last :func:`release` restores the original function.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fusedops.ops import apply_rotary

FUNCTION = "apply_rotary_pos_emb"
# Signatures of Hugging Face's half-layout rotary function the dispatcher reproduces.
_KNOWN_PARAMETERS = (("q", "k", "cos", "sin", "unsqueeze_dim"),)

_active_layers = [0]  # patched attention layers currently running (all files)


@dataclasses.dataclass
class _Swap:
    original: Callable[..., Any]
    users: int


_swaps: dict[str, _Swap] = {}  # modeling module name -> its swapped function


def _fused_apply_rotary_pos_emb(original: Callable[..., Any]) -> Callable[..., Any]:
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        # q: [B, Hq, S, D], k: [B, Hk, S, D]; cos, sin: [B or 1, S, D] (unsqueeze_dim=1)
        if _active_layers[0] <= 0 or unsqueeze_dim not in (1, 2):
            return original(q, k, cos, sin, unsqueeze_dim)
        if unsqueeze_dim == 2:  # [B, S, H, D] inputs: rotate their [B, H, S, D] views
            q_out, k_out = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            return q_out.transpose(1, 2), k_out.transpose(1, 2)
        return apply_rotary(q, k, cos, sin)

    apply_rotary_pos_emb.__wrapped__ = original
    apply_rotary_pos_emb.__fusedops__ = True
    return apply_rotary_pos_emb


def unsupported_reason(module: types.ModuleType) -> str | None:
    """Why the rotary function of ``module`` cannot be swapped, or None if it can."""
    function = getattr(module, FUNCTION, None)
    if function is None:
        return f"{module.__name__} has no {FUNCTION}"
    original = _swaps[module.__name__].original if module.__name__ in _swaps else function
    parameters = tuple(inspect.signature(original).parameters)
    if parameters not in _KNOWN_PARAMETERS:
        return f"{FUNCTION}{parameters} is not Hugging Face's half-layout rotary function"
    return None


def acquire(module: types.ModuleType) -> str:
    """Swap ``module.apply_rotary_pos_emb`` for the dispatcher (or count one more user)."""
    name = module.__name__
    if name not in _swaps:
        original = getattr(module, FUNCTION)
        _swaps[name] = _Swap(original, 0)
        setattr(module, FUNCTION, _fused_apply_rotary_pos_emb(original))
    _swaps[name].users += 1
    return f"{name}.{FUNCTION}"


def release(module: types.ModuleType) -> None:
    """One user fewer; the last one restores the original function."""
    swap = _swaps[module.__name__]
    swap.users -= 1
    if swap.users == 0:
        setattr(module, FUNCTION, swap.original)
        del _swaps[module.__name__]


def _enter(module: nn.Module, args: Any) -> None:
    _active_layers[0] += 1


def _exit(module: nn.Module, args: Any, output: Any) -> None:
    _active_layers[0] -= 1


def activate(layer: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks making the dispatcher run the fused op while ``layer`` runs."""
    return [
        layer.register_forward_pre_hook(_enter),
        layer.register_forward_hook(_exit, always_call=True),
    ]
