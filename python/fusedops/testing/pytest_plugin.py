"""A pytest plugin that starts the selected tests' ahead-of-time GPU compiles in the background
as soon as collection ends, so that they run beside the rest of the suite.

A test module takes part by marking its tests ``gpu_compile`` and defining ``compile_jobs()``,
which returns its `CompileJob` s by family; the tests then find the results compiling or done
(`compile_many` waits for a job already in flight). Enable it with
``pytest_plugins = ["fusedops.testing.pytest_plugin"]`` in the conftest, after the test set-up
has chosen Triton's interpreter mode: importing it imports fusedops and its kernels (so not with
``pytest -p``, which loads plugins before any conftest).
"""

from __future__ import annotations

from typing import Any

from fusedops.testing.gpu_compile import prefetch


def pytest_collection_finish(session: Any) -> None:
    if session.config.option.collectonly:
        return
    modules = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if item.get_closest_marker("gpu_compile") and hasattr(module, "compile_jobs"):
            modules[module.__name__] = module
    jobs = [
        job
        for _, module in sorted(modules.items())
        for family in module.compile_jobs().values()
        for job in family
    ]
    if jobs:
        prefetch(jobs)
