"""Collectives of an eval or measurement pass under torch.distributed, and this process's place in the group.

One process (world size 1, the default until nc.train.ddp.setup) makes every helper a no-op that returns its
input. Under DDP, counts are all-reduced and the float64 streaming accumulators (nc.measure.moments.ClassStats,
nc.measure.followups.TestAccumulator, nc.measure.depth.ClassMeansTrace) are all-gathered and Chan-merged in rank
order on every rank, so every rank finalizes the same numbers. The process group itself is joined by
nc.train.ddp.setup, which records the Context here.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank of `world_size`, its rank on the node, the device of its collectives."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_CURRENT = [Context()]  # this process's context: world size 1 until setup()


def current() -> Context:
    return _CURRENT[0]


def is_main() -> bool:
    return current().is_main


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def sum_ints(values) -> list:
    """Each value (int or 0-d integer tensor) summed over the ranks, as ints; one process: `values` as they are."""
    ctx = current()
    if not ctx.distributed:
        return list(values)
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def sum_tensors_(*tensors: torch.Tensor) -> None:
    """Each tensor summed over the ranks, in place (on the collectives' device); one process: nothing."""
    if current().distributed:
        for t in tensors:
            dist.all_reduce(t)


def every_rank(flag: bool) -> bool:
    """True on every rank iff `flag` is true on every rank."""
    return sum_ints([not flag])[0] == 0 if current().distributed else bool(flag)


def broadcast_array(value) -> np.ndarray:
    """Rank 0's float64 array (the same shape on every rank) on every rank."""
    ctx = current()
    if not ctx.distributed:
        return value
    t = torch.as_tensor(np.asarray(value, dtype=np.float64)).to(ctx.device)
    dist.broadcast(t, src=0)
    return t.cpu().numpy()


def broadcast_float(value: float) -> float:
    return float(broadcast_array(np.array(value))) if current().distributed else value


def _gather(t: torch.Tensor) -> list[torch.Tensor]:
    ctx = current()
    t = t.contiguous().to(ctx.device)
    out = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return out


def merge_accumulator(acc):
    """Every rank's streaming accumulator merged in rank order (acc.merge, Chan's exact pairwise update), on every
    rank; returns `acc`, now holding the merged state. `acc.STATE` names its tensors (dotted paths into parts,
    e.g. "stats.counts"; a None one is skipped). One process: `acc` as it is."""
    ctx = current()
    if not ctx.distributed:
        return acc
    paths = [p for p in acc.STATE if _get(acc, p) is not None]
    homes = {p: _get(acc, p).device for p in paths}
    gathered = {p: _gather(_get(acc, p)) for p in paths}
    parts = [_replaced(acc, {p: gathered[p][r] for p in paths}) for r in range(ctx.world_size)]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    for p in paths:
        _set(acc, p, _get(merged, p).to(homes[p]))
    return acc


def _get(obj, path: str):
    return functools.reduce(getattr, path.split("."), obj)


def _set(obj, path: str, value) -> None:
    head, _, name = path.rpartition(".")
    setattr(_get(obj, head) if head else obj, name, value)


def _replaced(obj, values: dict):
    """A shallow copy of obj with the dotted attributes of `values` replaced (parts on the way copied too)."""
    out, inner = copy.copy(obj), {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            inner.setdefault(head, {})[rest] = value
        else:
            setattr(out, head, value)
    for head, sub in inner.items():
        setattr(out, head, _replaced(getattr(obj, head), sub))
    return out


def shard(n: int) -> torch.Tensor | None:
    """This rank's rows of an n-row split for an eval pass: the rank-th of W contiguous near-equal blocks
    (sequential reads of a memory-mapped store); None (the stored order) for one process."""
    ctx = current()
    return torch.arange(n).tensor_split(ctx.world_size)[ctx.rank] if ctx.distributed else None


@contextlib.contextmanager
def joined():
    """For the duration, the Context of a torch.distributed process group the caller initialised (a user's torchrun:
    each rank passes its shard), unless a Context is already set; the collectives' device is the current CUDA
    device under NCCL, else the CPU. Without a process group: nothing changes."""
    if current().distributed or not (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    ctx = Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), device)
    previous, _CURRENT[0] = _CURRENT[0], ctx
    try:
        yield ctx
    finally:
        _CURRENT[0] = previous
