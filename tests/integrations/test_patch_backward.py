"""Training through a patched model: in training mode (dropout probabilities 0) the loss
gradient of every parameter matches the unpatched model's in fp32, on tiny llama (tied and
untied embeddings), gemma2 (sliding window + softcap), gpt2 and bert with padded batches."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from patch_checks import check_report_kinds
from tiny_models import CASES, dropout_free, padded_batch, twins

import fusedops

pytest.importorskip("transformers")

# (case, head): decoders train on the LM loss, bert on random projections of its
# hidden states and pooled output
# (case, head, gradient checkpointing)
BACKWARD_CASES = [
    ("llama", "causal_lm", False),
    ("llama", "causal_lm", True),
    ("llama_tied", "causal_lm", False),
    ("gemma2", "causal_lm", False),  # window-4 and full layers, softcapped scores
    ("gpt2", "causal_lm", False),
    ("bert", "base", False),
]
BACKWARD_IDS = [f"{case}{'-checkpointing' * ckpt}" for case, _, ckpt in BACKWARD_CASES]


def _loss_and_grads(model, head: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids, mask = padded_batch([7, 12, 10], "right", seed=3)
    mask[1, 4:] = 0  # also a short row
    ids[1, 4:] = 0
    model.train()
    assert dropout_free(model)
    model.zero_grad(set_to_none=True)
    if head == "causal_lm":
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    else:
        token_types = (torch.arange(ids.shape[1]) >= 5).long().expand_as(ids)
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=token_types)
        hidden, pooled = out.last_hidden_state, out.pooler_output  # [B, S, H], [B, H]
        gen = torch.Generator().manual_seed(11)
        upstream = torch.randn(hidden.shape, generator=gen) * mask.unsqueeze(-1)
        loss = (hidden * upstream).sum() + (pooled * torch.randn(pooled.shape, generator=gen)).sum()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    model.eval()
    return loss.detach(), grads


@pytest.mark.parametrize("case,head,checkpointing", BACKWARD_CASES, ids=BACKWARD_IDS)
def test_parameter_gradients_match(case, head, checkpointing):
    reference, candidate = twins(case, head)
    want_loss, want = _loss_and_grads(reference, head)
    if checkpointing:  # layers run again in the backward pass
        candidate.activation_checkpointing_enable({"use_reentrant": False})
    with fusedops.patched(candidate) as report:
        check_report_kinds(report, case, CASES[case].model_type)
        with torch.profiler.profile() as prof:
            got_loss, got = _loss_and_grads(candidate, head)
    ran = {e.name for e in prof.events() if e.name.startswith("fusedops::")}
    backward = ("bwd", "backward")
    assert any("embedding" in n and any(b in n for b in backward) for n in ran), ran
    if report.counts["rope"]:
        assert any("rope" in name or "rotary" in name for name in ran), ran
    assert_close(got_loss, want_loss, msg=f"{case} loss")
    assert got.keys() == want.keys()
    missing = [name for name, g in want.items() if g is None]
    assert not missing, f"{case}: parameters without gradient in the unpatched model: {missing}"
    for name, grad in got.items():
        assert grad is not None, f"{case}: {name} has no gradient in the patched model"
        scale = want[name].abs().max().item()
        # fp32 kernels against fp32 eager code: a few ulps of the largest gradient entry
        assert_close(grad, want[name], atol_extra=1e-5 * scale, msg=f"{case} {name}")
