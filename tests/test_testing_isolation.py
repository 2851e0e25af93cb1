"""``fusedops.testing`` stays out of the runtime: importing fusedops and running its ops (C++
kernels, and the Triton kernels through the interpreter) never imports it."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import sys
import torch
import fusedops

ids = torch.randint(0, 50, (2, 7))
weight = torch.randn(50, 32)
q, k = torch.randn(2, 4, 7, 32), torch.randn(2, 2, 7, 32)
cos, sin = fusedops.rope_cos_sin(32, 16)  # head_dim 32, 16 positions
for backend in ("cpp", "triton"):
    with fusedops.use_backend(backend):
        out = fusedops.fused_embedding(ids, weight, scale=2.0)
        assert torch.allclose(out, weight[ids] * 2.0), backend
        q_rot, _ = fusedops.apply_rotary(q, k, cos, sin)
        assert q_rot.shape == q.shape and not torch.equal(q_rot, q), backend
        o = fusedops.attention(q, k.repeat_interleave(2, dim=1), k.repeat_interleave(2, dim=1))
        assert o.shape == q.shape and torch.isfinite(o).all(), backend
print(sorted(m for m in sys.modules if m.startswith("fusedops.testing")))
"""


def test_import_and_ops_never_load_fusedops_testing():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
