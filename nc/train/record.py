"""What one (lr, run seed) has recorded so far, and its files: the Record owns the per-epoch values, the snapshot
values, the geometry at the geometry epochs and collapse by depth at the DEPTH_STAGES, and writes and reads the
checkpoint and the geometry files.

The checkpoint (`<part>.ckpt`, written after every epoch) holds what a resume needs: the model, the optimizer and
the record without its geometry, as tensors and plain values only, so that it loads with
torch.load(weights_only=True): a checkpoint shared on a cluster's file system is never a way to run code. The
geometry of a geometry epoch goes to its own file when it is measured (`<part>.geometry-<epoch>.pt`), in float32
where the cube keeps it in float32 (nc.train.variables.geometry_dtype), so an ImageNet checkpoint is the model, the
optimizer and the record. The geometry file is written before the epoch's checkpoint: a checkpoint never points past
the geometry on disk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nc import files
from nc.measure import depth
from nc.train import ddp
from nc.train.variables import DEPTH_STAGES, EPOCH_VARS, geometry_dtype, snapshot_names

GEOMETRY_BUDGET_BYTES = 768 * 2**20  # an ImageNet cell's stored geometry stays under this (the cube under 1 GB)
FIG1_PAPER_EPOCHS = (2, 16, 65, 350)  # of the paper's 350 (VGG13 on CIFAR10)
DEPTH_KEYS = depth.LAYER_KEYS  # the per-block measures (nc.measure.depth), a row per DEPTH_STAGE


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
        "epoch": {key: nan(E) for key in EPOCH_VARS},
        "snapshot": {key: nan(E) for key in snapshot_names(params["loss"])},
        "geometry": {
            "class_means": nan(S, C, p), "global_mean": nan(S, p), "classifier_weight": nan(S, C, p),
            "classifier_bias": nan(S, C), "within_cov_means": nan(S, C, C),
            "fig1_features": nan(S, k, m, p),
        },
        "fig1_classes": [], "fig1_indices": [], "robustness_indices": [],
        "depth": {"layer_names": list(layer_names), "layer_widths": np.zeros(L, dtype=np.int64),
                  "epoch": nan(len(DEPTH_STAGES)), "rho": nan(len(DEPTH_STAGES)), "r2": nan(len(DEPTH_STAGES)),
                  **{k: nan(len(DEPTH_STAGES), L) for k in DEPTH_KEYS}},
    }


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename; a failed write (full disk) removes it and keeps the old file."""
    with files.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def geometry_file(checkpoint: Path, epoch: int) -> Path:
    """The file of one geometry epoch's geometry, beside the checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.geometry-{epoch}.pt")


def is_geometry_file(path: Path) -> bool:
    """Whether `path` is one of geometry_file's files (not a checkpoint)."""
    return ".geometry-" in Path(path).name


def checkpoint_files(checkpoint: Path) -> list[Path]:
    """The checkpoint and its geometry files, those that exist (what deleting a finished run's checkpoint deletes)."""
    checkpoint = Path(checkpoint)
    return [f for f in (checkpoint, *sorted(checkpoint.parent.glob(f"{checkpoint.stem}.geometry-*.pt")))
            if f.is_file()]


def _tensors(value):
    """numpy arrays as tensors, recursively (what torch.load(weights_only=True) reads back)."""
    if isinstance(value, dict):
        return {k: _tensors(v) for k, v in value.items()}
    return torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value


def _arrays(value, like):
    """The inverse of _tensors, shaped like the template `like` (ValueError naming the key that does not fit)."""
    if isinstance(like, dict):
        if not isinstance(value, dict) or set(value) != set(like):
            raise ValueError(f"keys {sorted(value) if isinstance(value, dict) else type(value).__name__}, expected "
                             f"{sorted(like)}")
        return {k: _arrays(value[k], like[k]) for k in like}
    if isinstance(like, np.ndarray):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != like.shape:
            raise ValueError(f"shape {tuple(getattr(value, 'shape', ()))}, expected {like.shape}")
        return value.numpy().astype(like.dtype, copy=False)
    return value


class Record:
    """One run's results so far; `data` is the dict the cube's part is written from (nc.runs.cube.part)."""

    def __init__(self, params: dict, lr: float, seed: int, snapshots: list[int], num_classes: int,
                 feature_dim: int, layer_names=(), checkpoint: Path | None = None):
        self.params, self.checkpoint = params, None if checkpoint is None else Path(checkpoint)
        self.data = empty_record(params, lr, snapshots, num_classes, feature_dim, layer_names)
        self.data["seed"] = seed
        self.dtype = geometry_dtype(self.data["geometry"])

    @property
    def running(self) -> bool:
        return self.data["status"] == "running"

    @property
    def next_epoch(self) -> int:
        return self.data["epochs_done"] + 1

    def set(self, epoch: int, **values) -> None:
        """Per-epoch values (train_loss, train_acc, eval_train_acc, test_acc, lr_schedule) of `epoch`."""
        for key, value in values.items():
            self.data["epoch"][key][epoch - 1] = value

    def add_snapshot(self, epoch: int, values: dict, geometry: dict) -> None:
        """A snapshot's values and, at a geometry epoch, its geometry (rounded to the dtype the cube keeps)."""
        self.set(epoch, eval_train_acc=values["eval_train_acc"], test_acc=values["test_acc"])
        for key, series in self.data["snapshot"].items():
            series[epoch - 1] = values[key]
        if epoch in self.data["geometry_epochs"]:
            s = self.data["geometry_epochs"].index(epoch)
            for key, value in geometry.items():
                self.data["geometry"][key][s] = np.asarray(value).astype(self.dtype)
            if self.checkpoint is not None and ddp.is_main():  # DDP: rank 0 writes it
                save_atomic({k: torch.from_numpy(np.asarray(v[s]).astype(self.dtype))
                             for k, v in self.data["geometry"].items()}, geometry_file(self.checkpoint, epoch))

    def depth_stages(self, epoch: int) -> list[str]:
        """The DEPTH_STAGES due at `epoch`: the first and last snapshot, the first epoch at the TPT threshold."""
        snaps, depth = self.data["snapshot_epochs"], self.data["depth"]
        reached = self.data["epoch"]["eval_train_acc"][epoch - 1] >= self.params["tpt_threshold"]
        due = {"first": epoch == snaps[0], "last": epoch == snaps[-1],
               "tpt": reached and np.isnan(depth["epoch"][DEPTH_STAGES.index("tpt")])}
        return [stage for stage in DEPTH_STAGES if due[stage]] if self.params["depth"] and self.running else []

    def add_depth(self, stages: list[str], epoch: int, out: dict) -> None:
        """Collapse by depth at `epoch` (nc.train.snapshot.measure_depth's output) into the rows of `stages`."""
        d = self.data["depth"]
        d["layer_widths"] = out["widths"]
        for row in (DEPTH_STAGES.index(stage) for stage in stages):
            d["epoch"][row], d["rho"][row], d["r2"][row] = epoch, out["rho"], out["r2"]
            for key in DEPTH_KEYS:
                d[key][row] = out[key]

    def end_epoch(self, epoch: int, seconds: float) -> None:
        if self.running and epoch == self.params["epochs"]:
            self.data["status"] = "complete"
        self.data["epochs_done"] = epoch
        self.data["wall_time"] += seconds

    def save(self, model, opt) -> None:
        """The checkpoint: the bare model, the optimizer, the record without its geometry (weights_only-safe)."""
        state = _tensors({k: v for k, v in self.data.items() if k != "geometry"})
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "record": state}, self.checkpoint)

    def load(self, model, opt, device) -> None:
        """Resume from the checkpoint and the geometry files it needs (weights_only); raises if any cannot be read
        or does not fit this run."""
        state = torch.load(self.checkpoint, map_location=device, weights_only=True)
        saved = state["record"]
        template = {k: v for k, v in self.data.items() if k != "geometry"}
        for group in ("epoch", "snapshot", "depth"):
            try:
                saved[group] = _arrays(saved[group], template[group])
            except ValueError as err:
                raise ValueError(f"record[{group!r}]: {err}") from None
        geometry = self.data["geometry"]
        for s, epoch in enumerate(self.data["geometry_epochs"]):
            if epoch <= saved["epochs_done"] and np.isfinite(saved["epoch"]["test_acc"][epoch - 1]):  # measured
                stored = torch.load(geometry_file(self.checkpoint, epoch), map_location="cpu", weights_only=True)
                for key in geometry:
                    geometry[key][s] = _arrays(stored[key], geometry[key][s])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        self.data = {**saved, "geometry": geometry}

    def finish(self, tpt_epoch: float) -> dict:
        self.data["tpt_epoch"] = tpt_epoch
        return self.data
