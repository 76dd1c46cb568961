"""The paper's training recipe (Section 2G) with neural-collapse measurement at snapshot epochs.

SGD with momentum, weight decay, cross-entropy, no augmentation, the learning rate multiplied by `lr_gamma` at each
milestone: MultiStepLR(milestones=[floor(f E) for f in lr_milestones]) stepped after each epoch, as the authors'
notebook does ([E//3, 2E//3]: for 350 epochs the lr is /10 from epoch 117 and /100 from epoch 234). Per epoch: the
train loss (nats, mean over the epoch's batches weighted by size) and accuracy of the training pass itself, and an
eval-mode pass over the whole train set (eval_train_acc, which marks the TPT start, as the authors' notebook
measures train accuracy) and over the test set. At each snapshot epoch those two passes also feed every metric of
nc.train.snapshot.

A checkpoint (model, optimizer, the record so far) is written atomically after every epoch and a run resumes from
it; the batch order of epoch e depends only on (seed, e), so a resumed run equals an uninterrupted one. An
unreadable checkpoint is reported once and the lr restarts from scratch. A non-finite loss marks the run
`diverged` and ends it cleanly. Several GPUs per run: nc.train.ddp (one process per GPU; with one process nothing
here changes).
"""
from __future__ import annotations

import math
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nc import models
from nc.train import ddp
from nc.train import precision as precision_mod
from nc.train import progress as progress_mod
from nc.train.losses import loss_value
from nc.train.record import (  # noqa: F401  (re-exported: the record's helpers)
    FIG1_PAPER_EPOCHS,
    GEOMETRY_BUDGET_BYTES,
    Record,
    checkpoint_files,
    empty_record,
    fig1_epochs,
    geometry_epochs,
    save_atomic,
)
from nc.train.snapshot import choose_fixed_samples, eval_pass, measure_depth, measure_snapshot
from nc.train.variables import EPOCH_VARS, SNAPSHOT_VARS

RECORD_EPOCH = EPOCH_VARS
RECORD_SNAPSHOT = SNAPSHOT_VARS


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU. DDP (nc.train.ddp): this rank's device unless `name` is cpu."""
    if ddp.current().distributed and name != "cpu":
        return ddp.current().device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def snapshot_schedule(epochs: int, snapshots) -> list[int]:
    """Epochs at which to measure: a list as given (plus the last epoch), or exactly n = `snapshots` distinct epochs
    from 1 to `epochs`, log-spaced: unique(round(geomspace(1, epochs, K))) for the K that leaves exactly n of them
    (for 350 epochs and n = 50 this is the authors' notebook's list but for 157 and 205, where theirs has 158 and
    206); early snapshots are then every epoch. When no K gives exactly n, the n-point grid is rounded with each
    epoch pushed past the previous one."""
    if isinstance(snapshots, (list, tuple)):
        return sorted({int(e) for e in snapshots if 1 <= e <= epochs} | {epochs})
    n = min(int(snapshots), epochs)
    if n == 1:
        return [epochs]
    for k in range(n, 20 * epochs):
        grid = np.unique(np.round(np.geomspace(1, epochs, num=k)).astype(int))
        if len(grid) == n:
            return grid.tolist()
        if len(grid) > n:
            break
    grid = np.geomspace(1, epochs, num=n)
    out = []
    for k, target in enumerate(grid):
        e = max(int(round(target)), out[-1] + 1 if out else 1)
        out.append(min(e, epochs - (n - 1 - k)))  # leave room for the snapshots still to come
    for k in range(n - 2, -1, -1):  # the clamp above can collide with the previous epoch: push down instead
        out[k] = min(out[k], out[k + 1] - 1)
    return out


def lr_milestones(epochs: int, fractions) -> list[int]:
    """MultiStepLR milestones floor(f * E), with f read as the fraction it denotes (1/3, not 0.3333...)."""
    return [math.floor(Fraction(f).limit_denominator(1000) * epochs) for f in fractions]


def lr_schedule(base_lr: float, epochs: int, milestones, gamma: float) -> np.ndarray:
    """Learning rate used during each epoch 1..E: base_lr * gamma^k with k the milestones m (lr_milestones) with
    m < epoch, i.e. MultiStepLR stepped after each epoch."""
    steps = lr_milestones(epochs, milestones)
    e = np.arange(1, epochs + 1)
    return base_lr * gamma ** np.array([sum(ep > s for s in steps) for ep in e], dtype=np.float64)


def tpt_start(eval_train_acc: np.ndarray, threshold: float) -> float:
    """First epoch (1-based) whose eval-mode train accuracy is >= threshold; NaN if never."""
    hit = np.flatnonzero(np.nan_to_num(eval_train_acc, nan=-1.0) >= threshold)
    return float(hit[0] + 1) if hit.size else math.nan


def precision_context(precision: str, device: torch.device):
    """The training step's precision context (nc.train.precision.step): TF32 or bf16 autocast inside the step only,
    the TF32 switches restored after it."""
    return precision_mod.step(precision, device)


def sgd_step(model, opt, x, y, autocast, loss: str = "cross_entropy",
             scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch; returns the batch's mean loss (nc.train.losses) and its logits (detached). The
    gradient is that of `scale` x the loss (DDP: a rank's share of a partial last global batch, nc.train.ddp)."""
    with autocast:
        logits = model(x)
        loss = loss_value(logits, y, loss)
        opt.zero_grad(set_to_none=True)
        (loss if scale == 1 else loss * scale).backward()
        opt.step()
    return loss.detach(), logits.detach()


def train_epoch(net, model, opt, split, order, batch_size: int, autocast, loss: str = "cross_entropy",
                max_steps: int | None = None) -> tuple[float, float]:
    """One epoch of SGD steps over `split` in `order`, global batches of `batch_size` (a last batch too small for
    BatchNorm is skipped); under DDP (nc.train.ddp) this rank's rows of each batch, through `net` (the DDP wrapper of
    `model`). Returns the mean loss and the training-pass accuracy over the rows seen, summed over the ranks; the
    sums stay on the device until the epoch ends (no host sync per batch). max_steps: stop after that many steps
    (the benchmark's short epochs)."""
    ctx = ddp.current()
    model.train()
    seen = len(order) - ddp.tail_skipped(len(order), batch_size)  # one process: a last batch of one image
    if max_steps is not None:
        seen = min(seen, max_steps * batch_size)
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.device)
    rows, steps = ddp.shard_epoch(order[:seen], batch_size)  # this rank's rows; one process: order[:seen]
    for (x, y), n_step in zip(split.batches(ddp.local_batch(batch_size), rows), steps):
        value, logits = sgd_step(net, opt, x, y, autocast, loss, len(y) * ctx.world_size / n_step)
        loss_sum += value.double() * len(y)
        correct += (logits.argmax(1) == y).sum()
    ddp.sync_buffers(model)  # DDP: rank 0's BatchNorm statistics on every rank
    ddp.sum_tensors_(loss_sum, correct)  # DDP: over the ranks, in place
    return loss_sum.item() / seen, correct.item() / seen


def build_model(params: dict, num_classes: int, in_channels: int, image_size: int, device,
                seed: int | None = None) -> torch.nn.Module:
    """The network of `params`, seeded by the run seed (default the file's first, nc.runs.params.run_seeds) so that
    every lr of a sweep starts from the same weights."""
    seed = list(params["seeds"])[0] if seed is None else seed
    torch.manual_seed(seed)
    model = models.build(params["network"], num_classes=num_classes, in_channels=in_channels,
                         image_size=image_size, width=params["width"],
                         memory_efficient=params["memory_efficient"], growth_rate=params["growth_rate"],
                         stem=params["stem"], classifier=params["classifier"], etf_seed=seed,
                         etf_bias=params["fixed_etf_bias"],
                         feature_dim=params["feature_dim"])
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def build_optimizer(params: dict, model, lr: float) -> torch.optim.Optimizer:
    """SGD over the parameters that train (a fixed ETF classifier's weight and bias have requires_grad False)."""
    return torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=lr, momentum=params["momentum"],
                           weight_decay=params["weight_decay"])


def _start(params: dict, lr: float, data, seed: int, checkpoint: Path | None):
    """(model, optimizer, Record): resumed from the checkpoint when every rank can read it (DDP: all or none), else
    fresh, with the seeded weights and the fixed samples. An unreadable checkpoint: one warning, its files removed."""
    def fresh():
        model = build_model(params, data.num_classes, data.in_channels, data.image_size, data.train.device, seed)
        record = Record(params, lr, seed, snapshot_schedule(params["epochs"], params["snapshot_epochs"]),
                        data.num_classes, model.classifier.in_features,
                        [name for name, _ in model.blocks()] if params["depth"] else [], checkpoint)
        return model, build_optimizer(params, model, lr), record

    model, opt, record = fresh()
    ddp.barrier()  # DDP: no rank reads the checkpoint before rank 0 has vetted it (nc.runs)
    tried = checkpoint is not None and Path(checkpoint).is_file()
    try:
        if tried:
            record.load(model, opt, data.train.device)
    except Exception as err:
        warnings.warn(f"{checkpoint}: the checkpoint cannot be resumed ({type(err).__name__}: {err}); this lr "
                      "restarts from scratch", RuntimeWarning, stacklevel=3)
        for f in checkpoint_files(checkpoint):
            f.unlink(missing_ok=True)
        tried = False
    if not ddp.every_rank(tried):  # DDP: every rank resumes, or none does; a failed load may have changed weights
        model, opt, record = fresh()
        choose_fixed_samples(record.data, data, params)
    return model, opt, record


def _finite(model) -> bool:
    """Every floating-point weight and buffer is finite (one host sync)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in model.state_dict().values()
                             if t.is_floating_point()]).all())


def _train(record: Record, epoch: int, net, model, opt, data, lr: float, seed: int, step, params: dict) -> None:
    """The epoch's SGD steps at `lr` (the batch order depends only on the run seed and the epoch) into the record;
    a non-finite loss or weight marks the run diverged."""
    for group in opt.param_groups:
        group["lr"] = lr
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    loss, acc = train_epoch(net, model, opt, data.train, order, params["batch_size"], step, params["loss"])
    record.set(epoch, train_loss=loss, train_acc=acc, lr_schedule=lr)
    if not (math.isfinite(loss) and _finite(model)):
        record.data["status"] = "diverged"  # record it, end the run cleanly


def _evaluate(record: Record, epoch: int, model, data, params: dict, bar) -> None:
    """The eval-mode passes: at a snapshot epoch every measure (nc.train.snapshot), else the two accuracies."""
    if not record.running:
        return
    if epoch not in record.data["snapshot_epochs"]:
        ebs = params["eval_batch_size"]
        record.set(epoch, eval_train_acc=eval_pass(model, data.train, ebs), test_acc=eval_pass(model, data.test, ebs))
        return
    try:
        values, geometry = measure_snapshot(model, data, record.data, params)
    except FloatingPointError:  # finite weights, but features overflow: diverged too
        record.data["status"] = "diverged"
        return
    record.add_snapshot(epoch, values, geometry)
    bar.set_postfix(loss=f"{record.data['epoch']['train_loss'][epoch - 1]:.3g}",
                    acc=f"{values['eval_train_acc']:.4f}", nc1=f"{values['nc1']:.3g}")


def run_label(params: dict, lr: float, seed: int) -> str:
    """The progress label when the caller gives none: `<name> lr=<lr>`, with ` seed=<s>` for several run seeds."""
    name = params.get("name") or f"{params['dataset']}-{params['network']}"
    return f"{name} lr={lr:g}" + (f" seed={seed}" if len(list(params["seeds"])) > 1 else "")


def train_one_lr(params: dict, lr: float, data, checkpoint: Path | None = None, progress: bool = True,
                 stop_after: int | None = None, seed: int | None = None, progress_file: Path | None = None,
                 label: str | None = None) -> dict:
    """Train one learning rate to the end (or until divergence); returns the record (nc.train.record).

    `checkpoint`: a file to resume from and to write after every epoch (with the geometry files beside it).
    `stop_after`: return after that many epochs of this call (used by tests to interrupt a run). `seed`: the run
    seed (initialisation and batch order; default the file's first run seed); the data subset and the Fig. 1 /
    DeepFool samples follow the data seed params["seed"], the same for every run seed. `progress_file`: where the
    run reports its epoch, pace and ETA after every epoch (nc.train.progress). `label`: the progress label
    (default run_label)."""
    seed = list(params["seeds"])[0] if seed is None else seed
    model, opt, record = _start(params, lr, data, seed, checkpoint)
    lrs = lr_schedule(lr, params["epochs"], params["lr_milestones"], params["lr_gamma"])
    ctx, net = ddp.current(), ddp.wrap(model)  # net takes the steps (DDP over model); model is evaluated, saved
    step, label, E = precision_context(params["precision"], data.train.device), label or run_label(params, lr, seed), \
        params["epochs"]
    bar = tqdm(range(record.next_epoch, E + 1), initial=record.next_epoch - 1, total=E, desc=label,
               disable=not (progress and ctx.is_main), unit="epoch", mininterval=10)
    started = time.perf_counter()
    with precision_mod.float32():  # eval and measurement in float32; the step's own precision inside train_epoch
        for done_here, epoch in enumerate(bar, 1):
            if not record.running:
                break
            t0 = time.perf_counter()
            _train(record, epoch, net, model, opt, data, float(lrs[epoch - 1]), seed, step, params)
            _evaluate(record, epoch, model, data, params, bar)
            stages = record.depth_stages(epoch)
            if stages:
                record.add_depth(stages, epoch, measure_depth(model, data, params))
            record.end_epoch(epoch, time.perf_counter() - t0)
            if checkpoint is not None and ctx.is_main:  # DDP: rank 0 writes it, the bare model (no "module.")
                record.save(model, opt)
            if progress_file is not None and ctx.is_main:
                pace = (time.perf_counter() - started) / done_here
                progress_mod.write(progress_file, label, epoch, E, pace, record.data["status"])
            if stop_after is not None and done_here >= stop_after:
                break
    bar.close()
    return record.finish(tpt_start(record.data["epoch"]["eval_train_acc"], params["tpt_threshold"]))
