"""Measurements that came after the paper (the book's Part II, "After the paper"), float64.

Claim: each number is its source paper's formula evaluated exactly on the train moments of nc.measure
(same conventions: mu_c class means, mu_G = Ave_c mu_c, M = [mu_c - mu_G] (p x C), Sigma_W sample-weighted,
Sigma_B = M M^T / C, Sigma_T = Sigma_W + Sigma_B; see nc.measure and book/methods.md), on the classifier rows
W (C x p) as they are, and on one streaming pass over the test features. All are unitless.

- cdnv (Galanti, Gyorgy & Hutter, ICLR 2022): Avg_{c<c'} (Var_c + Var_c') / (2 ||mu_c - mu_c'||^2),
  Var_c = Ave_{i in c} ||h_i - mu_c||^2 from the Chan-merged accumulator (no cancellation), distances
  from direct differences (torch.pdist), not from a Gram matrix.
- nc1_test (Hui, Belkin & Nakkiran, 2022): Tr(Sigma_W^test Sigma_B^+) / C with Sigma_W^test the scatter of
  the test features about the TRAIN class means and Sigma_B^+ from the train means at rank exactly C-1;
  computed as Ave_test ||M^+ (h - mu_y^train)||^2, O(N p C), no p x p matrix.
- nc1_test_means (Hui et al.'s other reading): Tr(Sigma_W^te Sigma_B^te+)/C of the test features about their own
  class means, from the test pass's own streamed moments (Sigma_W^te, p x p), rank C-1.
- ncc_test_means_acc: the nearest-class-centre accuracy on the test set with the TEST class means (a second pass
  over the test features once their means are known: `ncc_hits`); NaN where no second pass was made.
- trace_ratio: Tr Sigma_W / Tr Sigma_T in [0, 1), no pseudo-inverse: the form used for per-layer work.
- trace_quotient (Tirer, Huang & Niles-Weed, ICML 2023; rhubarbwu's covariance "quotient"): Tr Sigma_W / Tr Sigma_B.
- vci (Xu & Liu, ICML 2023): 1 - Tr(Sigma_T^+ Sigma_B) / rank Sigma_B, rank C-1, Sigma_T^+ from a float64
  eigendecomposition keeping eigenvalues above p * eps * the largest (PINV_RTOL); invariant under any invertible
  linear map of the features.
- etf_error_*, classifier_mean_alignment (Zhu et al., NeurIPS 2021): Frobenius distance, in [0, 2], of a
  normalised C x C Gram (or cross) matrix from the normalised simplex-ETF Gram P = I - 11^T/C.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nc.measure.moments import ClassStats, Moments, _f64, _labels, _moments_from, mean_span_basis

FOLLOWUP_METRICS = ("cdnv_train", "cdnv_test", "nc1_test", "nc1_test_means", "ncc_test_means_acc", "trace_ratio",
                    "trace_quotient", "vci", "etf_error_means", "etf_error_classifiers", "classifier_mean_alignment")

_ETF = "P = I - 11^T/C (||P||_F = sqrt(C-1)), the Gram matrix of a simplex ETF"
_ZHU = "Zhu et al., NeurIPS 2021, 'A geometric analysis of neural collapse with unconstrained features'"
DEFINITIONS = {
    "cdnv_train": "Avg_{c<c'} (Var_c + Var_c')/(2 ||mu_c - mu_c'||^2), Var_c = Ave_{i in c} ||h_i - mu_c||^2, "
                  "train features and train class means; unitless; Galanti, Gyorgy & Hutter, ICLR 2022 (CDNV)",
    "cdnv_test": "Avg_{c<c'} (Var_c + Var_c')/(2 ||mu_c - mu_c'||^2) with TEST class means and Var_c about them; "
                 "NaN if a class has no test sample; unitless; Galanti, Gyorgy & Hutter, ICLR 2022 (CDNV)",
    "nc1_test": "Tr(Sigma_W^test Sigma_B^+)/C = Ave_test ||M^+(h - mu_y^train)||^2, Sigma_W^test the scatter of "
                "test features about the TRAIN class means, Sigma_B^+ from the train means at rank C-1, "
                "mu_G = Ave_c mu_c; unitless; Hui, Belkin & Nakkiran, 2022, arXiv:2202.08384 (test collapse)",
    "nc1_test_means": "Tr(Sigma_W^te Sigma_B^te+)/C with the TEST class means mu_c^te, mu_G^te = Ave_c mu_c^te, "
                      "Sigma_W^te the test features' scatter about their own class means (sample-weighted), "
                      "Sigma_B^te = M_te M_te^T/C at rank C-1; NaN if a class has no test sample; unitless; the "
                      "test set's own collapse, Hui, Belkin & Nakkiran, 2022, arXiv:2202.08384",
    "ncc_test_means_acc": "fraction of TEST images with argmin_c ||h - mu_c^te||_2 = y, mu_c^te the TEST class means "
                          "(a second pass over the test set once they are known; ties to the lowest class index); "
                          "NaN where a class has no test sample or no second pass was made (nc.measure.collapse "
                          "makes one test pass; the training runs' snapshots make both); unitless; the nearest "
                          "class centre of the test set's own collapse, Hui, Belkin & Nakkiran, 2022",
    "trace_quotient": "Tr(Sigma_W)/Tr(Sigma_B), Sigma_W sample-weighted, Sigma_B = MM^T/C, mu_G = Ave_c mu_c, train "
                      "features; unitless, >= 0; Tirer, Huang & Niles-Weed, ICML 2023, and rhubarbwu's "
                      "covariance-ratio quotient (trace_ratio = q/(1+q) is the same information bounded)",
    "vci": "1 - Tr(Sigma_T^+ Sigma_B)/rank(Sigma_B), Sigma_T = Sigma_W + Sigma_B (Sigma_W sample-weighted, "
           "Sigma_B = MM^T/C, mu_G = Ave_c mu_c), rank(Sigma_B) = C-1, Sigma_T^+ from a float64 eigendecomposition "
           "keeping eigenvalues > p*eps*max; train features; unitless, in [0, 1], 0 at full collapse, invariant "
           "under invertible linear maps of the features; Xu & Liu, ICML 2023 (variability collapse index)",
    "trace_ratio": "Tr(Sigma_W)/Tr(Sigma_T), Sigma_T = Sigma_W + Sigma_B (Sigma_W sample-weighted, Sigma_B = MM^T/C, "
                   "mu_G = Ave_c mu_c), train features, no pseudo-inverse; unitless, in [0, 1); the trace form of "
                   "the within/total criterion of discriminant analysis, this repository's per-layer measure",
    "etf_error_means": "|| G/||G||_F - P/||P||_F ||_F, G = M^T M, M = [mu_c - mu_G] the centred train means, "
                       + _ETF + "; unitless, in [0, 2]; " + _ZHU + " (NC2)",
    "etf_error_classifiers": "|| G/||G||_F - P/||P||_F ||_F, G = W W^T, the rows w_c as they are, " + _ETF
                             + "; unitless, in [0, 2]; " + _ZHU + " (NC2)",
    "classifier_mean_alignment": "|| W M/||W M||_F - P/||P||_F ||_F, W (C x p) as it is, M = [mu_c - mu_G], "
                                 + _ETF + "; unitless, in [0, 2]; " + _ZHU + " (NC3)",
}


def cdnv(class_means, class_var) -> float:
    """Class-distance normalised variance: Avg over pairs c < c' of (Var_c + Var_c') / (2 ||mu_c - mu_c'||^2)."""
    mu = _f64(class_means)
    var = _f64(class_var, mu.device)
    C = mu.shape[0]
    iu = torch.triu_indices(C, C, offset=1, device=mu.device)
    dist2 = torch.pdist(mu).pow(2)  # pairs (c, c'), c < c', in triu_indices order
    return ((var[iu[0]] + var[iu[1]]) / (2 * dist2)).mean().item()


def _distance_to_etf(G: torch.Tensor) -> float:
    """|| G/||G||_F - P/||P||_F ||_F for a C x C matrix G, P = I - 11^T/C."""
    C = G.shape[0]
    P = torch.eye(C, dtype=G.dtype, device=G.device) - 1.0 / C
    return (G / G.norm() - P / math.sqrt(C - 1)).norm().item()


def etf_gram_error(V) -> float:
    """Distance of the normalised Gram matrix of the C rows of V (C x p) from the normalised simplex-ETF Gram."""
    V = _f64(V)
    return _distance_to_etf(V @ V.T)


def classifier_mean_alignment(W, M) -> float:
    """|| W M/||W M||_F - P/||P||_F ||_F for W (C x p) and the centred means M (p x C): 0 iff W M is an ETF Gram."""
    W = _f64(W)
    return _distance_to_etf(W @ _f64(M, W.device))


def trace_ratio(moments: Moments) -> float:
    """Tr Sigma_W / Tr Sigma_T with Sigma_T = Sigma_W + Sigma_B."""
    return moments.within_trace / (moments.within_trace + moments.between_trace)


def trace_quotient(moments: Moments) -> float:
    """Tr Sigma_W / Tr Sigma_B (Tirer et al.'s and rhubarbwu's form; inf where Tr Sigma_B is 0)."""
    return moments.within_trace / moments.between_trace if moments.between_trace > 0 else math.inf


def pinv_rtol(p: int) -> float:
    """The relative tolerance of the pseudo-inverses here: eigenvalues at or below p * eps(float64) * the largest
    are treated as 0 (numpy's matrix_rank default for a p x p symmetric matrix)."""
    return p * torch.finfo(torch.float64).eps


def vci(moments: Moments) -> float:
    """The variability collapse index 1 - Tr(Sigma_T^+ Sigma_B)/(C-1), Sigma_T = Sigma_W + Sigma_B, float64.

    Tr(Sigma_T^+ Sigma_B) = Tr(M^T Sigma_T^+ M)/C, evaluated on Sigma_T's eigenvectors above pinv_rtol: no
    explicit inverse, and the p x p Sigma_T the moments already imply (no per-sample matrix)."""
    mu = _f64(moments.class_means)
    C, p = mu.shape
    M = (mu - _f64(moments.global_mean, mu.device)).T
    sigma_t = _f64(moments.sigma_w, mu.device) + M @ M.T / C
    evals, Q = torch.linalg.eigh((sigma_t + sigma_t.T) / 2)
    keep = evals > pinv_rtol(p) * evals.max().clamp_min(0)
    Z = Q[:, keep].T @ M
    return 1.0 - (Z.pow(2) / evals[keep, None]).sum().item() / C / (C - 1)


def ncc_hits(features, labels, class_means) -> torch.Tensor:
    """How many of the features' nearest class mean (float64 Euclidean, ties to the lowest index) is their label:
    an int64 device tensor (no host sync per batch)."""
    mu = _f64(class_means)
    h = _f64(features, mu.device)
    centre = mu.mean(dim=0)  # cdist expands ||a||^2 + ||b||^2 - 2ab: remove a common offset first
    nearest = torch.cdist(h - centre, mu - centre, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)
    return (nearest == _labels(labels, mu.device)).sum()


@dataclass
class TestResult:
    """What one pass over the test features gives: test collapse about the train means, and CDNV on test."""
    __test__ = False  # not a pytest class
    nc1_test: float              # Ave_test ||M^+ (h - mu_y^train)||^2 (NaN for an empty test set)
    cdnv_test: float             # CDNV from test class means and variances (NaN if a class is missing)
    nc1_test_means: float        # Tr(Sigma_W^te Sigma_B^te+)/C about the test means (NaN if a class is missing)
    class_means: torch.Tensor    # (C, p) test class means
    counts: torch.Tensor         # (C,) test samples per class
    class_var: torch.Tensor      # (C,) Ave_{i in c} ||h_i - mu_c^test||^2 (NaN where counts is 0)


class TestAccumulator:
    """Streaming test-set measurements: feed (features, labels) batches, then `finalize()`.

    Keeps the train mean-span map M^+ = V S^-1 U^T as the p x (C-1) matrix U S^-1 (||M^+ d|| = ||S^-1 U^T d||)
    and per-class test statistics (counts, means, Var traces and the p x p within-class scatter about the test
    means; Chan-merged, nc.measure.ClassStats): memory 8 (p^2 + 3 C p) bytes."""
    __test__ = False

    def __init__(self, train_moments: Moments, num_classes: int, feature_dim: int, device="cpu"):
        self.device = torch.device(device)
        self.train_means = _f64(train_moments.class_means, self.device)
        if tuple(self.train_means.shape) != (num_classes, feature_dim):
            raise ValueError(f"train class means have shape {tuple(self.train_means.shape)}, "
                             f"expected ({num_classes}, {feature_dim})")
        M = (self.train_means - _f64(train_moments.global_mean, self.device)).T
        U, S, _ = mean_span_basis(M)
        self.span_map = U / S  # p x (C-1)
        self.sq_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.stats = ClassStats(num_classes, feature_dim, self.device, with_scatter=True)

    def update(self, features, labels) -> None:
        h = torch.as_tensor(features).to(self.device)  # h - mu (float64) promotes exactly
        y = _labels(labels, self.device)
        self.sq_sum += ((h - self.train_means[y]) @ self.span_map).pow(2).sum()
        self.stats.update(h, y)

    # its tensors, for nc.measure.distributed.merge_accumulator
    STATE = ("sq_sum", *("stats." + n for n in ClassStats.STATE))  # nc.measure.distributed.merge_accumulator

    def merge(self, other: TestAccumulator) -> None:
        """Add another accumulator's test samples (same train moments): sums add, class statistics Chan-merge."""
        self.sq_sum = self.sq_sum + other.sq_sum.to(self.device)
        self.stats.merge(other.stats)

    def finalize(self) -> TestResult:
        s = self.stats
        n = s.counts.sum().item()
        if not (torch.isfinite(self.sq_sum) and torch.isfinite(s.resid).all() and torch.isfinite(s.shift).all()
                and torch.isfinite(s.scatter).all()):
            raise FloatingPointError("non-finite test features: the network has diverged")
        seen = s.counts > 0
        means = torch.where(seen[:, None], s.class_means(), math.nan)
        var = torch.where(seen, s.class_m2 / s.counts.clamp(min=1), math.nan)
        every = bool(seen.all())
        cdnv_test = cdnv(means, var) if every else math.nan
        nc1_test = self.sq_sum.item() / n if n else math.nan
        nc1_own = _moments_from(s.counts.clone(), means, s.scatter / n, var).nc1 if every else math.nan
        return TestResult(nc1_test, cdnv_test, nc1_own, means, s.counts.clone(), var)


def followup_metrics(train_moments: Moments, W, test_result: TestResult | None = None,
                     ncc_test_means_acc: float = math.nan) -> dict[str, float]:
    """Every follow-up metric, keyed by the cube's variable names in FOLLOWUP_METRICS order
    (cdnv_test, nc1_test and nc1_test_means are NaN without a test result; ncc_test_means_acc is the second test
    pass's, ncc_hits summed over the test set / its size, passed in)."""
    m = train_moments
    mu = _f64(m.class_means)
    M = (mu - _f64(m.global_mean, mu.device)).T
    W = _f64(W, mu.device)
    out = {
        "cdnv_train": cdnv(mu, m.class_var),
        "cdnv_test": math.nan if test_result is None else test_result.cdnv_test,
        "nc1_test": math.nan if test_result is None else test_result.nc1_test,
        "nc1_test_means": math.nan if test_result is None else test_result.nc1_test_means,
        "ncc_test_means_acc": ncc_test_means_acc,
        "trace_ratio": trace_ratio(m),
        "trace_quotient": trace_quotient(m),
        "vci": vci(m),
        "etf_error_means": etf_gram_error(M.T),
        "etf_error_classifiers": etf_gram_error(W),
        "classifier_mean_alignment": classifier_mean_alignment(W, M),
    }
    return {k: out[k] for k in FOLLOWUP_METRICS}
