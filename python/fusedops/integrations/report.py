"""``PatchReport``: what :func:`fusedops.patch` replaced in a model and what it left alone."""

from __future__ import annotations

import dataclasses
from collections import Counter

KINDS = ("embedding", "rope", "attention")


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclasses.dataclass(frozen=True)
class PatchEntry:
    """One patched (or skipped) site.

    Attributes:
        kind: ``"embedding"``, ``"rope"`` or ``"attention"``.
        target: where: a module path (``"model.embed_tokens"``), a module-level function
            (``"transformers...modeling_llama.apply_rotary_pos_emb"``) or the attention setting.
        detail: what replaced it, or why it was left alone.
    """

    kind: str
    target: str
    detail: str


@dataclasses.dataclass
class PatchReport:
    """The result of :func:`fusedops.patch` on one model.

    Attributes:
        model_type: ``config.model_type`` of the patched model (``"module"`` for a model
            without a Hugging Face config).
        replaced: the sites now running fused ops.
        left_alone: the sites still running the model's own code, each with the reason.
        already_patched: True when ``patch`` found the model patched and changed nothing.
        embedding_bytes_saved: device memory released by ``int8_embedding=True``: the float
            table's bytes minus the INT8 table's, or 0 when the float table stays alive (tied
            to the output layer).
    """

    model_type: str
    replaced: list[PatchEntry] = dataclasses.field(default_factory=list)
    left_alone: list[PatchEntry] = dataclasses.field(default_factory=list)
    already_patched: bool = False
    embedding_bytes_saved: int = 0

    @property
    def counts(self) -> dict[str, int]:
        """Replaced sites per kind (every kind present, 0 when none)."""
        counted = Counter(entry.kind for entry in self.replaced)
        return {kind: counted.get(kind, 0) for kind in KINDS}

    def __str__(self) -> str:
        title = f"fusedops.patch: {self.model_type}"
        if self.already_patched:
            title += " (already patched: nothing changed)"
        rows = [("", "kind", "target", "detail")]
        rows += [("patched", e.kind, e.target, e.detail) for e in self.replaced]
        rows += [("left alone", e.kind, e.target, e.detail) for e in self.left_alone]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [title]
        for i, row in enumerate(rows):
            cells = [row[c].ljust(widths[c]) for c in range(3)] + [row[3]]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in [*widths, len("detail")]))
        counts = ", ".join(f"{kind} {n}" for kind, n in self.counts.items())
        lines.append(f"replaced: {counts}")
        if self.embedding_bytes_saved:
            lines.append(f"embedding memory saved: {format_bytes(self.embedding_bytes_saved)}")
        return "\n".join(lines)
