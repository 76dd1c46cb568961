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

import numpy as np
import torch

from nc.measure.moments import Moments, _f64, mean_span_basis, moments

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


def ncc_disagreement_count(test_features, W, b, class_means) -> torch.Tensor:
    """How many test features the network classifier and the nearest train class mean label differently, as a 0-d
    int64 tensor on the class means' device (no host-device sync: per-batch counts are summed on the device)."""
    mu = _f64(class_means)
    h = _f64(test_features, mu.device)
    net = (h @ _f64(W, mu.device).T + _f64(b, mu.device)).argmax(dim=1)
    centre = mu.mean(dim=0)  # cdist expands ||a||^2 + ||b||^2 - 2ab: remove a common offset first
    ncc = torch.cdist(h - centre, mu - centre).argmin(dim=1)
    return (net != ncc).sum()


def ncc_disagreements(test_features, W, b, class_means) -> int:
    """`ncc_disagreement_count` as a Python int."""
    return int(ncc_disagreement_count(test_features, W, b, class_means).item())


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
