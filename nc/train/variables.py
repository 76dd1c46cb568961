"""What a training run records, variable by variable: per epoch (dense), per snapshot (NaN off the snapshot epochs)
and by depth (at DEPTH_STAGES), each with its dimensions, `long_name`, `units` and `definition`. The training loop
fills records with these keys; the cube (nc.runs.cube) writes them with these attributes.
"""
from __future__ import annotations

from typing import NamedTuple

from nc.measure import central_path, depth, imbalance, registry

DEPTH_STAGES = ("first", "tpt", "last")  # the first snapshot, the TPT start epoch, the last snapshot


class Var(NamedTuple):
    dims: tuple
    long_name: str
    units: str
    definition: str


LE = ("lr", "seed", "epoch")
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
SNAPSHOT_VARIABLES = {
    **{k: Var(LE, m.long_name, m.units, m.definition + "; NaN off snapshot epochs")
       for k, m in registry.MEASURES.items()},
    **{k: Var(LE, k.replace("_", " "), "1", central_path.DEFINITIONS[k] + "; NaN off snapshot epochs and for "
              "loss cross_entropy") for k in central_path.TERMS},
    **{k: Var(LE, k.replace("_", " "), "1", imbalance.DEFINITIONS[k] + "; minority = the classes an imbalanced run "
              "gives n/R images (the last floor(C/2)), the same groups on balanced runs; NaN off snapshot epochs")
       for k in imbalance.DEFINITIONS},
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
