"""``fusedops bench compare A.json B.json``: two runs' results side by side.

:func:`compare_results` matches the rows of two runs on ``(op, case, shape, impl)`` and computes
``ratio = A median / B median`` (> 1: B is faster) for rows ok in both, with the geometric mean
per op and implementation and over all ops; :func:`format_comparison` prints it as aligned
plain text, headed by what differs between the two environments (device, versions, commits,
threads, sweep, measured ceilings); :func:`main_compare` is the command.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from fusedops.benchmarking.harness import FUSED
from fusedops.benchmarking.markdown import geomean, sig
from fusedops.benchmarking.report import text_table
from fusedops.benchmarking.results import OK, Record, read_json

CEILING_TOLERANCE = 0.05
"""Two measured ceilings differ when their ratio is off 1 by more than this (run-to-run noise
of the same machine stays within it)."""

ENV_FIELDS = (
    ("device", "device"),
    ("device_name", "device name"),
    ("cpu_model", "CPU"),
    ("threads", "threads"),
    ("driver", "driver"),
    ("cuda", "CUDA"),
    ("torch", "torch"),
    ("triton", "triton"),
    ("fusedops", "fusedops"),
    ("python", "python"),
    ("git_commit", "git commit"),
    ("sweep", "sweep"),
)
"""``(environment key, label)`` of the environment fields the comparison's header shows."""

DTYPE_DIFFERS = "dtype differs"
ONLY_IN_A = "only in A"
ONLY_IN_B = "only in B"


@dataclass
class CompareRow:
    """One ``(op, case, shape, impl)`` row of a comparison.

    Attributes:
        op, case, shape, impl: what the row matches on.
        dtype_a, dtype_b: the dtype in A and in B (``None`` where the row is missing).
        status_a, status_b: the status in A and in B (``None`` where the row is missing).
        median_a_ms, median_b_ms: medians (ms) of ok records, else ``None``.
        ratio: ``median_a_ms / median_b_ms`` when both are ok with the same dtype, else ``None``.
        note: why there is no ratio (``only in A``, ``dtype differs``, ``B: mismatch``...).
    """

    op: str
    case: str
    shape: str
    impl: str
    dtype_a: str | None
    dtype_b: str | None
    status_a: str | None
    status_b: str | None
    median_a_ms: float | None
    median_b_ms: float | None
    ratio: float | None
    note: str = ""


@dataclass
class EnvDiff:
    """One environment field of the header: its values in A and B, ``ratio`` B/A for the
    measured ceilings, and whether it differs."""

    label: str
    a: str
    b: str
    ratio: float | None
    differs: bool


@dataclass
class Comparison:
    """Result of :func:`compare_results`.

    Attributes:
        env: the header fields (:class:`EnvDiff`), environment fields then ceilings.
        rows: one :class:`CompareRow` per matched or unmatched row, grouped by op.
        geomeans: ``{op: {impl: (geometric mean ratio, rows)}}`` over rows with a ratio.
        overall: ``{impl: (geometric mean ratio, rows)}`` over all ops.
        labels: the names of A and B (file paths for ``fusedops bench compare``).
        hidden: rows not ok in both runs with the same status (left out of :attr:`rows`).
    """

    env: list[EnvDiff]
    rows: list[CompareRow]
    geomeans: dict[str, dict[str, tuple[float, int]]]
    overall: dict[str, tuple[float, int]]
    labels: tuple[str, str] = ("A", "B")
    hidden: int = 0
    differs: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Environment header.


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return ".".join(map(str, value))
    return str(value)


def _ceilings(env: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """``{label: (unit, value)}`` of an environment's measured ceilings."""
    raw = env.get("ceilings")
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, tuple[str, float]] = {}
    if isinstance(raw.get("copy_gb_s"), (int, float)):
        out["copy ceiling"] = ("GB/s", float(raw["copy_gb_s"]))
    matmul = raw.get("matmul_tflop_s")
    if isinstance(matmul, Mapping):
        for dtype, value in matmul.items():
            if isinstance(value, (int, float)):
                out[f"matmul {dtype} ceiling"] = ("TFLOP/s", float(value))
    return out


def compare_environments(a_env: Mapping[str, Any], b_env: Mapping[str, Any]) -> list[EnvDiff]:
    """The header fields of a comparison: each field of :data:`ENV_FIELDS` set in A or B, then
    each measured ceiling with its ratio B/A (differs beyond :data:`CEILING_TOLERANCE`)."""
    diffs = []
    for key, label in ENV_FIELDS:
        a, b = a_env.get(key), b_env.get(key)
        if a is None and b is None:
            continue
        diffs.append(EnvDiff(label, _text(a), _text(b), None, _text(a) != _text(b)))
    ca, cb = _ceilings(a_env), _ceilings(b_env)
    for label in dict.fromkeys([*ca, *cb]):
        unit = (ca.get(label) or cb[label])[0]
        va = ca[label][1] if label in ca else None
        vb = cb[label][1] if label in cb else None
        ratio = vb / va if va and vb else None
        differs = ratio is None or abs(ratio - 1) > CEILING_TOLERANCE
        a_text = "-" if va is None else f"{sig(va)} {unit}"
        b_text = "-" if vb is None else f"{sig(vb)} {unit}"
        diffs.append(EnvDiff(label, a_text, b_text, ratio, differs))
    return diffs


# ---------------------------------------------------------------------------------------------
# Rows.


_Key = tuple[str, str, str, str]


def _by_key(records: Sequence[Record]) -> dict[_Key, dict[str, Record]]:
    """``{(op, case, shape, impl): {dtype: record}}`` in first-seen order."""
    out: dict[_Key, dict[str, Record]] = {}
    for r in records:
        out.setdefault((r.op, r.case, r.shape, r.impl), {})[r.dtype] = r
    return out


def _pair_row(key: _Key, a: Record | None, b: Record | None) -> CompareRow:
    op, case, shape, impl = key
    a_ok = a is not None and a.status == OK
    b_ok = b is not None and b.status == OK
    row = CompareRow(
        op,
        case,
        shape,
        impl,
        dtype_a=a.dtype if a else None,
        dtype_b=b.dtype if b else None,
        status_a=a.status if a else None,
        status_b=b.status if b else None,
        median_a_ms=a.median_ms if a_ok and a else None,
        median_b_ms=b.median_ms if b_ok and b else None,
        ratio=None,
    )
    if a is None or b is None:
        row.note = ONLY_IN_A if b is None else ONLY_IN_B
        status = (a or b).status  # type: ignore[union-attr]
        if status != OK:
            row.note += f" ({status})"
    elif a.dtype != b.dtype:
        row.note = DTYPE_DIFFERS
    elif a_ok and b_ok:
        if row.median_a_ms and row.median_b_ms:
            row.ratio = row.median_a_ms / row.median_b_ms
    else:
        notes = [f"{side}: {r.status}" for side, r in (("A", a), ("B", b)) if r.status != OK]
        row.note = ", ".join(notes)
    return row


def _rows_for_key(key: _Key, a: dict[str, Record], b: dict[str, Record]) -> list[CompareRow]:
    """Rows of one key: dtypes in both runs pair up; leftover dtypes of A and B pair up as
    ``dtype differs``; what is left is only in A or only in B."""
    rows = [_pair_row(key, a[d], b[d]) for d in a if d in b]
    left_a = [a[d] for d in a if d not in b]
    left_b = [b[d] for d in b if d not in a]
    for ra, rb in zip(left_a, left_b, strict=False):
        rows.append(_pair_row(key, ra, rb))
    n = min(len(left_a), len(left_b))
    rows += [_pair_row(key, r, None) for r in left_a[n:]]
    rows += [_pair_row(key, None, r) for r in left_b[n:]]
    return rows


def _hidden(row: CompareRow) -> bool:
    """Rows not ok in both runs for the same reason tell nothing about the two runs."""
    return (
        row.status_a is not None
        and row.status_a != OK
        and row.status_a == row.status_b
        and row.dtype_a == row.dtype_b
    )


def _geomeans(rows: Sequence[CompareRow]) -> dict[str, tuple[float, int]]:
    ratios: dict[str, list[float]] = {}
    for row in rows:
        if row.ratio is not None:
            ratios.setdefault(row.impl, []).append(row.ratio)
    out = {}
    for impl in sorted(ratios, key=lambda i: (i != FUSED, i)):
        mean = geomean(ratios[impl])
        if mean is not None:
            out[impl] = (mean, len(ratios[impl]))
    return out


def compare_results(
    a_env: Mapping[str, Any],
    a_records: Sequence[Record],
    b_env: Mapping[str, Any],
    b_records: Sequence[Record],
    *,
    labels: tuple[str, str] = ("A", "B"),
) -> Comparison:
    """Match two runs' records on ``(op, case, shape, impl)``.

    Rows ok in both with the same dtype get ``ratio = A median / B median`` (> 1: B is
    faster); the others are marked: ``dtype differs`` (same key, other dtype), ``only in A`` /
    ``only in B``, or the status of the side that is not ok. Rows not ok in both runs with the
    same status are counted in ``hidden``. Geometric means of the ratios per op and impl and
    over all ops complete it. Rows are grouped by op (first seen in A, then B), A's order first.
    """
    for name, env in (("a_env", a_env), ("b_env", b_env)):
        if not isinstance(env, Mapping):
            raise TypeError(f"compare_results: {name} must be a mapping, got {env!r}")
    for record in [*a_records, *b_records]:
        if not isinstance(record, Record):
            raise TypeError(f"compare_results: records must be Record objects, got {record!r}")
    a_keys, b_keys = _by_key(a_records), _by_key(b_records)
    all_rows: list[CompareRow] = []
    for key in dict.fromkeys([*a_keys, *b_keys]):
        all_rows += _rows_for_key(key, a_keys.get(key, {}), b_keys.get(key, {}))
    ops = list(dict.fromkeys(r.op for r in all_rows))
    all_rows.sort(key=lambda r: ops.index(r.op))  # stable: A's order within an op
    rows = [r for r in all_rows if not _hidden(r)]
    env = compare_environments(a_env, b_env)
    return Comparison(
        env=env,
        rows=rows,
        geomeans={op: _geomeans([r for r in rows if r.op == op]) for op in ops},
        overall=_geomeans(rows),
        labels=labels,
        hidden=len(all_rows) - len(rows),
        differs=[d.label for d in env if d.differs],
    )


# ---------------------------------------------------------------------------------------------
# Text.


def _ms(value: float | None) -> str:
    return "-" if value is None else sig(value)


def _dtype(row: CompareRow) -> str:
    if row.dtype_a and row.dtype_b and row.dtype_a != row.dtype_b:
        return f"{row.dtype_a}->{row.dtype_b}"
    return row.dtype_a or row.dtype_b or "-"


def _format_header(cmp: Comparison) -> str:
    a, b = cmp.labels
    lines = [f"fusedops bench compare: A = {a}, B = {b}", ""]
    cells = [
        [d.label, d.a, d.b, "-" if d.ratio is None else f"{d.ratio:.2f}", "*" if d.differs else ""]
        for d in cmp.env
    ]
    if cells:
        lines.append(text_table(["field", "A", "B", "B/A", "differs"], cells, "<<<><"))
        lines.append("")
    lines.append("differs: " + (", ".join(cmp.differs) if cmp.differs else "nothing"))
    return "\n".join(lines)


def _format_rows(cmp: Comparison) -> str:
    header = ["op", "case", "shape", "dtype", "impl", "A ms", "B ms", "A/B", "note"]
    cells = [
        [
            r.op,
            r.case,
            r.shape,
            _dtype(r),
            r.impl,
            _ms(r.median_a_ms),
            _ms(r.median_b_ms),
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.note,
        ]
        for r in cmp.rows
    ]
    breaks = [i for i in range(1, len(cmp.rows)) if cmp.rows[i].op != cmp.rows[i - 1].op]
    title = "ratio A/B = A median / B median (> 1: B is faster)"
    return text_table(header, cells, "<<<<<>>><", title=title, breaks=breaks)


def _means_text(means: Mapping[str, tuple[float, int]]) -> str:
    if not means:
        return "no matched rows"
    return ", ".join(f"{impl} {mean:.2f} ({n} rows)" for impl, (mean, n) in means.items())


def format_comparison(cmp: Comparison) -> str:
    """Plain text of a :class:`Comparison`: the environment header (fields that differ marked
    ``*`` and listed), the row table (aligned columns, a blank line between ops) and the
    geometric-mean ratio per op and implementation and over all ops."""
    if not isinstance(cmp, Comparison):
        raise TypeError(f"format_comparison: expected a Comparison, got {cmp!r}")
    parts = [_format_header(cmp)]
    if cmp.rows:
        parts.append(_format_rows(cmp))
    else:
        parts.append("No rows in either run.")
    if cmp.hidden:
        parts.append(f"{cmp.hidden} rows not ok in both runs (same status) are not shown.")
    width = max((len(op) for op in cmp.geomeans), default=0)
    lines = ["geometric mean A/B per op (> 1: B is faster):"]
    lines += [f"  {op:<{width}}  {_means_text(m)}" for op, m in cmp.geomeans.items()]
    lines.append(f"  {'all':<{width}}  {_means_text(cmp.overall)}")
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def main_compare(paths: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``fusedops bench compare A.json B.json``: print :func:`format_comparison` of the two
    ``results.json`` files to ``out``; returns 0, or 2 (with the error on ``err``) when there
    are not two paths or a file is not a readable ``results.json``."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if len(paths) != 2:
        print(
            f"fusedops bench compare: expected two results.json files, got {list(paths)}", file=err
        )
        return 2
    runs = []
    for path in paths:
        try:
            runs.append(read_json(path))
        except ValueError as exc:
            print(f"fusedops bench compare: {exc}", file=err)
            return 2
    (a_env, a_records), (b_env, b_records) = runs
    cmp = compare_results(a_env, a_records, b_env, b_records, labels=(paths[0], paths[1]))
    out.write(format_comparison(cmp))
    return 0
