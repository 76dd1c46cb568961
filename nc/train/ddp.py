"""Several GPUs per run: DistributedDataParallel, one process per GPU; one process (the default) changes nothing.

Launch. `torchrun --nproc_per_node=8 -m nc.train.ddp parameters/paper/imagenet-resnet152.yaml [--lr 0.1] [--cube-dir D]`
trains that file's lrs (all of them without --lr) into its parts and, when all are finished, its cube; or the Slurm
executor of nc.runs.sweep with `gpus_per_job: 8`: one job, 8 tasks on one node, submitit starting the same TrainPart in
each (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the master is the job's first host, the port drawn from the job
id as submitit's TorchDistributedEnvironment does). `setup()` reads either launcher's variables; with a world size
above 1 it joins the process group (nccl on CUDA, gloo on CPU; a 60 min timeout: rank 0 alone runs DeepFool while
the others wait) on cuda:LOCAL_RANK. Without them (or world size 1) it is a no-op and so is every helper here.

What is sharded. Training: params["batch_size"] is the GLOBAL batch B; each of the W ranks takes b = B / W rows
(ValueError unless W divides B). The epoch order (torch.randperm of the run seed and epoch) is the same on every
rank; rank r takes the slice [r b, (r+1) b) of each consecutive global batch, and the W near-equal contiguous
pieces (torch.tensor_split) of a last, partial global batch of m rows, whose loss is scaled by n_r W / m so that
DDP's gradient average is the gradient of the mean over those m rows: the union of the ranks' batches is the
single-process batch and so is the gradient, up to float rounding. A last global batch that cannot give every
rank 2 images (m < 2W; with one process: m = 1) is skipped. Per-GPU BatchNorm (no SyncBatchNorm), as in the
paper's 8-GPU runs; after each epoch's steps every rank takes rank 0's buffers, so that all ranks evaluate rank
0's model. The learning rate is not rescaled. Evaluation (eval_train_acc, test_acc, the snapshot's passes, the
depth pass): rank r reads the r-th of W contiguous blocks of a split's rows; counts are all-reduced and the
float64 accumulators (nc.measure.ClassStats, nc.measure.followups.TestAccumulator, nc.measure.depth.ClassMeansTrace) are
all-gathered and Chan-merged in rank order on every rank, so every rank finalizes the same numbers.

On rank 0 only: DeepFool (Fig. 8) and Fig. 1's features (broadcast to the other ranks, so every rank's record is
the same), the progress bar, the checkpoint (the bare model's state_dict: no "module." prefix, the same file
whatever the world size; every rank resumes from it, and all ranks or none do), the part file and the cube.

Measurement stays float64. Merging reorders float64 sums, so a DDP snapshot of the same weights equals a
single-process one to about 1e-12 relative, not bitwise; and a global batch's gradient summed over the ranks
rounds differently from the one computed whole, so without BatchNorm a DDP run follows the single-process
trajectory up to float rounding that training may amplify (tests/test_ddp.py: float64, 1e-13 after 42 steps).
With BatchNorm it is another computation (per-GPU batch statistics), as in the paper. A resumed DDP run equals an
uninterrupted one of the same world size: bitwise at W = 2 (a sum of two numbers does not depend on the order);
above 2 the all-reduce's order may follow DDP's bucket layout, which it rebuilds after the first step of a launch.
"""
from __future__ import annotations

import datetime
import os
import random

import torch
import torch.distributed as dist

from nc.measure import distributed
from nc.measure.distributed import (  # noqa: F401  (the collectives, for the training loop)
    Context,
    barrier,
    broadcast_array,
    broadcast_float,
    current,
    every_rank,
    is_main,
    merge_accumulator,
    shard,
    sum_ints,
    sum_tensors_,
)

TIMEOUT_MIN = 60  # collectives wait this long: rank 0 alone runs DeepFool and writes the checkpoint meanwhile


def launch_env() -> dict | None:
    """{rank, world_size, local_rank, master_addr, master_port, init_method} from torchrun's variables (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: env://) or from Slurm tasks' (SLURM_PROCID, SLURM_NTASKS,
    SLURM_LOCALID; the job's first host; MASTER_PORT if set, else a port in [20000, 60000] drawn from the job id, as
    submitit does: tcp://host:port); None for a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        out = {"rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
               "local_rank": int(env.get("LOCAL_RANK", 0)), "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
               "master_port": int(env.get("MASTER_PORT", 29500)), "init_method": "env://"}
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        from submitit.slurm.slurm import SlurmJobEnvironment

        port = env.get("MASTER_PORT") or random.Random(env.get("SLURM_JOB_ID", "")).randint(20000, 60000)
        out = {"rank": int(env["SLURM_PROCID"]), "world_size": int(env["SLURM_NTASKS"]),
               "local_rank": int(env.get("SLURM_LOCALID", 0)), "master_addr": SlurmJobEnvironment().hostnames[0],
               "master_port": int(port)}
        out["init_method"] = f"tcp://{out['master_addr']}:{out['master_port']}"
    else:
        return None
    return out if out["world_size"] > 1 else None


def setup(device: str = "auto", timeout_min: float = TIMEOUT_MIN) -> Context:
    """Join the launcher's process group (see launch_env) and pick this rank's device (cuda:LOCAL_RANK, or the one
    GPU a task sees when Slurm binds one per task); a no-op for a single process. `device` is the parameter files'
    key: auto (CUDA if present), cpu (gloo), cuda[:N] (nccl; N is ignored, each rank takes its own GPU)."""
    env = launch_env()
    if env is None or current().distributed:
        return current()
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cpu")
    if cuda:
        n = torch.cuda.device_count()
        if n <= env["local_rank"] and n != 1:
            raise RuntimeError(f"local rank {env['local_rank']} but this task sees {n} GPU(s)")
        dev = torch.device("cuda", env["local_rank"] if n > 1 else 0)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=env["init_method"], rank=env["rank"],
                            world_size=env["world_size"], timeout=datetime.timedelta(minutes=timeout_min),
                            **({"device_id": dev} if cuda else {}))
    distributed._CURRENT[0] = Context(env["rank"], env["world_size"], env["local_rank"], dev)
    return current()


def teardown() -> None:
    """Leave the process group (if any); this process is a single one again."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    distributed._CURRENT[0] = Context()


def local_batch(batch_size: int) -> int:
    """This rank's rows of a global batch: batch_size / W (ValueError unless W divides it)."""
    w = current().world_size
    if batch_size % w:
        raise ValueError(f"batch_size {batch_size} (the global batch) is not divisible by the world size {w}")
    return batch_size // w


def tail_skipped(n: int, batch_size: int) -> int:
    """Rows of an epoch's last global batch that are skipped: all m of them when m = n mod batch_size cannot give
    every rank 2 images (per-rank BatchNorm needs two), i.e. 0 < m < 2W; one process: a last batch of one image."""
    m = n % batch_size
    return m if 0 < m < 2 * current().world_size else 0


def shard_epoch(order: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, list[int]]:
    """(this rank's rows in order, the global size of each step) for an epoch's `order` (tail already removed):
    of each full global batch the slice [r b, (r+1) b), of a partial last one the r-th of W near-equal pieces."""
    ctx, n = current(), len(order)
    full = n - n % batch_size
    steps = [batch_size] * (full // batch_size) + ([n - full] if n > full else [])
    if not ctx.distributed:
        return order, steps
    b = local_batch(batch_size)
    mine = order[:full].view(-1, ctx.world_size, b)[:, ctx.rank].reshape(-1)
    return torch.cat([mine, order[full:].tensor_split(ctx.world_size)[ctx.rank]]), steps


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module that takes the training steps: DistributedDataParallel over `model` (per-GPU BatchNorm), or
    `model` itself for one process. Evaluate, measure and checkpoint the bare `model`."""
    ctx = current()
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)  # its default: rank 0's buffers at every forward


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, as DDP's next forward would broadcast them."""
    ctx = current()
    if not ctx.distributed:
        return
    for buf in model.buffers():
        t = buf.data.to(ctx.device)
        dist.broadcast(t, src=0)
        buf.data.copy_(t)
