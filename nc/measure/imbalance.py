"""Class imbalance and minority collapse: Fang, He, Long & Su, "Exploring deep neural networks via layer-peeled
model: minority collapse in imbalanced training" (PNAS 2021).

Claim: with n_A images in each majority class and n_B = n_A / R in each minority class, as R grows the minority
classifiers w_c collapse onto one direction (their pairwise cosines -> 1), whereas balanced training gives a
simplex ETF (every cosine -1/(C-1)). This module measures the geometry per group
(`minority_collapse`, `group_metrics`). All metrics are unitless (cosines and coefficients of variation), float64.

Conventions (the repository's, shared with nc.measure): mu_G = Ave_c mu_c (class-weighted: every class counts
once whatever its size), Sigma_B = Ave_c (mu_c - mu_G)(mu_c - mu_G)^T (class-weighted, rank C-1 whatever the
counts), Sigma_W = Ave over samples (sample-weighted). The group metrics use mu_G as passed and never Sigma_B or
Sigma_W; DEFINITIONS says so per metric. Std is the population SD (ddof 0), pairs are unordered (c < c'); a
metric needing a pair is NaN for a group with fewer than two classes.
"""
from __future__ import annotations

import math

import numpy as np

_CLASS_MU_G = "mu_G = Ave_c mu_c (class-weighted); uses neither Sigma_B nor Sigma_W"
_NO_MOMENTS = "classifier rows as they are (not centred); uses neither mu_G, Sigma_B nor Sigma_W"
DEFINITIONS = {
    "minority_collapse": "Avg_{c<c' in minority} cos(w_c, w_c'); 1 = collapsed, -1/(C-1) = simplex ETF; "
                         + _NO_MOMENTS + " (Fang et al., PNAS 2021, minority collapse)",
    "equinorm_classifiers_major": "Std_c ||w_c|| / Avg_c ||w_c|| over the majority classes, ddof=0; " + _NO_MOMENTS,
    "equinorm_classifiers_minor": "Std_c ||w_c|| / Avg_c ||w_c|| over the minority classes, ddof=0; " + _NO_MOMENTS,
    "equinorm_means_major": "Std_c ||mu_c - mu_G|| / Avg_c ||mu_c - mu_G|| over the majority classes, ddof=0; "
                            + _CLASS_MU_G,
    "equinorm_means_minor": "Std_c ||mu_c - mu_G|| / Avg_c ||mu_c - mu_G|| over the minority classes, ddof=0; "
                            + _CLASS_MU_G,
    "equiangular_classifiers_major": "Std_{c<c'} cos(w_c, w_c') over majority pairs, ddof=0; " + _NO_MOMENTS,
    "equiangular_classifiers_minor": "Std_{c<c'} cos(w_c, w_c') over minority pairs, ddof=0; " + _NO_MOMENTS,
    "equiangular_means_major": "Std_{c<c'} cos(mu_c - mu_G, mu_c' - mu_G) over majority pairs, ddof=0; "
                               + _CLASS_MU_G,
    "equiangular_means_minor": "Std_{c<c'} cos(mu_c - mu_G, mu_c' - mu_G) over minority pairs, ddof=0; "
                               + _CLASS_MU_G,
}


def _np64(x) -> np.ndarray:
    """float64 numpy array from numpy or torch (any device)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _groups(minority, C):
    minor = sorted({int(c) for c in np.asarray(minority).reshape(-1)})
    if len(minor) != np.asarray(minority).size or not minor or minor[0] < 0 or minor[-1] >= C or len(minor) == C:
        raise ValueError(f"minority must be distinct class ids in 0..{C - 1}, at least one and not all; "
                         f"got {np.asarray(minority).tolist()}")
    return [c for c in range(C) if c not in set(minor)], minor


def _pair_cosines(V: np.ndarray) -> np.ndarray:
    """cos between the rows of V over unordered pairs (c < c')."""
    Vn = V / np.linalg.norm(V, axis=1, keepdims=True)
    i, j = np.triu_indices(V.shape[0], k=1)
    return np.einsum("kp,kp->k", Vn[i], Vn[j])


def _equinorm(V: np.ndarray) -> float:
    norms = np.linalg.norm(V, axis=1)
    return float(norms.std() / norms.mean())


def _equiangular(V: np.ndarray) -> float:
    return float(_pair_cosines(V).std()) if V.shape[0] >= 2 else math.nan


def minority_collapse(W, minority) -> float:
    """Avg over unordered pairs of minority classes of cos(w_c, w_c') (rows of W, C x p); NaN for < 2 classes."""
    W = _np64(W)
    _, minor = _groups(minority, W.shape[0])
    return float(_pair_cosines(W[minor]).mean()) if len(minor) >= 2 else math.nan


def group_metrics(class_means, global_mean, W, minority) -> dict[str, float]:
    """Equinorm and equiangularity within the majority and within the minority, and minority_collapse, keyed by
    the cube's variable names. class_means (C, p), global_mean (p,) (the repository's class-weighted mu_G),
    W (C, p); minority: class ids (the majority is every other class)."""
    mu, W = _np64(class_means), _np64(W)
    if mu.ndim != 2 or W.shape != mu.shape:
        raise ValueError(f"class_means and W must both be (C, p), got {mu.shape} and {W.shape}")
    major, minor = _groups(minority, mu.shape[0])
    centred = mu - _np64(global_mean).reshape(1, -1)
    out = {"minority_collapse": minority_collapse(W, minor)}
    for name, group in (("major", major), ("minor", minor)):
        out[f"equinorm_classifiers_{name}"] = _equinorm(W[group])
        out[f"equinorm_means_{name}"] = _equinorm(centred[group])
        out[f"equiangular_classifiers_{name}"] = _equiangular(W[group])
        out[f"equiangular_means_{name}"] = _equiangular(centred[group])
    return out
