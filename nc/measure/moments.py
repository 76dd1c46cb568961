"""Streaming float64 moments of last-layer features per class: counts, means, the within-class scatter Sigma_W and
per-class variances, merged across batches and processes exactly (Chan, Golub & LeVeque's pairwise update on
features shifted by one stored sample of their class), O(p^2 + C p) memory whatever the number of samples.

Conventions (nc.measure.paper states them in full): mu_G = Ave_c mu_c (class-weighted), M = [mu_c - mu_G] (p x C),
Sigma_W = Ave_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T (sample-weighted); NC1 = Ave_i ||M^+(h_i - mu_{y_i})||^2 with
M^+ at rank C-1. Features in feature units; Sigma_W in feature units squared.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _f64(x, device=None) -> torch.Tensor:
    """A float64 torch tensor (from numpy or torch), on `device` if given."""
    t = torch.as_tensor(x)
    return t.to(device=device or t.device, dtype=torch.float64)


def _labels(y, device) -> torch.Tensor:
    return torch.as_tensor(y).to(device=device, dtype=torch.int64)


def class_counts(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float64 samples per class of int64 labels y, on y's device, without a host-device sync (torch.bincount syncs
    on CUDA: it reads the largest label to size its output)."""
    ones = torch.ones(len(y), dtype=torch.float64, device=y.device)
    return torch.zeros(num_classes, dtype=torch.float64, device=y.device).index_add_(0, y, ones)


def mean_span_basis(M: torch.Tensor):
    """U_k (p x k), S_k (k,), V_k (C x k) of the rank k = C-1 truncated SVD of M (p x C): M^+ = V_k S_k^-1 U_k^T.

    The rank is fixed at C-1 (the rank of a centred balanced mean matrix), never chosen by a tolerance."""
    k = M.shape[1] - 1
    if M.shape[0] < k:
        raise ValueError(f"feature dimension p={M.shape[0]} < C-1={k}: Sigma_B cannot have rank C-1")
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U[:, :k], S[:k], Vh[:k].T


@dataclass
class Moments:
    """First and second moments of train features, float64: what every metric is computed from."""
    counts: torch.Tensor        # (C,) samples per class
    class_means: torch.Tensor   # (C, p) mu_c
    global_mean: torch.Tensor   # (p,) mu_G = Ave_c mu_c (class-weighted; = Ave_i h_i when balanced)
    within_cov_means: torch.Tensor  # (C, C) M^T Sigma_W M: Sigma_W seen through the class-mean span
    within_trace: float         # Tr(Sigma_W)
    nc1: float                  # Tr(Sigma_W Sigma_B^+)/C at rank C-1
    sigma_w: torch.Tensor       # (p, p) Sigma_W = Ave_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T
    class_var: torch.Tensor     # (C,) Var_c = Ave_{i in c} ||h_i - mu_c||^2
    between_trace: float        # Tr(Sigma_B) = ||M||_F^2 / C
    mean_singular_values: torch.Tensor | None = None  # (C-1,) the largest singular values of M, descending


class ClassStats:
    """Streaming per-class counts, means and within-class second moments, float64, memory O(p^2 + C p).

    Chan, Golub & LeVeque's pairwise update: a batch's class counts n_b, means and centred sums of squares
    are exact (centred on the batch's own class means); merging with the running state (n_a, means) adds,
    per class, n_a n_b / (n_a + n_b) ||delta||^2 with delta = batch mean - running mean. Features are
    first shifted by one stored sample of their class (exact subtraction where the offset dominates), so
    the means being merged are O(spread), not O(offset): with a 1e6 offset and a 1e-4 spread, unshifted
    Chan loses ~1e-7 relative in Var_c (each mean carries ulp(1e6) ~ 1e-10); shifted it stays ~1e-12.

    The p x p within-class scatter (kept only if `with_scatter`) is accumulated about the same shifts:
    raw = sum_i z_i z_i^T with z_i = h_i - shift_{y_i}, one GEMM per batch and no per-class term, and only its
    upper block triangle (column blocks of BLOCK: about half the flops of a full z^T z; `symmetric_update`);
    `scatter` = raw - sum_c n_c r_c r_c^T (r_c = mean of z in class c) when read. The shift keeps z at
    O(spread), so that subtraction loses about one bit on average (the shift is a sample of its class)."""

    def __init__(self, num_classes: int, feature_dim: int, device="cpu", with_scatter: bool = True):
        self.C, self.p, self.device = num_classes, feature_dim, torch.device(device)
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float64, device=self.device)
        self.counts = zeros(num_classes)
        self.shift = zeros(num_classes, feature_dim)      # one sample of each class (0 until seen)
        self.resid = zeros(num_classes, feature_dim)      # running class mean - shift
        self.class_m2 = zeros(num_classes)                # sum_{i in c} ||h_i - mu_c||^2
        self.raw = zeros(feature_dim, feature_dim) if with_scatter else None  # sum z z^T, upper block triangle

    def update(self, features, labels) -> None:
        h = torch.as_tensor(features).to(self.device)  # promoted to float64 (exactly) by the shift below
        y = _labels(labels, self.device)
        if len(y) == 0:
            return
        n_b = class_counts(y, self.C)
        first = torch.full((self.C,), len(y), device=self.device).scatter_reduce_(
            0, y, torch.arange(len(y), device=self.device), "amin").clamp_(max=len(y) - 1)
        new = (n_b > 0) & (self.counts == 0)
        self.shift = torch.where(new[:, None], h[first].to(torch.float64), self.shift)
        shifted = h - self.shift[y]
        if self.raw is not None:
            symmetric_update(self.raw, shifted)
        mean_b = torch.zeros_like(self.resid).index_add_(0, y, shifted) / n_b.clamp(min=1)[:, None]
        centred = shifted.sub_(mean_b[y])  # in place: `shifted` is this call's own tensor
        m2_b = torch.zeros_like(self.class_m2).index_add_(0, y, torch.linalg.vecdot(centred, centred))
        n = self.counts + n_b
        delta = mean_b - self.resid  # meaningless where n_b = 0, but its weight is 0 there
        weight = self.counts * n_b / n.clamp(min=1)
        self.class_m2 += m2_b + weight * delta.pow(2).sum(dim=1)
        self.resid += delta * (n_b / n.clamp(min=1))[:, None]
        self.counts = n

    STATE = ("counts", "shift", "resid", "class_m2", "raw")  # its tensors, for distributed.merge_accumulator

    @property
    def scatter(self) -> torch.Tensor | None:
        """The within-class scatter sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T (p x p, symmetric), or None."""
        if self.raw is None:
            return None
        raw = torch.triu(self.raw)
        raw = raw + torch.triu(self.raw, 1).T
        return raw - (self.resid * self.counts[:, None]).T @ self.resid

    def merge(self, other: ClassStats) -> None:
        """Add another accumulator's samples (same C and p): Chan's pairwise update of the two states, exact as
        `update`'s; the shift is this one's where it has seen the class, else the other's."""
        n_a, n_b = self.counts, other.counts.to(self.device)
        n = n_a + n_b
        shift_b, resid_b = other.shift.to(self.device), other.resid.to(self.device)
        delta = (shift_b - self.shift) + (resid_b - self.resid)  # other's mean - this mean, both O(spread)
        weight = n_a * n_b / n.clamp(min=1)
        fresh = (n_a == 0)[:, None]  # classes only the other has seen: take its state as it is
        if self.raw is not None:  # the other's raw moved to this one's shifts: z_a = z_b + d
            d = torch.where(fresh | (n_b == 0)[:, None], 0.0, shift_b - self.shift)
            nr = resid_b * n_b[:, None]
            cross = nr.T @ d
            self.raw = self.raw + other.raw.to(self.device) + cross + cross.T + (d * n_b[:, None]).T @ d
        self.class_m2 = self.class_m2 + other.class_m2.to(self.device) + weight * delta.pow(2).sum(dim=1)
        self.resid = torch.where(fresh, resid_b, self.resid + delta * (n_b / n.clamp(min=1))[:, None])
        self.shift = torch.where(fresh, shift_b, self.shift)
        self.counts = n

    def class_means(self) -> torch.Tensor:
        return self.shift + self.resid

    def check(self) -> None:
        if (self.counts == 0).any():
            raise ValueError(f"every class needs at least one sample; counts per class: {self.counts.tolist()}")
        finite = torch.isfinite(self.shift).all() and torch.isfinite(self.resid).all()
        if not (finite and (self.scatter is None or torch.isfinite(self.scatter).all())):
            raise FloatingPointError("non-finite features: the network has diverged")


BLOCK = 256  # column block of symmetric_update


def symmetric_update(raw: torch.Tensor, z: torch.Tensor, block: int = BLOCK) -> None:
    """raw += z^T z on and above the diagonal blocks only (in place): for each row block [s, e) of BLOCK rows,
    raw[s:e, s:] += z[:, s:e]^T z[:, s:], one GEMM per block; p^2 B (1 + BLOCK/p) flops instead of 2 p^2 B. The
    entries below the diagonal blocks are left as they are (read the upper triangle, ClassStats.scatter)."""
    p = raw.shape[0]
    if p <= block:
        raw.addmm_(z.T, z)
        return
    for s in range(0, p, block):
        e = min(p, s + block)
        raw[s:e, s:].addmm_(z[:, s:e].T, z[:, s:])


def _moments_from(counts, mu, sigma_w, class_var, centred=None) -> Moments:
    """Moments from class counts, means, Sigma_W and Var_c. NC1 = Ave_i ||M^+(h_i - mu_{y_i})||^2 from the
    centred features if given, else Tr(U^T Sigma_W U S^-2) on the mean span (M = U S V^T at rank C-1)."""
    mu_g = mu.mean(dim=0)
    M = (mu - mu_g).T
    U, S, _ = mean_span_basis(M)
    if centred is None:
        nc1 = torch.trace((U.T @ sigma_w @ U) / S.pow(2)[None, :]).item()
    else:
        nc1 = ((centred @ U) / S).pow(2).sum(dim=1).mean().item()
    return Moments(counts, mu, mu_g, M.T @ sigma_w @ M, torch.trace(sigma_w).item(), nc1, sigma_w, class_var,
                   M.pow(2).sum().item() / M.shape[1], S)


class CollapseAccumulator:
    """Streaming moments: feed (features, labels) batches on the device, then `finalize()` (see ClassStats)."""

    def __init__(self, num_classes: int, feature_dim: int, device="cpu"):
        self.stats = ClassStats(num_classes, feature_dim, device, with_scatter=True)

    STATE = tuple("stats." + name for name in ClassStats.STATE)

    def update(self, features, labels) -> None:
        self.stats.update(features, labels)

    def merge(self, other: CollapseAccumulator) -> None:
        self.stats.merge(other.stats)

    def finalize(self) -> Moments:
        s = self.stats
        s.check()
        sigma_w = s.scatter / s.counts.sum()
        return _moments_from(s.counts.clone(), s.class_means(), sigma_w, s.class_m2 / s.counts)


def moments(features, labels, num_classes=None) -> Moments:
    """All-at-once moments: exact two-pass formulas; NC1 as Ave_i ||M^+(h_i - mu_{y_i})||^2."""
    h = _f64(features)
    if not torch.isfinite(h).all():
        raise FloatingPointError("non-finite features: the network has diverged")
    y = _labels(labels, h.device)
    C = int(num_classes or int(y.max()) + 1)
    counts = torch.bincount(y, minlength=C).to(torch.float64)
    if (counts == 0).any():
        raise ValueError(f"every class needs at least one sample; counts per class: {counts.tolist()}")
    mu = torch.zeros(C, h.shape[1], dtype=torch.float64, device=h.device).index_add_(0, y, h) / counts[:, None]
    centred = h - mu[y]
    class_var = torch.zeros_like(counts).index_add_(0, y, centred.pow(2).sum(dim=1)) / counts
    return _moments_from(counts, mu, centred.T @ centred / h.shape[0], class_var, centred)
