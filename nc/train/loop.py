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

import contextlib
import math
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nc import files, models
from nc.train import ddp
from nc.train import progress as progress_mod
from nc.train.snapshot import choose_fixed_samples, eval_pass, measure_depth, measure_snapshot
from nc.train.variables import DEPTH_STAGES, EPOCH_VARS, SNAPSHOT_VARS

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


FIG1_PAPER_EPOCHS = (2, 16, 65, 350)  # of the paper's 350 (VGG13 on CIFAR10)


def fig1_epochs(snapshot_epochs, last_epoch: int, paper_epochs=FIG1_PAPER_EPOCHS, paper_last: int = 350) -> list[int]:
    """The snapshots nearest to the paper's epochs 2, 16, 65 and 350 scaled to this run (the same fractions of
    the last epoch), each later than the one before (a short run's nearest snapshots coincide: the next one is
    taken); fewer when the run has fewer snapshots."""
    snaps = np.sort(np.asarray(snapshot_epochs))
    out = []
    for e in paper_epochs:
        later = snaps[snaps > out[-1]] if out else snaps
        if later.size:
            out.append(int(later[np.argmin(np.abs(later - e / paper_last * last_epoch))]))
    return out


GEOMETRY_BUDGET_BYTES = 768 * 2**20  # an ImageNet cell's stored geometry stays under this (the cube under 1 GB)


def geometry_epochs(snapshots: list[int], epochs: int, num_classes: int, feature_dim: int, fig1_values: int,
                    budget: int = GEOMETRY_BUDGET_BYTES) -> list[int]:
    """The snapshots whose geometry (class means, classifier, within_cov_means, Fig. 1 features; float32 on disk)
    the cube keeps: all of them when they fit in `budget` bytes, else as many as fit, always the first and last
    snapshot and Fig. 1's epochs, the rest spread evenly over the remaining snapshots."""
    C, p = num_classes, feature_dim
    per = 4 * (2 * C * p + p + C + C * C + fig1_values * p)
    keep = max(2, budget // per)
    if keep >= len(snapshots):
        return list(snapshots)
    must = sorted({snapshots[0], snapshots[-1], *fig1_epochs(snapshots, epochs)})
    rest = [e for e in snapshots if e not in must]
    extra = max(0, keep - len(must))
    picked = [rest[round(i)] for i in np.linspace(0, len(rest) - 1, extra)] if extra and rest else []
    return sorted(set(must) | set(picked))


def empty_record(params: dict, lr: float, snapshots: list[int], num_classes: int, feature_dim: int,
                 layer_names=()) -> dict:
    """Arrays for every epoch (NaN until filled), for the geometry at the geometry_epochs and for collapse by depth
    at the DEPTH_STAGES epochs (one row per stage, one column per block in `layer_names`)."""
    E, C, p, L = params["epochs"], num_classes, feature_dim, len(layer_names)
    nan = lambda *shape: np.full(shape, np.nan)
    k, m = min(params["fig1_classes"], C), params["fig1_samples"]
    kept = geometry_epochs(snapshots, E, C, p, k * m)
    S = len(kept)
    return {
        "lr": lr, "seed": list(params["seeds"])[0], "status": "running", "epochs_done": 0, "wall_time": 0.0,
        "snapshot_epochs": snapshots,
        "geometry_epochs": kept,
        "epoch": {key: nan(E) for key in RECORD_EPOCH},
        "snapshot": {key: nan(E) for key in RECORD_SNAPSHOT},
        "geometry": {
            "class_means": nan(S, C, p), "global_mean": nan(S, p), "classifier_weight": nan(S, C, p),
            "classifier_bias": nan(S, C), "within_cov_means": nan(S, C, C),
            "fig1_features": nan(S, k, m, p),
        },
        "fig1_classes": [], "fig1_indices": [], "robustness_indices": [],
        "depth": {"layer_names": list(layer_names), "layer_widths": np.zeros(L, dtype=np.int64),
                  "epoch": nan(len(DEPTH_STAGES)), "rho": nan(len(DEPTH_STAGES)), "r2": nan(len(DEPTH_STAGES)),
                  **{k: nan(len(DEPTH_STAGES), L) for k in ("nc1", "trace_ratio", "ncc_acc_train", "ncc_acc_test")}},
    }


def record_depth(record: dict, stages: list[str], epoch: int, model, data, params: dict) -> None:
    """Collapse by depth at `epoch` (nc.train.snapshot.measure_depth, one pass) into the record's rows for `stages`."""
    d, out = record["depth"], measure_depth(model, data, params)
    d["layer_widths"] = out["widths"]
    for row in (DEPTH_STAGES.index(stage) for stage in stages):
        d["epoch"][row], d["rho"][row], d["r2"][row] = epoch, out["rho"], out["r2"]
        for key in ("nc1", "trace_ratio", "ncc_acc_train", "ncc_acc_test"):
            d[key][row] = out[key]


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename; a failed write (full disk) removes it and keeps the old file."""
    with files.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def precision_context(precision: str, device: torch.device):
    """The autocast context of a precision (nc.runs.params PRECISIONS); sets CUDA's TF32 switches (off unless tf32: they
    are on by default for convolutions, which would silently make 'float32' TF32)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loss_value(logits: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """The batch's mean loss: cross-entropy (nats), or for "mse" F.mse_loss against one-hot targets, the mean over
    the B * C entries, as the authors' notebook trains its MSE branch."""
    if loss == "mse":
        return F.mse_loss(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(logits, y)


def sgd_step(model, opt, x, y, autocast, loss: str = "cross_entropy",
             scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch; returns the batch's mean loss (loss_value) and its logits (detached). The gradient
    is that of `scale` x the loss (DDP: a rank's share of a partial last global batch, nc.train.ddp)."""
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
    `model`). Returns the mean loss and the training-pass accuracy over the rows seen, summed over the ranks.
    max_steps: stop after that many steps (the benchmark's short epochs)."""
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


def _resume(checkpoint: Path, model, opt, record: dict, device) -> dict | None:
    """The record of a checkpoint, loaded into model and opt; None (after one warning, the file removed) when it
    cannot be read or does not fit this run."""
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        saved = state["record"]
        for group in ("epoch", "snapshot", "geometry"):
            for key, value in record[group].items():
                if np.shape(saved[group][key]) != np.shape(value):
                    raise ValueError(f"record[{group!r}][{key!r}] has shape {np.shape(saved[group][key])}, "
                                     f"expected {np.shape(value)}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        return saved
    except Exception as err:
        warnings.warn(f"{checkpoint}: the checkpoint cannot be resumed ({type(err).__name__}: {err}); this lr "
                      "restarts from scratch", RuntimeWarning, stacklevel=3)
        checkpoint.unlink(missing_ok=True)
        return None


def train_one_lr(params: dict, lr: float, data, checkpoint: Path | None = None, progress: bool = True,
                 stop_after: int | None = None, seed: int | None = None, progress_file: Path | None = None) -> dict:
    """Train one learning rate to the end (or until divergence); returns the record (see `empty_record`).

    `checkpoint`: a file to resume from and to write after every epoch. `stop_after`: return after that
    many epochs of this call (used by tests to interrupt a run). `seed`: the run seed (initialisation and batch
    order; default the file's first run seed); the data subset and the Fig. 1 / DeepFool samples follow the data
    seed params["seed"], the same for every run seed.
    `progress_file`: where the run reports its epoch, pace and ETA after every epoch (nc.train.progress)."""
    seed = list(params["seeds"])[0] if seed is None else seed
    device = data.train.device
    model = build_model(params, data.num_classes, data.in_channels, data.image_size, device, seed)
    opt = build_optimizer(params, model, lr)
    snapshots = snapshot_schedule(params["epochs"], params["snapshot_epochs"])
    record = empty_record(params, lr, snapshots, data.num_classes, model.classifier.in_features,
                          [name for name, _ in model.blocks()] if params["depth"] else [])
    record["seed"] = seed
    ddp.barrier()  # DDP: no rank reads the checkpoint before rank 0 has vetted it (nc.runs)
    tried = checkpoint is not None and Path(checkpoint).is_file()
    resumed = _resume(Path(checkpoint), model, opt, record, device) if tried else None
    if not ddp.every_rank(resumed is not None):  # DDP: every rank resumes, or none does
        if tried:  # a failed load may have changed some weights: start from the seeded ones
            model = build_model(params, data.num_classes, data.in_channels, data.image_size, device, seed)
            opt = build_optimizer(params, model, lr)
        resumed = None
    if resumed is not None:
        record = resumed
    else:
        choose_fixed_samples(record, data, params)
    lrs = lr_schedule(lr, params["epochs"], params["lr_milestones"], params["lr_gamma"])
    N, bs, ebs = len(data.train), params["batch_size"], params["eval_batch_size"]
    ctx, net = ddp.current(), ddp.wrap(model)  # net takes the steps (DDP over model); model is evaluated, saved
    autocast = precision_context(params["precision"], device)
    start_epoch = record["epochs_done"] + 1
    label = f"{params.get('name') or params['dataset'] + '-' + params['network']} lr={lr:g}" + (
        f" seed={seed}" if len(list(params["seeds"])) > 1 else "")
    bar = tqdm(range(start_epoch, params["epochs"] + 1), initial=start_epoch - 1, total=params["epochs"], desc=label,
               disable=not (progress and ctx.is_main), unit="epoch", mininterval=10)
    started = time.perf_counter()
    for done_here, epoch in enumerate(bar, 1):
        if record["status"] != "running":
            break
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = float(lrs[epoch - 1])
        order = torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        ep = record["epoch"]
        ep["train_loss"][epoch - 1], ep["train_acc"][epoch - 1] = train_epoch(
            net, model, opt, data.train, order, bs, autocast, params["loss"])
        ep["lr_schedule"][epoch - 1] = lrs[epoch - 1]
        finite = math.isfinite(ep["train_loss"][epoch - 1]) and all(
            torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
        if not finite:
            record["status"] = "diverged"  # a non-finite loss or weight: record it, end the run cleanly
        elif epoch in snapshots:
            try:
                values, geometry = measure_snapshot(model, data, record, params)
            except FloatingPointError:  # finite weights, but features overflow: diverged too
                record["status"] = "diverged"
            else:
                for key in ("eval_train_acc", "test_acc"):
                    ep[key][epoch - 1] = values[key]
                for key in RECORD_SNAPSHOT:
                    record["snapshot"][key][epoch - 1] = values[key]
                if epoch in record["geometry_epochs"]:
                    s = record["geometry_epochs"].index(epoch)
                    for key, value in geometry.items():
                        record["geometry"][key][s] = value
                bar.set_postfix(loss=f"{ep['train_loss'][epoch - 1]:.3g}", acc=f"{values['eval_train_acc']:.4f}",
                                nc1=f"{values['nc1']:.3g}")
        else:
            ep["eval_train_acc"][epoch - 1] = eval_pass(model, data.train, ebs)
            ep["test_acc"][epoch - 1] = eval_pass(model, data.test, ebs)
        if params["depth"] and record["status"] == "running":
            reached = ep["eval_train_acc"][epoch - 1] >= params["tpt_threshold"]
            stages = [s for s, due in (("first", epoch == snapshots[0]), ("last", epoch == snapshots[-1]),
                                       ("tpt", reached and np.isnan(record["depth"]["epoch"][1]))) if due]
            if stages:
                record_depth(record, stages, epoch, model, data, params)
        if epoch == params["epochs"] and record["status"] == "running":
            record["status"] = "complete"
        record["epochs_done"] = epoch
        record["wall_time"] += time.perf_counter() - t0
        if checkpoint is not None and ctx.is_main:  # DDP: rank 0 writes it, the bare model (no "module." prefix)
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "record": record},
                        Path(checkpoint))
        if progress_file is not None and ctx.is_main:
            pace = (time.perf_counter() - started) / done_here
            progress_mod.write(progress_file, label, epoch, params["epochs"], pace, record["status"])
        if stop_after is not None and done_here >= stop_after:
            break
    bar.close()
    record["tpt_epoch"] = tpt_start(record["epoch"]["eval_train_acc"], params["tpt_threshold"])
    return record
