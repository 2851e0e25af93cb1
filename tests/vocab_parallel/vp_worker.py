"""One rank of the vocabulary-parallel tests.

The tests run this file in processes forked from a forkserver that has torch and fusedops
imported already (``runpy.run_path`` with ``run_name="__vocab_parallel_rank__"`` and the
arguments in ``VP_ARGS``); by hand: ``python vp_worker.py RANK WORLD INIT_FILE OUT_DIR``.
A rank joins a ``gloo`` group through a file store, runs every check for this group size and
writes ``OUT_DIR/rank{RANK}.json``: the checks it passed and, for each bad-input case, the
exception it raised. A failed check exits non-zero with its traceback in
``OUT_DIR/rank{RANK}.err`` (the test shows it).

Every rank seeds the default generator alike, so the full tables (and ids, upstream gradients)
are the same on every rank; the single-process oracle is ``fusedops.fused_embedding`` /
``fusedops.int8_embedding`` on that full table, computed by every rank.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import sys
import time
import traceback

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

from helpers import assert_close

import fusedops
from fusedops.nn.vocab_parallel import (
    VocabParallelEmbedding,
    VocabParallelInt8Embedding,
)
from fusedops.ops.vocab_parallel import (
    vocab_parallel_embedding,
    vocab_parallel_int8_embedding,
)

DIM = 13  # odd, prime
VOCAB = 11  # 3 ranks: shards of 4, 4, 3 real rows; 2 ranks: 6, 5
BATCH, SEQ = 3, 7
NUM_POS = 16
BACKENDS = ("auto", "reference")

RANK = WORLD = -1
RUN_NAME = "__vocab_parallel_rank__"  # __name__ when a test runs this file with runpy
RESULTS: dict = {"checks": [], "errors": {}, "seconds": {}}


def passed(name: str) -> None:
    RESULTS["checks"].append(name)


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(parts, t.contiguous())
    return parts


def ids_covering(vocab: int, *, high: int | None = None, dtype=torch.int64) -> torch.Tensor:
    """[BATCH, SEQ] random ids in [0, high or vocab) that include every id below it once."""
    high = vocab if high is None else high
    ids = torch.randint(0, high, (BATCH * SEQ,))
    ids[: min(high, ids.numel())] = torch.arange(min(high, ids.numel()))
    return ids[torch.randperm(ids.numel())].reshape(BATCH, SEQ).to(dtype)


# ------------------------------------------------------------------------------------------
# Float lookup: forward bit-exact, backward
# ------------------------------------------------------------------------------------------

# (name, vocab, positional mode, scale, padding_idx, positions kind, id range limit)
FLOAT_CASES = [
    ("plain", VOCAB, "none", 1.0, None, "offset", None),
    ("learned_pad_offset", VOCAB, "learned", 0.37, 4, "offset", None),
    ("sinusoid_positions", VOCAB, "sinusoid", math.sqrt(DIM), None, "tensor", None),
    ("learned_broadcast_positions", VOCAB, "learned", 1.5, VOCAB - 1, "row", None),
    ("rank0_ids_only", VOCAB, "learned", 0.75, 2, "offset", "rank0"),
    ("small_vocab", "world+1", "learned", 2.0, 0, "offset", None),
    ("int32_ids", VOCAB, "sinusoid", 1.0, 3, "offset", None),
]


def build_float_case(case, dtype=torch.float32):
    name, vocab, mode, scale, pad, pos_kind, limit = case
    vocab = WORLD + 1 if vocab == "world+1" else vocab
    weight = torch.randn(vocab, DIM, dtype=dtype)  # the full table, same on every rank
    if pad is not None:
        weight[pad] = 0
    pos_weight = torch.randn(NUM_POS, DIM, dtype=dtype) if mode == "learned" else None
    rows = -(-vocab // WORLD)
    ids = ids_covering(vocab, high=rows if limit == "rank0" else None)
    if name == "int32_ids":
        ids = ids.to(torch.int32)
    call = {}
    if pos_kind == "offset" and mode != "none":
        call["position_offset"] = 3
    elif pos_kind == "tensor":
        call["positions"] = torch.randint(0, 50, (BATCH, SEQ))
    elif pos_kind == "row":
        call["positions"] = torch.randperm(NUM_POS)[:SEQ]
    options = {"scale": scale, "padding_idx": pad}
    if mode == "sinusoid":
        options["sinusoidal"] = True
    return weight, pos_weight, ids, options, call


def single_process(weight, pos_weight, ids, options, call):
    return fusedops.fused_embedding(ids, weight, pos_weight=pos_weight, **options, **call)


def check_float_forward_backward(backend: str) -> None:
    for case in FLOAT_CASES:
        name = case[0]
        weight, pos_weight, ids, options, call = build_float_case(case)
        with fusedops.use_backend(backend):
            module = VocabParallelEmbedding.from_embedding(
                weight, pos_embedding=pos_weight, **options
            )
            shard = module.shard
            out = module(ids, **call)
            w = weight.clone().requires_grad_(True)
            p = None if pos_weight is None else pos_weight.clone().requires_grad_(True)
            expected = single_process(w, p, ids, options, call)
            assert torch.equal(out, expected), f"{backend}/{name}: forward differs"
            if name == "rank0_ids_only" and RANK > 0:
                assert not bool(((ids >= shard.start) & (ids < shard.end)).any())

            grad_out = torch.randn_like(expected)  # same on every rank
            params = [module.weight] + ([module.pos_weight] if p is not None else [])
            grads = torch.autograd.grad(out, params, grad_out)
            ref_grads = torch.autograd.grad(
                expected, [w] + ([p] if p is not None else []), grad_out
            )
        assert_close(
            grads[0][: shard.real_rows],
            ref_grads[0][shard.start : shard.end],
            msg=f"{backend}/{name} shard grad",
        )
        assert not bool(grads[0][shard.real_rows :].any()), f"{name}: padding rows got grad"
        if options["padding_idx"] is not None:
            local = shard.local_index(options["padding_idx"])
            if local is not None:
                assert not bool(grads[0][local].any()), f"{name}: padding_idx row got grad"
        if name == "rank0_ids_only" and RANK > 0:
            assert not bool(grads[0].any())
        if p is not None:
            assert_close(grads[1], ref_grads[1], msg=f"{backend}/{name} pos grad")
            for other in all_gather(grads[1]):
                assert torch.equal(other, grads[1]), f"{name}: pos grads differ between ranks"
        # The gathered table is the source table (a collective on the module's group).
        assert torch.equal(module.gather_weight(), weight)
        passed(f"float/{backend}/{name}")


def check_half_dtypes() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        case = FLOAT_CASES[1]  # learned positions, padding, scale != 1
        weight, pos_weight, ids, options, call = build_float_case(case, dtype)
        module = VocabParallelEmbedding.from_embedding(weight, pos_embedding=pos_weight, **options)
        out = module(ids, **call)
        expected = single_process(weight, pos_weight, ids, options, call)
        # Tokens of rank r > 0 are rounded to the dtype before the positional add.
        assert_close(out, expected, atol_extra=float(expected.abs().max()) * 2**-7)
        oracle = fusedops.reference.fused_embedding(
            ids, weight.double(), pos_weight=pos_weight.double(), **options, **call
        )
        assert_close(out, oracle, atol_extra=float(oracle.abs().max()) * 2**-7)
        grad_out = torch.randn_like(out)
        gw, gp = torch.autograd.grad(out, [module.weight, module.pos_weight], grad_out)
        w, p = weight.double().requires_grad_(), pos_weight.double().requires_grad_()
        ref = fusedops.reference.fused_embedding(ids, w, pos_weight=p, **options, **call)
        rw, rp = torch.autograd.grad(ref, [w, p], grad_out.double())
        shard = module.shard
        assert_close(gw[: shard.real_rows], rw[shard.start : shard.end], atol_extra=0.05)
        assert_close(gp, rp, atol_extra=0.05)
        passed(f"float/{dtype}")


def check_module_init_and_state_dict() -> None:
    torch.manual_seed(123)  # ranks seeded alike still draw different shards
    alike = VocabParallelEmbedding(VOCAB, DIM)
    shards = all_gather(alike.weight.detach())
    assert not torch.equal(shards[0], shards[1]), "ranks drew identical shards"
    torch.manual_seed(123 + RANK)  # ranks seeded differently still share pos_weight (broadcast)
    m = VocabParallelEmbedding(VOCAB, DIM, padding_idx=5, num_positions=NUM_POS, scale="sqrt_dim")
    torch.manual_seed(124)
    shard = m.shard
    assert m.weight.shape == (shard.rows, DIM)
    assert not bool(m.weight[shard.real_rows :].any())
    full = m.gather_weight()
    assert not bool(full[5].any())
    for other in all_gather(m.pos_weight.detach()):
        assert torch.equal(other, m.pos_weight), "pos_weight not replicated"
    empty = m(torch.empty(2, 0, dtype=torch.long))
    assert empty.shape == (2, 0, DIM)
    ids = ids_covering(VOCAB)
    expected = fusedops.fused_embedding(
        ids, full, scale=m.scale, pos_weight=m.pos_weight.detach(), padding_idx=5
    )
    assert torch.equal(m(ids).detach(), expected)
    # state_dict round trip into a fresh module of the same layout
    state = m.state_dict()
    assert set(state) == {"weight", "pos_weight"} and state["weight"].shape == (shard.rows, DIM)
    m2 = VocabParallelEmbedding(VOCAB, DIM, padding_idx=5, num_positions=NUM_POS, scale="sqrt_dim")
    m2.load_state_dict(state)
    assert torch.equal(m2(ids), m(ids))
    # from an nn.Embedding (+ positional nn.Embedding): parameters are copies
    emb, pos = torch.nn.Embedding(VOCAB, DIM, padding_idx=1), torch.nn.Embedding(NUM_POS, DIM)
    m3 = VocabParallelEmbedding.from_embedding(emb, pos_embedding=pos)
    assert m3.padding_idx == 1 and torch.equal(m3.gather_weight(), emb.weight.detach())
    assert m3.weight.data_ptr() != emb.weight.data_ptr()
    expected = fusedops.fused_embedding(ids, emb.weight, pos_weight=pos.weight)
    assert torch.equal(m3(ids), expected)
    # from a FusedEmbedding: scale and positions carry over
    fused = fusedops.nn.FusedEmbedding(VOCAB, DIM, scale=0.5, sinusoidal=True)
    m4 = VocabParallelEmbedding.from_embedding(fused)
    assert m4.scale == 0.5 and m4.sinusoidal
    assert torch.equal(m4(ids), fused(ids))
    passed("module/init_state_dict_from_embedding")


# ------------------------------------------------------------------------------------------
# INT8
# ------------------------------------------------------------------------------------------


def check_int8(backend: str) -> None:
    dim = 12
    for name, group_size, scale_dtype, mode, out_dtype in (
        ("per_row", None, torch.float32, "none", torch.float32),
        ("group4_learned", 4, torch.float16, "learned", torch.float32),
        ("group6_sinusoid", 6, torch.bfloat16, "sinusoid", torch.float32),
        ("bf16_out", 4, torch.float32, "learned", torch.bfloat16),
    ):
        weight = torch.randn(VOCAB, dim)
        pos_weight = torch.randn(NUM_POS, dim) if mode == "learned" else None
        ids = ids_covering(VOCAB)
        qweight, scales = fusedops.quantize_embedding(
            weight, group_size=group_size, scale_dtype=scale_dtype
        )
        opts = {"scale": 0.6, "sinusoidal": mode == "sinusoid", "padding_idx": 2}
        with fusedops.use_backend(backend):
            module = VocabParallelInt8Embedding.from_embedding(
                weight,
                group_size=group_size,
                scale_dtype=scale_dtype,
                out_dtype=out_dtype,
                pos_embedding=pos_weight,
                **opts,
            )
            out = module(ids, position_offset=2)
            expected = fusedops.int8_embedding(
                ids,
                qweight,
                scales,
                out_dtype=out_dtype,
                pos_weight=pos_weight,
                position_offset=2,
                **opts,
            )
        if out_dtype == torch.float32:
            assert torch.equal(out, expected), f"int8/{backend}/{name}: forward differs"
        else:
            assert_close(out, expected, atol_extra=float(expected.abs().max()) * 2**-7)
        gq, gs = module.gather_quantized()
        assert torch.equal(gq, qweight) and torch.equal(gs, scales)
        passed(f"int8/{backend}/{name}")
    # Quantizing a VocabParallelEmbedding's own shard = quantizing the full table.
    torch.manual_seed(7)
    weight = torch.randn(VOCAB, dim)
    float_module = VocabParallelEmbedding.from_embedding(weight, scale=2.0, sinusoidal=True)
    a = VocabParallelInt8Embedding.from_embedding(float_module, group_size=3)
    b = VocabParallelInt8Embedding.from_embedding(weight, group_size=3, scale=2.0, sinusoidal=True)
    assert torch.equal(a.qweight, b.qweight) and torch.equal(a.scales, b.scales)
    ids = ids_covering(VOCAB)
    assert torch.equal(a(ids), b(ids))
    passed(f"int8/{backend}/from_vocab_parallel")


# ------------------------------------------------------------------------------------------
# Bad input: the same error on every rank, then the group still works
# ------------------------------------------------------------------------------------------


def record_error(case: str, fn) -> None:
    try:
        fn()
    except Exception as exc:
        RESULTS["errors"][case] = [type(exc).__name__, str(exc)]
    else:
        RESULTS["errors"][case] = ["no error", ""]
    dist.barrier()  # every rank got here: nobody waits in a collective


def check_bad_input() -> None:
    torch.manual_seed(5)
    weight = torch.randn(VOCAB, DIM)
    pos = torch.randn(NUM_POS, DIM)
    module = VocabParallelEmbedding.from_embedding(weight, pos_embedding=pos)
    ids = ids_covering(VOCAB)
    bad = ids.clone()
    bad[1, 2] = VOCAB
    record_error("id_too_large", lambda: module(bad))
    neg = ids.clone()
    neg[0, 0] = -3
    record_error("id_negative", lambda: module(neg))
    record_error("float_ids", lambda: module(ids.float()))
    record_error("position_out_of_range", lambda: module(ids, position_offset=NUM_POS - SEQ + 1))
    record_error(
        "pos_dtype",
        lambda: vocab_parallel_embedding(
            ids, module.weight, num_embeddings=VOCAB, pos_weight=pos.double()
        ),
    )
    record_error(
        "shard_shape",
        lambda: vocab_parallel_embedding(ids, weight, num_embeddings=VOCAB),
    )
    record_error("world_too_large", lambda: VocabParallelEmbedding(WORLD - 1, DIM))
    # Without the check, out-of-range ids read as zero rows (only the positional term).
    unchecked = VocabParallelEmbedding.from_embedding(
        weight, pos_embedding=pos, check_indices=False
    )
    wild = ids.clone()
    wild[:, 0] = torch.tensor([-3, VOCAB, 10 * VOCAB])
    out = unchecked(wild)
    assert torch.equal(out[:, 0], pos[0].expand(BATCH, DIM))
    assert torch.equal(
        out[:, 1:], fusedops.fused_embedding(wild[:, 1:], weight, pos_weight=pos, position_offset=1)
    )
    # The sinusoid's base is checked on every rank, before the collective (only rank 0
    # evaluates the sinusoid).
    inf = float("inf")
    record_error(
        "sinusoid_base_inf",
        lambda: vocab_parallel_embedding(
            ids, module.weight, num_embeddings=VOCAB, sinusoidal=True, sinusoid_base=inf
        ),
    )
    # NumPy and 0-d tensor scalars are numbers like the Python float.
    with torch.no_grad():
        want = vocab_parallel_embedding(
            ids, module.weight, num_embeddings=VOCAB, scale=2.0, sinusoidal=True
        )
        for scale in (np.float32(2.0), torch.tensor(2.0)):
            got = vocab_parallel_embedding(
                ids, module.weight, num_embeddings=VOCAB, scale=scale, sinusoidal=True
            )
            assert torch.equal(got, want), scale
    assert torch.equal(want, fusedops.fused_embedding(ids, weight, scale=2.0, sinusoidal=True)), (
        "the sharded forward differs from the single-process op"
    )

    def double_backward():
        out = module(ids)
        torch.autograd.grad(out.square().sum(), module.weight, create_graph=True)

    record_error("double_backward", double_backward)
    q = VocabParallelInt8Embedding.from_embedding(weight)
    record_error("int8_id_too_large", lambda: q(bad))
    record_error(
        "int8_sinusoid_base_inf",
        lambda: vocab_parallel_int8_embedding(
            ids, q.qweight, q.scales, num_embeddings=VOCAB, sinusoidal=True, sinusoid_base=inf
        ),
    )
    record_error(
        "int8_requires_grad",
        lambda: vocab_parallel_int8_embedding(
            ids, q.qweight, q.scales.requires_grad_(True), num_embeddings=VOCAB
        ),
    )
    passed("errors")


# ------------------------------------------------------------------------------------------
# Sharded save / load with re-sharding
# ------------------------------------------------------------------------------------------


def _float_module(group):
    torch.manual_seed(11)
    weight = torch.randn(VOCAB, DIM)
    pos = torch.randn(NUM_POS, DIM)
    return (
        weight,
        pos,
        VocabParallelEmbedding.from_embedding(
            weight, group, pos_embedding=pos, padding_idx=6, scale=1.25
        ),
    )


def _int8_module(group):
    torch.manual_seed(12)
    weight = torch.randn(VOCAB, 12)
    return weight, VocabParallelInt8Embedding.from_embedding(
        weight, group, group_size=4, scale_dtype=torch.float16, sinusoidal=True, scale=3.0
    )


def _check_loaded(weight, pos, loaded: VocabParallelEmbedding) -> None:
    torch.manual_seed(99)  # the same ids on every rank, whatever each drew before
    ids = ids_covering(VOCAB)
    assert torch.equal(loaded.gather_weight(), weight)
    assert torch.equal(loaded.pos_weight, pos) and loaded.pos_weight.requires_grad
    assert loaded.padding_idx == 6 and loaded.scale == 1.25
    expected = fusedops.fused_embedding(ids, weight, scale=1.25, pos_weight=pos)
    assert torch.equal(loaded(ids), expected)


def _check_loaded_int8(weight, loaded: VocabParallelInt8Embedding) -> None:
    q, s = fusedops.quantize_embedding(weight, group_size=4, scale_dtype=torch.float16)
    gq, gs = loaded.gather_quantized()
    assert torch.equal(gq, q) and torch.equal(gs, s)
    torch.manual_seed(99)
    ids = ids_covering(VOCAB)
    expected = fusedops.int8_embedding(ids, q, s, scale=3.0, sinusoidal=True)
    assert torch.equal(loaded(ids), expected)


def check_save_load(tmp: str) -> None:
    world_group = dist.group.WORLD
    pair = dist.new_group([0, 1])  # every rank creates it; ranks 0 and 1 use it
    weight, pos, module = _float_module(world_group)
    qweight, qmodule = _int8_module(world_group)

    # Same group size, and the group size minus one: from the WORLD ranks' files.
    module.save_sharded(f"{tmp}/float_w")
    qmodule.save_sharded(f"{tmp}/int8_w")
    _check_loaded(weight, pos, VocabParallelEmbedding.load_sharded(f"{tmp}/float_w"))
    _check_loaded_int8(qweight, VocabParallelInt8Embedding.load_sharded(f"{tmp}/int8_w"))
    small = dist.new_group(list(range(WORLD - 1)))
    if RANK < WORLD - 1:
        _check_loaded(weight, pos, VocabParallelEmbedding.load_sharded(f"{tmp}/float_w", small))
        _check_loaded_int8(qweight, VocabParallelInt8Embedding.load_sharded(f"{tmp}/int8_w", small))
    if WORLD == 3:
        # Saved by 2 ranks (group [0, 1]), loaded by 3.
        if RANK < 2:
            _, _, m2 = _float_module(pair)
            m2.save_sharded(f"{tmp}/float_2")
            _, q2 = _int8_module(pair)
            q2.save_sharded(f"{tmp}/int8_2")
        dist.barrier()
        _check_loaded(weight, pos, VocabParallelEmbedding.load_sharded(f"{tmp}/float_2"))
        _check_loaded_int8(qweight, VocabParallelInt8Embedding.load_sharded(f"{tmp}/int8_2"))
    # Saving again into the same directory from another group size replaces the old save.
    if RANK < 2:
        m2 = _float_module(pair)[2]
        m2.save_sharded(f"{tmp}/float_w")
    dist.barrier()
    assert sorted(os.listdir(f"{tmp}/float_w")) == [
        "vocab_parallel-00000-of-00002.safetensors",
        "vocab_parallel-00001-of-00002.safetensors",
    ]
    _check_loaded(weight, pos, VocabParallelEmbedding.load_sharded(f"{tmp}/float_w"))
    passed("save_load/reshard")

    # Broken saves: every rank raises.
    module.save_sharded(f"{tmp}/good")
    _, _, other = _float_module(world_group)
    other.scale = 2.0
    other.save_sharded(f"{tmp}/other")
    if RANK == 0:
        last = WORLD - 1
        name = f"vocab_parallel-{last:05d}-of-{WORLD:05d}.safetensors"
        shutil.copytree(f"{tmp}/good", f"{tmp}/missing")
        os.remove(f"{tmp}/missing/{name}")
        shutil.copytree(f"{tmp}/good", f"{tmp}/mismatched")
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(f"{tmp}/good/{name}", framework="pt") as fh:
            meta = fh.metadata()
            rows = fh.get_tensor("weight")
        save_file({"weight": torch.cat([rows, rows[:1]])}, f"{tmp}/mismatched/{name}", meta)
        shutil.copytree(f"{tmp}/good", f"{tmp}/mixed")  # + a file of a 5-rank save
        shutil.copy(f"{tmp}/good/{name}", f"{tmp}/mixed/vocab_parallel-00000-of-00005.safetensors")
        shutil.copytree(f"{tmp}/good", f"{tmp}/two_saves")  # the last file from another save
        shutil.copy(f"{tmp}/other/{name}", f"{tmp}/two_saves/{name}")
    dist.barrier()
    record_error("load_missing", lambda: VocabParallelEmbedding.load_sharded(f"{tmp}/missing"))
    record_error(
        "load_mismatched", lambda: VocabParallelEmbedding.load_sharded(f"{tmp}/mismatched")
    )
    record_error("load_mixed", lambda: VocabParallelEmbedding.load_sharded(f"{tmp}/mixed"))
    record_error("load_two_saves", lambda: VocabParallelEmbedding.load_sharded(f"{tmp}/two_saves"))
    record_error("load_wrong_kind", lambda: VocabParallelInt8Embedding.load_sharded(f"{tmp}/good"))
    record_error("load_no_dir", lambda: VocabParallelEmbedding.load_sharded(f"{tmp}/nothing"))
    passed("save_load/errors")


def main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    global RANK, WORLD
    RANK, WORLD = rank, world
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=RANK,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=40),
    )
    try:
        steps = [
            ("float", lambda: [check_float_forward_backward(b) for b in BACKENDS]),
            ("half", check_half_dtypes),
            ("module", check_module_init_and_state_dict),
            ("int8", lambda: [check_int8(b) for b in BACKENDS]),
            ("errors", check_bad_input),
            ("save_load", lambda: check_save_load(os.path.join(out_dir, "saves"))),
        ]
        for name, step in steps:
            torch.manual_seed(1000)  # the same stream on every rank
            start = time.perf_counter()
            step()
            RESULTS["seconds"][name] = round(time.perf_counter() - start, 3)
        with open(os.path.join(out_dir, f"rank{RANK}.json"), "w") as fh:
            json.dump(RESULTS, fh)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(rank: int, world: int, init_file: str, out_dir: str) -> int:
    """:func:`main`; on failure its traceback goes to ``OUT_DIR/rank{rank}.err`` (and stderr).
    Returns the exit status."""
    try:
        main(rank, world, init_file, out_dir)
    except BaseException:
        text = traceback.format_exc()
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as fh:
            fh.write(text)
        sys.stderr.write(text)
        return 1
    return 0


if __name__ == "__main__":
    status = run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    sys.stderr.flush()
    os._exit(status)
elif __name__ == RUN_NAME:  # a rank started by the tests: runpy.run_path(..., init_globals)
    status = run(**VP_ARGS)  # noqa: F821 (injected by the test)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
