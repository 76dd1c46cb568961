"""The training losses, one registry entry each: the function (the batch's mean loss), its units and the run page's
axis label, what the parameter check says of it, and the snapshot variables it adds to the cube with the function
that computes them from the float64 moments.

Adding a loss is one entry in LOSSES (README, "Adding a loss"): `LOSSES["name"] = Loss(...)`, or
`losses.register(Loss(...))`. Every cube carries the variables of every loss registered when nc.train is imported
(NaN in the runs of the other losses), so that a profile's cubes share one set of variables; a loss registered
later adds its variables to its own runs' cubes.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from nc.measure import central_path


class Loss(NamedTuple):
    """name; fn(logits, y) -> the batch's mean loss (0-d tensor); the units of train_loss (CF: "nat", "1" =
    dimensionless); the run page's axis label; what the parameter check and train_loss's definition say of it;
    variables: {cube name: (long_name, units, definition)} it adds at snapshots; terms(moments, W, b, params) ->
    {name: float} computes them (float64 moments of nc.measure, the classifier W, b)."""
    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    units: str
    axis_label: str
    description: str
    variables: dict = {}
    terms: Callable | None = None


def _mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))


def _central_path_terms(moments, W, b, params: dict) -> dict:
    terms = central_path.central_path_terms(moments.class_means, moments.counts, moments.sigma_w, W, b,
                                            params["weight_decay"])
    return {k: terms[k] for k in central_path.TERMS}


LOSSES: dict[str, Loss] = {}


def register(loss: Loss) -> Loss:
    """Add (or replace) a loss; returns it."""
    LOSSES[loss.name] = loss
    return loss


register(Loss("cross_entropy", F.cross_entropy, "nat", "training loss (cross-entropy, nats)",
              "cross_entropy (the paper)"))
register(Loss("mse", _mse, "1", "training loss (mean squared error)",
              "mse (mean squared error on one-hot targets, as F.mse_loss and the authors' notebook's MSE branch, the "
              "mean over the B x C entries; Han, Papyan & Donoho, ICLR 2022)",
              {k: (k.replace("_", " "), "1", central_path.DEFINITIONS[k]) for k in central_path.TERMS},
              _central_path_terms))


def get(name: str) -> Loss:
    """The registered loss of that name (KeyError naming the registered ones)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"loss {name!r} is not registered; known: {', '.join(LOSSES)}") from None


def loss_value(logits: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """The batch's mean loss under the registered loss `loss`."""
    return get(loss).fn(logits, y)


def snapshot_terms(loss: str, moments, W, b, params: dict, names) -> dict:
    """The values of the loss variables `names` at a snapshot: the run's own loss computes its own (terms), every
    other loss's are NaN."""
    own = get(loss)
    out = dict.fromkeys(names, math.nan)
    if own.terms is not None:
        out.update(own.terms(moments, W, b, params))
    return out
