"""Worker subprocesses (compiled mode, ``TRITON_INTERPRET`` removed).

Each worker is ``python -c "from fusedops.testing._compile_worker import _worker_main; ..."``
speaking length-prefixed pickles on stdin/stdout: it reads ``(_KernelRef, _Spec)`` jobs, imports
each kernel afresh in compiled mode and answers ``("ok", facts)`` or ``("error", traceback)``.
`_get_pool` hands out a shared, lazily started pool of such workers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

import triton

from fusedops.testing._compile_cache import _default_triton_cache_dir, _ensure_triton_cache_dir
from fusedops.testing._errors import GpuCompileError
from fusedops.testing._kernel_source import _KernelRef, _resolve_ref
from fusedops.testing._triton_compile import _compile_facts, _Spec


def _write_frame(stream: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError
    (size,) = struct.unpack(">Q", header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if "TRITON_CACHE_DIR" not in env:
        env["TRITON_CACHE_DIR"] = (
            triton.knobs.cache.dir
            if "dir" in vars(triton.knobs.cache)
            else _default_triton_cache_dir()
        )
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class _Worker:
    """One compiled-mode Python subprocess speaking length-prefixed pickles on stdin/stdout."""

    def __init__(self) -> None:
        code = "from fusedops.testing._compile_worker import _worker_main; _worker_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_env(),
            cwd=os.getcwd(),
        )

    def call(self, ref: _KernelRef, spec: _Spec) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            _write_frame(self.proc.stdin, (ref, spec))
            status, payload = _read_frame(self.proc.stdout)
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.close()
            raise GpuCompileError(
                f"compile worker died (exit {self.proc.returncode}) on "
                f"{ref.module}.{ref.qualname}; see its stderr above"
            ) from exc
        if status != "ok":
            raise GpuCompileError(f"{ref.module}.{ref.qualname} {spec}:\n{payload}")
        return payload

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _WorkerPool:
    """``size`` worker subprocesses, started lazily, each driven by one thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        for _ in range(size):
            self._idle.put(None)
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="fusedops-gpu-compile")

    def submit(self, ref: _KernelRef, spec: _Spec) -> Future[dict[str, Any]]:
        return self._executor.submit(self._run, ref, spec)

    def _run(self, ref: _KernelRef, spec: _Spec) -> dict[str, Any]:
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive():
                worker = _Worker()
            return worker.call(ref, spec)
        finally:
            self._idle.put(worker if worker is not None and worker.alive() else None)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for _ in range(self.size):
            worker = self._idle.get()
            if worker is not None:
                worker.close()


_pool_lock = threading.Lock()
_pool: _WorkerPool | None = None


def _get_pool(size: int) -> _WorkerPool:
    """The shared pool, grown to at least ``size`` workers (warm workers are reused)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.size < size:
            if _pool is not None:
                _pool.close()
            _pool = _WorkerPool(size)
        return _pool


@atexit.register
def _close_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


def _worker_main() -> None:
    """Entry point of a worker subprocess: compile jobs from stdin until it closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints (triton, imported modules) go to stderr, not the protocol
    triton.knobs.runtime.interpret = False
    _ensure_triton_cache_dir()
    kernels: dict[_KernelRef, triton.runtime.JITFunction] = {}
    stdin = sys.stdin.buffer
    while True:
        try:
            ref, spec = _read_frame(stdin)
        except EOFError:
            return
        try:
            if ref not in kernels:
                kernels[ref] = _resolve_ref(ref)
            reply: tuple[str, Any] = ("ok", _compile_facts(kernels[ref], spec))
        except Exception:
            reply = ("error", traceback.format_exc())
        _write_frame(out, reply)
