"""What a training run records, variable by variable: per epoch (dense), per snapshot (NaN off the snapshot epochs)
and by depth (at DEPTH_STAGES), each with its dimensions, `long_name`, `units` and `definition`. The training loop
fills records with these keys; the cube (nc.runs.cube) writes them with these attributes.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nc.measure import depth, head, imbalance, registry, transfer
from nc.train import losses

DEPTH_STAGES = ("first", "tpt", "last")  # the first snapshot, the TPT start epoch, the last snapshot
GEOMETRY_FLOAT64_MAX_BYTES = 64 * 2**20  # larger geometry is kept as float32 (the ImageNet cells)


class Var(NamedTuple):
    dims: tuple
    long_name: str
    units: str
    definition: str


LE = ("lr", "seed", "epoch")


def loss_variables(registry=None) -> dict:
    """The snapshot variables the registered losses add (nc.train.losses), NaN for runs of another loss."""
    registry = losses.LOSSES if registry is None else registry
    out = {}
    for loss in registry.values():
        others = ", ".join(name for name in registry if name != loss.name)
        for k, (long_name, units, definition) in loss.variables.items():
            out[k] = Var(LE, long_name, units, f"{definition}; NaN off snapshot epochs and for loss {others}")
    return out


LOSS_VARIABLES = loss_variables()
EPOCH_VARIABLES = {
    "train_loss": Var(LE, "training loss", "nat",
                      "mean loss over the epoch's training batches (train mode, as trained): cross-entropy in nats, "
                      "or for loss mse F.mse_loss against one-hot targets (mean over the B x C entries)"),
    "train_acc": Var(LE, "training-pass accuracy", "1",
                     "fraction of train images classified correctly during the epoch's training pass (train-mode "
                     "BatchNorm, weights changing during the epoch); not used for the TPT"),
    "eval_train_acc": Var(LE, "training accuracy in eval mode", "1",
                          "fraction of train images classified correctly by an eval-mode pass over the whole train "
                          "set at the end of the epoch, as the authors' notebook measures it; marks the TPT start"),
    "test_acc": Var(LE, "test accuracy", "1",
                    "fraction of test images classified correctly, eval mode, end of epoch (Table 1)"),
    "lr_schedule": Var(LE, "learning rate used in the epoch", "1",
                       "initial lr times lr_gamma^k, k the number of milestones floor(f E) (f in lr_milestones) "
                       "before the epoch: MultiStepLR stepped after each epoch (Section 2G)"),
}
def measure_variables() -> dict:
    """The snapshot variables of the measures (nc.measure.registry), those registered after import included."""
    return {k: Var(LE, m.long_name, m.units, m.definition + "; NaN off snapshot epochs")
            for k, m in registry.MEASURES.items()}


SNAPSHOT_VARIABLES = {
    **measure_variables(),
    **LOSS_VARIABLES,
    **{k: Var(LE, k.replace("_", " "), "1", imbalance.DEFINITIONS[k] + "; minority = the classes an imbalanced run "
              "gives n/R images (the last floor(C/2)), the same groups on balanced runs; NaN off snapshot epochs")
       for k in imbalance.DEFINITIONS},
    **{k: Var(LE, k.replace("_", " "), "1", transfer.DEFINITIONS[k]) for k in transfer.TRANSFER_METRICS},
    **{k: Var(LE, head.LONG_NAMES[k], "1", head.DEFINITIONS[k]) for k in head.HEAD_METRICS},
}
LS = ("lr", "seed")
LSL = ("lr", "seed", "depth_stage", "layer")
DEPTH_VARIABLES = {
    **{k: Var(LSL, depth.LONG_NAMES[k], depth.UNITS[k], depth.DEFINITIONS[k]) for k in depth.DEPTH_METRICS},
    **{k: Var((*LS, "depth_stage"), depth.LONG_NAMES[k], depth.UNITS[k], depth.DEFINITIONS[k])
       for k in depth.DEPTH_FIT},
    "depth_epoch": Var((*LS, "depth_stage"), "epoch of the depth measurement", "epoch",
                       "depth_stage first: the first snapshot; tpt: the first epoch whose eval_train_acc reaches "
                       "tpt_threshold (NaN if never); last: the last snapshot"),
}
EPOCH_VARS = tuple(EPOCH_VARIABLES)
SNAPSHOT_VARS = tuple(SNAPSHOT_VARIABLES)


def snapshot_names(loss: str) -> tuple:
    """The snapshot variables of a run of `loss`: SNAPSHOT_VARS, plus the measures registered after import
    (nc.measure.registry.register) and the variables of a loss registered after import (nc.train.losses), which only
    its own runs carry."""
    later = [k for k in registry.MEASURES if k not in SNAPSHOT_VARIABLES]
    return SNAPSHOT_VARS + tuple(later) + tuple(k for k in losses.get(loss).variables if k not in SNAPSHOT_VARIABLES)


def variable(name: str) -> Var:
    """The Var of a record variable, a later-registered measure's or loss's included."""
    return {**EPOCH_VARIABLES, **SNAPSHOT_VARIABLES, **DEPTH_VARIABLES, **measure_variables(), **loss_variables()}[name]


def geometry_dtype(geometry: dict) -> type:
    """float32 when a run's float64 geometry (every kept epoch) would exceed GEOMETRY_FLOAT64_MAX_BYTES, else float64:
    the dtype the cube stores it in (nc.runs.cube.write) and the geometry files keep (nc.train.record)."""
    total = sum(np.asarray(v).size * 8 for v in geometry.values())
    return np.float32 if total > GEOMETRY_FLOAT64_MAX_BYTES else np.float64

