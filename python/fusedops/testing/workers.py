"""Compiled-mode worker subprocesses and the one pool of them a process shares.

Each worker is ``python -c "from fusedops.testing.workers import worker_main; worker_main()"``
with ``TRITON_INTERPRET`` removed from its environment, speaking length-prefixed pickles on
stdin/stdout: it reads ``(KernelRef, CompileSpec)`` jobs, imports each kernel afresh in
compiled mode and answers ``("ok", facts)`` or ``("error", traceback)``. `compile_pool` hands
out the process-wide pool (every arch, every caller): one queue, biggest jobs first, workers
started lazily and added on demand.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import traceback
from concurrent.futures import Future
from typing import IO, Any

import triton

from fusedops.caches import cache_dir
from fusedops.testing.compiler import (
    CompileSpec,
    KernelRef,
    compile_facts,
    compile_triton_dir,
    resolve_kernel,
    use_triton_cache_dir,
)
from fusedops.testing.ptx import GpuCompileError

__all__ = ["CompilePool", "compile_pool", "worker_main"]


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
    if "dir" in vars(triton.knobs.cache):
        env["TRITON_CACHE_DIR"] = triton.knobs.cache.dir
    env.setdefault("TRITON_CACHE_DIR", cache_dir("TRITON_CACHE_DIR"))
    paths = [p or os.getcwd() for p in sys.path]
    gpu_triton = compile_triton_dir()
    if gpu_triton is not None:
        paths.insert(0, gpu_triton)  # shadows this process's triton in the workers
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class _Worker:
    """One compiled-mode Python subprocess."""

    def __init__(self) -> None:
        code = "from fusedops.testing.workers import worker_main; worker_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_env(),
            cwd=os.getcwd(),
        )

    def call(self, ref: KernelRef, spec: CompileSpec) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            _write_frame(self.proc.stdin, (ref, spec))
            status, payload = _read_frame(self.proc.stdout)
        except (EOFError, OSError) as exc:
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


class CompilePool:
    """Worker subprocesses fed from one queue, biggest ``priority`` first (then in submission
    order), each driven by one thread and started on its first job; `grow` adds workers."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[float, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self._threads)

    def grow(self, size: int) -> None:
        """Run at least ``size`` workers."""
        with self._lock:
            while len(self._threads) < size:
                thread = threading.Thread(
                    target=self._serve, name="fusedops-gpu-compile", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def submit(
        self, ref: KernelRef, spec: CompileSpec, priority: float = 0.0
    ) -> Future[dict[str, Any]]:
        """Compile ``spec`` of the kernel ``ref`` names in a worker; the future holds the facts
        of `compile_facts` or raises GpuCompileError."""
        fut: Future[dict[str, Any]] = Future()
        self._queue.put((-priority, next(self._order), (fut, ref, spec)))
        return fut

    def _serve(self) -> None:
        worker: _Worker | None = None
        try:
            while True:
                _, _, item = self._queue.get()
                if item is None:
                    return
                fut, ref, spec = item
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    if worker is None or not worker.alive():
                        worker = _Worker()
                    fut.set_result(worker.call(ref, spec))
                except Exception as exc:
                    fut.set_exception(exc)
        finally:
            if worker is not None:
                worker.close()

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers after the queued jobs (with ``cancel``: after the running ones,
        cancelling the rest)."""
        if cancel:
            while True:
                try:
                    _, _, item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put((float("inf"), next(self._order), None))
        for thread in threads:
            thread.join()


_pool_lock = threading.Lock()
_pool: CompilePool | None = None


def compile_pool(size: int) -> CompilePool:
    """The process-wide pool, grown to at least ``size`` workers."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = CompilePool()
        _pool.grow(size)
        return _pool


@atexit.register
def _close_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close(cancel=True)
            _pool = None


def worker_main() -> None:
    """Entry point of a worker subprocess: compile jobs from stdin until it closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints (triton, imported modules) go to stderr, not the protocol
    triton.knobs.runtime.interpret = False
    use_triton_cache_dir()
    kernels: dict[KernelRef, triton.runtime.JITFunction] = {}
    stdin = sys.stdin.buffer
    while True:
        try:
            ref, spec = _read_frame(stdin)
        except EOFError:
            return
        try:
            if ref not in kernels:
                kernels[ref] = resolve_kernel(ref)
            reply: tuple[str, Any] = ("ok", compile_facts(kernels[ref], spec))
        except Exception:
            reply = ("error", traceback.format_exc())
        _write_frame(out, reply)
