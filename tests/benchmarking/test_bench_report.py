"""The report side of ``fusedops bench``: ``report.md`` (markdown), the PNG plots and
``fusedops bench compare``, on a small hand-built run written to and read back from
``results.json``.

The synthetic run: two ops (embedding: GB/s against the copy ceiling; attention: TFLOP/s against
the bfloat16 matmul ceiling), two families each, three sizes, three timed impls. Embedding's
eager is 2x and compile 1.5x slower than fusedops everywhere; attention's eager is 1x, 2x, 4x
slower (geometric mean 2) and sdpa 2x faster, except one sdpa row that mismatches. Liger is
not installed; one fusedops row is noisy.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

import fusedops.benchmarking.comparison as compare
from fusedops.benchmarking import markdown, plots, results
from fusedops.benchmarking.results import MISMATCH, NOT_INSTALLED, Record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ENVIRONMENT = {
    "device": "cuda:0",
    "device_type": "cuda",
    "device_name": "Test GPU 80GB",
    "sm_count": 132,
    "compute_capability": [9, 0],
    "cpu_model": "Test CPU",
    "threads": 16,
    "memory_bytes": 80 * 2**30,
    "driver": "560.35",
    "cuda": "12.6",
    "torch": "2.7.0",
    "triton": "3.3.0",
    "fusedops": "0.1.0",
    "python": "3.11.7",
    "platform": "Linux-x86_64",
    "git_commit": "abc1234",
    "date": "2025-01-02T03:04:05",
    "command": "fusedops bench --sweep quick",
    "sweep": "quick",
    "ops": ["embedding", "attention"],
    "dtypes": ["float32", "bfloat16"],
    "timing": {"method": "cuda events", "warmup_ms": 25, "rep_ms": 100},
    "ceilings": {"copy_gb_s": 200.0, "matmul_tflop_s": {"float32": 50.0, "bfloat16": 400.0}},
    "peers": {
        "eager": "ok",
        "compile": "ok",
        "sdpa": "ok",
        "liger": "not installed (liger_kernel)",
    },
}

SIZES = (256, 1024, 4096)
EMBEDDING_FAMILIES = ("V=1000 D=64 learned", "V=1000 D=64 sinusoidal")
ATTENTION_FAMILIES = ("B=1 H=8 D=64 causal", "B=1 H=8 D=64 gqa4")
# slowdown of each peer against fusedops (peer median / fusedops median), per size index
EMBEDDING_SLOWDOWN = {"eager": (2.0, 2.0, 2.0), "compile": (1.5, 1.5, 1.5)}
ATTENTION_SLOWDOWN = {"eager": (1.0, 2.0, 4.0), "sdpa": (0.5, 0.5, 0.5)}


def _case_records(
    op: str,
    family: str,
    case: str,
    size: int,
    size_name: str,
    dtype: str,
    slowdowns: dict[str, float],
    rate: str,
) -> list[Record]:
    """Records of one case: fusedops, its timed peers (speedups filled in both ways)."""
    shape = f"{family} n={size}"
    base_ms = size / 1000
    medians = {"fusedops": base_ms} | {p: base_ms * s for p, s in slowdowns.items()}
    ceiling, ceiling_value = ("copy", 200.0) if rate == "gb_s" else ("matmul_bfloat16", 400.0)
    out = []
    for impl, median in medians.items():
        achieved = 100.0 * base_ms / median  # fusedops at 100 GB/s (or TFLOP/s)
        out.append(
            Record(
                op=op,
                case=case,
                family=family,
                size=size,
                size_name=size_name,
                shape=shape,
                dtype=dtype,
                impl=impl,
                detail="max abs err 1e-06 <= 1e-05",
                median_ms=median,
                p20_ms=median * 0.98,
                p80_ms=median * 1.02,
                reps=100,
                gb_s=achieved if rate == "gb_s" else None,
                tflop_s=achieved if rate == "tflop_s" else None,
                ceiling=ceiling,
                ceiling_value=ceiling_value,
                frac_of_ceiling=achieved / ceiling_value,
                speedup={o: m / median for o, m in medians.items() if o != impl},
                max_err=1e-6,
            )
        )
    return out


def make_records() -> list[Record]:
    records: list[Record] = []
    for family, case in zip(EMBEDDING_FAMILIES, ("learned", "sinusoidal"), strict=True):
        for i, size in enumerate(SIZES):
            slow = {p: s[i] for p, s in EMBEDDING_SLOWDOWN.items()}
            records += _case_records(
                "embedding", family, case, size, "tokens", "float32", slow, "gb_s"
            )
            records.append(
                Record(
                    "embedding",
                    case,
                    family,
                    size,
                    "tokens",
                    f"{family} n={size}",
                    "float32",
                    "liger",
                    status=NOT_INSTALLED,
                    detail="liger_kernel is not installed",
                )
            )
    for family, case in zip(ATTENTION_FAMILIES, ("causal", "gqa4"), strict=True):
        for i, size in enumerate(SIZES):
            slow = {p: s[i] for p, s in ATTENTION_SLOWDOWN.items()}
            mismatch = case == "gqa4" and size == SIZES[-1]
            if mismatch:
                del slow["sdpa"]
            recs = _case_records(
                "attention", family, case, size, "sequence length", "bfloat16", slow, "tflop_s"
            )
            if mismatch:
                recs.append(
                    Record(
                        "attention",
                        case,
                        family,
                        size,
                        "sequence length",
                        f"{family} n={size}",
                        "bfloat16",
                        "sdpa",
                        status=MISMATCH,
                        detail="max abs err 0.5 > 0.01",
                        max_err=0.5,
                    )
                )
            records += recs
    noisy = records[0]  # embedding learned 256 fusedops
    noisy.noisy = True
    noisy.p80_ms = noisy.p20_ms * 1.3
    return records


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, list[Record], Path]:
    """The synthetic run, after a round trip through results.json (and results.csv written)."""
    folder = tmp_path_factory.mktemp("run")
    records = make_records()
    path = results.write_json(folder / "results.json", ENVIRONMENT, records)
    csv_path = results.write_csv(folder / "results.csv", records)
    header = csv_path.read_text().splitlines()[0].split(",")
    assert "speedup_vs_eager" in header and "speedup_vs_sdpa" in header
    env, back = results.read_json(path)
    assert back == records and env == ENVIRONMENT
    return env, back, path


# ---------------------------------------------------------------------------------------------
# markdown


def test_geomean_and_speedup_summary(run):
    _, records, _ = run
    assert markdown.geomean([1.0, 2.0, 4.0]) == pytest.approx(2.0)
    assert markdown.geomean([2.0, 0.0, None, math.nan, 8.0]) == pytest.approx(4.0)
    assert markdown.geomean([]) is None
    emb = markdown.speedup_summary(records, "embedding")
    assert list(emb) == ["eager", "compile"]
    assert emb["eager"] == (pytest.approx(2.0), 6)
    assert emb["compile"] == (pytest.approx(1.5), 6)
    att = markdown.speedup_summary(records, "attention")
    assert att["eager"] == (pytest.approx(2.0), 6)  # (1 * 2 * 4) ** (1/3), twice
    assert att["sdpa"] == (pytest.approx(0.5), 5)  # the mismatching row has no speedup


def _table_after(text: str, heading: str) -> list[str]:
    """The markdown table lines of the section that starts with ``heading``."""
    section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_markdown_report_sections_tables_and_speedups(run):
    env, records, _ = run
    images = {"embedding": "plots/embedding.png", "speedup": "plots/speedup.png"}
    text = markdown.format_report(env, records, images)
    assert text.startswith("# fusedops bench: Test GPU 80GB (2025-01-02)\n")
    for needle in (
        "| device | Test GPU 80GB (`cuda:0`) |",
        "| SMs | 132 |",
        "| compute capability | 9.0 |",
        "| memory | 80.0 GiB |",
        "| torch | 2.7.0 |",
        "| git commit | `abc1234` |",
        "| command | `fusedops bench --sweep quick` |",
        "| timing | cuda events, warmup 25 ms, rep 100 ms |",
        "- copy: 200 GB/s",
        "- matmul bfloat16: 400 TFLOP/s",
        "| liger | not installed (liger_kernel) | 6 not installed |",
        "| sdpa | ok | 5 ok, 1 mismatch |",
        "| embedding | 2.00x (6) | 1.50x (6) | - |",
        "| attention | 2.00x (6) | - | 0.50x (5) |",
        "vs eager **2.00x** (6), vs compile **1.50x** (6)",
        "vs eager **2.00x** (6), vs sdpa **0.50x** (5)",
        "![embedding](plots/embedding.png)",
        "![fusedops speedups](plots/speedup.png)",
    ):
        assert needle in text, needle
    assert "![attention]" not in text  # no image given for it

    emb = _table_after(text, "## embedding")
    header = [c.strip() for c in emb[0].strip("|").split("|")]
    assert header == [
        "case", "shape", "dtype", "impl", "median ms", "p20-p80 ms", "GB/s", "% of copy",
        "vs eager", "vs compile", "max err", "note",
    ]  # fmt: skip
    assert len(emb) == 2 + 2 * 3 * 4  # header, rule, 6 cases x 4 impls
    first = [c.strip() for c in emb[2].strip("|").split("|")]
    assert first[:5] == [
        "learned",
        "`V=1000 D=64 learned n=256`",
        "float32",
        "**fusedops**",
        "0.256",
    ]
    assert first[6:10] == ["100", "50%", "2.00x", "1.50x"]
    assert first[11].startswith("noisy (p80/p20 1.30)")
    second = [c.strip() for c in emb[3].strip("|").split("|")]
    assert second[:4] == ["", "", "", "eager"]  # the case's group continues
    assert second[6:10] == ["50.0", "25%", "", ""]
    liger = [c.strip() for c in emb[5].strip("|").split("|")]
    assert liger[3:5] == ["liger", "**not installed**"]
    assert liger[11] == "liger_kernel is not installed"

    att = _table_after(text, "## attention")
    header = [c.strip() for c in att[0].strip("|").split("|")]
    assert "TFLOP/s" in header and "GB/s" not in header and "% of matmul" in header
    assert "vs sdpa" in header and "note" in header
    mismatch = [line for line in att if "**mismatch**" in line]
    assert len(mismatch) == 1
    assert "max abs err 0.5 > 0.01" in mismatch[0] and "| 0.5 |" in mismatch[0]


def test_markdown_tolerates_a_sparse_environment_and_writes(tmp_path, run):
    _, records, _ = run
    text = markdown.format_report({"device": "cpu"}, records[:4])
    assert "| device | cpu |" in text and "No ceilings measured." in text
    assert "| eager | ok | 1 ok |" in text  # availability from the records when not recorded
    empty = markdown.format_report({}, [])
    assert "No environment recorded." in empty and "No peers ran." in empty
    path = markdown.write_report(tmp_path / "out" / "report.md", ENVIRONMENT, records)
    assert path.read_text() == markdown.format_report(ENVIRONMENT, records)
    with pytest.raises(TypeError, match="format_report: records must be Record"):
        markdown.format_report(ENVIRONMENT, [{"op": "embedding"}])
    with pytest.raises(TypeError, match="format_report: environment must be a mapping"):
        markdown.format_report(None, records)


def test_markdown_escapes_table_cells():
    record = Record("rope", "a|b", "f", 1, "tokens", "B*H|D", "float32", "fusedops", median_ms=1.0)
    table = markdown.format_op_table([record], "rope")
    assert "a\\|b" in table and "`B*H\\|D`" in table
    assert markdown.sig(0.012345) == "0.0123" and markdown.sig(1234.5) == "1234"


# ---------------------------------------------------------------------------------------------
# plots


def test_write_plots_writes_pngs(tmp_path, run):
    env, records, _ = run
    model = Record("model", "smollm", "SmolLM2", 1, "tokens", "SmolLM2 T=1", "float32", "fusedops")
    model.median_ms = 10.0
    written = plots.write_plots(tmp_path / "plots", env, [*records, model])
    assert set(written) == {"embedding", "attention", "speedup"}  # model has no rate
    for name, path in written.items():
        assert path == tmp_path / "plots" / f"{name}.png"
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert 5_000 < len(data) < 400_000, (name, len(data))
    assert not (tmp_path / "plots" / "model.png").exists()
    assert plots.plot_op("model", env, [model], tmp_path / "m.png") is None


def _ceiling_lines(ax):
    return [line for line in ax.get_lines() if line.get_linestyle() == "--"]


def test_op_figure_panels_axes_and_ceiling(run):
    env, records, _ = run
    fig = plots.build_op_figure("embedding", env, records)
    assert len(fig.axes) == 2
    for ax, family in zip(fig.axes, EMBEDDING_FAMILIES, strict=True):
        assert ax.get_xscale() == "log"
        assert ax.get_xlabel().startswith("tokens")
        assert "GB/s" in ax.get_ylabel()
        assert family in ax.get_title()
        (ceiling,) = _ceiling_lines(ax)
        assert ceiling.get_label() == "copy ceiling 200 GB/s"
        assert list(ceiling.get_ydata()) == [200.0, 200.0]
        lines = {line.get_label(): line for line in ax.get_lines() if line is not ceiling}
        assert set(lines) == {"fusedops", "eager", "compile"}  # liger not installed: no line
        assert list(lines["fusedops"].get_xdata()) == list(SIZES)
        assert list(lines["eager"].get_ydata()) == pytest.approx([50.0] * 3)
        assert lines["fusedops"].get_linewidth() > lines["eager"].get_linewidth()
        assert ax.get_legend() is not None
    assert "Test GPU 80GB" in fig.get_suptitle() and "embedding" in fig.get_suptitle()

    att = plots.build_op_figure("attention", env, records)
    ax = att.axes[0]
    assert "TFLOP/s" in ax.get_ylabel() and ax.get_xlabel().startswith("sequence length")
    assert _ceiling_lines(ax)[0].get_label() == "matmul bfloat16 ceiling 400 TFLOP/s"


def test_op_figure_caps_panels_and_names_the_rest():
    def record(i: int, size: int) -> Record:
        family = f"fam{i}"
        shape = f"{family} {size}"
        return Record("rope", "c", family, size, "tokens", shape, "float32", "fusedops",
                      median_ms=1.0, gb_s=float(size))  # fmt: skip

    records = [record(i, s) for i in range(plots.MAX_PANELS + 2) for s in (16, 32)]
    fig = plots.build_op_figure("rope", {"ceilings": {"copy_gb_s": 64.0}}, records)
    assert len(fig.axes) == plots.MAX_PANELS
    assert "2 panels not shown: fam12 float32, fam13 float32" in fig.get_suptitle()
    # the ceiling comes from the environment when the records carry none
    assert _ceiling_lines(fig.axes[0])[0].get_label() == "copy ceiling 64.0 GB/s"


def test_speedup_figure_bars(run):
    env, records, _ = run
    fig = plots.build_speedup_figure(env, records)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "speedup of fusedops (x, > 1 = faster)"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [
        "embedding: vs eager (6)",
        "embedding: vs compile (6)",
        "attention: vs eager (6)",
        "attention: vs sdpa (5)",
    ]
    ends = [p.get_x() + p.get_width() for p in ax.patches]
    assert ends == pytest.approx([2.0, 1.5, 2.0, 0.5])
    assert [p.get_x() for p in ax.patches] == pytest.approx([1.0] * 4)
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.get_lines())
    texts = {t.get_text() for t in ax.texts}
    assert {"2.00x", "1.50x", "0.50x"} <= texts
    assert plots.build_speedup_figure(env, records[:0]) is None


# ---------------------------------------------------------------------------------------------
# compare


def _faster_b(records: list[Record]) -> list[Record]:
    """Run B: embedding 2x faster everywhere; one attention row gone, one new, one case in
    another dtype, one row erroring."""
    out = []
    for r in records:
        r = Record.from_dict(r.to_dict())
        if r.op == "embedding" and r.median_ms is not None:
            r.median_ms /= 2
        if r.op == "attention" and r.case == "causal" and r.size == 256 and r.impl == "eager":
            continue  # only in A
        if r.op == "attention" and r.case == "gqa4" and r.size == 256:
            r.dtype = "float16"
        if r.op == "attention" and r.case == "causal" and r.size == 1024 and r.impl == "sdpa":
            r.status, r.median_ms, r.detail = "error", None, "RuntimeError: boom"
        out.append(r)
    new = Record.from_dict(out[0].to_dict())
    new.case, new.shape = "tied", "V=1000 D=64 tied n=256"
    return [*out, new]


def test_compare_results_ratios_and_marks(run):
    env, records, _ = run
    b_env = dict(env, torch="2.8.0", git_commit="def5678")
    b_env["ceilings"] = {"copy_gb_s": 400.0, "matmul_tflop_s": {"bfloat16": 404.0}}
    cmp = compare.compare_results(env, records, b_env, _faster_b(records))
    emb = [r for r in cmp.rows if r.op == "embedding" and r.ratio is not None]
    assert len(emb) == 18 and all(r.ratio == pytest.approx(2.0) for r in emb)
    assert cmp.geomeans["embedding"]["fusedops"] == (pytest.approx(2.0), 6)
    assert cmp.geomeans["attention"]["fusedops"] == (pytest.approx(1.0), 5)
    notes = {(r.op, r.case, r.shape, r.impl): r.note for r in cmp.rows if r.note}
    assert notes[("attention", "causal", "B=1 H=8 D=64 causal n=256", "eager")] == "only in A"
    assert notes[("embedding", "tied", "V=1000 D=64 tied n=256", "fusedops")] == "only in B"
    assert notes[("attention", "gqa4", "B=1 H=8 D=64 gqa4 n=256", "fusedops")] == "dtype differs"
    assert notes[("attention", "causal", "B=1 H=8 D=64 causal n=1024", "sdpa")] == "B: error"
    assert cmp.hidden == 7  # liger not installed, one sdpa mismatch: the same in both
    assert cmp.differs == ["torch", "git commit", "copy ceiling", "matmul float32 ceiling"]
    copy = next(d for d in cmp.env if d.label == "copy ceiling")
    assert copy.ratio == pytest.approx(2.0) and copy.a == "200 GB/s" and copy.b == "400 GB/s"

    text = compare.format_comparison(cmp)
    assert "fusedops bench compare: A = A, B = B" in text
    assert "differs: torch, git commit, copy ceiling, matmul float32 ceiling" in text
    assert "float32->float16" not in text and "bfloat16->float16" in text
    for needle in ("only in A", "only in B", "dtype differs", "B: error", "7 rows not ok"):
        assert needle in text
    row = next(line for line in text.splitlines() if "V=1000 D=64 learned n=1024" in line)
    assert row.split()[-1] == "2.00"  # A 1.024 ms / B 0.512 ms
    assert "embedding  fusedops 2.00 (6 rows), compile 2.00 (6 rows), eager 2.00 (6 rows)" in text


def test_main_compare_reads_files_and_rejects_bad_ones(tmp_path, run):
    env, records, path_a = run
    path_b = results.write_json(tmp_path / "b.json", env, _faster_b(records))
    out, err = io.StringIO(), io.StringIO()
    assert compare.main_compare([str(path_a), str(path_b)], out=out, err=err) == 0
    assert f"A = {path_a}, B = {path_b}" in out.getvalue() and err.getvalue() == ""
    assert "differs: nothing" in out.getvalue()

    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other/9", "environment": {}, "records": []}')
    missing = tmp_path / "missing.json"
    for paths, named in (([path_a, bad], bad), ([missing, path_a], missing)):
        out, err = io.StringIO(), io.StringIO()
        assert compare.main_compare([str(p) for p in paths], out=out, err=err) == 2
        assert err.getvalue().startswith(f"fusedops bench compare: {named}: ")
        assert out.getvalue() == ""
    err = io.StringIO()
    assert compare.main_compare([str(path_a)], out=io.StringIO(), err=err) == 2
    assert "expected two results.json files" in err.getvalue()
