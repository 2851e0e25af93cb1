"""Reports of timed rows: CSV (:func:`write_csv`), the full table (:func:`format_table`) and
the per-call table of decode-size cases (:func:`format_per_call_table`)."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from fusedops.benchmarking.harness import COMPILE, EAGER, FUSED
from fusedops.benchmarking.runner import Row


def write_csv(rows: Sequence[Row], path: str | Path) -> None:
    """Write rows as CSV with a header of :class:`Row`'s field names (floats to 4 sig. digits,
    empty cells for values that do not apply). Parent folders are created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in dataclasses.fields(Row)]
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in rows:
            writer.writerow([_csv_cell(getattr(row, n)) for n in names])


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_TABLE_COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    ("op", "<", lambda r: r.op),
    ("case", "<", lambda r: r.case),
    ("dtype", "<", lambda r: r.dtype),
    ("shape", "<", lambda r: r.shape),
    ("impl", "<", lambda r: r.impl),
    ("median ms", ">", lambda r: f"{r.median_ms:.3f}"),
    ("p20-p80 ms", ">", lambda r: f"{r.p20_ms:.3f}-{r.p80_ms:.3f}"),
    ("GB/s", ">", lambda r: _fmt(r.gb_s, "{:.1f}")),
    ("of copy", ">", lambda r: _fmt(r.frac_of_copy, "{:.0%}")),
    ("TFLOP/s", ">", lambda r: _fmt(r.tflop_s, "{:.1f}")),
    ("vs eager", ">", lambda r: _fmt(r.speedup_vs_eager, "{:.2f}x")),
    ("vs compile", ">", lambda r: _fmt(r.speedup_vs_compile, "{:.2f}x")),
)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def format_table(rows: Sequence[Row], *, title: str | None = None) -> str:
    """Plain-text table of ``rows`` (aligned columns; columns that are empty everywhere, such as
    TFLOP/s for memory-bound ops, are dropped). A blank line separates cases."""
    columns = [
        col for col in _TABLE_COLUMNS if any(col[2](r) != "-" for r in rows) or col[0] == "impl"
    ]
    cells = [[col[2](r) for col in columns] for r in rows]
    keys = [(r.op, r.case, r.dtype, r.shape) for r in rows]
    breaks = [i for i in range(1, len(rows)) if keys[i] != keys[i - 1]]
    header = [col[0] for col in columns]
    align = "".join(col[1] for col in columns)
    return text_table(header, cells, align, title=title, breaks=breaks)


def format_per_call_table(rows: Sequence[Row], *, title: str | None = None) -> str:
    """Median microseconds per call of fusedops, eager and compile, one line per case, and
    fusedops' speedups: the small-call overhead view of decode-size cases."""
    cases: dict[tuple[str, str, str, str], dict[str, Row]] = {}
    for row in rows:
        cases.setdefault((row.op, row.case, row.dtype, row.shape), {})[row.impl] = row
    header = ["op", "case", "dtype", "shape", "fusedops us", "eager us", "compile us"]
    header += ["vs eager", "vs compile"]
    cells = []
    for (op, case, dtype, shape), impls in cases.items():
        micros = [_fmt(_median_us(impls.get(name)), "{:.1f}") for name in (FUSED, EAGER, COMPILE)]
        fused = impls.get(FUSED)
        speedups = [
            _fmt(fused and fused.speedup_vs_eager, "{:.2f}x"),
            _fmt(fused and fused.speedup_vs_compile, "{:.2f}x"),
        ]
        cells.append([op, case, dtype, shape, *micros, *speedups])
    return text_table(header, cells, "<<<<>>>>>", title=title)


def _median_us(row: Row | None) -> float | None:
    return None if row is None else row.median_ms * 1e3


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
