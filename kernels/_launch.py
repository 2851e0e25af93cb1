"""The one way the launchers start a Triton kernel: on the device of its tensors.

Triton launches on the *current* CUDA device and its current stream, not on the device of the
tensors it is given. With tensors on ``cuda:1`` while device 0 is current (a model split over
GPUs, pipeline stages) a bare ``kernel[grid](...)`` faults, or with peer access runs on device
0's stream, unordered with the work that produced its inputs. :func:`launch` makes the
tensors' device current for the launch, as PyTorch's own ops do, so the kernel runs on that
device's current stream. Every launcher in ``kernels/`` goes through it (a test checks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch


def tensors_device(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.device | None:
    """The device of the first tensor among ``args`` then ``kwargs`` (None if there is none)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def device_guard(device: torch.device | None) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(device)`` for a CUDA device, else a no-op context (CPU tensors run
    in Triton's interpreter, which has no current device)."""
    if device is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def launch(kernel: Any, grid: Any, *args: Any, **kwargs: Any) -> Any:
    """``kernel[grid](*args, **kwargs)`` with the first tensor argument's device current.

    ``kernel`` is a ``@triton.jit`` function or its autotuner/heuristics wrapper; ``grid`` a
    tuple or a callable of the meta-parameters. The launchers validate that all tensors share
    one device before they get here.
    """
    with device_guard(tensors_device(args, kwargs)):
        return kernel[grid](*args, **kwargs)


__all__ = ["device_guard", "launch", "tensors_device"]
