"""VocabParallelEmbedding / VocabParallelInt8Embedding over real process groups (gloo, CPU).

Each test starts one group of 2 or 3 worker processes (``vp_worker.py``, forked from a
forkserver) that runs every check
for that group size in one go: forward bit-exact against the single-process op (fp32; ids in
every shard, padding_idx, unequal shards, a rank with no ids of its shard and one with no real
rows, learned and sinusoidal positions, int32 ids; the ``auto`` (C++) and ``reference``
backends), gradients of the shards and of the replicated positional table, fp16/bf16, the INT8
variant, bad input raising the same error on every rank, and sharded save/load with
re-sharding (W -> W, W -> W - 1, 2 -> 3, 3 -> 2) and broken saves. A failing worker fails the
test with its traceback; a hung group is killed after a timeout.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import runpy
import time

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vp_worker.py")
TIMEOUT_S = 120  # the workers' own collective timeout is 40 s
RUN_NAME = "__vocab_parallel_rank__"  # vp_worker.RUN_NAME

CHECKS = {
    *(
        f"float/{b}/{case}"
        for b in ("auto", "reference")
        for case in (
            "plain",
            "learned_pad_offset",
            "sinusoid_positions",
            "learned_broadcast_positions",
            "rank0_ids_only",
            "small_vocab",
            "int32_ids",
        )
    ),
    "float/torch.float16",
    "float/torch.bfloat16",
    "module/init_state_dict_from_embedding",
    *(
        f"int8/{b}/{case}"
        for b in ("auto", "reference")
        for case in (
            "per_row",
            "group4_learned",
            "group6_sinusoid",
            "bf16_out",
            "from_vocab_parallel",
        )
    ),
    "errors",
    "save_load/reshard",
    "save_load/errors",
}


def _expected_errors(world: int) -> dict[str, tuple[str, list[str]]]:
    """case -> (exception type, substrings of its message)."""
    op, op8 = "vocab_parallel_embedding", "vocab_parallel_int8_embedding"
    return {
        "id_too_large": ("IndexError", [op, "id 11 outside [0, 11)"]),
        "id_negative": ("IndexError", [op, "id -3 outside [0, 11)"]),
        "float_ids": ("TypeError", [op, "input_ids", "float32"]),
        "position_out_of_range": ("IndexError", [op, "position 16"]),
        "pos_dtype": ("TypeError", [op, "pos_weight dtype torch.float64"]),
        "shard_shape": ("ValueError", [op, "[ceil(V / world) =", "got shape (11, 13)"]),
        "world_too_large": ("ValueError", [f"world size {world} exceeds the vocabulary size"]),
        "int8_id_too_large": ("IndexError", [op8, "id 11 outside [0, 11)"]),
        "int8_requires_grad": ("RuntimeError", [op8, "inference-only"]),
        "sinusoid_base_inf": ("ValueError", [op, "sinusoid_base must be a finite number, got inf"]),
        "int8_sinusoid_base_inf": (
            "ValueError",
            [op8, "sinusoid_base must be a finite number, got inf"],
        ),
        "double_backward": ("RuntimeError", [op, "double backward is not supported"]),
        "load_missing": ("FileNotFoundError", ["load_sharded", "missing", f"-of-0000{world}"]),
        "load_mismatched": ("ValueError", ["load_sharded", "'weight'", "mismatched shard"]),
        "load_mixed": (
            "ValueError",
            ["mixes saves from different numbers of ranks", f"[{world}, 5]"],
        ),
        "load_two_saves": ("ValueError", ["does not match", "'config'", "different saves"]),
        "load_wrong_kind": ("ValueError", ["holds a VocabParallelEmbedding"]),
        "load_no_dir": ("FileNotFoundError", ["is not a directory"]),
    }


def _context():
    """A forkserver context whose server imports torch and fusedops once: each rank then
    starts in milliseconds instead of re-importing them (seconds per process on 2 cores)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "fusedops", "fusedops.nn.vocab_parallel"])
    return ctx


def _spawn(world: int, tmp_path) -> list[dict]:
    """Run the worker on ``world`` ranks; return each rank's results (fails on any error)."""
    out_dir = tmp_path / f"world{world}"
    out_dir.mkdir()
    ctx = _context()
    procs = []
    for rank in range(world):
        args = {"rank": rank, "world": world, "init_file": str(out_dir / "store")}
        args["out_dir"] = str(out_dir)
        proc = ctx.Process(
            target=runpy.run_path,
            args=(WORKER,),
            kwargs={"init_globals": {"VP_ARGS": args}, "run_name": RUN_NAME},
            daemon=True,
        )
        proc.start()
        procs.append(proc)
    deadline = time.monotonic() + TIMEOUT_S
    failed_at = None
    try:
        while any(p.exitcode is None for p in procs):
            now = time.monotonic()
            if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
                failed_at = now  # the others get a moment to report their own failure
            if now > deadline or (failed_at is not None and now > failed_at + 5):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
            p.join()
    if any(p.exitcode != 0 for p in procs):
        reports = []
        for rank, p in enumerate(procs):
            err = out_dir / f"rank{rank}.err"
            text = err.read_text()[-6000:] if err.exists() else "(no traceback: killed)"
            reports.append(f"--- rank {rank} (exit {p.exitcode}) ---\n{text}")
        timed_out = time.monotonic() > deadline
        pytest.fail(
            f"vocab-parallel worker group of {world} failed"
            + (f" (timeout {TIMEOUT_S} s)" if timed_out else "")
            + ":\n"
            + "\n".join(reports),
            pytrace=False,
        )
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_group(world, tmp_path):
    results = _spawn(world, tmp_path)
    expected_errors = _expected_errors(world)
    for rank, res in enumerate(results):
        missing = CHECKS - set(res["checks"])
        assert not missing, f"rank {rank} did not run {sorted(missing)}"
        for case, (kind, parts) in expected_errors.items():
            got_kind, message = res["errors"][case]
            assert got_kind == kind, f"rank {rank} {case}: {got_kind}: {message}"
            for part in parts:
                assert part in message, f"rank {rank} {case}: {part!r} not in {message!r}"
    # The same error text on every rank (validation depends only on replicated arguments).
    for case in expected_errors:
        texts = {tuple(res["errors"][case]) for res in results}
        assert len(texts) == 1, f"{case}: ranks disagree: {texts}"
