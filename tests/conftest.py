"""Test set-up that must happen before fusedops (and its Triton kernels) are imported.

Without a GPU, Triton's interpreter is switched on so every Triton kernel runs on CPU tensors;
outputs are NaN-poisoned so an element a kernel forgets to write fails the comparison; compiler
caches go under the environment's prefix (:mod:`fusedops.caches`), not the home directory.
"""

from __future__ import annotations

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["FUSEDOPS_POISON_OUTPUTS"] = "1"
os.environ.pop("FUSEDOPS_BACKEND", None)  # tests choose backends explicitly

# fusedops.caches imports the fusedops package (and its kernels): after TRITON_INTERPRET.
from fusedops.caches import set_default_cache_dirs  # noqa: E402

set_default_cache_dirs()

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

import fusedops  # noqa: E402,F401  (imported after the environment above is fixed)

# Property tests: "ci" (the default) runs a bounded, reproducible set of examples per test (a
# test may lower it for the slow Triton interpreter); HYPOTHESIS_PROFILE=thorough searches more.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
