"""Plain-text tables: :func:`text_table` (any cells) and :func:`format_table` (benchmark
records, as ``fusedops bench`` and the demo print them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fusedops.benchmarking.harness import FUSED
from fusedops.benchmarking.results import OK, Record


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def _fused_speedup(record: Record, fused: dict[tuple[str, str, str, str], Record]) -> str:
    """On a peer's row: fusedops' speedup over that peer (its median / fusedops')."""
    mine = fused.get((record.op, record.case, record.shape, record.dtype))
    if record.impl == FUSED or mine is None:
        return "-"
    return _fmt(mine.speedup.get(record.impl), "{:.2f}x")


def _timing(record: Record) -> str:
    if record.status != OK:
        return record.status
    return f"{record.median_ms:.4g}"


_COLUMNS: tuple[tuple[str, str, Callable[[Record], str]], ...] = (
    ("op", "<", lambda r: r.op),
    ("case", "<", lambda r: r.case),
    ("dtype", "<", lambda r: r.dtype),
    ("shape", "<", lambda r: r.shape),
    ("impl", "<", lambda r: r.impl + (f" ({r.backend})" if r.backend else "")),
    ("median ms", ">", _timing),
    ("p20-p80 ms", ">", lambda r: "-" if r.status != OK else f"{r.p20_ms:.4g}-{r.p80_ms:.4g}"),
    ("GB/s", ">", lambda r: _fmt(r.gb_s, "{:.1f}")),
    ("TFLOP/s", ">", lambda r: _fmt(r.tflop_s, "{:.3g}")),
    ("of ceiling", ">", lambda r: _fmt(r.frac_of_ceiling, "{:.0%}")),
    ("max err", ">", lambda r: _fmt(r.max_err, "{:.2g}")),
    ("noisy", "<", lambda r: "noisy" if r.noisy else ""),
)


def format_table(records: Sequence[Record], *, title: str | None = None) -> str:
    """Aligned text table of ``records``, one line each, a blank line between cases. Columns
    empty everywhere are dropped. ``fusedops speedup`` is, on a peer's line, how many times
    faster fusedops ran than that peer; a peer that was not timed shows its status."""
    fused = {(r.op, r.case, r.shape, r.dtype): r for r in records if r.impl == FUSED}
    columns = [*_COLUMNS, ("fusedops speedup", ">", lambda r: _fused_speedup(r, fused))]
    columns = [c for c in columns if any(c[2](r) not in ("-", "") for r in records)]
    cells = [[col[2](r) for col in columns] for r in records]
    keys = [(r.op, r.case, r.dtype, r.shape) for r in records]
    breaks = [i for i in range(1, len(records)) if keys[i] != keys[i - 1]]
    header = [col[0] for col in columns]
    align = "".join(col[1] for col in columns)
    return text_table(header, cells, align, title=title, breaks=breaks)


def text_table(
    header: Sequence[str],
    cells: Sequence[Sequence[str]],
    align: str,
    *,
    title: str | None = None,
    breaks: Sequence[int] = (),
) -> str:
    """Aligned plain-text table: ``align`` has one ``<`` or ``>`` per column; a blank line goes
    before each line index in ``breaks``."""
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        parts = [f"{v:{a}{w}}" for v, a, w in zip(values, align, widths, strict=True)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out += [line(header), "  ".join("-" * w for w in widths)]
    for i, cell in enumerate(cells):
        if i in breaks:
            out.append("")
        out.append(line(cell))
    return "\n".join(out)
