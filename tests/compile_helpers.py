"""What the ahead-of-time GPU compile tests of the kernel modules share: the target archs, the
dtypes, and `CompileSuite`, which makes a module's compile queue, its per-family and bf16-twin
tests and the failing no-int64 twin of its offset check from the module's jobs and its check of
one compile."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import torch

from fusedops.testing import (
    CompileJob,
    GpuCompileReport,
    assert_same_figures,
    compile_families,
    compile_many,
    module_without_int64_casts,
    report_compiles,
    with_dtype_twins,
)

ARCHS = (80, 90)
DTYPES = {"fp32": 4, "fp16": 2}  # name -> bytes per element (bf16: twins of fp16 jobs)
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# bf16 vs fp16 registers of one config (bf16 widens with shifts, fp16 with cvt).
REGISTER_SLACK = 16

Check = Callable[[CompileJob, GpuCompileReport], None]


@dataclasses.dataclass(frozen=True)
class CompileSuite:
    """The compile tests of one kernel module, from its jobs and its check of one compile.

    The module binds what pytest and ``fusedops.testing.pytest_plugin`` look for to its own
    names (the plugin calls ``compile_jobs()``; the tests take the fixture ``compiled``)::

        SUITE = CompileSuite("rope", FAMILIES, _fp16_twinned, _labels, _check, REGISTER_SLACK)
        compile_jobs = SUITE.compile_jobs
        compiled, test_every_config_compiles_clean, test_bf16_twins_match_fp16 = SUITE.tests()

    Attributes:
        name: the reports go to ``gpu_compile_<name>_<family>.txt`` and
            ``gpu_compile_<name>_bf16.txt`` (`report_compiles`).
        families: family name -> the function that makes its jobs.
        fp16_twinned: makes the fp16 jobs whose bf16 twins are compiled.
        labels: what leads each job's line of the report (e.g. its dtypes).
        check: raises AssertionError unless one compile is clean; run on every family's
            compiles and every bf16 twin.
        register_slack: by how many registers a bf16 twin may differ from its fp16 job (a
            number, or a function of the job); every family compile also keeps that many spare
            below the register limit, so that a twin within the slack cannot spill.
    """

    name: str
    families: Mapping[str, Callable[[], list[CompileJob]]]
    fp16_twinned: Callable[[], list[CompileJob]]
    labels: Callable[[Sequence[CompileJob]], list[str]]
    check: Check
    register_slack: int | Callable[[CompileJob], int] = 0

    def slack(self, job: CompileJob) -> int:
        """`register_slack` of ``job``."""
        slack = self.register_slack
        return slack if isinstance(slack, int) else slack(job)

    def compile_jobs(self) -> dict[str, list[CompileJob]]:
        """Every job by family, with the bf16 twins (the pytest plugin starts them in the
        background when collection ends)."""
        families = {name: make() for name, make in self.families.items()}
        return with_dtype_twins(families, self.fp16_twinned())

    def tests(self) -> tuple[Callable[..., object], ...]:
        """The module-scoped fixture ``compiled`` ((jobs, reports) by family, compiled in one
        queue), the test of each family (its report written, every compile passing `check`
        with `slack` registers to spare) and the test of the bf16 twins (their report written,
        each giving its fp16 job's figures, registers within `slack`, and passing `check`)."""

        @pytest.fixture(scope="module", name="compiled")
        def compiled():
            families = self.compile_jobs()
            return families, compile_families(families)

        @pytest.mark.parametrize("family", list(self.families))
        def test_families(compiled, family):
            jobs, reports = compiled[0][family], compiled[1][family]
            report_compiles(f"{self.name}_{family}", self.labels(jobs), reports)
            for job, report in zip(jobs, reports, strict=True):
                self.check(job, report)
                report.assert_clean(register_headroom=self.slack(job))

        def test_bf16_twins(compiled):
            jobs, reports = compiled[0]["bf16"], compiled[1]["bf16"]
            report_compiles(f"{self.name}_bf16", self.labels(jobs), reports)
            for job, report, twin in zip(jobs, reports, compiled[1]["fp16 twins"], strict=True):
                assert_same_figures(twin, report, register_slack=self.slack(job))
                self.check(job, report)

        return compiled, test_families, test_bf16_twins

    def assert_int64_check_catches_narrowing(
        self, module: types.ModuleType, jobs: Sequence[CompileJob], folder: Path
    ) -> None:
        """Every job (a kernel of ``module``) passes `check`; compiled from a copy of ``module``
        with its ``.to(tl.int64)`` casts removed (`module_without_int64_casts`, written to
        ``folder``), every one fails it on a 32-bit offset product."""
        narrow = module_without_int64_casts(module, str(folder))
        names = {id(obj): name for name, obj in vars(module).items()}
        narrowed = [
            dataclasses.replace(job, kernel=getattr(narrow, names[id(job.kernel)])) for job in jobs
        ]
        for job, report in zip(jobs, compile_many(jobs), strict=True):
            self.check(job, report)
        for job, report in zip(jobs, compile_many(narrowed), strict=True):
            with pytest.raises(AssertionError, match="32-bit product"):
                self.check(job, report)
