"""The compile tests compile with the triton a GPU machine gets: the one torch 2.13.0's CUDA
wheel pins (requirements-triton-gpu.txt), not the interpreter's triton of a CPU venv."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from fusedops.testing import compiler, workers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pinned(requirements: str) -> str:
    text = (ROOT / requirements).read_text()
    match = re.search(r"^triton==(\S+)", text, re.MULTILINE)
    assert match, f"{requirements} pins no triton"
    return match.group(1)


def test_workers_compile_with_the_triton_the_cuda_wheel_pins():
    """The worker processes import the pinned GPU triton (the Makefile installs it under
    .venv/triton-gpu where the venv's own triton differs) and report its version."""
    pinned = _pinned("requirements-triton-gpu.txt")
    out = subprocess.run(
        [sys.executable, "-c", "import triton; print(triton.__version__)"],
        env=workers._worker_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == pinned
    assert compiler.compile_triton_version() == pinned


def test_minimum_triton_is_the_compiled_one():
    """pyproject's triton floor is the version the compile tests run."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    floors = set(re.findall(r'"triton>=([0-9.]+)"', pyproject))
    assert floors == {_pinned("requirements-triton-gpu.txt")}


def test_cache_key_names_the_compiling_triton(monkeypatch):
    """Results cached under one compile triton are never served for another."""
    spec = compiler.CompileSpec(
        signature=(("x_ptr", "*fp32"), ("n", "i32"), ("BLOCK", "constexpr")),
        constexprs=(("BLOCK", 64),),
        arch=90,
        num_warps=4,
        num_stages=1,
        divisible=("x_ptr",),
        fp_fusion=True,
    )
    monkeypatch.setattr(compiler, "compile_triton_version", lambda: "3.7.1")
    first = compiler.cache_key("abc", spec)
    monkeypatch.setattr(compiler, "compile_triton_version", lambda: "3.9.0")
    assert compiler.cache_key("abc", spec) != first


@pytest.mark.parametrize("bad", ["", "nowhere"])
def test_compile_triton_dir_needs_a_triton_package(monkeypatch, tmp_path, bad):
    monkeypatch.setenv(compiler.COMPILE_TRITON_ENV, str(tmp_path / bad) if bad else "")
    monkeypatch.setattr(compiler.sys, "prefix", str(tmp_path))
    assert compiler.compile_triton_dir() is None
