"""Numerical checks of Theorems 1-3 of Papyan, Han & Donoho (2020), Sections 5 and 6. Float64, numpy/scipy/cvxpy.

Claims checked (units: all quantities are unitless ratios, sigma is in the units of the features):
- Theorem 1: the MSE-optimal linear classifier of Webb & Lowe (eq. 6) on collapsed (NC1) simplex-ETF (NC2)
  features is W = alpha M^T (NC3) and decides as the nearest class mean (NC4).
- Theorem 2: the multiclass max-margin classifier (eq. 9, the limit of gradient descent on cross-entropy) on the
  same features is W = alpha M^T (NC3) and decides as the nearest class mean (NC4).
- Theorem 3: with codewords ||mu_c||_2 <= 1 (each column, not centred) in Gaussian noise of variance sigma^2 per
  coordinate, the error exponent -lim sigma^2 log P(error) is at most C/(4(C-1)), attained by the simplex ETF with
  unit-norm columns. For any codebook decoded to the nearest codeword, -sigma^2 log P(error) -> d_min^2 / 8
  (d_min the smallest pairwise distance); the ETF's ||m_c - m_c'||^2 = 2 + 2/(C-1) = 2C/(C-1) gives
  d_min^2/8 = C/(4(C-1)).
Two things the numbers show that the paper leaves implicit: eq. 6 is discontinuous at exact collapse (least
squares is invariant under rescaling the within-class directions outside the span of the means, so noise there
leaves a self-duality distance of order p/N however small it is); and eq. 9 has no bias, so Theorem 2 needs
the global mean outside the span of the centred means (e.g. mu_G = 0; the proof writes mu_c - mu_G).
Conventions are those of nc.measure (M = [mu_c - mu_G], p x C; W is C x p; self-duality is the squared distance
||W^T/||W||_F - M/||M||_F||_F^2; class labels are 0..C-1, classes balanced).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import linalg, special, stats

from nc import measure


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _partial_orthogonal(p: int, k: int, rng) -> np.ndarray:
    """A Haar-random p x k matrix with orthonormal columns."""
    q, r = np.linalg.qr(_rng(rng).standard_normal((p, k)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------------------------------------------
# Geometry and synthetic features


def simplex_etf(C: int, p: int, scale: float = 1.0, rng=None) -> np.ndarray:
    """M (p x C): a simplex ETF in a random pose, columns of norm `scale`, summing to 0, pairwise cosine -1/(C-1).

    M = scale * U M* with M* = sqrt(C/(C-1)) (I - 11^T/C) (paper eq. 1). The ETF spans C-1 dimensions, so any
    p >= C-1 works: U is a random partial orthogonal map of that (C-1)-dimensional span into R^p."""
    if C < 2 or p < C - 1:
        raise ValueError(f"need C >= 2 and p >= C-1, got C={C}, p={p}")
    V = linalg.null_space(np.ones((1, C)))  # C x (C-1), orthonormal basis of the ones-vector's complement
    return scale * math.sqrt(C / (C - 1)) * _partial_orthogonal(p, C - 1, rng) @ V.T


def orthogonal_codebook(C: int, p: int, scale: float = 1.0, rng=None) -> np.ndarray:
    """p x C codebook of mutually orthogonal columns of norm `scale` in a random pose (p >= C)."""
    return scale * _partial_orthogonal(p, C, rng)


def random_codebook(C: int, p: int, scale: float = 1.0, rng=None, per_column: bool = True) -> np.ndarray:
    """p x C Gaussian codebook: each column rescaled to norm `scale` (per_column, Theorem 3's constraint), or
    the whole matrix rescaled so the average squared column norm is scale^2 (per_column=False)."""
    G = _rng(rng).standard_normal((p, C))
    if per_column:
        return scale * G / np.linalg.norm(G, axis=0)
    return scale * G * math.sqrt(C) / np.linalg.norm(G)


def features_around(means: np.ndarray, n_per_class: int, within_std: float = 0.0, global_mean=None, rng=None):
    """(features N x p, labels N): n_per_class points per class at global_mean + means[:, c] + within_std * z.

    within_std = 0 is the collapsed end state NC1 (every feature equals its class mean)."""
    p, C = means.shape
    labels = np.repeat(np.arange(C), n_per_class)
    h = means[:, labels].T + (0.0 if global_mean is None else np.asarray(global_mean, dtype=np.float64))
    if within_std:
        h = h + within_std * _rng(rng).standard_normal(h.shape)
    return h, labels


def _class_stats(features, labels):
    """(C, mu_G (p,), M (p x C)) of balanced features; raises on unbalanced classes (eq. 6 assumes balance).

    Class means are summed pairwise (along a contiguous axis): a sequential sum over n rows errs by ~ n eps |h|,
    which for collapsed features far from the origin leaves a spurious direction above the rank cut-off."""
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    counts = np.bincount(y)
    if counts.min() == 0 or (counts != counts[0]).any():
        raise ValueError(f"eq. 6 assumes balanced classes; samples per class: {counts.tolist()}")
    C, n = counts.size, counts[0]
    by_class = h[np.argsort(y, kind="stable")].reshape(C, n, -1)
    mu = np.ascontiguousarray(by_class.transpose(0, 2, 1)).mean(axis=2)  # C x p, pairwise sums
    mu_G = mu.mean(axis=0)
    return C, mu_G, (mu - mu_G).T


def nc3_nc4(features, labels, W, b, test_features) -> dict:
    """NC1 of the train features, self-duality (NC3) of W against their centred class means, and NCC
    disagreements (NC4) of (W, b) on test_features, all via nc.measure.

    Returns {"nc1", "self_duality", "ncc_disagreements" (count), "ncc_mismatch" (fraction)}."""
    m = measure.moments(features, labels)
    k = measure.ncc_disagreements(test_features, W, b, m.class_means)
    return {"nc1": m.nc1,
            "self_duality": measure.geometry_metrics(m.class_means, m.global_mean, W)["self_duality"],
            "ncc_disagreements": k, "ncc_mismatch": k / len(test_features)}


# ----------------------------------------------------------------------------------------------------------------
# Theorem 1: Webb & Lowe


def webb_lowe_classifier(features, labels):
    """(W (C x p), b (C,)) of paper eq. 6: W = (1/C) M^T Sigma_T^+, b = (1/C) 1 - W mu_G, balanced classes.

    Sigma_T = Ave_i (h_i - mu_G)(h_i - mu_G)^T = X^T X / N with X the centred features (N x p), so
    Sigma_T^+ = N V S^-2 V^T from the SVD X = U S V^T, keeping singular values above max(N, p) eps ||h||_F.
    That cut-off is measured against the raw features h, not X: rounding h to float64 moves each entry by up
    to eps |h_ij|, so directions of X below it are rounding, not data. (Eq. 6 is discontinuous at exact
    collapse: a kept rounding direction would be inverted and dominate W. Forming Sigma_T first would square
    the rounding as well.)"""
    C, mu_G, M = _class_stats(features, labels)
    h = np.asarray(features, dtype=np.float64)
    X = h - mu_G
    _, S, Vt = np.linalg.svd(X, full_matrices=False)
    keep = S > max(X.shape) * np.finfo(np.float64).eps * np.linalg.norm(h)
    V = Vt[keep].T
    W = (M.T @ V) * (X.shape[0] / S[keep] ** 2) @ V.T / C
    return W, np.full(C, 1.0 / C) - W @ mu_G


def least_squares_classifier(features, labels):
    """(W, b) minimising sum_i ||W h_i + b - e_{y_i}||^2: numpy lstsq of one-hot targets on [h, 1]."""
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    X = np.hstack([h, np.ones((h.shape[0], 1))])
    coef = np.linalg.lstsq(X, np.eye(y.max() + 1)[y], rcond=None)[0]  # (p+1) x C
    return coef[:-1].T, coef[-1]


# ----------------------------------------------------------------------------------------------------------------
# Theorem 2: max-margin (Soudry et al.)


def margin_matrix(features, labels, C: int | None = None) -> np.ndarray:
    """A (N(C-1) x Cp): row (i, c') is <w_{y_i} - w_{c'}, h_i> as a linear map of W.ravel() (W is C x p)."""
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    C = int(C or y.max() + 1)
    N, p = h.shape
    slots = np.arange(C - 1)[None, :]
    others = slots + (slots >= y[:, None])  # N x (C-1): the classes other than y_i, in order
    A = np.zeros((N, C - 1, C, p))
    rows = np.arange(N)[:, None]
    A[rows, slots, y[:, None]] = h[:, None, :]
    A[rows, slots, others] = -h[:, None, :]
    return A.reshape(N * (C - 1), C * p)


def margins(W, features, labels) -> np.ndarray:
    """(N, C-1) margins <w_{y_i} - w_{c'}, h_i> over the other classes c' (all >= 1 for eq. 9's solution)."""
    W = np.asarray(W, dtype=np.float64)
    return (margin_matrix(features, labels, W.shape[0]) @ W.ravel()).reshape(len(labels), -1)


def qp_solver() -> str:
    """The first installed cvxpy QP solver among CLARABEL, OSQP, ECOS."""
    import cvxpy as cp
    for name in ("CLARABEL", "OSQP", "ECOS"):
        if name in cp.installed_solvers():
            return name
    raise RuntimeError(f"no QP solver among CLARABEL/OSQP/ECOS; cvxpy has {cp.installed_solvers()}")


def max_margin_classifier(features, labels, solver: str | None = None) -> np.ndarray:
    """W (C x p) solving eq. 9: min sum_c ||w_c||^2 s.t. <w_c - w_c', h_i> >= 1 for y_i = c, c' != c. No bias.

    Solved with cvxpy (CLARABEL by default, tolerances 1e-10). Raises if the features are not linearly
    separable through the origin (the problem is then infeasible)."""
    import cvxpy as cp
    h = np.asarray(features, dtype=np.float64)
    C = int(np.asarray(labels).max() + 1)
    A = margin_matrix(h, labels, C)
    w = cp.Variable(C * h.shape[1])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(w)), [A @ w >= 1])
    solver = solver or qp_solver()
    opts = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10} if solver == "CLARABEL" else {}
    problem.solve(solver=solver, **opts)
    if problem.status != cp.OPTIMAL:
        raise ValueError(f"max-margin QP ended {problem.status}: features not separable through the origin?")
    return w.value.reshape(C, h.shape[1])


# ----------------------------------------------------------------------------------------------------------------
# Theorem 3: error exponent of nearest-codeword decoding


def etf_exponent_limit(C: int) -> float:
    """Theorem 3's optimum beta* = C / (4(C-1)), for codewords of norm <= 1."""
    return C / (4 * (C - 1))


def pairwise_sq_distances(codebook) -> np.ndarray:
    """C x C matrix of ||m_c - m_c'||^2 between the columns of the codebook."""
    M = np.asarray(codebook, dtype=np.float64)
    sq = np.sum(M**2, axis=0)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * M.T @ M, 0.0)


def min_distance_exponent(codebook) -> float:
    """d_min^2 / 8: the limit of -sigma^2 log P(error) as sigma -> 0 for nearest-codeword decoding."""
    D = pairwise_sq_distances(codebook)
    return D[~np.eye(D.shape[0], dtype=bool)].min() / 8


def union_bound_exponent(codebook, sigma: float) -> float:
    """-sigma^2 log of the union bound (1/C) sum_c sum_{c' != c} Q(||m_c - m_c'|| / (2 sigma)) on P(error).

    An upper bound on P(error) (so a lower bound on the exponent), exact for C = 2 and asymptotically tight;
    computed in log space, so it is finite for any sigma > 0."""
    D = pairwise_sq_distances(codebook)
    C = D.shape[0]
    log_q = stats.norm.logsf(np.sqrt(D[~np.eye(C, dtype=bool)]) / (2 * sigma))
    return -sigma**2 * (special.logsumexp(log_q) - math.log(C))


def error_probability(codebook, sigma, n_trials: int, rng=None, chunk: int = 1 << 16):
    """Monte Carlo P(error) of decoding y = m_c + sigma z (z ~ N(0, I_p), c uniform) to the nearest column.

    Classes are stratified (ceil(n_trials/C) trials each). `sigma` may be an array: every sigma reuses the same
    noise draws z (common random numbers), so a curve over sigma costs one draw. Returns (P-hat, errors, trials),
    P-hat and errors shaped like sigma."""
    M = np.asarray(codebook, dtype=np.float64)
    p, C = M.shape
    sigmas = np.asarray(sigma, dtype=np.float64)
    rng = _rng(rng)
    n = -(-n_trials // C) * C
    # argmin_c ||y - m_c||^2 = argmax_c <m_c, y> - ||m_c||^2 / 2, and <m_c, y> = (M^T M)[sent, c] + sigma <m_c, z>
    clean_scores = M.T @ M - 0.5 * np.sum(M**2, axis=0)
    errors = np.zeros(sigmas.shape, dtype=np.int64)
    for start in range(0, n, chunk):
        sent = np.arange(start, min(start + chunk, n)) % C
        noise_scores = rng.standard_normal((sent.size, p)) @ M
        base = clean_scores[sent]
        for k, s in np.ndenumerate(sigmas):
            errors[k] += np.count_nonzero(np.argmax(base + s * noise_scores, axis=1) != sent)
    p_hat = errors / n
    return (float(p_hat), int(errors), n) if sigmas.ndim == 0 else (p_hat, errors, n)


def error_exponent(codebook, sigma, n_trials: int, rng=None):
    """-sigma^2 log P(error) by Monte Carlo (see error_probability; sigma a number or an array); inf where no
    error was observed."""
    sigmas = np.asarray(sigma, dtype=np.float64)
    p_hat = np.asarray(error_probability(codebook, sigmas, n_trials, rng)[0])
    with np.errstate(divide="ignore"):
        out = -sigmas**2 * np.log(p_hat)
    return float(out) if out.ndim == 0 else out
