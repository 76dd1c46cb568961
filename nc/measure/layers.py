"""Collapse by depth on any network (`nc.measure.collapse(..., layers=...)`): the cube's depth measures
(nc.measure.depth: NC1, trace ratio, nearest-class-centre accuracy on train and test, and the fit of
log(C NC1_l) = a - rho l) at named modules of a user's model, their outputs either global-average-pooled over space
(pool="mean", nc.measure.depth.layer_collapse, as our runs measure) or flattened (pool="flatten").

Flattened features can be wide (a 64 x 32 x 32 map is p = 65,536), so no p x p matrix is formed: pass 1 gives the
class means and Tr(Sigma_W) (nc.measure.depth.ClassMeansTrace, O(C p)); M = U S V^T at rank C-1; pass 2 gives
NC1 = Ave_i ||S^-1 U^T (h_i - mu_{y_i})||^2 (= Tr(Sigma_W Sigma_B^+)/C) and the train NCC accuracy; pass 3 the
test NCC accuracy. Memory per module 8 (2 C p) bytes. NC1 is NaN where p_l < C-1, as in the cube.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from nc.measure import depth, distributed
from nc.measure.moments import mean_span_basis
from nc.measure.network import _named

POOLS = ("mean", "flatten")


def resolve(model, layers) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of `layers`: "blocks" (the model's blocks() where it has them, as nc.models.Network does,
    else its children), "all" (every child of the model), or a list of modules / dotted names."""
    if layers in ("blocks", "all"):
        if layers == "blocks" and hasattr(model, "blocks"):
            return [(str(n), m) for n, m in model.blocks()]
        out = list(model.named_children())
        if not out:
            raise ValueError(f"layers={layers!r}: the model has no child modules; name them")
        return out
    if isinstance(layers, (str, torch.nn.Module)):
        layers = [layers]
    return [_named(model, name, "layers") for name in layers]


class FlatTap(depth.BlockTap):
    """depth.BlockTap with each module's output flattened to (B, p) in float64 instead of pooled."""

    def _hook(self, name, module):
        return module.register_forward_hook(lambda mod, args, out: self.captured[name].append(
            depth.block_features(out) if out.ndim == 2 else out.flatten(1).to(torch.float64)))


def flattened(model, layers, train_batches, test_batches, num_classes: int) -> dict:
    """depth.layer_collapse's dict for flattened outputs, in the passes of the module docstring."""
    C = int(num_classes)
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), FlatTap(layers) as tap:
            accs = {}
            for feats, y in tap.run(model, train_batches):
                for name, h in feats.items():
                    accs.setdefault(name, depth.ClassMeansTrace(C, h.shape[1], h.device)).update(h, y)
            if not accs:
                raise ValueError("train yielded no batch")
            stats = {n: distributed.merge_accumulator(accs[n]).finalize() for n in tap.names}
            means = {n: s.class_means for n, s in stats.items()}
            span = {}
            for n, mu in means.items():
                if mu.shape[1] >= C - 1:
                    U, S, _ = mean_span_basis((mu - mu.mean(dim=0)).T)
                    span[n] = U / S
            sq = {n: torch.zeros((), dtype=torch.float64, device=mu.device) for n, mu in means.items()}
            for feats, y in tap.run(model, train_batches):
                for n in span:
                    sq[n] += ((feats[n] - means[n][y]) @ span[n]).pow(2).sum()
            distributed.sum_tensors_(*sq.values())
            acc_train = depth._ncc_accuracy(tap, model, train_batches, means)
            acc_test = depth._ncc_accuracy(tap, model, test_batches, means)
    finally:
        for m, flag in flags:
            m.training = flag
    names = tap.names
    n_train = float(accs[names[0]].counts.sum())
    ratio = []
    for n in names:
        within = stats[n].within_trace
        between = (means[n] - means[n].mean(dim=0)).pow(2).sum().item() / C
        ratio.append(within / (within + between) if within + between > 0 else math.nan)
    return {"names": names, "widths": np.array([means[n].shape[1] for n in names], dtype=np.int64),
            "nc1": np.array([sq[n].item() / n_train if n in span else math.nan for n in names]),
            "trace_ratio": np.array(ratio), "ncc_acc_train": np.array([acc_train[n] for n in names], dtype=float),
            "ncc_acc_test": np.array([acc_test[n] for n in names], dtype=float)}


def dataset(model, layers, train_batches, test_batches, num_classes: int, pool: str = "mean") -> xr.Dataset:
    """The depth measures on a `layer` dimension (coordinates layer_name, layer_width), the cube's names, long
    names, units and definitions; train_batches / test_batches: zero-argument callables of (x, y) iterables."""
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: expected one of {POOLS}")
    mods = resolve(model, layers)
    fn = depth.layer_collapse if pool == "mean" else flattened
    out = fn(model, mods, train_batches, test_batches, num_classes)
    a, rho, r2 = depth.fit_depth_decay(out["nc1"], num_classes)
    keys = [k for k in depth.LAYER_KEYS if k in out]  # flattened: nc1 and trace_ratio ARE the flattened measures
    ds = xr.Dataset({f"depth_{k}": ("layer", out[k]) for k in keys},
                    coords={"layer_name": ("layer", out["names"]), "layer_width": ("layer", out["widths"])})
    ds["depth_rho"], ds["depth_r2"] = xr.DataArray(rho), xr.DataArray(r2)
    how = "flattened to (B, p_l)" if pool == "flatten" else "global-average-pooled over space to (B, p_l)"
    for k in (*(f"depth_{k}" for k in keys), *depth.DEPTH_FIT):
        ds[k].attrs.update(long_name=depth.LONG_NAMES[k], units=depth.UNITS[k],
                           definition=depth.DEFINITIONS[k].replace("global-average-pooled over space to (B, p_l)",
                                                                   how))
    for k, text in depth.COORD_DEFINITIONS.items():
        ds[k].attrs["definition"] = text.replace("(Network.blocks())", f"(layers={layers!r})")
    ds.attrs["layer_features"] = how
    return ds
