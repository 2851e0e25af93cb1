"""Vocabulary-parallel embedding across processes: run with ``torchrun``.

    torchrun --nproc-per-node 2 examples/vocab_parallel_torchrun.py [--vocab 50257 --dim 768]

Every rank builds the same full table (same seed), keeps its shard in a
``fusedops.nn.VocabParallelEmbedding`` and runs forward + backward with the same ids; the
output is checked against the single-process ``fusedops.fused_embedding`` on the full table,
the INT8 variant against ``fusedops.int8_embedding``, and a sharded save is loaded back.
Uses ``nccl`` with one GPU per rank when CUDA is available (``--backend`` to override), else
``gloo`` on CPU. Rank 0 prints a summary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import torch
import torch.distributed as dist

import fusedops
from fusedops.nn.vocab_parallel import VocabParallelEmbedding, VocabParallelInt8Embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--backend", choices=["nccl", "gloo"], default=None)
    args = parser.parse_args()

    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)  # rank and world size from torchrun's environment
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        torch.manual_seed(0)  # the same full tables and ids on every rank
        weight = torch.randn(args.vocab, args.dim, device=device)  # [V, D]
        pos_weight = torch.randn(args.positions, args.dim, device=device)  # [P, D]
        ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)  # [B, S]
        scale = args.dim**0.5

        emb = VocabParallelEmbedding.from_embedding(weight, pos_embedding=pos_weight, scale=scale)
        out = emb(ids)  # [B, S, D], the same on every rank
        expected = fusedops.fused_embedding(ids, weight, scale=scale, pos_weight=pos_weight)
        max_diff = (out - expected).abs().max().item()
        grad = torch.randn_like(out)  # the same upstream gradient on every rank
        out.backward(grad)
        shard_grad_norm = emb.weight.grad.norm().item()

        group_size = 64 if args.dim % 64 == 0 else None  # per-group scales, else per-row
        q = VocabParallelInt8Embedding.from_embedding(emb, group_size=group_size)
        qweight, scales = fusedops.quantize_embedding(weight, group_size=group_size)
        q_expected = fusedops.int8_embedding(
            ids, qweight, scales, scale=scale, pos_weight=pos_weight
        )
        int8_diff = (q(ids) - q_expected).abs().max().item()

        # A directory every rank can read (here: the node's temp dir, made by rank 0).
        directory = [tempfile.mkdtemp(prefix="vocab_parallel_") if rank == 0 else None]
        dist.broadcast_object_list(directory, src=0)
        emb.save_sharded(directory[0])
        loaded = VocabParallelEmbedding.load_sharded(directory[0], device=device)
        reload_equal = torch.equal(loaded(ids), out.detach())
        dist.barrier()  # every rank has read the files
        if rank == 0:
            shutil.rmtree(directory[0])

        if rank == 0:
            print(
                f"{world} ranks ({backend}), V={args.vocab} D={args.dim}: shard "
                f"[{emb.vocab_start}, {emb.vocab_end}) of {emb.weight.shape[0]} rows on rank 0"
            )
            print(f"  forward vs single-process fused_embedding: max |diff| = {max_diff:g}")
            print(f"  int8 forward vs single-process int8_embedding: max |diff| = {int8_diff:g}")
            print(f"  rank 0 shard grad norm {shard_grad_norm:.4g}; reload equal: {reload_equal}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
