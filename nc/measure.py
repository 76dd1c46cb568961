"""Neural-collapse metrics of Papyan, Han & Donoho (2020), Section 2I and the captions of Figs. 2-7.

Claim: every number here is the paper's formula evaluated exactly in float64 on the last-layer
features h (the input of the final linear layer) of the train set, and on the classifier (W, b).
Conventions (stated once, used everywhere; the book's Methods page, book/methods.md, explains them):

- mu_c = class means, mu_G = Ave_c mu_c (the mean of the class means, class-weighted),
  M = [mu_c - mu_G] (p x C), Sigma_W = Ave_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T (sample-weighted),
  Sigma_B = M M^T / C = Ave_c (mu_c - mu_G)(mu_c - mu_G)^T (class-weighted).
  On balanced classes mu_G = Ave_i h_i, the paper's global mean. On imbalanced ones (a follow-up
  runs them) the two differ. Rank does not decide between them: either way M has rank at most C-1,
  exactly C-1 when the C means are affinely independent (generic for p >= C-1), since M 1 = 0 with
  mu_G = Ave_c mu_c and M n = 0 (n the class counts) with the sample-weighted mean. We keep the
  class-weighted one because the simplex ETF the paper compares with is centred at the mean of its
  vertices: means collapsed onto an ETF then give M = the ETF exactly (equal norms, cosines -1/(C-1)),
  whereas the sample mean shifts every column by a vector set by the class frequencies and would
  report NC2 as violated for a perfectly collapsed network.
- NC1 (Fig. 6) = Tr(Sigma_W Sigma_B^+) / C with Sigma_B^+ taken at rank exactly C-1. Because
  Sigma_B^+ = C (M^+)^T M^+, NC1 = Ave_i ||M^+ (h_i - mu_{y_i})||^2.
  (The authors' Colab omits the / C; it is the paper's caption we follow.)
- Streaming moments merge batches with Chan, Golub & LeVeque's pairwise update (per class:
  M2 += M2_batch + n_a n_b / (n_a + n_b) delta delta^T) on features shifted by one stored sample of
  their class, so no E||h||^2 - ||mu||^2 cancellation: Var_c is exact even with a 1e6 offset.
- Std is the population standard deviation (ddof = 0): the classes (and class pairs) are the whole
  population being described, not a sample, and it stays defined for C = 2.
- Equiangularity and max-angle use each unordered pair {c, c'} (c < c') once.
- Classifier metrics use the rows w_c of W as they are (not centred), as in the paper's captions.
All metrics are unitless ratios; ncc_mismatch is a fraction of the test set in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

METRICS = ("nc1", "equinorm_means", "equinorm_classifiers", "equiangular_means",
           "equiangular_classifiers", "maxangle_means", "maxangle_classifiers", "self_duality",
           "ncc_mismatch")

_MU_G = ("mu_G = Ave_c mu_c (mean of the class means; = Ave_i h_i when classes are balanced), "
         "Sigma_B = M M^T/C class-weighted, Sigma_W sample-weighted")
DEFINITIONS = {
    "nc1": "Tr(Sigma_W Sigma_B^+)/C with Sigma_B^+ at rank C-1, = Ave_i ||M^+(h_i - mu_{y_i})||^2, M = [mu_c - mu_G], "
           + _MU_G + "; train features, eval mode (Fig. 6)",
    "equinorm_means": "Std_c ||mu_c - mu_G||_2 / Avg_c ||mu_c - mu_G||_2, Std with ddof=0, mu_G = Ave_c mu_c "
                      "(Fig. 2, blue)",
    "equinorm_classifiers": "Std_c ||w_c||_2 / Avg_c ||w_c||_2, Std with ddof=0 (Fig. 2, orange)",
    "equiangular_means": "Std_{c<c'} cos(mu_c - mu_G, mu_c' - mu_G), ddof=0 over unordered pairs, mu_G = Ave_c mu_c "
                         "(Fig. 3, blue)",
    "equiangular_classifiers": "Std_{c<c'} cos(w_c, w_c'), ddof=0 over unordered pairs (Fig. 3, orange)",
    "maxangle_means": "Avg_{c<c'} |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C-1)|, mu_G = Ave_c mu_c (Fig. 4, blue)",
    "maxangle_classifiers": "Avg_{c<c'} |cos(w_c, w_c') + 1/(C-1)| (Fig. 4, orange)",
    "self_duality": "|| W^T/||W||_F - M/||M||_F ||_F^2, M = [mu_c - mu_G], mu_G = Ave_c mu_c (Fig. 5)",
    "ncc_mismatch": "fraction of TEST images where argmax_c (W h + b)_c != argmin_c ||h - mu_c||_2, "
                    "mu_c the TRAIN class means (Fig. 7)",
}


def _f64(x, device=None) -> torch.Tensor:
    """A float64 torch tensor (from numpy or torch), on `device` if given."""
    t = torch.as_tensor(x)
    return t.to(device=device or t.device, dtype=torch.float64)


def _labels(y, device) -> torch.Tensor:
    return torch.as_tensor(y).to(device=device, dtype=torch.int64)


def mean_span_basis(M: torch.Tensor):
    """U_k (p x k), S_k (k,), V_k (C x k) of the rank k = C-1 truncated SVD of M (p x C): M^+ = V_k S_k^-1 U_k^T.

    The rank is fixed at C-1 (the rank of a centred balanced mean matrix), never chosen by a tolerance."""
    k = M.shape[1] - 1
    if M.shape[0] < k:
        raise ValueError(f"feature dimension p={M.shape[0]} < C-1={k}: Sigma_B cannot have rank C-1")
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U[:, :k], S[:k], Vh[:k].T


def _pairwise_cos_stats(V: torch.Tensor, C: int) -> tuple[float, float]:
    """(Std, Avg|cos + 1/(C-1)|) of the cosines between the columns of V over unordered pairs."""
    Vn = V / V.norm(dim=0, keepdim=True)
    cos = Vn.T @ Vn
    iu = torch.triu_indices(C, C, offset=1, device=V.device)
    pair = cos[iu[0], iu[1]]
    return pair.std(correction=0).item(), (pair + 1.0 / (C - 1)).abs().mean().item()


def geometry_metrics(class_means, global_mean, W) -> dict[str, float]:
    """Figs. 2-5 from the train class means (C x p), the global mean (p,) and the classifier W (C x p)."""
    mu = _f64(class_means)
    W = _f64(W, mu.device)
    M = (mu - _f64(global_mean, mu.device)).T  # p x C
    C = M.shape[1]
    mean_norms, w_norms = M.norm(dim=0), W.norm(dim=1)
    eq_m, max_m = _pairwise_cos_stats(M, C)
    eq_w, max_w = _pairwise_cos_stats(W.T, C)
    dual = (W.T / W.norm() - M / M.norm()).pow(2).sum().item()
    return {
        "equinorm_means": (mean_norms.std(correction=0) / mean_norms.mean()).item(),
        "equinorm_classifiers": (w_norms.std(correction=0) / w_norms.mean()).item(),
        "equiangular_means": eq_m, "equiangular_classifiers": eq_w,
        "maxangle_means": max_m, "maxangle_classifiers": max_w,
        "self_duality": dual,
    }


def ncc_disagreements(test_features, W, b, class_means) -> int:
    """How many test features the network classifier and the nearest train class mean label differently."""
    mu = _f64(class_means)
    h = _f64(test_features, mu.device)
    net = (h @ _f64(W, mu.device).T + _f64(b, mu.device)).argmax(dim=1)
    centre = mu.mean(dim=0)  # cdist expands ||a||^2 + ||b||^2 - 2ab: remove a common offset first
    ncc = torch.cdist(h - centre, mu - centre).argmin(dim=1)
    return int((net != ncc).sum().item())


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


class ClassStats:
    """Streaming per-class counts, means and within-class second moments, float64, memory O(p^2 + C p).

    Chan, Golub & LeVeque's pairwise update: a batch's class counts n_b, means and centred scatter are
    exact (centred on the batch's own class means); merging with the running state (n_a, means) adds,
    per class, n_a n_b / (n_a + n_b) delta delta^T with delta = batch mean - running mean. Features are
    first shifted by one stored sample of their class (exact subtraction where the offset dominates), so
    the means being merged are O(spread), not O(offset): with a 1e6 offset and a 1e-4 spread, unshifted
    Chan loses ~1e-7 relative in Var_c (each mean carries ulp(1e6) ~ 1e-10); shifted it stays ~1e-12.
    `scatter` (the p x p within-class M2 summed over classes) is kept only if `with_scatter`."""

    def __init__(self, num_classes: int, feature_dim: int, device="cpu", with_scatter: bool = True):
        self.C, self.p, self.device = num_classes, feature_dim, torch.device(device)
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float64, device=self.device)
        self.counts = zeros(num_classes)
        self.shift = zeros(num_classes, feature_dim)      # one sample of each class (0 until seen)
        self.resid = zeros(num_classes, feature_dim)      # running class mean - shift
        self.class_m2 = zeros(num_classes)                # sum_{i in c} ||h_i - mu_c||^2
        self.scatter = zeros(feature_dim, feature_dim) if with_scatter else None

    def update(self, features, labels) -> None:
        h = torch.as_tensor(features).to(self.device)  # promoted to float64 (exactly) by the shift below
        y = _labels(labels, self.device)
        if len(y) == 0:
            return
        n_b = torch.bincount(y, minlength=self.C).to(torch.float64)
        first = torch.full((self.C,), len(y), device=self.device).scatter_reduce_(
            0, y, torch.arange(len(y), device=self.device), "amin").clamp_(max=len(y) - 1)
        new = (n_b > 0) & (self.counts == 0)
        self.shift = torch.where(new[:, None], h[first].to(torch.float64), self.shift)
        shifted = h - self.shift[y]
        mean_b = torch.zeros_like(self.resid).index_add_(0, y, shifted) / n_b.clamp(min=1)[:, None]
        centred = shifted.sub_(mean_b[y])  # in place: `shifted` is this call's own tensor
        m2_b = torch.zeros_like(self.class_m2).index_add_(0, y, torch.linalg.vecdot(centred, centred))
        n = self.counts + n_b
        delta = mean_b - self.resid  # meaningless where n_b = 0, but its weight is 0 there
        weight = self.counts * n_b / n.clamp(min=1)
        if self.scatter is not None:
            self.scatter.addmm_(centred.T, centred).addmm_((delta * weight[:, None]).T, delta)
        self.class_m2 += m2_b + weight * delta.pow(2).sum(dim=1)
        self.resid += delta * (n_b / n.clamp(min=1))[:, None]
        self.counts = n

    STATE = ("counts", "shift", "resid", "class_m2", "scatter")  # its tensors (nc.ddp.merge_accumulator)

    def merge(self, other: ClassStats) -> None:
        """Add another accumulator's samples (same C and p): Chan's pairwise update of the two states, exact as
        `update`'s; the shift is this one's where it has seen the class, else the other's."""
        n_a, n_b = self.counts, other.counts.to(self.device)
        n = n_a + n_b
        shift_b, resid_b = other.shift.to(self.device), other.resid.to(self.device)
        delta = (shift_b - self.shift) + (resid_b - self.resid)  # other's mean - this mean, both O(spread)
        weight = n_a * n_b / n.clamp(min=1)
        if self.scatter is not None:
            self.scatter = self.scatter + other.scatter.to(self.device) + (delta * weight[:, None]).T @ delta
        self.class_m2 = self.class_m2 + other.class_m2.to(self.device) + weight * delta.pow(2).sum(dim=1)
        fresh = (n_a == 0)[:, None]  # classes only the other has seen: take its state as it is
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
                   M.pow(2).sum().item() / M.shape[1])


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


def metrics_from_moments(m: Moments, W, ncc_mismatch: float = math.nan) -> dict[str, float]:
    """The cube's snapshot metrics from train moments and the classifier."""
    out = {"nc1": m.nc1}
    out.update(geometry_metrics(m.class_means, m.global_mean, W))
    out["ncc_mismatch"] = ncc_mismatch
    return out


def collapse_metrics(train_features, train_labels, W, b, test_features=None, num_classes=None) -> dict[str, float]:
    """Every metric of Figs. 2-7, keyed by the cube's variable names (ncc_mismatch is NaN without a test set).

    Accepts torch tensors or numpy arrays; computes in float64 on the features' device."""
    m = moments(train_features, train_labels, num_classes)
    mismatch = math.nan
    if test_features is not None:
        n_test = len(test_features)
        mismatch = ncc_disagreements(test_features, W, b, m.class_means) / n_test if n_test else math.nan
    return metrics_from_moments(m, W, mismatch)


def nc1_from_within_cov(class_means, global_mean, within_cov_means) -> float:
    """NC1 recomputed from the cube's geometry alone: Tr((G^+)^2 M^T Sigma_W M) with G = M^T M at rank C-1."""
    mu = _f64(np.asarray(class_means))
    M = (mu - _f64(np.asarray(global_mean))).T
    _, S, V = mean_span_basis(M)
    # M = U S V^T, so U^T Sigma_W U = S^-1 V^T (M^T Sigma_W M) V S^-1 on the span of the means.
    inner = V.T @ _f64(np.asarray(within_cov_means)) @ V / (S[:, None] * S[None, :])
    return torch.trace(inner / S.pow(2)[None, :]).item()
