"""Test set-up that must happen before fusedops (and its Triton kernels) are imported.

Without a GPU, Triton's interpreter is switched on so every Triton kernel runs on CPU tensors;
outputs are NaN-poisoned so an element a kernel forgets to write fails the comparison; caches go
under the environment's prefix, not the home directory.
"""

from __future__ import annotations

import os
import sys

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["FUSEDOPS_POISON_OUTPUTS"] = "1"
os.environ.pop("FUSEDOPS_BACKEND", None)  # tests choose backends explicitly
for var, sub in (("TRITON_CACHE_DIR", "triton-cache"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
    os.environ.setdefault(var, os.path.join(sys.prefix, "fusedops-cache", sub))

import pytest  # noqa: E402

import fusedops  # noqa: E402,F401  (imported after the environment above is fixed)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
