"""PNG plots of a ``fusedops bench`` run, drawn from its
:class:`~fusedops.benchmarking.results.Record` list and environment alone.

* :func:`plot_op`: one PNG per op, one panel per ``(family, dtype)``: achieved GB/s (or
  TFLOP/s) against the swept size on a log axis, one line per implementation, the measured
  ceiling as a dashed line;
* :func:`plot_speedups`: fusedops' geometric-mean speedup over each peer, per op;
* :func:`write_plots`: both kinds into a folder.

matplotlib is imported inside the functions, and figures are built as
``matplotlib.figure.Figure`` with an Agg canvas (:func:`build_op_figure`,
:func:`build_speedup_figure`), so pyplot and the global backend are never touched.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusedops.benchmarking.harness import FUSED
from fusedops.benchmarking.markdown import ops_in_order, sig, speedup_summary
from fusedops.benchmarking.results import OK, Record

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
"""Resolution of the PNGs (dots per inch)."""
MAX_PANELS = 12
"""Most ``(family, dtype)`` panels in one op's figure; the figure names the ones left out."""
MAX_COLUMNS = 4
"""Most panels side by side."""
PANEL_SIZE_IN = (4.0, 3.1)
"""Width and height of one panel (inches)."""
PNG_COLORS = 128
"""Palette size of the written PNGs."""

_FUSEDOPS_COLOR = "tab:red"
_PEER_COLORS = (
    "tab:blue",
    "tab:green",
    "tab:orange",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
_RATES = (("gb_s", "GB/s"), ("tflop_s", "TFLOP/s"))


# ---------------------------------------------------------------------------------------------
# Data.


def _panels(records: Sequence[Record], op: str) -> dict[tuple[str, str], list[Record]]:
    """``{(family, dtype): ok records with a rate}`` of ``op`` in first-seen order."""
    panels: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        if r.op == op and r.status == OK and (r.gb_s is not None or r.tflop_s is not None):
            panels.setdefault((r.family, r.dtype), []).append(r)
    return panels


def _rate_of(records: Sequence[Record]) -> tuple[str, str]:
    """``(Record field, unit)`` a panel plots: GB/s when any record has it, else TFLOP/s."""
    return _RATES[0] if any(r.gb_s is not None for r in records) else _RATES[1]


def _ceiling(
    records: Sequence[Record], environment: Mapping[str, Any], unit: str, dtype: str
) -> tuple[str, float] | None:
    """``(label name, value)`` of a panel's ceiling: the records' own, else the environment's
    copy (GB/s) or matmul-of-``dtype`` (TFLOP/s) ceiling."""
    for r in records:
        if r.ceiling and r.ceiling_value and r.ceiling_value > 0:
            return r.ceiling.replace("_", " "), r.ceiling_value
    ceilings = environment.get("ceilings")
    if not isinstance(ceilings, Mapping):
        return None
    if unit == "GB/s":
        value = ceilings.get("copy_gb_s")
        name = "copy"
    else:
        matmul = ceilings.get("matmul_tflop_s")
        value = matmul.get(dtype) if isinstance(matmul, Mapping) else None
        name = f"matmul {dtype}"
    if isinstance(value, (int, float)) and value > 0:
        return name, float(value)
    return None


def _impl_colors(records: Sequence[Record]) -> dict[str, str]:
    """One color per implementation, the same in every panel (fusedops red)."""
    peers = [i for i in dict.fromkeys(r.impl for r in records) if i != FUSED]
    colors = {p: _PEER_COLORS[i % len(_PEER_COLORS)] for i, p in enumerate(peers)}
    colors[FUSED] = _FUSEDOPS_COLOR
    return colors


def _device_text(environment: Mapping[str, Any]) -> str:
    name, device = environment.get("device_name"), environment.get("device")
    if name and device:
        return f"{name} ({device})"
    return str(name or device or "unknown device")


def _size_label(size: float) -> str:
    n = int(size)
    if n != size:
        return f"{size:g}"
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 2**10 and n % 2**10 == 0:
        return f"{n // 2**10}k"
    return str(n)


# ---------------------------------------------------------------------------------------------
# Per-op figure.


def _draw_panel(
    ax: Axes,
    records: Sequence[Record],
    environment: Mapping[str, Any],
    title: str,
    colors: Mapping[str, str],
) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    field, unit = _rate_of(records)
    impls = sorted(dict.fromkeys(r.impl for r in records), key=lambda i: i != FUSED)
    top = 0.0
    sizes: set[float] = set()
    for impl in impls:
        points = sorted(
            (r.size, getattr(r, field))
            for r in records
            if r.impl == impl and getattr(r, field) is not None and r.size > 0
        )
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        sizes.update(xs)
        top = max(top, *ys)
        fused = impl == FUSED
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=5 if fused else 3.5,
            linewidth=2.4 if fused else 1.2,
            color=colors.get(impl),
            label=impl,
            zorder=3 if fused else 2,
        )
    ceiling = _ceiling(records, environment, unit, records[0].dtype)
    if ceiling is not None:
        name, value = ceiling
        ax.axhline(
            value,
            linestyle="--",
            linewidth=1.0,
            color="black",
            label=f"{name} ceiling {sig(value)} {unit}",
            zorder=1,
        )
        top = max(top, value)
    ax.set_xscale("log", base=2)
    ticks = sorted(sizes)
    if len(ticks) > 8:
        ticks = ticks[:: math.ceil(len(ticks) / 8)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _size_label(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(0, top * 1.1 if top > 0 else 1)
    ax.set_xlabel(f"{records[0].size_name} (log scale)", fontsize=8)
    ax.set_ylabel(f"achieved {unit}", fontsize=8)
    ax.set_title(textwrap.fill(title, 42), fontsize=8.5)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6.5, loc="best")


def build_op_figure(
    op: str, environment: Mapping[str, Any], records: Sequence[Record]
) -> Figure | None:
    """The figure of :func:`plot_op` (an Agg canvas attached), or ``None`` when ``op`` has no
    ok record with a rate. One axes per ``(family, dtype)`` panel, at most :data:`MAX_PANELS`
    (the title names how many were left out)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _panels(records, op)
    if not panels:
        return None
    shown = list(panels.items())[:MAX_PANELS]
    left_out = list(panels)[MAX_PANELS:]
    ncols = min(MAX_COLUMNS, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    width, height = PANEL_SIZE_IN
    fig = Figure(figsize=(width * ncols, height * nrows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = _impl_colors([r for _, rs in shown for r in rs])
    for ax, ((family, dtype), panel) in zip(axes, shown, strict=False):
        _draw_panel(ax, panel, environment, f"{family} · {dtype}", colors)
    for ax in axes[len(shown) :]:
        fig.delaxes(ax)
    title = f"{op} on {_device_text(environment)}: achieved rate per size"
    if left_out:
        names = ", ".join(f"{f} {d}" for f, d in left_out[:3])
        more = f" and {len(left_out) - 3} more" if len(left_out) > 3 else ""
        title += f"\n{len(left_out)} panels not shown: {names}{more}"
    fig.suptitle(title, fontsize=11)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG with a :data:`PNG_COLORS`-color palette (a third to a quarter
    of the full-color file's bytes for these line plots; Pillow comes with matplotlib)."""
    from PIL import Image

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=PNG_COLORS).save(out, format="png", optimize=True)
    return out


def plot_op(
    op: str, environment: Mapping[str, Any], records: Sequence[Record], path: str | Path
) -> Path | None:
    """Write ``op``'s PNG to ``path`` (parents created): achieved GB/s or TFLOP/s against the
    swept size per ``(family, dtype)``, one line per implementation, the measured ceiling
    dashed. Returns the path, or ``None`` (nothing written) when ``op`` has nothing to plot."""
    _check_inputs("plot_op", environment, records)
    fig = build_op_figure(op, environment, records)
    return None if fig is None else _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Speedup figure.


def _speedup_bars(records: Sequence[Record]) -> list[tuple[str, str, float, int]]:
    """``(op, peer, geometric mean speedup, rows)`` of every op and peer, ops in order."""
    bars = []
    for op in ops_in_order(records):
        for peer, (mean, n) in speedup_summary(records, op).items():
            bars.append((op, peer, mean, n))
    return bars


def _log_ticks(lo: float, hi: float) -> list[float]:
    candidates = [m * 10.0**e for e in range(-3, 4) for m in (1, 2, 5)]
    return [t for t in candidates if lo <= t <= hi]


def build_speedup_figure(
    environment: Mapping[str, Any], records: Sequence[Record]
) -> Figure | None:
    """The figure of :func:`plot_speedups` (an Agg canvas attached), or ``None`` when no
    speedup of fusedops over a peer was measured: one horizontal bar per (op, peer) from 1.0
    to the geometric-mean speedup, bars of one op together and in one color."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    bars = _speedup_bars(records)
    if not bars:
        return None
    fig = Figure(figsize=(7.5, 1.4 + 0.32 * len(bars)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ops = list(dict.fromkeys(op for op, *_ in bars))
    palette = _PEER_COLORS
    ys, y, previous = [], 0.0, None
    for op, *_ in bars:
        if previous is not None and op != previous:
            y += 0.6
        ys.append(y)
        y += 1.0
        previous = op
    values = [mean for _, _, mean, _ in bars]
    colors = [palette[ops.index(op) % len(palette)] for op, *_ in bars]
    ax.barh(ys, [v - 1.0 for v in values], left=1.0, height=0.75, color=colors)
    ax.axvline(1.0, color="black", linewidth=1.0)
    lo = min([*values, 1.0]) / 1.6
    hi = max([*values, 1.0]) * 1.6
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(_log_ticks(lo, hi)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}x"))
    ax.xaxis.set_minor_locator(NullLocator())
    for yy, value in zip(ys, values, strict=True):
        right = value >= 1.0
        ax.text(
            value * (1.03 if right else 1 / 1.03),
            yy,
            f"{value:.2f}x",
            va="center",
            ha="left" if right else "right",
            fontsize=8,
        )
    ax.set_yticks(ys, [f"{op}: vs {peer} ({n})" for op, peer, _, n in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup of fusedops (x, > 1 = faster)")
    ax.grid(True, axis="x", alpha=0.3)
    # On the figure, not the axes: the long y labels push the axes right, and a title centred
    # over them would run off the right edge.
    fig.suptitle(
        f"fusedops on {_device_text(environment)}\n"
        "geometric-mean speedup per op and peer (cases per bar in brackets)",
        fontsize=10,
    )
    return fig


def plot_speedups(
    environment: Mapping[str, Any], records: Sequence[Record], path: str | Path
) -> Path | None:
    """Write the speedup bar chart (:func:`build_speedup_figure`) to ``path`` (parents
    created); returns the path, or ``None`` (nothing written) when there are no speedups."""
    _check_inputs("plot_speedups", environment, records)
    fig = build_speedup_figure(environment, records)
    return None if fig is None else _save(fig, path)


def write_plots(
    out_dir: str | Path, environment: Mapping[str, Any], records: Sequence[Record]
) -> dict[str, Path]:
    """Write ``<op>.png`` for each op with something to plot and ``speedup.png`` into
    ``out_dir`` (created); returns ``{op or "speedup": path}`` of the files written."""
    _check_inputs("write_plots", environment, records)
    folder = Path(out_dir)
    written: dict[str, Path] = {}
    for op in ops_in_order(records):
        path = plot_op(op, environment, records, folder / f"{op}.png")
        if path is not None:
            written[op] = path
    path = plot_speedups(environment, records, folder / "speedup.png")
    if path is not None:
        written["speedup"] = path
    return written


def _check_inputs(name: str, environment: Any, records: Any) -> None:
    if not isinstance(environment, Mapping):
        raise TypeError(f"{name}: environment must be a mapping, got {type(environment).__name__}")
    for record in records:
        if not isinstance(record, Record):
            raise TypeError(f"{name}: records must be Record objects, got {record!r}")
