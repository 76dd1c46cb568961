"""The paper's training recipe (Section 2G) with neural-collapse measurement at snapshot epochs.

SGD with momentum, weight decay, cross-entropy, no augmentation, the learning rate divided by
`lr_gamma` at the `lr_milestones` fractions of the epochs. Per epoch: train loss (nats, mean over
the epoch's batches weighted by size) and train accuracy from the training pass itself, and test
accuracy from an eval-mode pass. At each snapshot epoch, one eval-mode pass over the train set and
one over the test set feed every metric of `nc.measure` (plus DeepFool robustness, Fig. 8).

A checkpoint (model, optimizer, the record so far) is written atomically after every epoch and a run
resumes from it; the batch order of epoch e depends only on (seed, e), so a resumed run equals an
uninterrupted one. A non-finite loss marks the run `diverged` and ends it cleanly.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nc import measure, models, robustness

RECORD_EPOCH = ("train_loss", "train_acc", "test_acc", "lr_schedule")
RECORD_SNAPSHOT = measure.METRICS + ("robustness", "eval_train_acc", "within_trace")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def snapshot_schedule(epochs: int, snapshots) -> list[int]:
    """Epochs at which to measure: a list as given, or `snapshots` log-spaced epochs from 1 to `epochs`
    (the authors measured ~50 log-spaced epochs of 350); always includes the first and last epoch."""
    if isinstance(snapshots, (list, tuple)):
        return sorted({int(e) for e in snapshots if 1 <= e <= epochs} | {epochs})
    grid = np.unique(np.round(np.geomspace(1, epochs, num=min(snapshots, epochs))).astype(int))
    return sorted(set(grid.tolist()) | {1, epochs})


def lr_schedule(base_lr: float, epochs: int, milestones, gamma: float) -> np.ndarray:
    """Learning rate used during each epoch 1..E: divided by 1/gamma after each milestone epoch
    round(fraction * E) (e.g. 350 epochs: x0.1 from epoch 118 and again from 235)."""
    steps = [round(f * epochs) for f in milestones]
    e = np.arange(1, epochs + 1)
    return base_lr * gamma ** np.array([sum(e_ > s for s in steps) for e_ in e], dtype=np.float64)


def tpt_start(train_acc: np.ndarray, threshold: float) -> float:
    """First epoch (1-based) whose training-pass accuracy is >= threshold; NaN if never."""
    hit = np.flatnonzero(np.nan_to_num(train_acc, nan=-1.0) >= threshold)
    return float(hit[0] + 1) if hit.size else math.nan


def empty_record(params: dict, lr: float, snapshots: list[int], num_classes: int, feature_dim: int) -> dict:
    """Arrays for every epoch (NaN until filled) and for every snapshot's geometry."""
    E, S, C, p = params["epochs"], len(snapshots), num_classes, feature_dim
    nan = lambda *shape: np.full(shape, np.nan)
    k, m = min(params["fig1_classes"], C), params["fig1_samples"]
    return {
        "lr": lr, "status": "running", "epochs_done": 0, "wall_time": 0.0, "snapshot_epochs": snapshots,
        "epoch": {key: nan(E) for key in RECORD_EPOCH},
        "snapshot": {key: nan(E) for key in RECORD_SNAPSHOT},
        "geometry": {
            "class_means": nan(S, C, p), "global_mean": nan(S, p), "classifier_weight": nan(S, C, p),
            "classifier_bias": nan(S, C), "within_cov_means": nan(S, C, C),
            "fig1_features": nan(S, k, m, p),
        },
        "fig1_classes": [], "fig1_indices": [], "robustness_indices": [],
    }


@torch.no_grad()
def eval_pass(model, x, y, batch_size, on_features=None):
    """Eval-mode pass; returns accuracy; calls on_features(h, logits, y_batch) with the classifier's input."""
    model.eval()
    captured = {}
    hook = model.classifier.register_forward_pre_hook(lambda mod, args: captured.__setitem__("h", args[0]))
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    try:
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size])
            correct += (logits.argmax(1) == y[i:i + batch_size]).sum()
            if on_features is not None:
                on_features(captured["h"], logits, y[i:i + batch_size])
    finally:
        hook.remove()
    return correct.item() / len(x)


def measure_snapshot(model, data, record: dict, params: dict) -> tuple[dict, dict]:
    """One eval pass over train and one over test: every snapshot metric and the geometry to store."""
    C, p = data.num_classes, model.classifier.in_features
    acc = measure.CollapseAccumulator(C, p, data.x_train.device)
    eval_train_acc = eval_pass(model, data.x_train, data.y_train, params["eval_batch_size"],
                               lambda h, logits, y: acc.update(h, y))
    moments = acc.finalize()
    W = model.classifier.weight.detach().double()
    b = model.classifier.bias.detach().double()
    disagree = torch.zeros((), dtype=torch.int64)

    def count(h, logits, y):
        nonlocal disagree
        disagree += measure.ncc_disagreements(h, W, b, moments.class_means)

    eval_pass(model, data.x_test, data.y_test, params["eval_batch_size"], count)
    values = measure.metrics_from_moments(moments, W, b, disagree.item() / len(data.x_test))
    values["eval_train_acc"] = eval_train_acc
    values["within_trace"] = moments.within_trace
    values["robustness"] = math.nan
    if record["robustness_indices"]:
        idx = torch.as_tensor(record["robustness_indices"], device=data.x_test.device)
        values["robustness"] = robustness.robustness(
            model, data.x_test[idx], overshoot=params["deepfool_overshoot"], max_iter=params["deepfool_max_iter"])
    fig1 = np.full(record["geometry"]["fig1_features"].shape[1:], np.nan)
    if record["fig1_indices"]:
        idx = torch.as_tensor(np.asarray(record["fig1_indices"]).ravel(), device=data.x_train.device)
        feats = []
        eval_pass(model, data.x_train[idx], data.y_train[idx], params["eval_batch_size"],
                  lambda h, logits, y: feats.append(h.double().cpu()))
        fig1 = torch.cat(feats).numpy().reshape(fig1.shape)
    geometry = {
        "class_means": moments.class_means.cpu().numpy(), "global_mean": moments.global_mean.cpu().numpy(),
        "classifier_weight": W.cpu().numpy(), "classifier_bias": b.cpu().numpy(),
        "within_cov_means": moments.within_cov_means.cpu().numpy(), "fig1_features": fig1,
    }
    return values, geometry


def _choose_fixed_samples(record, data, params):
    """Fig. 1's classes and their train samples, and Fig. 8's test images: drawn once, seeded."""
    rng = np.random.default_rng(params["seed"])
    y = data.y_train.cpu().numpy()
    k = record["geometry"]["fig1_features"].shape[1]
    classes = sorted(rng.choice(data.num_classes, size=k, replace=False).tolist())
    record["fig1_classes"] = classes
    record["fig1_indices"] = [sorted(rng.choice(np.flatnonzero(y == c), size=params["fig1_samples"],
                                                replace=False).tolist()) for c in classes]
    if params["robustness_images"]:
        record["robustness_indices"] = robustness.fixed_test_indices(
            data.y_test.cpu(), n=params["robustness_images"], seed=params["seed"]).tolist()


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (DESIGN section 6), none elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def sgd_step(model, opt, x, y, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One cross-entropy SGD step on a batch; returns the batch's mean loss and its logits (detached)."""
    with autocast:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach()


def build_model(params: dict, data, device) -> torch.nn.Module:
    """The network of `params`, seeded so that every lr of a sweep starts from the same weights."""
    torch.manual_seed(params["seed"])
    model = models.build(params["network"], num_classes=data.num_classes, in_channels=data.in_channels,
                         image_size=data.image_size, width=params["width"],
                         memory_efficient=params["memory_efficient"], growth_rate=params["growth_rate"])
    return model.to(device)


def train_one_lr(params: dict, lr: float, data, checkpoint: Path | None = None, progress: bool = True,
                 stop_after: int | None = None) -> dict:
    """Train one learning rate to the end (or until divergence); returns the record (see `empty_record`).

    `checkpoint`: a file to resume from and to write after every epoch. `stop_after`: return after that
    many epochs of this call (used by tests to interrupt a run)."""
    device = data.x_train.device
    model = build_model(params, data, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=params["momentum"],
                          weight_decay=params["weight_decay"])
    snapshots = snapshot_schedule(params["epochs"], params["snapshot_epochs"])
    record = empty_record(params, lr, snapshots, data.num_classes, model.classifier.in_features)
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        record = state["record"]
    else:
        _choose_fixed_samples(record, data, params)
    lrs = lr_schedule(lr, params["epochs"], params["lr_milestones"], params["lr_gamma"])
    N, bs = len(data.x_train), params["batch_size"]
    autocast = autocast_for(device)
    start_epoch = record["epochs_done"] + 1
    bar = tqdm(range(start_epoch, params["epochs"] + 1), initial=start_epoch - 1, total=params["epochs"],
               desc=f"{params['dataset']}-{params['network']} lr={lr:g}", disable=not progress, unit="epoch",
               mininterval=10)
    done_here = 0
    for epoch in bar:
        if record["status"] != "running":
            break
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = float(lrs[epoch - 1])
        model.train()
        order = torch.randperm(N, generator=torch.Generator().manual_seed(params["seed"] * 1_000_003 + epoch))
        order = order.to(device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = N - (N % bs == 1)  # a last batch of one image is skipped (BatchNorm needs two)
        for i in range(0, seen, bs):
            idx = order[i:i + bs]
            y = data.y_train[idx]
            loss, logits = sgd_step(model, opt, data.x_train[idx], y, autocast)
            loss_sum += loss.double() * len(idx)
            correct += (logits.argmax(1) == y).sum()
        ep = record["epoch"]
        ep["train_loss"][epoch - 1] = loss_sum.item() / seen
        ep["train_acc"][epoch - 1] = correct.item() / seen
        ep["lr_schedule"][epoch - 1] = lrs[epoch - 1]
        finite = math.isfinite(ep["train_loss"][epoch - 1]) and all(
            torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
        if not finite:
            record["status"] = "diverged"  # a non-finite loss or weight: record it, end the run cleanly
        else:
            ep["test_acc"][epoch - 1] = eval_pass(model, data.x_test, data.y_test, params["eval_batch_size"])
            values = None
            if epoch in snapshots:
                try:
                    values, geometry = measure_snapshot(model, data, record, params)
                except FloatingPointError:  # finite weights, but features overflow: diverged too
                    record["status"] = "diverged"
                    ep["test_acc"][epoch - 1] = math.nan
            if values is not None:
                for key in RECORD_SNAPSHOT:
                    record["snapshot"][key][epoch - 1] = values[key]
                s = snapshots.index(epoch)
                for key, value in geometry.items():
                    record["geometry"][key][s] = value
                bar.set_postfix(loss=f"{ep['train_loss'][epoch - 1]:.3g}", acc=f"{ep['train_acc'][epoch - 1]:.4f}",
                                nc1=f"{values['nc1']:.3g}")
            if epoch == params["epochs"] and record["status"] == "running":
                record["status"] = "complete"
        record["epochs_done"] = epoch
        record["wall_time"] += time.perf_counter() - t0
        if checkpoint is not None:
            _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "record": record},
                         Path(checkpoint))
        done_here += 1
        if stop_after is not None and done_here >= stop_after:
            break
    bar.close()
    record["tpt_epoch"] = tpt_start(record["epoch"]["train_acc"], params["tpt_threshold"])
    return record
