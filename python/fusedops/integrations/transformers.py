"""``fusedops.patch``: fused ops in Hugging Face transformers models a user already has.

    model = AutoModelForCausalLM.from_pretrained(...)
    report = fusedops.patch(model)   # in place; print(report) shows what changed
    fusedops.unpatch(model)          # the original modules and functions again

Per family (:mod:`fusedops.integrations.hf_families`) the input embedding, the rotary
function of the modeling file and the attention implementation are replaced by fusedops
modules and ops sharing the model's parameters, so ``state_dict`` keys and values and tied
weights do not change. Any ``nn.Module`` holding Hugging Face models (e.g. a
sentence-transformers model) is patched through them; with ``strict=False`` a module of an
unsupported type gets only its plain ``nn.Embedding`` tables fused. transformers is imported
only when a Hugging Face model is patched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fusedops.integrations import hf_embeddings, hf_rope
from fusedops.integrations.hf_attention import NAME as ATTENTION_NAME
from fusedops.integrations.hf_attention import register
from fusedops.integrations.hf_families import FAMILIES, SUPPORTED_MODEL_TYPES, Family
from fusedops.integrations.report import PatchEntry, PatchReport, format_bytes
from fusedops.nn import FusedEmbedding, Int8Embedding
from fusedops.ops.attention import MAX_HEAD_DIM, MIN_HEAD_DIM
from fusedops.ops.backends import backend_for

__all__ = ["SUPPORTED_MODEL_TYPES", "patch", "patched", "register", "unpatch"]

OP = "fusedops.patch"
_STATE = "_fusedops_patch"


# Undo steps are data (not closures), so a deepcopy or pickle of a patched model carries steps
# that act on the copy's own modules and hooks.


@dataclasses.dataclass
class _RestoreAttr:
    parent: nn.Module
    attr: str
    old: nn.Module

    def __call__(self) -> None:
        setattr(self.parent, self.attr, self.old)


@dataclasses.dataclass
class _RemoveHook:
    handle: torch.utils.hooks.RemovableHandle

    def __call__(self) -> None:
        self.handle.remove()


@dataclasses.dataclass
class _ReleaseRope:
    modeling: str  # module name of the modeling file

    def __call__(self) -> None:
        hf_rope.release(sys.modules[self.modeling])

    def __setstate__(self, state: dict) -> None:
        # a copy (deepcopy, unpickling) of a patched model is one more user of the swap
        self.__dict__.update(state)
        hf_rope.acquire(importlib.import_module(self.modeling))


@dataclasses.dataclass
class _RestoreAttention:
    model: nn.Module
    previous: str

    def __call__(self) -> None:
        self.model.set_attn_implementation(self.previous)


@dataclasses.dataclass
class _PatchState:
    report: PatchReport
    undo: list[Callable[[], None]]  # run last to first by unpatch
    one_way: list[str]  # why unpatch cannot restore everything (empty: it can)


class _Patcher:
    """Applies one ``patch`` call, recording the report and how to undo each change."""

    def __init__(self, root: nn.Module, int8: bool, group_size: int | None) -> None:
        self.names = {id(m): name for name, m in root.named_modules()}
        self.int8 = int8
        self.group_size = group_size
        self.report = PatchReport(model_type="module")
        self.undo: list[Callable[[], None]] = []
        self.one_way: list[str] = []

    def path(self, module: nn.Module, attr: str | None = None) -> str:
        name = self.names.get(id(module), "?")
        if attr is None:
            return name or type(module).__name__
        return f"{name}.{attr}" if name else attr

    def replaced(self, kind: str, target: str, detail: str) -> None:
        self.report.replaced.append(PatchEntry(kind, target, detail))

    def left_alone(self, kind: str, target: str, reason: str) -> None:
        self.report.left_alone.append(PatchEntry(kind, target, reason))

    def swap(self, parent: nn.Module, attr: str, new: nn.Module, keep_original: bool = True):
        old = getattr(parent, attr)
        setattr(parent, attr, new)
        if keep_original:
            self.undo.append(_RestoreAttr(parent, attr, old))
        return old

    # -- embeddings ----------------------------------------------------------------------

    def int8_table(self, model: nn.Module, parent: nn.Module, attr: str, source: nn.Module):
        """Replace ``parent.attr`` by an :class:`Int8Embedding` of ``source``'s table."""
        table = getattr(parent, attr)
        tied = _is_tied(model, table.weight)
        int8 = Int8Embedding.from_embedding(source, group_size=self.group_size)
        self.swap(parent, attr, int8, keep_original=tied)
        target = self.path(parent, attr)
        if tied:
            detail = (
                f"{int8.qweight.shape[0]}x{int8.embedding_dim} int8 table (group "
                f"{int8.group_size}); the float table stays for the tied output layer: no "
                "memory saved"
            )
        else:
            saved = table.weight.numel() * table.weight.element_size() - int8.memory_bytes()
            self.report.embedding_bytes_saved += saved
            self.one_way.append(f"{target} is int8: its float table was released")
            detail = (
                f"int8 table (group {int8.group_size}), float table released: "
                f"{format_bytes(saved)} saved"
            )
        self.replaced("embedding", target, detail)
        return int8

    def plain_embeddings(self, model: nn.Module) -> None:
        """Every exact ``nn.Embedding`` without max_norm/sparse/scale_grad_by_freq."""
        for parent in list(model.modules()):
            for attr, child in list(parent.named_children()):
                if type(child) is not nn.Embedding:
                    continue
                target = self.path(parent, attr)
                options = [
                    opt
                    for opt, on in (
                        ("max_norm", child.max_norm is not None),
                        ("sparse", child.sparse),
                        ("scale_grad_by_freq", child.scale_grad_by_freq),
                    )
                    if on
                ]
                if options:
                    self.left_alone("embedding", target, f"uses {', '.join(options)}")
                elif self.int8:
                    self.int8_table(model, parent, attr, child)
                else:
                    self.swap(parent, attr, FusedEmbedding.from_embedding(child))
                    self.replaced("embedding", target, "FusedEmbedding (shared weight)")

    def embedding(self, model: nn.Module, base: nn.Module, family: Family) -> None:
        scheme = family.embedding
        if scheme in ("tokens", "scaled_tokens"):
            emb = base.embed_tokens
            target = self.path(base, "embed_tokens")
            if scheme == "scaled_tokens":
                fused = hf_embeddings.ScaledFusedEmbedding.from_scaled(emb, emb.scalar_embed_scale)
                detail = f"FusedEmbedding(scale={emb.scalar_embed_scale:g} in the weight dtype)"
            elif type(emb) is nn.Embedding:
                fused = FusedEmbedding.from_embedding(emb)
                detail = "FusedEmbedding (shared weight)"
            else:
                self.left_alone("embedding", target, f"{type(emb).__name__} is not nn.Embedding")
                return
            if self.int8:
                self.int8_table(model, base, "embed_tokens", fused)
            else:
                self.swap(base, "embed_tokens", fused)
                self.replaced("embedding", target, detail)
        elif scheme == "learned_positions":
            if self.int8:
                self.int8_table(model, base, "wte", base.wte)
            self.swap(base, "wpe", hf_embeddings.PositionsAddedByTokens(base.wpe))
            handle = base.register_forward_pre_hook(
                hf_embeddings.gpt2_fused_inputs, with_kwargs=True
            )
            self.undo.append(_RemoveHook(handle))
            table = "int8 wte" if self.int8 else "wte"
            self.replaced(
                "embedding",
                f"{self.path(base, 'wte')} + {self.path(base, 'wpe')}",
                f"{table}[ids] + wpe[positions] in one fused call (forward pre-hook on "
                f"{self.path(base)}; wpe's own add becomes a no-op)",
            )
        elif scheme == "bert":
            if self.int8:
                self.int8_table(
                    model, base.embeddings, "word_embeddings", base.embeddings.word_embeddings
                )
                self.left_alone(
                    "embedding",
                    self.path(base, "embeddings"),
                    "with an int8 word table, position + token type + LayerNorm run eagerly",
                )
                return
            target = self.path(base, "embeddings")
            self.swap(base, "embeddings", hf_embeddings.FusedBertEmbeddings(base.embeddings))
            self.replaced(
                "embedding", target, "word + position + token type + LayerNorm: one fused call"
            )

    # -- rope and attention -------------------------------------------------------------

    def rope(self, model: nn.Module, base: nn.Module) -> None:
        modeling = inspect.getmodule(type(base))
        reason = hf_rope.unsupported_reason(modeling)
        target = f"{modeling.__name__}.{hf_rope.FUNCTION}"
        if reason is not None:
            self.left_alone("rope", target, reason)
            return
        layers = [
            m
            for m in model.modules()
            if type(m).__module__ == modeling.__name__ and type(m).__name__.endswith("Attention")
        ]
        if not layers:
            self.left_alone("rope", target, "no attention layer of this modeling file found")
            return
        hf_rope.acquire(modeling)
        self.undo.append(_ReleaseRope(modeling.__name__))
        for layer in layers:
            for handle in hf_rope.activate(layer):
                self.undo.append(_RemoveHook(handle))
        self.replaced(
            "rope",
            target,
            f"module-level function swapped: fusedops.apply_rotary inside the {len(layers)} "
            "patched attention layers (the original elsewhere)",
        )

    def attention(self, model: nn.Module) -> None:
        config = model.config
        target = f"{self.path(model)}.config._attn_implementation"
        head_dim = getattr(config, "head_dim", None) or _hidden_per_head(config)
        if head_dim is not None and not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
            self.left_alone(
                "attention",
                target,
                f"head dim {head_dim} is outside fusedops.attention's [{MIN_HEAD_DIM}, "
                f"{MAX_HEAD_DIM}]",
            )
            return
        previous = config._attn_implementation
        register()
        try:
            model.set_attn_implementation(ATTENTION_NAME)
        except (ValueError, ImportError) as exc:
            self.left_alone("attention", target, f"the model refuses it: {exc}")
            return
        self.undo.append(_RestoreAttention(model, previous))
        variants = _attention_variants(config)
        detail = f"{previous!r} -> {ATTENTION_NAME!r}" + (f" ({variants})" if variants else "")
        self.replaced("attention", target, detail)


def _hidden_per_head(config) -> int | None:
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    return hidden // heads if hidden and heads else None


def _is_tied(model: nn.Module, weight: torch.Tensor) -> bool:
    getter = getattr(model, "get_output_embeddings", None)
    out = getter() if callable(getter) else None
    return out is not None and getattr(out, "weight", None) is weight


def _attention_variants(config) -> str:
    """The sliding-window layers and the softcap of a config, in words ("" for neither)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    parts = []
    if window is not None and getattr(config, "use_sliding_window", True) is not False:
        if layer_types is None:
            parts.append(f"sliding window {window} on every layer")
        elif "sliding_attention" in layer_types:
            count = layer_types.count("sliding_attention")
            parts.append(f"sliding window {window} on {count} of {len(layer_types)} layers")
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap is not None:
        parts.append(f"softcap {softcap:g}")
    return ", ".join(parts)


def _hf_models(model: nn.Module) -> list[nn.Module]:
    """The outermost Hugging Face ``PreTrainedModel`` modules of ``model`` (itself first)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return []
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if isinstance(module, PreTrainedModel):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


def _check_devices(model: nn.Module, ops: list[str]) -> None:
    """``RuntimeError`` now when an op to patch in has no kernel on a device of ``model``."""
    devices = {t.device for t in [*model.parameters(), *model.buffers()]}
    for device in sorted(devices, key=str):
        for op in ops:
            try:
                backend_for(op, device)
            except RuntimeError as exc:
                raise RuntimeError(f"{OP}: the model has tensors on {device}: {exc}") from exc


def _ops_needed(families: list[Family | None], embedding, rope, attention, int8) -> list[str]:
    ops = []
    for family in families:
        if embedding:
            if int8:
                ops.append("int8_embedding")
            elif family is not None and family.embedding == "bert":
                ops.append("fused_embedding_layernorm")
            else:
                ops.append("fused_embedding")
        if family is not None and rope and family.rope:
            ops.append("apply_rotary")
        if family is not None and attention and family.attention:
            ops.append("attention")
    return list(dict.fromkeys(ops))


def patch(
    model: nn.Module,
    *,
    embedding: bool = True,
    rope: bool = True,
    attention: bool = True,
    int8_embedding: bool = False,
    group_size: int | None = None,
    strict: bool = True,
) -> PatchReport:
    """Replace a model's input embedding, RoPE and attention by fusedops, in place.

    Args:
        model: a Hugging Face ``PreTrainedModel`` instance (any head), or any ``nn.Module``
            holding some (e.g. a sentence-transformers model); with ``strict=False`` any
            ``nn.Module`` (only its plain ``nn.Embedding`` tables are fused).
        embedding: fuse the input embedding (per family: scale, learned positions, BERT's
            token type + LayerNorm).
        rope: swap the modeling file's ``apply_rotary_pos_emb`` (runs fused inside patched
            layers only).
        attention: set ``attn_implementation="fusedops"`` (:func:`fusedops.attention` with
            a ``[B, Sk]`` key mask, sliding windows and softcaps included; packed sequences
            run ``fusedops.attention_varlen`` and static-cache decode steps
            ``fusedops.attention_with_kvcache``).
        int8_embedding: store the input embedding table as INT8
            (:class:`fusedops.nn.Int8Embedding`); inference only. A tied table keeps its
            float copy for the output layer (no memory saved); an untied one is released,
            and then :func:`unpatch` cannot restore it.
        group_size: features per INT8 scale (default: one scale per row).
        strict: raise ``ValueError`` for an unsupported ``config.model_type`` instead of
            fusing only its ``nn.Embedding`` tables.
    Returns:
        The :class:`PatchReport` (``print`` it for a table). Patching a patched model changes
        nothing and returns its report with ``already_patched=True``.
    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or an option has the wrong type.
        ValueError: unsupported model type with ``strict=True``; ``int8_embedding`` on a
            model in training mode; ``group_size`` without ``int8_embedding``.
        RuntimeError: a device of the model has no fused kernel for an op to patch in.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{OP}: model must be a torch.nn.Module, got {type(model).__name__}")
    options = dict(
        embedding=embedding, rope=rope, attention=attention, int8_embedding=int8_embedding
    )
    options["strict"] = strict
    for name, value in options.items():
        if not isinstance(value, bool):
            raise TypeError(f"{OP}: {name} must be a bool, got {value!r}")
    if group_size is not None and not int8_embedding:
        raise ValueError(f"{OP}: group_size={group_size} needs int8_embedding=True")
    state: _PatchState | None = getattr(model, _STATE, None)
    if state is not None:
        return dataclasses.replace(state.report, already_patched=True)
    int8 = int8_embedding and embedding
    if int8 and model.training:
        raise ValueError(
            f"{OP}: int8_embedding=True is for inference (the INT8 table has no gradient) but "
            "the model is in training mode; call model.eval() first"
        )
    hf_models = _hf_models(model)
    types = [getattr(getattr(m, "config", None), "model_type", None) for m in hf_models]
    families = [FAMILIES.get(t) for t in types]
    unsupported = sorted({str(t) for t, f in zip(types, families, strict=True) if f is None})
    if strict and not hf_models:
        raise ValueError(
            f"{OP}: {type(model).__name__} is not (and holds no) Hugging Face PreTrainedModel; "
            "pass strict=False to fuse only its nn.Embedding tables"
        )
    if strict and unsupported:
        raise ValueError(
            f"{OP}: unsupported model_type {', '.join(map(repr, unsupported))}; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (strict=False fuses only nn.Embedding tables)"
        )
    _check_devices(model, _ops_needed(families or [None], embedding, rope, attention, int8))

    patcher = _Patcher(model, int8, group_size)
    patcher.report.model_type = ", ".join(str(t) for t in types) or "module"
    if not hf_models and embedding:
        patcher.plain_embeddings(model)
    for hf, model_type, family in zip(hf_models, types, families, strict=True):
        if family is None:
            why = f"model_type {model_type!r} has no fusedops entry"
            if embedding:
                patcher.plain_embeddings(hf)
            for kind in ("rope", "attention"):
                patcher.left_alone(kind, patcher.path(hf), why)
            continue
        base = hf.base_model
        if embedding:
            patcher.embedding(hf, base, family)
        if rope and family.rope:
            patcher.rope(hf, base)
        if attention and family.attention:
            patcher.attention(hf)
        for kind, on in (("embedding", embedding), ("rope", rope), ("attention", attention)):
            if not on:
                patcher.left_alone(kind, patcher.path(hf), f"{kind}=False")
    setattr(model, _STATE, _PatchState(patcher.report, patcher.undo, patcher.one_way))
    return patcher.report


def unpatch(model: nn.Module) -> None:
    """Undo :func:`patch`: the original modules, functions and attention implementation.

    The restored model computes exactly what it computed before ``patch``. Raises
    ``ValueError`` when the model is not patched, or when ``int8_embedding`` released an
    untied float table (nothing is changed then; reload the model instead).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fusedops.unpatch: model must be a torch.nn.Module, got {type(model)}")
    state: _PatchState | None = getattr(model, _STATE, None)
    if state is None:
        raise ValueError("fusedops.unpatch: the model is not patched by fusedops.patch")
    if state.one_way:
        raise ValueError(
            f"fusedops.unpatch: cannot restore the model: {'; '.join(state.one_way)}; "
            "reload it from its checkpoint instead"
        )
    for undo in reversed(state.undo):
        undo()
    delattr(model, _STATE)


@contextlib.contextmanager
def patched(model: nn.Module, **options) -> Iterator[PatchReport]:
    """``with fusedops.patched(model, **patch_options) as report:`` patches on entry and
    unpatches on exit (a model that was already patched stays patched)."""
    report = patch(model, **options)
    try:
        yield report
    finally:
        if not report.already_patched:
            unpatch(model)
