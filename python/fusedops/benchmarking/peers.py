"""The peers fusedops is compared with, and how each is bound or reported missing.

Peer groups (``fusedops bench --compare``): ``eager`` (the plain PyTorch formula, or the
unpatched model), ``compile`` (``torch.compile`` of it), ``sdpa``
(``F.scaled_dot_product_attention``; on CUDA also its ``flash``, ``efficient`` and ``math``
backends, each forced), ``liger`` (Liger-Kernel's RoPE and embedding), ``flash_attn``
(flash-attention's ``flash_attn_func`` and ``flash_attn_with_kvcache``). A third-party peer is
bound only when its package imports and it can run on the device and dtype; otherwise
:class:`PeerUnavailable` carries the status (``not installed`` / ``not runnable``) and the
reason, which the report shows in place of a time.

Every adapter here takes fusedops' layouts (``[B, H, S, D]`` attention, flash-attention's own
``[B, S, H, D]`` KV cache) and returns the same output as the fused op, so the runner can check
it against the reference before timing it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from fusedops.benchmarking.harness import COMPILE, EAGER
from fusedops.benchmarking.results import NOT_INSTALLED, NOT_RUNNABLE

SDPA = "sdpa"
"""Attention peer: ``F.scaled_dot_product_attention`` (the bottom-right causal mask)."""
LIGER = "liger"
FLASH_ATTN = "flash_attn"
PEER_GROUPS: tuple[str, ...] = (EAGER, COMPILE, SDPA, LIGER, FLASH_ATTN)
"""Names accepted by ``--compare``, in report order."""

# Implementation names of each group other than the group name itself.
_MEMBERS = {
    "F.embedding": EAGER,  # the unquantized table next to an INT8 lookup
    "dense": EAGER,  # the dense table next to a factorized lookup
    "sdpa-mask": SDPA,
    "sdpa_flash": SDPA,
    "sdpa_efficient": SDPA,
    "sdpa_math": SDPA,
}

_PACKAGES = {LIGER: ("liger_kernel", "liger-kernel"), FLASH_ATTN: ("flash_attn", "flash-attn")}


class PeerUnavailable(Exception):
    """A peer that cannot be bound here: ``status`` (:data:`NOT_INSTALLED` or
    :data:`NOT_RUNNABLE`) and ``reason``."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


def peer_group(impl: str) -> str | None:
    """The ``--compare`` group of an implementation name (``None`` for ``fusedops``)."""
    if impl in PEER_GROUPS:
        return impl
    return _MEMBERS.get(impl)


def import_peer(group: str) -> ModuleType:
    """Import the package of a third-party peer group; :class:`PeerUnavailable`
    (``not installed``) when it is missing or fails to import."""
    module, dist = _PACKAGES[group]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = f"{module} ({dist}) is not importable: {exc}"
        raise PeerUnavailable(NOT_INSTALLED, reason) from None


def peer_attribute(module: ModuleType | str, name: str) -> Any:
    """``module.name`` (``module`` given or imported by name); :class:`PeerUnavailable`
    (``not installed``) when this version of the package lacks it."""
    try:
        if isinstance(module, str):
            module = importlib.import_module(module)
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        where = module if isinstance(module, str) else module.__name__
        version = getattr(module, "__version__", None) if not isinstance(module, str) else None
        found = f" (version {version})" if version else ""
        raise PeerUnavailable(NOT_INSTALLED, f"{where}{found} has no {name}: {exc}") from None


def require_cuda(device: torch.device, what: str) -> None:
    """:class:`PeerUnavailable` (``not runnable``) unless ``device`` is a CUDA device."""
    if device.type != "cuda":
        raise PeerUnavailable(NOT_RUNNABLE, f"{what} runs on CUDA only, not on {device.type}")


def liger_rope(device: torch.device) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Liger-Kernel's ``liger_rotary_pos_emb(q, k, cos, sin)``: q ``[B, Hq, S, D]``, k ``[B,
    Hk, S, D]``, cos/sin ``[1 or B, S, D]`` (duplicated halves), as transformers passes them."""
    import_peer(LIGER)
    require_cuda(device, "Liger-Kernel")
    return peer_attribute("liger_kernel.transformers.rope", "liger_rotary_pos_emb")


def liger_embedding(device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Liger-Kernel's embedding gather ``f(ids, weight) -> weight[ids]`` (its experimental
    ``LigerEmbeddingFunction``; the scale and positional add stay in eager PyTorch)."""
    import_peer(LIGER)
    require_cuda(device, "Liger-Kernel")
    function = peer_attribute("liger_kernel.ops.experimental.embedding", "LigerEmbeddingFunction")
    return lambda ids, weight: function.apply(weight, ids)


def _require_half(dtype: torch.dtype, what: str) -> None:
    if dtype not in (torch.float16, torch.bfloat16):
        raise PeerUnavailable(NOT_RUNNABLE, f"{what} supports float16/bfloat16 only, not {dtype}")


def flash_attn_causal(
    device: torch.device, dtype: torch.dtype, *, window: int | None = None
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """flash-attention's ``flash_attn_func(..., causal=True)`` on ``[B, H, S, D]`` tensors
    (transposed to its ``[B, S, H, D]`` and back; its causal mask is bottom-right, GQA by
    head groups like fusedops). ``window=w`` keeps the last ``w`` keys of each query, as
    ``fusedops.attention(sliding_window=w)`` does: its ``window_size=(w - 1, 0)``. Returns
    ``[B, Hq, Sq, D]``."""
    module = import_peer(FLASH_ATTN)
    require_cuda(device, "flash-attention")
    _require_half(dtype, "flash_attn_func")
    func = peer_attribute(module, "flash_attn_func")
    window_size = (-1, -1) if window is None else (window - 1, 0)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, S, H, D]
        return func(qt, kt, vt, causal=True, window_size=window_size).transpose(1, 2)

    return run


def flash_attn_kvcache(device: torch.device, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    """flash-attention's ``flash_attn_with_kvcache`` with fusedops' cache layout (the same:
    q ``[B, Sq, Hq, D]``, caches ``[B, Sk, Hkv, D]`` or paged ``[blocks, block_size, Hkv,
    D]``), appending ``k``/``v`` at ``cache_seqlens`` and attending causally."""
    module = import_peer(FLASH_ATTN)
    require_cuda(device, "flash-attention")
    _require_half(dtype, "flash_attn_with_kvcache")
    func = peer_attribute(module, "flash_attn_with_kvcache")

    def run(q, k_cache, v_cache, k, v, *, cache_seqlens, block_table=None) -> torch.Tensor:
        return func(q, k_cache, v_cache, k=k, v=v, cache_seqlens=cache_seqlens,
                    block_table=block_table, causal=True)  # fmt: skip

    return run


def sdpa_backends(device: torch.device) -> list[tuple[str, Callable[[], Any]]]:
    """``(impl name, context factory)`` of SDPA's forced backends on CUDA (``sdpa_flash``,
    ``sdpa_efficient``, ``sdpa_math``); empty elsewhere (on CPU SDPA picks its one kernel)."""
    if device.type != "cuda":
        return []
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def forced(backend: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
        return lambda: sdpa_kernel(backend)

    return [
        ("sdpa_flash", forced(SDPBackend.FLASH_ATTENTION)),
        ("sdpa_efficient", forced(SDPBackend.EFFICIENT_ATTENTION)),
        ("sdpa_math", forced(SDPBackend.MATH)),
    ]
