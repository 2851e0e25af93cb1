"""Sharded safetensors files of the vocabulary-parallel embeddings, and re-sharding on load.

A save of a module sharded over ``W`` ranks is a directory of ``W`` files
``vocab_parallel-{rank:05d}-of-{W:05d}.safetensors``. File ``k`` holds the *real* rows of rank
``k``'s shard (no padding) of every row tensor (``weight``, or ``qweight`` + ``scales``); the
replicated tensors (``pos_weight``) are in file 0 only. Every file's metadata describes the
layout and the module (all values strings, as safetensors requires):

``fusedops`` (format tag), ``kind`` (the class name), ``rank``, ``world_size``,
``num_embeddings``, ``embedding_dim``, ``shard_rows`` (``ceil(V / W)``), ``vocab_start``,
``real_rows``, ``dtype`` (of the token table), ``int8_scheme`` (``none``, ``per-row`` or
``group_size=G``, with the scales' dtype) and ``config`` (JSON of the constructor arguments).

Loading reads the metadata of all files (the directory must be visible to every rank, e.g. a
shared file system), checks that they form one complete, consistent save, and gives each rank
the rows of its shard under the *current* group size, read from whichever files hold them
(``safe_open(...).get_slice``), so a save from ``W`` ranks loads on any ``W' <= V`` ranks.

Save and load end with one collective through which the ranks agree on success: an error on
any rank raises on every rank (the rank's own exception where it failed, a ``RuntimeError``
naming the failed ranks elsewhere), never a hang.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from fusedops.ops.vocab_parallel import VocabShard, group_rank_and_size, vocab_shard

FORMAT = "fusedops.VocabParallel/1"
_FILE_RE = re.compile(r"^vocab_parallel-(\d{5})-of-(\d{5})\.safetensors$")
_T = TypeVar("_T")


def shard_file_name(rank: int, world_size: int) -> str:
    """File name of rank ``rank``'s shard in a save from ``world_size`` ranks."""
    return f"vocab_parallel-{rank:05d}-of-{world_size:05d}.safetensors"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Expected dtype and trailing shape of a saved tensor (rows tensors: ``[rows, *shape]``;
    replicated tensors: exactly ``shape``)."""

    dtype: torch.dtype
    shape: tuple[int, ...]


def collective_device(process_group: dist.ProcessGroup | None) -> torch.device:
    """Device of small tensors exchanged over ``process_group`` (CUDA for NCCL groups)."""
    if dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(what: str, process_group: dist.ProcessGroup | None, fn: Callable[[], _T]) -> _T:
    """Run ``fn`` on every rank, then agree through one all-reduce on whether all succeeded.

    Returns ``fn()``'s result when every rank succeeded; re-raises this rank's exception when
    it failed; raises ``RuntimeError`` naming the failed ranks on the ranks that did not.
    """
    rank, world = group_rank_and_size(process_group, what)
    error: BaseException | None = None
    result = None
    try:
        result = fn()
    except Exception as exc:  # reported to the other ranks, then re-raised
        error = exc
    failed = torch.zeros(world, dtype=torch.int32, device=collective_device(process_group))
    failed[rank] = int(error is not None)
    dist.all_reduce(failed, op=dist.ReduceOp.SUM, group=process_group)
    if error is not None:
        raise error
    bad = failed.nonzero().flatten().tolist()
    if bad:
        raise RuntimeError(
            f"{what}: failed on rank(s) {bad} of the process group (see their errors)"
        )
    return result


# ------------------------------------------------------------------------------------------
# Save
# ------------------------------------------------------------------------------------------


def save_shards(
    what: str,
    directory: str | os.PathLike[str],
    *,
    kind: str,
    shard: VocabShard,
    process_group: dist.ProcessGroup | None,
    row_tensors: Mapping[str, torch.Tensor],
    replicated: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
) -> None:
    """Write this rank's file (collective: every rank of the group calls it).

    ``row_tensors``: this rank's shards ``[shard.rows, ...]`` (only the real rows are
    written); ``replicated``: written by rank 0 only; ``metadata``: the module's entries
    (``dtype``, ``int8_scheme``, ``config``), added to the layout entries.
    Files of an earlier save from a different number of ranks are removed (by rank 0).
    """
    from safetensors.torch import save_file

    def write() -> None:
        path = os.fspath(directory)
        os.makedirs(path, exist_ok=True)
        if shard.rank == 0:
            for name in os.listdir(path):
                match = _FILE_RE.match(name)
                if match and int(match.group(2)) != shard.world_size:
                    os.remove(os.path.join(path, name))
        tensors = {
            name: t.detach()[: shard.real_rows].contiguous().cpu()
            for name, t in row_tensors.items()
        }
        if shard.rank == 0:
            tensors.update({name: t.detach().contiguous().cpu() for name, t in replicated.items()})
        meta = {
            "format": "pt",
            "fusedops": FORMAT,
            "kind": kind,
            "rank": str(shard.rank),
            "world_size": str(shard.world_size),
            "num_embeddings": str(shard.num_embeddings),
            "shard_rows": str(shard.rows),
            "vocab_start": str(shard.start),
            "real_rows": str(shard.real_rows),
            **metadata,
        }
        target = os.path.join(path, shard_file_name(shard.rank, shard.world_size))
        partial = f"{target}.partial-{os.getpid()}"
        save_file(tensors, partial, metadata=meta)
        os.replace(partial, target)

    agree(what, process_group, write)


# ------------------------------------------------------------------------------------------
# Load
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _SavedShard:
    path: str
    rank: int
    start: int
    real_rows: int


@dataclasses.dataclass(frozen=True)
class SavedSet:
    """A checked, complete save: its common metadata and one entry per file."""

    metadata: dict[str, str]
    config: dict[str, Any]
    num_embeddings: int
    world_size: int
    files: tuple[_SavedShard, ...]


# Entries that must be equal in every file of one save.
_COMMON_KEYS = (
    "fusedops",
    "kind",
    "world_size",
    "num_embeddings",
    "embedding_dim",
    "shard_rows",
    "dtype",
    "int8_scheme",
    "config",
)


def _int_entry(what: str, path: str, meta: Mapping[str, str], key: str) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        raise ValueError(
            f"{what}: {path} has no valid integer metadata {key!r} (got {meta.get(key)!r})"
        ) from None


def read_saved_set(
    what: str,
    directory: str | os.PathLike[str],
    kind: str,
    specs: Callable[[dict[str, Any]], tuple[dict[str, TensorSpec], dict[str, TensorSpec]]],
) -> SavedSet:
    """Find and check the files of one save of a ``kind`` module in ``directory``.

    ``specs(config)`` gives the expected ``(row tensors, replicated tensors)`` of the module.
    Raises FileNotFoundError for a missing directory or missing shard files, ValueError for
    files from different saves, foreign files, or tensors whose shapes or dtypes do not match
    the metadata.
    """
    from safetensors import safe_open

    path = os.fspath(directory)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: {path!r} is not a directory")
    found: dict[int, dict[int, str]] = {}
    for name in sorted(os.listdir(path)):
        match = _FILE_RE.match(name)
        if match:
            found.setdefault(int(match.group(2)), {})[int(match.group(1))] = name
    if not found:
        raise FileNotFoundError(
            f"{what}: no shard files ({shard_file_name(0, 2)}, ...) in {path!r}"
        )
    if len(found) > 1:
        raise ValueError(
            f"{what}: {path!r} mixes saves from different numbers of ranks "
            f"{sorted(found)}; keep the files of one save"
        )
    ((world, names),) = found.items()
    missing = [shard_file_name(r, world) for r in range(world) if r not in names]
    extra = [names[r] for r in names if r >= world]
    if missing or extra:
        raise FileNotFoundError(
            f"{what}: incomplete save in {path!r}: missing {missing}"
            + (f", unexpected {extra}" if extra else "")
        )

    metas: list[tuple[str, dict[str, str], dict[str, list[int]], dict[str, str]]] = []
    for rank in range(world):
        file = os.path.join(path, names[rank])
        with safe_open(file, framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            shapes = {key: list(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
            dtypes = {key: fh.get_slice(key).get_dtype() for key in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
        if meta.get("fusedops") != FORMAT:
            raise ValueError(
                f"{what}: {file} was not written by save_sharded (metadata fusedops="
                f"{meta.get('fusedops')!r})"
            )
        if meta.get("kind") != kind:
            raise ValueError(
                f"{what}: {file} holds a {meta.get('kind')}; load it with "
                f"{meta.get('kind')}.load_sharded"
            )
        metas.append((file, meta, shapes, dtypes))

    first_file, first, _, _ = metas[0]
    for file, meta, _, _ in metas[1:]:
        for key in _COMMON_KEYS:
            if meta.get(key) != first.get(key):
                raise ValueError(
                    f"{what}: {file} does not match {first_file}: metadata {key!r} is "
                    f"{meta.get(key)!r} vs {first.get(key)!r} (files from different saves?)"
                )
    vocab = _int_entry(what, first_file, first, "num_embeddings")
    dim = _int_entry(what, first_file, first, "embedding_dim")
    if _int_entry(what, first_file, first, "world_size") != world:
        raise ValueError(
            f"{what}: {first_file}: metadata world_size {first['world_size']} "
            f"does not match the file name ({world} files)"
        )
    config = json.loads(first["config"])
    if config.get("num_embeddings") != vocab or config.get("embedding_dim") != dim:
        raise ValueError(
            f"{what}: {first_file}: config does not match num_embeddings / embedding_dim"
        )
    row_specs, replicated_specs = specs(config)

    files = []
    for rank, (file, meta, shapes, dtypes) in enumerate(metas):
        expected = vocab_shard(vocab, world, rank, what)
        layout = {
            "rank": rank,
            "shard_rows": expected.rows,
            "vocab_start": expected.start,
            "real_rows": expected.real_rows,
        }
        for key, value in layout.items():
            if _int_entry(what, file, meta, key) != value:
                raise ValueError(
                    f"{what}: {file}: metadata {key} = {meta[key]}, expected {value} for "
                    f"V = {vocab} over {world} ranks"
                )
        wanted = {
            name: ([expected.real_rows, *spec.shape], spec.dtype)
            for name, spec in row_specs.items()
        }
        if rank == 0:
            wanted.update(
                {name: (list(spec.shape), spec.dtype) for name, spec in replicated_specs.items()}
            )
        if set(shapes) != set(wanted):
            raise ValueError(
                f"{what}: {file} holds tensors {sorted(shapes)}, expected {sorted(wanted)}"
            )
        for name, (shape, dtype) in wanted.items():
            saved_dtype = _safetensors_dtype(dtypes[name])
            if shapes[name] != shape or saved_dtype != dtype:
                raise ValueError(
                    f"{what}: {file}: tensor {name!r} is {saved_dtype} {shapes[name]}, the "
                    f"metadata says {dtype} {shape} (mismatched shard)"
                )
        files.append(_SavedShard(file, rank, expected.start, expected.real_rows))
    return SavedSet(first, config, vocab, world, tuple(files))


_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "F64": torch.float64,
    "I32": torch.int32,
    "I64": torch.int64,
}


def _safetensors_dtype(name: str) -> torch.dtype | str:
    return _SAFETENSORS_DTYPES.get(name, name)


def read_rows(
    saved: SavedSet,
    shard: VocabShard,
    row_specs: Mapping[str, TensorSpec],
    replicated_specs: Mapping[str, TensorSpec],
    device: torch.device | str,
) -> dict[str, torch.Tensor]:
    """This rank's row tensors ``[shard.rows, ...]`` (padding rows zero) re-sharded from
    ``saved``, plus the replicated tensors from file 0, on ``device``."""
    from safetensors import safe_open

    out = {
        name: torch.zeros((shard.rows, *spec.shape), dtype=spec.dtype)
        for name, spec in row_specs.items()
    }
    for saved_shard in saved.files:
        lo = max(shard.start, saved_shard.start)
        hi = min(shard.end, saved_shard.start + saved_shard.real_rows)
        if lo >= hi:
            continue
        with safe_open(saved_shard.path, framework="pt") as fh:
            for name in row_specs:
                rows = fh.get_slice(name)[lo - saved_shard.start : hi - saved_shard.start]
                out[name][lo - shard.start : hi - shard.start] = rows
    if replicated_specs:
        with safe_open(saved.files[0].path, framework="pt") as fh:
            for name in replicated_specs:
                out[name] = fh.get_tensor(name)
    return {name: t.to(device) for name, t in out.items()}


def load_shards(
    what: str,
    directory: str | os.PathLike[str],
    *,
    kind: str,
    process_group: dist.ProcessGroup | None,
    specs: Callable[[dict[str, Any]], tuple[dict[str, TensorSpec], dict[str, TensorSpec]]],
    device: torch.device | str | None,
) -> tuple[dict[str, Any], VocabShard, dict[str, torch.Tensor]]:
    """Read a save for this rank under the current group (collective).

    Returns ``(config, shard, tensors)``: the saved constructor arguments, this rank's layout
    for the current group size and its tensors (see :func:`read_rows`) on ``device``
    (default: :func:`collective_device`, the current CUDA device for NCCL groups, else CPU).
    """

    def read() -> tuple[dict[str, Any], VocabShard, dict[str, torch.Tensor]]:
        rank, world = group_rank_and_size(process_group, what)
        target = collective_device(process_group) if device is None else device
        saved = read_saved_set(what, directory, kind, specs)
        shard = vocab_shard(saved.num_embeddings, world, rank, what)
        row_specs, replicated_specs = specs(saved.config)
        tensors = read_rows(saved, shard, row_specs, replicated_specs, target)
        return saved.config, shard, tensors

    return agree(what, process_group, read)
