"""Benchmark results as data: :class:`Record` (one implementation of one case), the run's
environment header, and ``results.json`` / ``results.csv`` (:func:`write_json`,
:func:`read_json`, :func:`write_csv`).

``results.json`` is ``{"schema": SCHEMA, "environment": {...}, "records": [Record, ...]}``;
``results.csv`` holds the same records flat (one column per field, ``speedup`` spread into
``speedup_vs_<impl>`` columns). Every consumer (``report.md``, the plots, ``fusedops bench
compare``) reads the JSON form, so a results file from another machine or commit is as good as
one made in-process.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "fusedops-bench/1"
"""Version tag of ``results.json``; :func:`read_json` refuses other versions."""

OK = "ok"
"""Status of a record that was checked against the reference and timed."""
MISMATCH = "mismatch"
"""Status of a peer whose output differs from the reference: checked, not timed."""
NOT_INSTALLED = "not installed"
"""Status of a peer whose package is missing (``detail`` names it)."""
NOT_RUNNABLE = "not runnable"
"""Status of a peer that exists but cannot run here (``detail`` says why, e.g. ``on cpu``)."""
ERROR = "error"
"""Status of a peer that raised while it was checked or timed (``detail`` has the error)."""
STATUSES = (OK, MISMATCH, NOT_INSTALLED, NOT_RUNNABLE, ERROR)


@dataclass
class Record:
    """One implementation of one benchmark case: a JSON record and a CSV row.

    Attributes:
        op: sweep op (``embedding``, ``int8``, ``rope``, ``attention``, ``decode``, ``model``).
        case: the case's name within the op (e.g. ``prefill``, ``gqa4``).
        family: the shape without the swept size: the line a plot draws (e.g. ``V=50257
            D=768 learned``).
        size: the swept size (the plots' x axis), in ``size_name`` units.
        size_name: what ``size`` counts (``tokens``, ``sequence length``, ``cache length``).
        shape: the whole shape as text.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        impl: ``fusedops`` or a peer (``eager``, ``compile``, ``sdpa``, ``sdpa_flash``,
            ``liger``, ``flash_attn``, ...).
        backend: fusedops' backend on its rows (``cpp``, ``triton``, ``auto``), else empty.
        status: one of :data:`STATUSES`; only ``ok`` records carry timings.
        detail: the accuracy check's line for ``ok``/``mismatch``, the reason otherwise.
        median_ms, p20_ms, p80_ms: per-call wall time quantiles (ms).
        reps: number of timed calls.
        noisy: ``p80 / p20 > 1.15`` even after one rerun.
        gb_s: GB/s of the case's minimum bytes (memory-bound ops), else ``None``.
        tflop_s: TFLOP/s of the case's FLOPs (attention), else ``None``.
        ceiling: the measured ceiling it is compared with (``copy`` or ``matmul_<dtype>``).
        ceiling_value: that ceiling, in GB/s for ``copy`` and TFLOP/s for ``matmul_*``.
        frac_of_ceiling: ``gb_s`` (or ``tflop_s``) over ``ceiling_value``.
        speedup: ``{other impl: its median / this median}`` for every other timed impl of the
            case (> 1: this one is faster).
        max_err: max abs error against the reference (``None`` when not checked).
    """

    op: str
    case: str
    family: str
    size: int
    size_name: str
    shape: str
    dtype: str
    impl: str
    backend: str = ""
    status: str = OK
    detail: str = ""
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    reps: int | None = None
    noisy: bool = False
    gb_s: float | None = None
    tflop_s: float | None = None
    ceiling: str | None = None
    ceiling_value: float | None = None
    frac_of_ceiling: float | None = None
    speedup: dict[str, float] = field(default_factory=dict)
    max_err: float | None = None

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """``(op, case, shape, dtype, impl)``: what identifies a row across two runs."""
        return (self.op, self.case, self.shape, self.dtype, self.impl)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (non-finite floats as ``None``)."""
        return {k: _finite(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"benchmark record: unknown fields {sorted(unknown)}")
        return cls(**data)


def error_text(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception on one line, cut at ``limit`` characters: the
    ``detail`` of an ``error`` record."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:limit]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def write_json(path: str | Path, environment: dict[str, Any], records: Sequence[Record]) -> Path:
    """Write ``results.json`` (parents created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "schema": SCHEMA,
        "environment": environment,
        "records": [r.to_dict() for r in records],
    }
    out.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    return out


def read_json(path: str | Path) -> tuple[dict[str, Any], list[Record]]:
    """``(environment, records)`` of a ``results.json``; ``ValueError`` naming the file when it
    is not one (other schema, missing keys, unknown record fields)."""
    src = Path(path)
    try:
        data = json.loads(src.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{src}: not a readable results.json ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{src}: schema {found!r}, expected {SCHEMA!r}")
    try:
        records = [Record.from_dict(r) for r in data["records"]]
        environment = dict(data["environment"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{src}: malformed results.json ({exc})") from None
    return environment, records


def csv_columns(records: Sequence[Record]) -> list[str]:
    """CSV header: the record fields, ``speedup`` spread into ``speedup_vs_<impl>`` columns
    (impls in first-seen order)."""
    names = [f.name for f in dataclasses.fields(Record) if f.name != "speedup"]
    peers: list[str] = []
    for record in records:
        peers += [p for p in record.speedup if p not in peers]
    return names + [f"speedup_vs_{p}" for p in peers]


def write_csv(path: str | Path, records: Sequence[Record]) -> Path:
    """Write ``results.csv``: one row per record (floats to 4 significant digits, empty cells
    for values that do not apply). Parents are created; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = csv_columns(records)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for record in records:
            data = record.to_dict()
            for peer, ratio in record.speedup.items():
                data[f"speedup_vs_{peer}"] = ratio
            writer.writerow([_csv_cell(data.get(c)) for c in columns])
    return out


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
