"""``fusedops bench`` end to end, in-process, on a tiny sweep: the arguments, the outputs a run
writes (results.json / .csv, report.md, PNGs), the exit status, ``bench compare`` on two runs,
and the runner's noisy rerun (:func:`~fusedops.benchmarking.runner.time_impl`).

Every op's sweep is replaced by one tiny spec per tier (``quick``: the specs below; ``default``
and ``full``: one spec named after the tier), so a whole run takes seconds on a CPU. The peers
that are third-party packages are made unimportable, so the run is the same whether or not
they are installed. Nothing here asserts on a timing's value.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import io
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

import fusedops
from fusedops import cli
from fusedops.benchmarking import command, environment, peers, results, runner, sweeps
from fusedops.benchmarking.attention_cases import DecodeSpec
from fusedops.benchmarking.cases import AttentionSpec, EmbeddingSpec, Int8Spec, RopeSpec
from fusedops.benchmarking.ceilings import Ceilings
from fusedops.benchmarking.factorized_cases import FactorizedSpec
from fusedops.benchmarking.harness import Impl, dtype_name
from fusedops.benchmarking.peers import PEER_GROUPS
from fusedops.benchmarking.results import ERROR, MISMATCH, NOT_INSTALLED, OK, Record
from fusedops.benchmarking.timing import Timing

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
FAST = ["--device", "cpu", "--rep-ms", "5", "--warmup-ms", "1", "--quiet"]

# One tiny spec per op for --quick. RoPE keeps compile=True: --quick must leave compile out.
QUICK: dict[str, list] = {
    "embedding": [EmbeddingSpec("tiny", 1, 16, 32, 100, pos_rows=64, compile=False)],
    "int8": [Int8Spec("tiny", 1, 8, 16, 11, group_size=8, compile=False)],
    "factorized": [FactorizedSpec("tiny", 1, 8, 16, 13, 3, hot=2, compile=False)],
    "rope": [RopeSpec("tiny", 1, 4, 2, 16, 32)],
    "attention": [AttentionSpec("tiny", 1, 4, 2, 32, 32, 32, compile=False)],
    "decode": [DecodeSpec("tiny", 1, 64, heads_q=4, heads_kv=2, dim=32)],
    "model": [],
}
RUN_OPS = ("embedding", "int8", "factorized", "rope", "attention", "decode")
# The records of the tiny run on a CPU, per op, in order (third-party peers unimportable).
EXPECTED_IMPLS = {
    "embedding": ["fusedops", "eager", "liger"],
    "int8": ["fusedops", "F.embedding", "eager"],
    "factorized": ["fusedops", "dense", "eager"],
    "rope": ["fusedops", "eager", "liger"],
    "attention": ["fusedops", "sdpa", "eager", "flash_attn"],
    "decode": ["fusedops", "sdpa", "eager", "flash_attn"],
}


def _tiny_sweep(op: str):
    """The sweep function of ``op``: :data:`QUICK` for ``quick``, else one spec named after
    the tier (seen only by ``--list``)."""

    def specs(tier: sweeps.Tier) -> list:
        if tier == "quick" or not QUICK[op]:
            return list(QUICK[op])
        return [dataclasses.replace(QUICK[op][0], name=f"{tier}-tier")]

    return specs


@pytest.fixture(scope="module", autouse=True)
def tiny_sweeps():
    """Every op's sweep replaced by :func:`_tiny_sweep`; liger and flash_attn unimportable."""
    with pytest.MonkeyPatch.context() as mp:
        for op in sweeps.OPS:
            mp.setitem(sweeps.SWEEPS, op, _tiny_sweep(op))
        mp.setitem(sys.modules, "liger_kernel", None)
        mp.setitem(sys.modules, "flash_attn", None)
        yield


def _bench(argv: list[str]) -> tuple[int, str, str]:
    """``fusedops.cli.main(["bench", *argv])`` with stdout / stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["bench", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    """The tiny --quick run of five ops, with the real ceilings and plots."""
    out_dir = tmp_path_factory.mktemp("bench") / "run"
    argv = ["--quick", "--ops", ",".join(RUN_OPS), "--out", str(out_dir), *FAST]
    code, stdout, stderr = _bench(argv)
    env, records = results.read_json(out_dir / "results.json")
    return SimpleNamespace(
        code=code, stdout=stdout, stderr=stderr, out=out_dir, env=env, records=records
    )


@pytest.fixture
def fake_ceilings(monkeypatch) -> Ceilings:
    """Ceilings without measuring (10 GB/s, 1 TFLOP/s in every dtype) and no plots (as when
    matplotlib is missing): a run of one case then takes a fraction of a second."""
    made: list[Ceilings] = []

    def measure(device, dtypes):
        made.append(Ceilings(10.0, {dtype_name(d): 1.0 for d in dtypes}))
        return made[-1]

    monkeypatch.setattr(command, "measure_ceilings", measure)
    monkeypatch.setitem(sys.modules, "fusedops.benchmarking.plots", None)
    return made


# ---------------------------------------------------------------------------------------------
# A whole run


def test_run_exits_0_and_names_what_it_wrote(run):
    assert run.code == 0, run.stderr
    names = ["results.json", "results.csv", "report.md"]
    written = run.stdout.strip().splitlines()[-1]
    assert written.startswith("wrote ") and written.endswith(" s")
    for name in names:
        assert str(run.out / name) in written
    assert "FAILED" not in run.stderr
    assert "fusedops bench:" not in run.stderr  # --quiet: no progress lines


def test_results_json_environment(run):
    raw = json.loads((run.out / "results.json").read_text())
    assert raw["schema"] == results.SCHEMA
    env = run.env
    assert env["device"] == "cpu" and env["device_type"] == "cpu"
    assert env["torch"] == torch.__version__ and env["fusedops"] == fusedops.__version__
    assert env["device_name"] == environment.cpu_model()
    assert env["sweep"] == "quick" and env["ops"] == list(RUN_OPS)
    assert env["dtypes"] == ["float32"]  # the CPU default
    assert env["command"].startswith("fusedops bench --quick --ops ")
    assert env["timing"]["warmup_ms"] == 1.0 and env["timing"]["rep_ms"] == 5.0
    assert "perf_counter" in env["timing"]["method"]
    ceilings = env["ceilings"]
    assert ceilings["copy_gb_s"] > 0
    assert set(ceilings["matmul_tflop_s"]) == {"float32"}
    assert ceilings["matmul_tflop_s"]["float32"] > 0
    assert env["seconds"] >= 0
    # --quick leaves compile out; the others ran or say why not.
    peers = env["peers"]
    assert list(peers) == [p for p in PEER_GROUPS if p != "compile"]
    assert peers["eager"] == "ran (F.embedding, dense, eager)"
    assert peers["sdpa"] == "ran (sdpa)"
    assert peers["liger"].startswith("not installed: liger_kernel (liger-kernel)")
    assert peers["flash_attn"].startswith("not installed: flash_attn (flash-attn)")


def test_records_per_op_and_missing_peers(run):
    impls: dict[str, list[str]] = defaultdict(list)
    for r in run.records:
        impls[r.op].append(r.impl)
        assert r.dtype == "float32"
    assert dict(impls) == EXPECTED_IMPLS
    # RoPE's spec has compile=True, yet --quick does not run it.
    assert all(r.impl != "compile" for r in run.records)
    missing = [r for r in run.records if r.impl in ("liger", "flash_attn")]
    assert len(missing) == 4
    for r in missing:
        assert r.status == NOT_INSTALLED and "is not importable" in r.detail
        assert r.median_ms is None and r.speedup == {} and r.gb_s is None


def test_records_timings_rates_ceilings_and_speedups(run):
    ceilings = run.env["ceilings"]
    cases: dict[tuple, list[Record]] = defaultdict(list)
    for r in run.records:
        cases[(r.op, r.case, r.shape, r.dtype)].append(r)
    assert len(cases) == len(RUN_OPS)
    for rows in cases.values():
        fused = rows[0]
        assert (fused.impl, fused.status, fused.backend) == ("fusedops", OK, "cpp")
        ok = {r.impl: r for r in rows if r.status == OK}
        assert len(ok) >= 2  # fusedops and at least its eager baseline
        for r in ok.values():
            assert r.median_ms > 0 and r.p20_ms <= r.median_ms <= r.p80_ms
            assert r.reps >= runner.TimingPlan().min_reps
            assert r.max_err is not None and r.max_err < 1e-3
            assert set(r.speedup) == set(ok) - {r.impl}
            for other, ratio in r.speedup.items():
                assert ratio == pytest.approx(ok[other].median_ms / r.median_ms)
            if r.op == "attention":
                assert r.gb_s is None and r.tflop_s > 0
                assert r.ceiling == "matmul_float32"
                assert r.ceiling_value == ceilings["matmul_tflop_s"]["float32"]
                assert r.frac_of_ceiling == pytest.approx(r.tflop_s / r.ceiling_value)
            else:
                assert r.tflop_s is None and r.gb_s > 0
                assert (r.ceiling, r.ceiling_value) == ("copy", ceilings["copy_gb_s"])
                assert r.frac_of_ceiling == pytest.approx(r.gb_s / r.ceiling_value)
        for r in rows:
            assert r.family and r.size > 0 and r.size_name
            if r.impl != "fusedops":
                assert r.backend == ""


def test_results_csv_matches_the_json(run):
    with (run.out / "results.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(run.records)
    header = list(rows[0])
    speedup_columns = [c for c in header if c.startswith("speedup_vs_")]
    assert set(speedup_columns) == {
        "speedup_vs_fusedops",
        "speedup_vs_eager",
        "speedup_vs_F.embedding",
        "speedup_vs_dense",
        "speedup_vs_sdpa",
    }
    assert "speedup" not in header
    for row, record in zip(rows, run.records, strict=True):
        assert (row["op"], row["impl"], row["status"]) == (record.op, record.impl, record.status)
        if record.median_ms is None:
            assert row["median_ms"] == "" and row["speedup_vs_eager"] == ""
        else:
            assert row["median_ms"] == f"{record.median_ms:.4g}"
        for peer, ratio in record.speedup.items():
            assert row[f"speedup_vs_{peer}"] == f"{ratio:.4g}"


def test_report_and_plots(run):
    report = (run.out / "report.md").read_text()
    assert report.startswith("# fusedops bench: ")
    for op in RUN_OPS:
        assert f"\n## {op}\n" in report
    assert "not installed" in report
    pngs = sorted(p.name for p in run.out.glob("*.png"))
    if not HAS_MATPLOTLIB:
        assert pngs == [] and "no plots" in run.stderr
        return
    assert pngs == sorted([f"{op}.png" for op in RUN_OPS] + ["speedup.png"])
    for name in pngs:
        assert (run.out / name).read_bytes().startswith(PNG_SIGNATURE)
        assert f"({name})" in report  # embedded in the report


# ---------------------------------------------------------------------------------------------
# --list and -k


def test_list_prints_case_ids_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default --out would land here
    out = tmp_path / "never"
    assert cli.main(["bench", "--quick", "--list", "--out", str(out), *FAST]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "embedding: embedding-tiny-float32-B1-S16-D32-V100-P64",
        "int8: int8_embedding-tiny-float32-B1-S8-D16-V11-g8",
        "factorized: factorized-tiny-float32-B1-S8-D16-V13-r3-K2",
        "rope: rope-tiny-float32-B1-Hq4-Hk2-S16-D32",
        "attention: attention-tiny-float32-B1-Hq4-Hkv2-Sq32-Sk32-D32",
        "decode: attention_decode-tiny-float32-B1-Hq4-Hkv2-Sk64-D32-dense-splitsauto",
    ]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_list_tiers_dtypes_and_filters(capsys):
    def listed(*argv: str) -> list[str]:
        assert cli.main(["bench", "--list", *argv, *FAST]) == 0
        return capsys.readouterr().out.splitlines()

    assert listed("--ops", "rope") == ["rope: rope-default-tier-float32-B1-Hq4-Hk2-S16-D32"]
    assert listed("--ops", "rope", "--full") == ["rope: rope-full-tier-float32-B1-Hq4-Hk2-S16-D32"]
    assert listed("--quick", "--ops", "rope,embedding", "--dtype", "bf16,fp32,float32") == [
        "embedding: embedding-tiny-bfloat16-B1-S16-D32-V100-P64",
        "embedding: embedding-tiny-float32-B1-S16-D32-V100-P64",
        "rope: rope-tiny-bfloat16-B1-Hq4-Hk2-S16-D32",
        "rope: rope-tiny-float32-B1-Hq4-Hk2-S16-D32",
    ]  # ops in run order, dtypes in the given order, duplicates dropped
    assert listed("--quick", "-k", "Sk64", "-k", "int8_") == [
        "int8: int8_embedding-tiny-float32-B1-S8-D16-V11-g8",
        "decode: attention_decode-tiny-float32-B1-Hq4-Hkv2-Sk64-D32-dense-splitsauto",
    ]


def test_no_matching_case_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--quick", "-k", "no-such-case", *FAST])
    assert exc.value.code == 2
    assert "no case matches the selected --ops / -k" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Failures of fusedops itself, peers left out, bad arguments


def _wrong_rotary(monkeypatch) -> None:
    right = fusedops.apply_rotary

    def wrong(*args, **kwargs):
        q, k = right(*args, **kwargs)
        return q + 1e-2, k

    monkeypatch.setattr(fusedops, "apply_rotary", wrong)


def test_wrong_fusedops_output_exits_1_and_is_recorded(tmp_path, monkeypatch, fake_ceilings):
    _wrong_rotary(monkeypatch)
    code, stdout, stderr = _bench(["--quick", "--ops", "rope", "--out", str(tmp_path), *FAST])
    assert code == 1
    env, records = results.read_json(tmp_path / "results.json")
    fused = records[0]
    assert (fused.impl, fused.status) == ("fusedops", MISMATCH)
    assert "beyond" in fused.detail and fused.median_ms is None and fused.max_err > 0
    assert [r.impl for r in records] == ["fusedops", "liger"]  # eager not run after a mismatch
    assert f"FAILED rope tiny float32 {fused.shape}: mismatch: " in stderr
    assert "no plots" in stderr  # plots unavailable: the rest is still written
    assert (tmp_path / "report.md").exists() and "wrote " in stdout
    assert env["ceilings"] == fake_ceilings[0].to_dict()


def test_fusedops_raising_exits_1_with_an_error_record(tmp_path, monkeypatch, fake_ceilings):
    def broken(*args, **kwargs):
        raise RuntimeError("rotary   kernel\nexploded")

    monkeypatch.setattr(fusedops, "apply_rotary", broken)
    argv = ["--quick", "--ops", "rope,embedding", "--out", str(tmp_path), *FAST]
    code, _, stderr = _bench(argv)
    assert code == 1
    _, records = results.read_json(tmp_path / "results.json")
    by_op = defaultdict(list)
    for r in records:
        by_op[r.op].append(r)
    assert [(r.impl, r.status) for r in by_op["rope"]] == [("fusedops", ERROR)]
    assert by_op["rope"][0].detail == "RuntimeError: rotary kernel exploded"
    assert by_op["rope"][0].backend == "cpp"
    assert by_op["embedding"][0].status == OK  # the run went on
    assert stderr.count("FAILED") == 1


def test_compare_selects_peer_groups(tmp_path, fake_ceilings):
    argv = ["--quick", "--ops", "int8,rope", "--compare", "liger", "--out", str(tmp_path), *FAST]
    assert _bench(argv)[0] == 0
    env, records = results.read_json(tmp_path / "results.json")
    assert [(r.op, r.impl) for r in records] == [
        ("int8", "fusedops"),
        ("rope", "fusedops"),
        ("rope", "liger"),
    ]
    assert records[0].speedup == {} and records[0].status == OK
    assert list(env["peers"]) == ["liger"] and env["peers"]["liger"].startswith("not installed")


def test_peer_selection_by_tier(tmp_path, monkeypatch, fake_ceilings):
    """--quick runs every peer group but compile; without it, and with an explicit --compare,
    compile is selected (seen by the runner; not run here)."""
    seen: list[list[str]] = []

    def fake_run_case(case, device, *, ceilings, plan, peers, op):
        seen.append(list(peers))
        family, size, size_name = case.spec.axis
        return [Record(op, case.name, family, size, size_name, case.shape,
                       dtype_name(case.dtype), "fusedops", median_ms=1.0)]  # fmt: skip

    monkeypatch.setattr(command, "run_case", fake_run_case)
    monkeypatch.setattr(torch._dynamo, "reset", lambda: None)
    for extra in (["--quick"], [], ["--quick", "--compare", "compile,eager"], ["--full"]):
        argv = ["--ops", "rope", *extra, "--out", str(tmp_path / str(len(seen))), *FAST]
        assert _bench(argv)[0] == 0
    no_compile = [p for p in PEER_GROUPS if p != "compile"]
    assert seen == [no_compile, list(PEER_GROUPS), ["eager", "compile"], list(PEER_GROUPS)]
    env, _ = results.read_json(tmp_path / "1" / "results.json")
    assert env["sweep"] == "default"
    assert env["peers"]["compile"] == "not applicable to the selected ops"


def test_out_that_is_a_file_is_an_argument_error(tmp_path, fake_ceilings, capsys):
    """Checked before the sweep: not after it, when the results would be lost."""
    path = tmp_path / "results"
    path.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--quick", "--ops", "int8", "--out", str(path), *FAST])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err
    assert fake_ceilings == []  # nothing was measured


def test_installed_peer_without_its_function_does_not_fail_the_run(
    tmp_path, monkeypatch, fake_ceilings
):
    """A flash_attn that lacks flash_attn_func (flash-attn 1.x) where the adapter can bind (as
    on CUDA): reported on its own row, fusedops still ok, exit 0."""
    monkeypatch.setitem(sys.modules, "flash_attn", ModuleType("flash_attn"))
    monkeypatch.setattr(peers, "require_cuda", lambda device, what: None)
    argv = ["--quick", "--ops", "attention", "--dtype", "bf16", "--compare", "flash_attn"]
    code, _, stderr = _bench([*argv, "--out", str(tmp_path), *FAST])
    _, records = results.read_json(tmp_path / "results.json")
    assert (records[0].impl, records[0].status) == ("fusedops", OK), records[0].detail
    assert code == 0, stderr
    assert "flash_attn_func" in records[1].detail


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ops", "rope,conv"], "--ops: unknown 'conv'"),
        (["--ops", ","], "--ops: unknown empty list"),
        (["--dtype", "int8"], "--dtype: unknown 'int8'"),
        (["--dtype", "fp32,half"], "--dtype: unknown 'half'"),
        (["--quick", "--full"], "argument --full: not allowed with argument --quick"),
        (["--device", "nonsense"], "--device: not a device: 'nonsense'"),
        (["--device", "meta"], "--device: 'meta' is not supported"),
        (["--rep-ms", "0"], "argument --rep-ms: expected a positive finite time in ms, got 0"),
        (["--rep-ms", "-1"], "argument --rep-ms: expected a positive finite time in ms, got -1"),
        (["--rep-ms", "nan"], "argument --rep-ms: expected a positive finite time in ms"),
        (["--rep-ms", "inf"], "argument --rep-ms: expected a positive finite time in ms"),
        (["--warmup-ms", "soon"], "argument --warmup-ms: expected milliseconds, got 'soon'"),
        (["--compare", "eager,triton"], "--compare: unknown 'triton'"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--list", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fusedops bench") and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_device_without_cuda_is_an_argument_error(capsys):
    for name in ("cuda", "cuda:1"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["bench", "--list", "--device", name])
        assert exc.value.code == 2
        assert f"--device {name}: CUDA is not available on this machine" in capsys.readouterr().err


def test_default_out_dir_is_named_after_the_device_and_date():
    path = command.default_out_dir({"device_name": "NVIDIA H100 80GB HBM3 (SXM)"})
    assert path.parent == Path("bench-results")
    assert path.name.startswith("nvidia-h100-80gb-hbm3-sxm-")
    assert path.name.endswith(time.strftime("%Y-%m-%d"))
    assert command.default_out_dir({"device_name": "???"}).name.startswith("device-")


# ---------------------------------------------------------------------------------------------
# bench compare


def test_bench_compare_of_two_runs(run, tmp_path, capsys):
    env, records = results.read_json(run.out / "results.json")
    for r in records:
        if r.median_ms is not None:
            r.median_ms *= 0.5
    faster = results.write_json(tmp_path / "b" / "results.json", env, records)
    a = run.out / "results.json"
    assert cli.main(["bench", "compare", str(a), str(faster)]) == 0
    text = capsys.readouterr().out
    assert f"A = {a}, B = {faster}" in text and "differs: nothing" in text
    # One table row per timed record, each with the ratio A / B = 2.00 last.
    rows = [line.split() for line in text.splitlines() if line.split()[1:2] == ["tiny"]]
    timed = [(r.op, r.impl) for r in records if r.status == OK]
    assert [(row[0], row[-4]) for row in rows] == timed
    assert all(row[-1] == "2.00" for row in rows)
    # The op column is as wide as the longest op name ("factorized").
    assert "  rope        fusedops 2.00 (1 rows), eager 2.00 (1 rows)\n" in text
    not_ok = len(records) - len(timed)
    assert f"{not_ok} rows not ok in both runs (same status) are not shown" in text


def test_bench_compare_bad_paths_exit_2(run, tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert cli.main(["bench", "compare", str(run.out / "results.json"), str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"fusedops bench compare: {missing}: not a readable")
    assert captured.out == ""
    assert cli.main(["bench", "compare", str(missing)]) == 2
    assert "expected two results.json files" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The runner's timing


class _Entered:
    """A context factory counting how often it was entered (once per measurement)."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def __call__(self):
        self.count += 1
        yield


def test_time_impl_reruns_an_alternating_call_and_flags_it_noisy():
    calls = [0]

    def alternating() -> None:  # every other call sleeps 2 ms: p80 / p20 is far above 1.15
        calls[0] += 1
        if calls[0] % 2:
            time.sleep(2e-3)

    entered = _Entered()
    impl = Impl("alternating", alternating, context=entered)
    plan = runner.TimingPlan(warmup_ms=1, rep_ms=5, min_reps=10, max_reps=20)
    timing, noisy = runner.time_impl(impl, torch.device("cpu"), plan)
    assert entered.count == 2  # measured, then measured again
    assert noisy and runner.spread(timing) > runner.NOISY_SPREAD
    assert 10 <= timing.reps <= 20 and len(timing.samples_ms) == timing.reps
    assert calls[0] >= 2 * 10  # at least min_reps timed calls per measurement


def _timing(p20: float, p80: float) -> Timing:
    return Timing((p20 + p80) / 2, p20, p80, p20, (p20 + p80) / 2, 10)


@pytest.mark.parametrize(
    ("spreads", "measured", "kept", "noisy"),
    [
        ([(1.0, 1.1)], 1, 0, False),  # tight: measured once
        ([(1.0, 2.0), (1.0, 1.05)], 2, 1, False),  # noisy, the rerun is tight: kept, not noisy
        ([(1.0, 1.5), (1.0, 3.0)], 2, 0, True),  # both noisy: the tighter first one, flagged
        ([(1.0, 3.0), (1.0, 1.5)], 2, 1, True),  # both noisy: the tighter rerun, flagged
    ],
)
def test_time_impl_keeps_the_tighter_measurement(monkeypatch, spreads, measured, kept, noisy):
    timings = [_timing(*s) for s in spreads]
    given: list[dict] = []

    def fake_measure(fn, **kwargs):
        given.append(kwargs)
        return timings[len(given) - 1]

    monkeypatch.setattr(runner, "measure", fake_measure)
    plan = runner.TimingPlan(warmup_ms=3, rep_ms=40, min_reps=7, max_reps=99)
    timing, flagged = runner.time_impl(Impl("x", lambda: None), torch.device("cpu"), plan)
    assert len(given) == measured
    assert timing is timings[kept] and flagged is noisy
    assert given[0] == {
        "device": torch.device("cpu"),
        "warmup_time": 3e-3,
        "min_time": 40e-3,
        "min_reps": 7,
        "max_reps": 99,
    }


def test_spread_of_a_zero_p20_is_one():
    assert runner.spread(_timing(0.0, 5.0)) == 1.0
    assert runner.spread(_timing(2.0, 3.0)) == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------
# The environment header


def test_environment_describe_cpu():
    env = environment.describe("cpu")
    assert set(env) == {
        "device", "device_type", "device_name", "sm_count", "compute_capability", "cpu_model",
        "threads", "memory_bytes", "driver", "cuda", "torch", "triton", "fusedops", "python",
        "platform", "git_commit", "date",
    }  # fmt: skip
    assert (env["device"], env["device_type"]) == ("cpu", "cpu")
    assert env["device_name"] == env["cpu_model"] == environment.cpu_model() != ""
    assert env["sm_count"] is None and env["compute_capability"] is None and env["driver"] is None
    assert env["threads"] == torch.get_num_threads()
    assert env["memory_bytes"] is None or env["memory_bytes"] > 2**20
    assert env["torch"] == torch.__version__ and env["fusedops"] == fusedops.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["date"].endswith("+00:00")
    json.dumps(env)  # JSON-ready
