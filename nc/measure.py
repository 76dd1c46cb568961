"""Neural-collapse metrics of Papyan, Han & Donoho (2020), Section 2I and the captions of Figs. 2-7.

Claim: every number here is the paper's formula evaluated exactly in float64 on the last-layer
features h (the input of the final linear layer) of the balanced train set, and on the classifier
(W, b). Conventions (DESIGN.md section 5, stated once, used everywhere):

- mu_G = Ave_i h_i, mu_c = class means, M = [mu_c - mu_G] (p x C),
  Sigma_W = Ave_{i} (h_i - mu_{y_i})(h_i - mu_{y_i})^T,  Sigma_B = M M^T / C.
- NC1 (Fig. 6) = Tr(Sigma_W Sigma_B^+) / C with Sigma_B^+ taken at rank exactly C-1. Because
  Sigma_B^+ = C (M^+)^T M^+, NC1 = Ave_i ||M^+ (h_i - mu_{y_i})||^2: O(N p C), no p x p matrix.
  (The authors' Colab omits the / C; it is the paper's caption we follow.)
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

DEFINITIONS = {
    "nc1": "Tr(Sigma_W Sigma_B^+)/C with Sigma_B^+ at rank C-1, = Ave_i ||M^+(h_i - mu_{y_i})||^2; "
           "train features, eval mode (Fig. 6)",
    "equinorm_means": "Std_c ||mu_c - mu_G||_2 / Avg_c ||mu_c - mu_G||_2, Std with ddof=0 (Fig. 2, blue)",
    "equinorm_classifiers": "Std_c ||w_c||_2 / Avg_c ||w_c||_2, Std with ddof=0 (Fig. 2, orange)",
    "equiangular_means": "Std_{c<c'} cos(mu_c - mu_G, mu_c' - mu_G), ddof=0 over unordered pairs (Fig. 3, blue)",
    "equiangular_classifiers": "Std_{c<c'} cos(w_c, w_c'), ddof=0 over unordered pairs (Fig. 3, orange)",
    "maxangle_means": "Avg_{c<c'} |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C-1)| (Fig. 4, blue)",
    "maxangle_classifiers": "Avg_{c<c'} |cos(w_c, w_c') + 1/(C-1)| (Fig. 4, orange)",
    "self_duality": "|| W^T/||W||_F - M/||M||_F ||_F^2, M = [mu_c - mu_G] (Fig. 5)",
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
    ncc = torch.cdist(h, mu).argmin(dim=1)
    return int((net != ncc).sum().item())


@dataclass
class Moments:
    """First and second moments of train features, float64: what every metric is computed from."""
    counts: torch.Tensor        # (C,) samples per class
    class_means: torch.Tensor   # (C, p) mu_c
    global_mean: torch.Tensor   # (p,) mu_G = Ave_i h_i
    within_cov_means: torch.Tensor  # (C, C) M^T Sigma_W M: Sigma_W seen through the class-mean span
    within_trace: float         # Tr(Sigma_W)
    nc1: float                  # Tr(Sigma_W Sigma_B^+)/C at rank C-1


class CollapseAccumulator:
    """Streaming moments: feed (features, labels) batches on the device, then `finalize()`.

    Keeps class sums and one p x p scatter about a fixed shift (the first batch's mean, which
    removes most of the cancellation), all in float64; memory O(p^2 + C p), never N x p."""

    def __init__(self, num_classes: int, feature_dim: int, device="cpu"):
        self.C, self.p, self.device = num_classes, feature_dim, torch.device(device)
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=self.device)
        self.sums = torch.zeros(num_classes, feature_dim, dtype=torch.float64, device=self.device)
        self.scatter = torch.zeros(feature_dim, feature_dim, dtype=torch.float64, device=self.device)
        self.shift = None

    def update(self, features, labels) -> None:
        h = _f64(features, self.device)
        y = _labels(labels, self.device)
        if self.shift is None:
            self.shift = h.mean(dim=0)
        self.counts += torch.bincount(y, minlength=self.C).to(torch.float64)
        self.sums.index_add_(0, y, h)
        d = h - self.shift
        self.scatter += d.T @ d

    def finalize(self) -> Moments:
        if self.shift is None or (self.counts == 0).any():
            raise ValueError(f"every class needs at least one sample; counts per class: {self.counts.tolist()}")
        if not (torch.isfinite(self.sums).all() and torch.isfinite(self.scatter).all()):
            raise FloatingPointError("non-finite features: the network has diverged")
        n = self.counts.sum()
        mu = self.sums / self.counts[:, None]
        mu_g = self.sums.sum(dim=0) / n
        dmu = mu - self.shift
        sigma_w = (self.scatter - (dmu.T * self.counts) @ dmu) / n
        M = (mu - mu_g).T
        U, S, _ = mean_span_basis(M)
        nc1 = torch.trace((U.T @ sigma_w @ U) / S.pow(2)[None, :]).item()
        return Moments(self.counts, mu, mu_g, M.T @ sigma_w @ M, torch.trace(sigma_w).item(), nc1)


def moments(features, labels, num_classes=None) -> Moments:
    """All-at-once moments (exact two-pass formulas; no p x p matrix)."""
    h = _f64(features)
    if not torch.isfinite(h).all():
        raise FloatingPointError("non-finite features: the network has diverged")
    y = _labels(labels, h.device)
    C = int(num_classes or int(y.max()) + 1)
    counts = torch.bincount(y, minlength=C).to(torch.float64)
    if (counts == 0).any():
        raise ValueError(f"every class needs at least one sample; counts per class: {counts.tolist()}")
    mu = torch.zeros(C, h.shape[1], dtype=torch.float64, device=h.device).index_add_(0, y, h) / counts[:, None]
    mu_g = h.mean(dim=0)
    M = (mu - mu_g).T
    U, S, _ = mean_span_basis(M)
    centred = h - mu[y]
    nc1 = ((centred @ U) / S).pow(2).sum(dim=1).mean().item()  # Ave_i ||M^+(h_i - mu_{y_i})||^2
    D = centred @ M
    return Moments(counts, mu, mu_g, D.T @ D / h.shape[0], centred.pow(2).sum(dim=1).mean().item(), nc1)


def metrics_from_moments(m: Moments, W, b, ncc_mismatch: float = math.nan) -> dict[str, float]:
    """The cube's snapshot metrics from train moments and the classifier."""
    out = {"nc1": m.nc1}
    out.update(geometry_metrics(m.class_means, m.global_mean, W))
    out["ncc_mismatch"] = ncc_mismatch
    return out


def collapse_metrics(train_features, train_labels, W, b, test_features=None, test_labels=None,
                     num_classes=None) -> dict[str, float]:
    """Every metric of Figs. 2-7, keyed by the cube's variable names (ncc_mismatch is NaN without a test set).

    Accepts torch tensors or numpy arrays; computes in float64 on the features' device."""
    m = moments(train_features, train_labels, num_classes)
    mismatch = math.nan
    if test_features is not None:
        n_test = len(test_features)
        mismatch = ncc_disagreements(test_features, W, b, m.class_means) / n_test if n_test else math.nan
    return metrics_from_moments(m, W, b, mismatch)


def nc1_from_within_cov(class_means, global_mean, within_cov_means) -> float:
    """NC1 recomputed from the cube's geometry alone: Tr((G^+)^2 M^T Sigma_W M) with G = M^T M at rank C-1."""
    mu = _f64(np.asarray(class_means))
    M = (mu - _f64(np.asarray(global_mean))).T
    _, S, V = mean_span_basis(M)
    # M = U S V^T, so U^T Sigma_W U = S^-1 V^T (M^T Sigma_W M) V S^-1 on the span of the means.
    inner = V.T @ _f64(np.asarray(within_cov_means)) @ V / (S[:, None] * S[None, :])
    return torch.trace(inner / S.pow(2)[None, :]).item()
