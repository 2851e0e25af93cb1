"""rope_cos_sin against transformers' own RoPE initialisation, for every rope type."""

from __future__ import annotations

import pytest
import torch

import fusedops

transformers = pytest.importorskip("transformers")
from transformers import GPTNeoXConfig, LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

HEAD_DIM = 64
THETA = 500000.0


def _scalings(rot: int) -> dict[str, dict]:
    half = rot // 2
    return {
        "default": {"rope_type": "default"},
        "linear": {"rope_type": "linear", "factor": 4.0},
        "dynamic": {"rope_type": "dynamic", "factor": 2.0},
        "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
        "yarn-mscale": {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 128,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
            "beta_fast": 16,
            "beta_slow": 2,
        },
        "longrope": {
            "rope_type": "longrope",
            "long_factor": [1.0 + 0.1 * i for i in range(half)],
            "short_factor": [1.0 + 0.01 * i for i in range(half)],
            "original_max_position_embeddings": 256,
        },
        "llama3": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
    }


def _config(scaling: dict, max_pos: int, partial: float = 1.0) -> LlamaConfig:
    params = {"rope_theta": THETA, **scaling}
    if partial != 1.0:
        params["partial_rotary_factor"] = partial
    return LlamaConfig(
        hidden_size=HEAD_DIM * 4,
        num_attention_heads=4,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_pos,
        rope_parameters=params,
    )


def _hf_cos_sin(config, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What a layer receives: cos/sin [1, S, R] (duplicated), attention scaling applied."""
    emb = (GPTNeoXRotaryEmbedding if isinstance(config, GPTNeoXConfig) else LlamaRotaryEmbedding)(
        config
    )
    x = torch.zeros(1, seq, HEAD_DIM)
    return emb(x, torch.arange(seq)[None])


@pytest.mark.parametrize("name", list(_scalings(HEAD_DIM)))
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_matches_transformers_rotary_embedding(name, partial):
    rot = int(HEAD_DIM * partial)
    scaling = _scalings(rot)[name]
    max_pos = 1024
    config = _config(scaling, max_pos, partial)
    if name == "default" and partial != 1.0:
        # Llama's default RoPE ignores partial_rotary_factor; GPT-NeoX (rotary_pct) uses it.
        config = GPTNeoXConfig(
            hidden_size=HEAD_DIM * 4,
            num_attention_heads=4,
            max_position_embeddings=max_pos,
            rope_parameters={"rope_theta": THETA, "partial_rotary_factor": partial, **scaling},
        )
    hf_cos, hf_sin = _hf_cos_sin(config, max_pos)  # [1, P, R]
    cos, sin = fusedops.rope_cos_sin(
        HEAD_DIM, max_pos, base=THETA, scaling=scaling, partial_rotary_factor=partial
    )
    assert cos.shape == sin.shape == (max_pos, rot // 2) and cos.dtype == torch.float32
    torch.testing.assert_close(cos, hf_cos[0, :, : rot // 2], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sin, hf_sin[0, :, : rot // 2], atol=1e-6, rtol=1e-6)
    # The duplicated half is the same frequencies again (cat(freqs, freqs)).
    torch.testing.assert_close(hf_cos[0, :, rot // 2 :], hf_cos[0, :, : rot // 2])


@pytest.mark.parametrize("name", [n for n in _scalings(HEAD_DIM) if n != "default"])
def test_matches_rope_init_functions(name):
    # inv_freq and attention_scaling straight from ROPE_INIT_FUNCTIONS, with the context the
    # cache covers as seq_len (dynamic NTK and longrope depend on it).
    scaling = _scalings(HEAD_DIM)[name]
    trained, max_pos = 512, 2048
    hf_type = scaling["rope_type"]
    config = _config(scaling, trained)
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[hf_type](config, None, seq_len=max_pos)
    ours = {**scaling}
    if hf_type == "dynamic":
        ours["original_max_position_embeddings"] = trained
    if hf_type in ("yarn", "longrope") and "factor" not in ours:
        # transformers infers factor from config.max_position_embeddings / original
        ours["factor"] = trained / ours["original_max_position_embeddings"]
    cos, sin = fusedops.rope_cos_sin(HEAD_DIM, max_pos, base=THETA, scaling=ours)
    angle = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv_freq[None, :].float()
    torch.testing.assert_close(cos, angle.cos() * attention_scaling, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sin, angle.sin() * attention_scaling, atol=1e-6, rtol=1e-6)


def test_dynamic_grows_base_beyond_trained_context():
    scaling = {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 128}
    short, _ = fusedops.rope_cos_sin(HEAD_DIM, 128, scaling=scaling)
    long, _ = fusedops.rope_cos_sin(HEAD_DIM, 512, scaling=scaling)
    default, _ = fusedops.rope_cos_sin(HEAD_DIM, 512)
    assert torch.equal(short, default[:128])  # within the trained context: plain RoPE
    assert not torch.allclose(long[:128], short)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_dtype_is_rounded_from_fp32(dtype):
    cos32, sin32 = fusedops.rope_cos_sin(80, 300, base=1e5)
    cos, sin = fusedops.rope_cos_sin(80, 300, base=1e5, dtype=dtype)
    assert cos.dtype == sin.dtype == dtype
    assert torch.equal(cos, cos32.to(dtype)) and torch.equal(sin, sin32.to(dtype))


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"head_dim": 0}, ValueError, "head_dim must be a positive int"),
        ({"max_positions": 0}, ValueError, "max_positions must be a positive int"),
        ({"base": -1.0}, ValueError, r"base must be a finite number > 0, got -1\.0"),
        (
            {"base": float("inf")},
            ValueError,
            "base must be a finite number > 0, got inf",
        ),
        ({"base": "1e4"}, TypeError, "base must be a real number, got str"),
        ({"head_dim": 63}, ValueError, "rotary dim .* = 63 must be even"),
        ({"partial_rotary_factor": 1.5}, ValueError, "partial_rotary_factor"),
        ({"scaling": {"rope_type": "ntk"}}, ValueError, "unknown rope_type 'ntk'"),
        (
            {"scaling": {"rope_type": "linear"}},
            ValueError,
            r"rope_type 'linear' needs scaling\['factor'\]",
        ),
        ({"scaling": "linear"}, TypeError, "scaling must be a dict"),
        (
            {
                "scaling": {
                    "rope_type": "longrope",
                    "short_factor": [1.0],
                    "long_factor": [1.0],
                    "original_max_position_embeddings": 4096,
                }
            },
            ValueError,
            r"scaling\['short_factor'\] has 1 values, expected 32",
        ),
    ],
)
def test_bad_arguments(kwargs, exc, pattern):
    args = {"head_dim": 64, "max_positions": 16, **kwargs}
    with pytest.raises(exc, match=f"rope_cos_sin: {pattern}"):
        fusedops.rope_cos_sin(args.pop("head_dim"), args.pop("max_positions"), **args)
