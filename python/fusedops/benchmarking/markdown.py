"""``report.md`` of a ``fusedops bench`` run: a markdown report (:func:`format_report`) ready to
paste into a GitHub issue or a README, built from the run's environment and
:class:`~fusedops.benchmarking.results.Record` list alone (so a ``results.json`` from another
machine makes the same report).

The report holds the environment, the measured ceilings, the peers' availability, a summary of
fusedops' speedups (geometric mean per op and peer, :func:`speedup_summary`) and one table per
op. :func:`speedup_summary` and :func:`geomean` are shared with the plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fusedops.benchmarking.harness import FUSED
from fusedops.benchmarking.peers import peer_group
from fusedops.benchmarking.results import OK, Record

DETAIL_CHARS = 80
"""Longest status detail shown in a table cell (longer ones are cut with ``...``)."""


# ---------------------------------------------------------------------------------------------
# Numbers shared with the plots and the comparison.


def geomean(values: Iterable[float]) -> float | None:
    """Geometric mean of the finite positive ``values``; ``None`` when there are none."""
    logs = [math.log(v) for v in values if _positive(v)]
    return math.exp(sum(logs) / len(logs)) if logs else None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def ops_in_order(records: Sequence[Record]) -> list[str]:
    """The records' ops in first-seen order."""
    return list(dict.fromkeys(r.op for r in records))


def speedup_summary(records: Sequence[Record], op: str) -> dict[str, tuple[float, int]]:
    """``{peer: (geometric mean speedup, number of rows)}`` of fusedops against each peer over
    ``op``'s ok fusedops rows (``speedup[peer]`` = peer median / fusedops median, so > 1 means
    fusedops is faster). Peers in first-seen order; peers with no finite speedup are left out."""
    ratios: dict[str, list[float]] = {}
    for record in records:
        if record.op != op or record.impl != FUSED or record.status != OK:
            continue
        for peer, ratio in record.speedup.items():
            if _positive(ratio):
                ratios.setdefault(peer, []).append(ratio)
    summary = {}
    for peer, values in ratios.items():
        mean = geomean(values)
        if mean is not None:
            summary[peer] = (mean, len(values))
    return summary


# ---------------------------------------------------------------------------------------------
# Cell formatting.


def sig(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits in fixed notation (``0.0123``, ``12.3``,
    ``1234``): no exponents, so columns of timings read alike."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _cell(text: object) -> str:
    """Table-safe text: pipes and asterisks escaped, newlines flattened."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")
    return " ".join(out.split())


def _code(text: object) -> str:
    """``text`` as an inline code span inside a table cell."""
    body = str(text).replace("`", "'").replace("|", "\\|")
    return f"`{body}`" if body else ""


def _short(text: str, limit: int = DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _bytes(n: Any) -> str | None:
    if not _positive(n):
        return None
    return f"{n / 2**30:.1f} GiB"


def _version_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        return ".".join(str(v) for v in value)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A markdown table; ``align`` has one ``<`` (left) or ``>`` (right) per column."""
    marks = {"<": ":--", ">": "--:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Sections.


def _title(environment: Mapping[str, Any]) -> str:
    device = environment.get("device_name") or environment.get("device") or "unknown device"
    date = environment.get("date")
    day = f" ({str(date)[:10]})" if date else ""
    return f"# fusedops bench: {device}{day}"


def _environment_rows(env: Mapping[str, Any]) -> list[tuple[str, str]]:
    device = env.get("device")
    name = env.get("device_name")
    rows: list[tuple[str, str | None]] = [
        ("device", f"{name} (`{device}`)" if name and device else (name or device)),
        ("SMs", _version_text(env.get("sm_count"))),
        ("compute capability", _version_text(env.get("compute_capability"))),
        ("CPU", env.get("cpu_model")),
        ("threads", _version_text(env.get("threads"))),
        ("memory", _bytes(env.get("memory_bytes"))),
        ("driver", _version_text(env.get("driver"))),
        ("CUDA", _version_text(env.get("cuda"))),
        ("torch", _version_text(env.get("torch"))),
        ("triton", _version_text(env.get("triton"))),
        ("fusedops", _version_text(env.get("fusedops"))),
        ("python", _version_text(env.get("python"))),
        ("platform", env.get("platform")),
        ("git commit", _code(env["git_commit"]) if env.get("git_commit") else None),
        ("date", env.get("date")),
        ("command", _code(env["command"]) if env.get("command") else None),
        ("sweep", env.get("sweep")),
        ("ops", ", ".join(map(str, env["ops"])) if env.get("ops") else None),
        ("dtypes", ", ".join(map(str, env["dtypes"])) if env.get("dtypes") else None),
        ("timing", _timing_text(env.get("timing"))),
    ]
    return [(k, str(v)) for k, v in rows if v not in (None, "")]


def _timing_text(timing: Any) -> str | None:
    if not isinstance(timing, Mapping) or not timing:
        return None
    parts = [str(timing["method"])] if timing.get("method") else []
    for key, label in (("warmup_ms", "warmup"), ("rep_ms", "rep")):
        if timing.get(key) is not None:
            parts.append(f"{label} {timing[key]:g} ms")
    extra = [f"{k} {v}" for k, v in timing.items() if k not in ("method", "warmup_ms", "rep_ms")]
    return ", ".join(parts + extra) or None


def _environment_section(env: Mapping[str, Any]) -> str:
    rows = [
        (k, v if k in ("git commit", "command") else _cell(v)) for k, v in _environment_rows(env)
    ]
    if not rows:
        return "## Environment\n\nNo environment recorded."
    return "## Environment\n\n" + _table(["", ""], rows, "<<")


def _ceilings_section(env: Mapping[str, Any]) -> str:
    ceilings = env.get("ceilings")
    if not isinstance(ceilings, Mapping):
        ceilings = {}
    lines = []
    copy = ceilings.get("copy_gb_s")
    if _positive(copy):
        lines.append(f"- copy: {sig(copy)} GB/s")
    matmul = ceilings.get("matmul_tflop_s")
    if isinstance(matmul, Mapping):
        for dtype, value in matmul.items():
            if _positive(value):
                lines.append(f"- matmul {dtype}: {sig(value)} TFLOP/s")
    body = "\n".join(lines) if lines else "No ceilings measured."
    return (
        "## Measured ceilings\n\n"
        "Achieved rates are compared with these (copy of a large buffer; large matmul).\n\n" + body
    )


def _peer_rows(env: Mapping[str, Any], records: Sequence[Record]) -> list[list[str]]:
    peers_env = env.get("peers")
    if not isinstance(peers_env, Mapping):
        peers_env = {}
    counts: dict[str, dict[str, int]] = {}
    first_detail: dict[str, str] = {}
    for record in records:
        if record.impl == FUSED:
            continue
        group = peer_group(record.impl) or record.impl  # e.g. sdpa_flash counts under sdpa
        per = counts.setdefault(group, {})
        per[record.status] = per.get(record.status, 0) + 1
        if record.status != OK and record.detail:
            first_detail.setdefault(group, record.detail)
    rows = []
    for peer in dict.fromkeys([*map(str, peers_env), *counts]):
        per = counts.get(peer, {})
        if peer in peers_env and peers_env[peer] not in (None, ""):
            availability = str(peers_env[peer])
        elif per.get(OK):
            availability = "ok"
        elif per:
            status = next(iter(per))
            detail = first_detail.get(peer)
            availability = f"{status} ({detail})" if detail else status
        else:
            availability = "-"
        ran = ", ".join(f"{n} {status}" for status, n in per.items()) or "no rows"
        rows.append([_cell(peer), _cell(_short(availability)), _cell(ran)])
    return rows


def _peers_section(env: Mapping[str, Any], records: Sequence[Record]) -> str:
    rows = _peer_rows(env, records)
    if not rows:
        return "## Peers\n\nNo peers ran."
    return "## Peers\n\n" + _table(["peer", "availability", "rows"], rows, "<<<")


def _summary_section(records: Sequence[Record], images: Mapping[str, str]) -> str:
    ops = ops_in_order(records)
    summaries = {op: speedup_summary(records, op) for op in ops}
    peers = list(dict.fromkeys(p for s in summaries.values() for p in s))
    text = "## Summary\n\n"
    if not peers:
        text += "No speedups of fusedops against a peer were measured."
    else:
        text += (
            "Speedup of fusedops over each peer: geometric mean over the op's cases "
            "(peer median / fusedops median; > 1 = fusedops faster; cases in brackets).\n\n"
        )
        rows = []
        for op in ops:
            cells = [_speedup_cell(summaries[op].get(p)) for p in peers]
            rows.append([_cell(op), *cells])
        header = ["op", *(f"vs {_cell(p)}" for p in peers)]
        text += _table(header, rows, "<" + ">" * len(peers))
    if images.get("speedup"):
        text += f"\n\n![fusedops speedups]({images['speedup']})"
    return text


def _speedup_cell(entry: tuple[float, int] | None) -> str:
    return "-" if entry is None else f"{entry[0]:.2f}x ({entry[1]})"


def summary_line(records: Sequence[Record], op: str) -> str:
    """One line: fusedops' geometric-mean speedup over each peer on ``op``'s rows."""
    summary = speedup_summary(records, op)
    if not summary:
        return "No speedups of fusedops against a peer on this op."
    parts = [f"vs {peer} **{mean:.2f}x** ({n})" for peer, (mean, n) in summary.items()]
    return "fusedops geometric-mean speedup (cases): " + ", ".join(parts) + "."


# ---------------------------------------------------------------------------------------------
# Per-op tables.


def _ordered_rows(records: Sequence[Record]) -> list[Record]:
    """Rows of one op grouped by case, then by (shape, dtype) within the case (first-seen
    order), fusedops first within each group."""
    cases = {c: i for i, c in enumerate(dict.fromkeys(r.case for r in records))}
    groups = {g: i for i, g in enumerate(dict.fromkeys(_group(r) for r in records))}
    indexed = sorted(
        enumerate(records),
        key=lambda ir: (cases[ir[1].case], groups[_group(ir[1])], ir[1].impl != FUSED, ir[0]),
    )
    return [r for _, r in indexed]


def _group(record: Record) -> tuple[str, str, str]:
    return (record.case, record.shape, record.dtype)


def _ceiling_header(records: Sequence[Record]) -> str:
    kinds = {(r.ceiling or "").split("_")[0] for r in records if r.frac_of_ceiling is not None}
    return f"% of {kinds.pop()}" if len(kinds) == 1 and "" not in kinds else "% of ceiling"


def _timing_cells(record: Record) -> tuple[str, str]:
    if record.status != OK:
        return f"**{_cell(record.status)}**", ""
    median = sig(record.median_ms) if record.median_ms is not None else "-"
    if record.p20_ms is not None and record.p80_ms is not None:
        spread = f"{sig(record.p20_ms)}-{sig(record.p80_ms)}"
    else:
        spread = ""
    return median, spread


def _note(record: Record) -> str:
    if record.status != OK:
        return _cell(_short(record.detail)) if record.detail else ""
    if record.noisy:
        if record.p20_ms and record.p80_ms:
            return f"noisy (p80/p20 {record.p80_ms / record.p20_ms:.2f})"
        return "noisy"
    return ""


def _rate(value: float | None) -> str:
    return "" if value is None else sig(value)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.0f}%"


def _err(value: float | None) -> str:
    if value is None:
        return ""
    return "0" if value == 0 else f"{value:.2g}"


_Column = tuple[str, str, Callable[[Record], str]]


def _op_columns(rows: Sequence[Record]) -> list[_Column]:
    peers = list(dict.fromkeys(p for r in rows if r.impl == FUSED for p in r.speedup))
    columns: list[_Column] = [
        ("case", "<", lambda r: _cell(r.case)),
        ("shape", "<", lambda r: _code(r.shape)),
        ("dtype", "<", lambda r: _cell(r.dtype)),
        ("impl", "<", lambda r: f"**{r.impl}**" if r.impl == FUSED else _cell(r.impl)),
        ("median ms", ">", lambda r: _timing_cells(r)[0]),
        ("p20-p80 ms", ">", lambda r: _timing_cells(r)[1]),
        ("GB/s", ">", lambda r: _rate(r.gb_s)),
        ("TFLOP/s", ">", lambda r: _rate(r.tflop_s)),
        (_ceiling_header(rows), ">", lambda r: _percent(r.frac_of_ceiling)),
    ]
    for peer in peers:
        columns.append((f"vs {_cell(peer)}", ">", _speedup_getter(peer)))
    columns += [
        ("max err", ">", lambda r: _err(r.max_err)),
        ("note", "<", _note),
    ]
    return columns


def _speedup_getter(peer: str) -> Callable[[Record], str]:
    def get(record: Record) -> str:
        ratio = record.speedup.get(peer) if record.impl == FUSED else None
        return f"{ratio:.2f}x" if _positive(ratio) else ""

    return get


_ALWAYS = ("case", "shape", "dtype", "impl", "median ms")


def format_op_table(records: Sequence[Record], op: str) -> str:
    """Markdown table of ``op``'s records: one row per implementation of each case, grouped
    by case (the case, shape and dtype are written on the first row of each group); columns
    empty for the whole table are dropped. Speedup columns (``vs <peer>``) are filled on the
    fusedops rows; rows whose status is not ok show the status and its detail."""
    rows = _ordered_rows([r for r in records if r.op == op])
    if not rows:
        return ""
    columns = _op_columns(rows)
    cells = [[get(r) for _, _, get in columns] for r in rows]
    keep = [
        i for i, (name, _, _) in enumerate(columns) if name in _ALWAYS or any(c[i] for c in cells)
    ]
    previous = None
    for row, record in zip(cells, rows, strict=True):
        if _group(record) == previous:
            row[0:3] = ["", "", ""]
        previous = _group(record)
    return _table(
        [columns[i][0] for i in keep],
        [[c[i] for i in keep] for c in cells],
        "".join(columns[i][1] for i in keep),
    )


def _op_section(records: Sequence[Record], op: str, image: str | None) -> str:
    text = f"## {op}\n\n{summary_line(records, op)}\n\n{format_op_table(records, op)}"
    if image:
        text += f"\n\n![{op}]({image})"
    return text


# ---------------------------------------------------------------------------------------------
# Public entry points.


def format_report(
    environment: Mapping[str, Any],
    records: Sequence[Record],
    images: Mapping[str, str] | None = None,
) -> str:
    """The markdown report of a run: title, environment table, measured ceilings, peers'
    availability, a speedup summary and one section per op (a one-line geometric-mean speedup
    of fusedops per peer and the op's table, :func:`format_op_table`).

    ``images`` maps an op (or ``"speedup"``, shown under the summary) to a PNG path, embedded
    as ``![op](path)`` below its table. Pure: no I/O.
    """
    _check_inputs("format_report", environment, records, images)
    images = images or {}
    sections = [
        _title(environment),
        _environment_section(environment),
        _ceilings_section(environment),
        _peers_section(environment, records),
        _summary_section(records, images),
    ]
    sections += [_op_section(records, op, images.get(op)) for op in ops_in_order(records)]
    return "\n\n".join(sections) + "\n"


def write_report(
    path: str | Path,
    environment: Mapping[str, Any],
    records: Sequence[Record],
    images: Mapping[str, str] | None = None,
) -> Path:
    """Write :func:`format_report` to ``path`` (parents created); returns the path."""
    text = format_report(environment, records, images)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def _check_inputs(
    name: str,
    environment: Any,
    records: Any,
    images: Any,
) -> None:
    if not isinstance(environment, Mapping):
        raise TypeError(f"{name}: environment must be a mapping, got {type(environment).__name__}")
    for record in records:
        if not isinstance(record, Record):
            raise TypeError(f"{name}: records must be Record objects, got {record!r}")
    if images is not None and not isinstance(images, Mapping):
        raise TypeError(f"{name}: images must map op -> path, got {images!r}")
