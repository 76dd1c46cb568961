"""Collapse by depth: neural-collapse measures at every block of a network, not only the last layer.

Claims measured (Part II of the book):
- Rangamani et al., "Feature learning in deep classifiers through Intermediate Neural Collapse" (ICML 2023):
  within-class variability, relative to between-class, shrinks block by block through a trained net, and
  the class means become nearest-class-centre separable at intermediate blocks (also Ben-Shaul & Dekel 2022).
- He & Su, "A law of data separation in deep learning" (PNAS 2023): the separation fuzziness
  D_l = Tr(Sigma_W,l Sigma_B,l^+) = C * NC1_l decays geometrically with depth, log D_l ~ a - rho l.

Block l's features h_l are its forward OUTPUT, in eval mode, global-average-pooled over every dim after
the channel dim 1 ((B, c, H, W) -> (B, c); a (B, c) output as it is). Conventions are nc.measure's:
mu_c class means, mu_G = Ave_c mu_c, M = [mu_c - mu_G], Sigma_W = Ave_i (h_i - mu_{y_i})(...)^T,
Sigma_B = M M^T / C; all algebra in float64 from streaming moments. NC1, trace ratio and NCC accuracies
are unitless; rho is in natural-log units per block (He & Su's decay ratio per layer is exp(-rho)).

Beside the pooled features, the FLATTENED ones (Rangamani et al.'s code, mariuslindegaard/Intermediate_Neural_Collapse
src/Measurer.py, flattens the whole activation; pooling is a projection onto channel means, so it changes NC1's
level and its shape with depth): block l's output reshaped to (B, D_l), D_l = c_l H_l W_l, gives `flat_nc1` and
`flat_trace_ratio`. NC1 goes through M_l^+ with no D_l x D_l matrix, in two passes: the first streams the class
means and the within-class sums of squares (Chan-merged, ClassMeansTrace), the second Ave_i ||M_l^+ (h_i -
mu_{y_i})||^2 with M_l^+ = V S^-1 U^T at rank C-1 kept as the D_l x (C-1) matrix U S^-1.

Cost: per block, one nc.measure.CollapseAccumulator (8 (p_l^2 + C p_l) bytes) where p_l >= C-1, else
a per-class mean/variance accumulator (8 C p_l bytes); flattened, 8 (3 C + 1) D_l bytes (means, their batch
update, U S^-1; the batch's float64 copy 8 B D_l), skipped (NaN) where 24 C D_l exceeds FLAT_BYTES; four eval
passes (train moments, the flattened NC1, train NCC with the train means, test NCC), each one forward per batch
with hooks on all blocks.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from nc.measure import distributed
from nc.measure.moments import CollapseAccumulator, class_counts, mean_span_basis

LAYER_KEYS = ("nc1", "trace_ratio", "ncc_acc_train", "ncc_acc_test", "flat_nc1", "flat_trace_ratio")
FLAT_BYTES = 2 ** 30  # the flattened measures of a block are skipped (NaN) where 24 C D_l bytes exceed this
DEPTH_METRICS = tuple("depth_" + k for k in LAYER_KEYS)  # on the cube's `layer` dimension
DEPTH_FIT = ("depth_rho", "depth_r2")                     # one number per run (and epoch)

_FEATURES = ("block l's output h_l, global-average-pooled over space to (B, p_l), eval mode; "
             "mu_c,l train class means, mu_G,l = Ave_c mu_c,l, M_l = [mu_c,l - mu_G,l], "
             "Sigma_W,l = Ave_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T over the train set, Sigma_B,l = M_l M_l^T / C")
DEFINITIONS = {
    "depth_nc1": "Tr(Sigma_W,l Sigma_B,l^+)/C with Sigma_B,l^+ at rank C-1 (Fig. 6's NC1 at every block; "
                 "Rangamani et al. 2023); NaN where the width p_l < C-1, since the p_l x p_l matrix Sigma_B,l "
                 "cannot then have rank C-1; " + _FEATURES,
    "depth_trace_ratio": "Tr(Sigma_W,l) / Tr(Sigma_W,l + Sigma_B,l): the within-class share of the block's "
                         "variance, 0 at full collapse, defined at any width (no pseudo-inverse); " + _FEATURES,
    "depth_ncc_acc_train": "fraction of TRAIN images with argmin_c ||h_l - mu_c,l||_2 = y, mu_c,l the train class "
                           "means (nearest class centre at block l; Rangamani et al. 2023, Ben-Shaul & Dekel 2022); "
                           "ties go to the lowest class index; " + _FEATURES,
    "depth_ncc_acc_test": "fraction of TEST images with argmin_c ||h_l - mu_c,l||_2 = y, mu_c,l the TRAIN class "
                          "means; ties go to the lowest class index; " + _FEATURES,
    "depth_flat_nc1": "Tr(Sigma_W,l Sigma_B,l^+)/C at rank C-1 of the FLATTENED block output (B, c_l H_l W_l), as "
                      "Rangamani et al.'s code measures it, = Ave_i ||M_l^+ (h_i - mu_{y_i})||^2 in two passes (no "
                      "D_l x D_l matrix); NaN where D_l < C-1 or 24 C D_l bytes exceed nc.measure.depth.FLAT_BYTES; "
                      "mu_G,l = Ave_c mu_c,l, Sigma_W,l sample-weighted, train set, eval mode",
    "depth_flat_trace_ratio": "Tr(Sigma_W,l) / Tr(Sigma_W,l + Sigma_B,l) of the FLATTENED block output; NaN where "
                              "24 C D_l bytes exceed nc.measure.depth.FLAT_BYTES; train set, eval mode",
    "depth_rho": "rho of the least-squares line log(C * depth_nc1_l) = a - rho l over the blocks l = 1..L "
                 "(1-based position in the block list) where depth_nc1 is finite and > 0, NaN with fewer than "
                 "2; C * NC1_l = Tr(Sigma_W,l Sigma_B,l^+) is He & Su's (PNAS 2023) separation fuzziness D_l, "
                 "their per-layer decay ratio is exp(-rho)",
    "depth_r2": "coefficient of determination 1 - SS_res/SS_tot of the depth_rho fit; NaN where depth_rho is NaN "
                "or every log(C * NC1_l) is equal (He & Su 2023 report R^2 near 1)",
}
LONG_NAMES = {"depth_nc1": "NC1 at each block", "depth_trace_ratio": "within-class share of variance at each block",
              "depth_ncc_acc_train": "nearest-class-centre train accuracy at each block",
              "depth_ncc_acc_test": "nearest-class-centre test accuracy at each block",
              "depth_flat_nc1": "NC1 at each block, flattened features",
              "depth_flat_trace_ratio": "within-class share of variance at each block, flattened features",
              "depth_rho": "decay rate of log(C NC1) per block", "depth_r2": "R^2 of the depth-decay fit"}
UNITS = {"depth_nc1": "1", "depth_trace_ratio": "1", "depth_ncc_acc_train": "1", "depth_ncc_acc_test": "1",
         "depth_flat_nc1": "1", "depth_flat_trace_ratio": "1",
         "depth_rho": "1/layer", "depth_r2": "1"}
COORD_DEFINITIONS = {
    "layer_name": "name of the block in the network's block list (Network.blocks()), input side first",
    "layer_width": "p_l: channels of the block's output, the dimension of its pooled features",
}


def block_features(output, pool: str = "mean") -> torch.Tensor:
    """A block's output as float64 features: (B, c), the mean over every dim after the channel dim 1 (pool "mean"),
    or (B, c H W ...), the whole activation (pool "flatten"); a (B, c) output as it is either way."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"a block must return one tensor, got {type(output).__name__}")
    if output.ndim < 2:
        raise ValueError(f"a block output needs a batch and a channel dim, got shape {tuple(output.shape)}")
    if pool not in ("mean", "flatten"):
        raise ValueError(f"pool must be 'mean' or 'flatten', got {pool!r}")
    if output.ndim == 2:
        return output.to(torch.float64)
    if pool == "flatten":
        return output.reshape(len(output), -1).to(torch.float64)
    return output.mean(dim=tuple(range(2, output.ndim)), dtype=torch.float64)


class ClassMeansTrace:
    """Per-class counts, means and sum of squared deviations, Chan-merged per batch, float64, O(C p) memory:
    what the trace ratio and the NCC rule need on a block too narrow for a CollapseAccumulator."""

    def __init__(self, num_classes: int, feature_dim: int, device):
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)
        self.C, self.device = num_classes, device
        self.counts, self.means, self.m2 = zeros(num_classes), zeros(num_classes, feature_dim), zeros(num_classes)

    def update(self, h: torch.Tensor, y) -> None:
        h = h.to(device=self.device, dtype=torch.float64)
        y = torch.as_tensor(y).to(device=self.device, dtype=torch.int64)
        n_b = class_counts(y, self.C)
        mean_b = torch.zeros_like(self.means).index_add_(0, y, h) / n_b.clamp(min=1)[:, None]
        m2_b = torch.zeros_like(self.m2).index_add_(0, y, (h - mean_b[y]).pow(2).sum(dim=1))
        n = self.counts + n_b
        delta = mean_b - self.means  # weight 0 where the batch has no sample of the class
        self.m2 += m2_b + delta.pow(2).sum(dim=1) * self.counts * n_b / n.clamp(min=1)
        self.means += delta * (n_b / n.clamp(min=1))[:, None]
        self.counts = n

    STATE = ("counts", "means", "m2")  # nc.measure.distributed.merge_accumulator

    def merge(self, other: ClassMeansTrace) -> None:
        """Add another accumulator's samples: Chan's pairwise update of (counts, means, m2), as `update`'s."""
        n_b = other.counts.to(self.device)
        n = self.counts + n_b
        delta = other.means.to(self.device) - self.means  # weight 0 where either has no sample of the class
        self.m2 = self.m2 + other.m2.to(self.device) + delta.pow(2).sum(dim=1) * self.counts * n_b / n.clamp(min=1)
        self.means = self.means + delta * (n_b / n.clamp(min=1))[:, None]
        self.counts = n

    def finalize(self) -> SimpleNamespace:
        """class_means, within_trace = Tr Sigma_W and nc1 = NaN (Sigma_B cannot have rank C-1 here)."""
        if (self.counts == 0).any():
            raise ValueError(f"every class needs at least one sample; counts per class: {self.counts.tolist()}")
        if not (torch.isfinite(self.means).all() and torch.isfinite(self.m2).all()):
            raise FloatingPointError("non-finite features: the network has diverged")
        return SimpleNamespace(class_means=self.means.clone(), within_trace=(self.m2.sum() / self.counts.sum()).item(),
                               nc1=math.nan)


class Hooks:
    """Context manager: `_hook(name, module)` registers one hook on each (name, module) of `_hooked()` (default
    self.layers) on entry; every handle in self.handles is removed on exit, and on a failed registration."""

    layers: list
    handles: list

    def _hooked(self):
        return self.layers

    def _hook(self, name: str, module):
        raise NotImplementedError

    def __enter__(self):
        try:
            for name, module in self._hooked():
                self.handles.append(self._hook(str(name), module))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class BlockTap(Hooks):
    """Context manager: forward hooks on every block, removed on exit (error or not); `run` yields, per batch,
    ({name: pooled float64 features}, y) from one forward of the model (`run(..., raw=True)`: the outputs as they
    are, for block_features with either pool)."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.names = [str(name) for name, _ in self.layers]
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"need a non-empty list of blocks with distinct names, got {self.names}")
        self.captured = {name: [] for name in self.names}
        self.handles = []

    def _hook(self, name, module):
        return module.register_forward_hook(lambda mod, args, out: self.captured[name].append(out))

    def run(self, model, batches, raw: bool = False):
        for x, y in batches():
            for out in self.captured.values():
                out.clear()
            model(x)
            calls = {name: len(out) for name, out in self.captured.items()}
            if any(n != 1 for n in calls.values()):
                raise ValueError(f"every block must run exactly once per forward; calls: {calls}")
            yield {name: out[0] if raw else block_features(out[0]) for name, out in self.captured.items()}, y


def _ncc_accuracy(tap, model, batches, class_means) -> dict[str, float]:
    """Per block, the fraction of samples whose nearest train class mean (float64 distances) is their label."""
    centre = {name: mu.mean(dim=0) for name, mu in class_means.items()}  # distances are shift-invariant
    centred = {name: mu - centre[name] for name, mu in class_means.items()}
    correct, seen = dict.fromkeys(class_means, 0), 0
    for feats, y in tap.run(model, batches):
        for name, h in feats.items():
            dist = torch.cdist(h - centre[name], centred[name], compute_mode="donot_use_mm_for_euclid_dist")
            correct[name] = correct[name] + (dist.argmin(dim=1) == y).sum()
        seen += len(y)
    *hits, seen = distributed.sum_ints([*correct.values(), seen])  # DDP: every rank's shard (one process: as it is)
    correct = dict(zip(correct, hits))
    return {name: int(c) / seen if seen else math.nan for name, c in correct.items()}


def _trace_ratio(stats, C: int) -> float:
    """Tr Sigma_W / (Tr Sigma_W + Tr Sigma_B) from finalized statistics (class_means, within_trace)."""
    within = stats.within_trace
    between = (stats.class_means - stats.class_means.mean(dim=0)).pow(2).sum().item() / C
    return within / (within + between) if within + between > 0 else math.nan


def _flat_nc1(tap, model, batches, flat_stats, C: int) -> dict[str, float]:
    """The second pass over the flattened features: per block, Ave_i ||M^+ (h_i - mu_{y_i})||^2 with M = [mu_c -
    mu_G] (D x C) at rank C-1, through U S^-1 (D x (C-1)); NaN where D < C-1."""
    maps = {}
    for name, s in flat_stats.items():
        mu = s.class_means
        if mu.shape[1] >= C - 1:
            U, S, _ = mean_span_basis((mu - mu.mean(dim=0)).T)
            maps[name] = U / S
    if not maps:
        return {}
    sq = {name: torch.zeros((), dtype=torch.float64, device=m.device) for name, m in maps.items()}
    seen = 0
    for outs, y in tap.run(model, batches, raw=True):
        for name, span in maps.items():
            h = block_features(outs[name], "flatten")
            mu_y = flat_stats[name].class_means[torch.as_tensor(y).to(device=h.device, dtype=torch.int64)]
            sq[name] += ((h - mu_y) @ span).pow(2).sum()
        seen += len(y)
    totals = list(sq.values())
    distributed.sum_tensors_(*totals)  # DDP: every rank's shard
    seen = distributed.sum_ints([seen])[0]
    return {name: t.item() / seen if seen else math.nan for name, t in zip(sq, totals)}


def layer_collapse(model, layers, train_batches, test_batches, num_classes: int) -> dict:
    """NC1, trace ratio and NCC accuracies (train, test) of every block in `layers` [(name, module)].

    `train_batches` / `test_batches`: zero-argument callables returning an iterable of (x, y) on the
    model's device. Runs in eval mode under no_grad and restores every module's training flag. Returns
    {"names": [str], "widths": int64 (L,), "nc1", "trace_ratio", "ncc_acc_train", "ncc_acc_test", "flat_nc1",
    "flat_trace_ratio": float64 (L,)} (flat_*: the flattened block outputs)."""
    C = int(num_classes)
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), BlockTap(layers) as tap:
            accs, flat = {}, {}
            for outs, y in tap.run(model, train_batches, raw=True):
                for name, out in outs.items():
                    h = block_features(out)
                    if name not in accs:
                        p, D = h.shape[1], out[0].numel()
                        accs[name] = (CollapseAccumulator(C, p, h.device) if p >= C - 1
                                      else ClassMeansTrace(C, p, h.device))
                        if 24 * C * D <= FLAT_BYTES:
                            flat[name] = ClassMeansTrace(C, D, h.device)
                    accs[name].update(h, y)
                    if name in flat:
                        flat[name].update(block_features(out, "flatten"), y)
            if not accs:
                raise ValueError("train_batches yielded no batch")
            # DDP: every shard merged
            stats = {name: distributed.merge_accumulator(accs[name]).finalize() for name in tap.names}
            flat_stats = {name: distributed.merge_accumulator(flat[name]).finalize() for name in flat}
            flat_nc1 = _flat_nc1(tap, model, train_batches, flat_stats, C)
            means = {name: s.class_means for name, s in stats.items()}
            acc_train = _ncc_accuracy(tap, model, train_batches, means)
            acc_test = _ncc_accuracy(tap, model, test_batches, means)
    finally:
        for module, flag in flags:
            module.training = flag
    names = tap.names
    out = {"names": names, "widths": np.array([means[n].shape[1] for n in names], dtype=np.int64)}
    ratio = [_trace_ratio(stats[n], C) for n in names]
    out["nc1"] = np.array([stats[n].nc1 for n in names], dtype=np.float64)
    out["trace_ratio"] = np.array(ratio, dtype=np.float64)
    out["flat_nc1"] = np.array([flat_nc1.get(n, math.nan) for n in names], dtype=np.float64)
    out["flat_trace_ratio"] = np.array([_trace_ratio(flat_stats[n], C) if n in flat_stats else math.nan
                                        for n in names], dtype=np.float64)
    out["ncc_acc_train"] = np.array([acc_train[n] for n in names], dtype=np.float64)
    out["ncc_acc_test"] = np.array([acc_test[n] for n in names], dtype=np.float64)
    return out


def fit_depth_decay(nc1, num_classes: int) -> tuple[float, float, float]:
    """(a, rho, r2) of the least-squares line log(C * NC1_l) = a - rho l, l = 1..L the 1-based block index,
    over the blocks where NC1_l is finite and > 0; NaN triple with fewer than 2 such blocks; r2 NaN when
    every log(C * NC1_l) is equal."""
    v = np.asarray(nc1, dtype=np.float64).ravel()
    depth = np.arange(1, v.size + 1, dtype=np.float64)
    keep = np.isfinite(v) & (v > 0)
    if keep.sum() < 2:
        return math.nan, math.nan, math.nan
    x, y = depth[keep], np.log(num_classes * v[keep])
    dx, dy = x - x.mean(), y - y.mean()
    slope = float(dx @ dy / (dx @ dx))
    a = float(y.mean() - slope * x.mean())
    ss_res, ss_tot = float(np.sum((y - a - slope * x) ** 2)), float(dy @ dy)
    return a, -slope, (1.0 - ss_res / ss_tot) if ss_tot > 0 else math.nan
