"""Every ```python block of README.md runs as written.

The blocks run in order in one namespace: the README reads as one session (the INT8 example
quantizes the table the embedding example made). Tracebacks point at README.md's own lines.
Files the examples write land in a temporary directory.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks() -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) for each ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in PYTHON_BLOCK.finditer(text)]


def test_python_blocks_run_as_written(tmp_path, monkeypatch):
    blocks = _blocks()
    assert blocks, "README.md has no ```python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for line, code in blocks:
        if "transformers" in code and importlib.util.find_spec("transformers") is None:
            pytest.skip(f"README.md:{line} needs transformers (requirements-dev.txt)")
        # Leading newlines make the compiled line numbers README.md's own.
        exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)
