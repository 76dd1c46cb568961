"""Imbalanced subsets (exact counts, balanced_indices when equal) and the group metrics on planted geometries."""
import math

import numpy as np
import pytest
import torch

from nc.data import balanced_indices, sampling
from nc.measure import imbalance


def simplex_etf_rows(C, p, rng):
    """C x p rows of a simplex ETF (unit norms, every cosine -1/(C-1)) in a random orthonormal pose."""
    U0 = np.linalg.svd(np.eye(C) - np.ones((C, C)) / C)[0][:, : C - 1]
    pose, _ = np.linalg.qr(rng.standard_normal((p, C - 1)))
    return math.sqrt(C / (C - 1)) * U0 @ pose.T


def test_class_counts_halves_rounding_and_override():
    assert sampling.class_counts(500, 10, 10) == [500] * 5 + [50] * 5
    assert sampling.class_counts(500, 10) == [500] * 10
    assert sampling.class_counts(500, 10, 1) == [500] * 10
    assert sampling.class_counts(7, 4, 2) == [7, 7, 4, 4]          # 3.5 rounds half up
    assert sampling.class_counts(10, 4, 3) == [10, 10, 3, 3]       # 3.33 -> 3
    assert sampling.class_counts(10, 4, 1.6) == [10, 10, 6, 6]     # 6.25 -> 6
    assert sampling.class_counts(3, 4, 100) == [3, 3, 1, 1]        # at least 1
    assert sampling.class_counts(100, 5, 10) == [100, 100, 100, 10, 10]  # odd C: ceil(C/2) majority
    assert sampling.class_counts(None, 3, 5, counts=[4, 2, 9]) == [4, 2, 9]
    assert sampling.class_counts(100, 3, 5, counts=np.array([4, 2, 9])) == [4, 2, 9]


@pytest.mark.parametrize("args, kwargs, name", [
    ((0, 10), {}, "n_per_class"), ((2.5, 10), {}, "n_per_class"), ((10, 0), {}, "num_classes"),
    ((10, 4, 0.5), {}, "imbalance_ratio"), ((10, 4, math.inf), {}, "imbalance_ratio"),
    ((10, 4, "10"), {}, "imbalance_ratio"), ((10, 3), {"counts": [1, 2]}, "counts"),
    ((10, 3), {"counts": [1, 0, 2]}, "counts"), ((10, 3), {"counts": [1, 2.5, 2]}, "counts"),
])
def test_class_counts_errors_name_the_argument(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        sampling.class_counts(*args, **kwargs)


def test_counts_indices_exact_counts_without_replacement():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=2000)
    counts = [100, 100, 100, 10, 3]
    idx = sampling.counts_indices(labels, counts, seed=3)
    assert np.bincount(labels[idx], minlength=5).tolist() == counts
    assert len(np.unique(idx)) == len(idx) == sum(counts)
    assert np.array_equal(idx, sampling.counts_indices(labels, counts, seed=3))
    assert not np.array_equal(idx, sampling.counts_indices(labels, counts, seed=4))
    assert not np.array_equal(np.sort(labels[idx]), labels[idx])  # shuffled, not grouped by class


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_equal_counts_give_balanced_indices(seed):
    labels = np.random.default_rng(seed).integers(0, 4, size=600)
    assert np.array_equal(sampling.counts_indices(labels, [37] * 4, seed),
                          balanced_indices(labels, 37, 4, seed))


def test_counts_indices_short_class_error():
    labels = np.repeat(np.arange(3), [50, 8, 50])
    with pytest.raises(ValueError, match=r"class 1 has 8 rows"):
        sampling.counts_indices(labels, [10, 10, 10], seed=0)


def test_minority_classifiers_equal_collapse_to_one():
    rng = np.random.default_rng(1)
    C, p = 6, 8
    W = rng.standard_normal((C, p))
    W[3:] = np.array([[1.0], [2.5], [0.4]]) * W[3]        # positive multiples of one direction
    assert abs(imbalance.minority_collapse(W, [3, 4, 5]) - 1.0) < 1e-12
    out = imbalance.group_metrics(rng.standard_normal((C, p)), np.zeros(p), torch.from_numpy(W), [3, 4, 5])
    assert abs(out["minority_collapse"] - 1.0) < 1e-12
    assert out["equiangular_classifiers_minor"] < 1e-12


def test_simplex_etf_every_cosine_and_zero_equiangularity():
    rng = np.random.default_rng(2)
    C, p = 8, 12
    W = 3.0 * simplex_etf_rows(C, p, rng)
    mu_G = rng.standard_normal(p)
    means = mu_G + 0.7 * simplex_etf_rows(C, p, rng)
    minor = [4, 5, 6, 7]
    assert abs(imbalance.minority_collapse(W, minor) + 1 / (C - 1)) < 1e-12
    out = imbalance.group_metrics(means, mu_G, W, minor)
    assert abs(out["minority_collapse"] + 1 / (C - 1)) < 1e-12
    for key in ("equiangular_classifiers_major", "equiangular_classifiers_minor", "equiangular_means_major",
                "equiangular_means_minor", "equinorm_classifiers_major", "equinorm_classifiers_minor",
                "equinorm_means_major", "equinorm_means_minor"):
        assert out[key] < 1e-12, key
    assert set(out) == set(imbalance.DEFINITIONS)


def test_equinorm_hand_computed():
    """Majority w norms (1, 3): Std/Avg = 1/2. Minority (1, 2, 3): sqrt(2/3)/2. Means about mu_G: majority
    norms (2, 2) -> 0; minority (1, 1, 4): Avg 2, population SD sqrt(2) -> sqrt(2)/2. Cosines by hand."""
    e = np.eye(3)
    W = np.stack([1 * e[0], 3 * e[1], 1 * e[0], 2 * e[1], 3 * (e[0] + e[1]) / math.sqrt(2)])
    mu_G = np.array([1.0, -2.0, 0.5])
    centred = np.stack([2 * e[0], -2 * e[0], e[2], e[1], 4 * e[2]])
    out = imbalance.group_metrics(mu_G + centred, mu_G, W, [2, 3, 4])
    assert abs(out["equinorm_classifiers_major"] - 0.5) < 1e-12
    assert abs(out["equinorm_classifiers_minor"] - math.sqrt(2 / 3) / 2) < 1e-12
    assert abs(out["equinorm_means_major"]) < 1e-12
    assert abs(out["equinorm_means_minor"] - math.sqrt(2) / 2) < 1e-12
    # minority classifier cosines: (e0, e1) 0, (e0, d) 1/sqrt2, (e1, d) 1/sqrt2
    r = 1 / math.sqrt(2)
    assert abs(out["minority_collapse"] - 2 * r / 3) < 1e-12
    assert abs(out["equiangular_classifiers_minor"] - np.std([0, r, r])) < 1e-12
    assert abs(out["equiangular_classifiers_major"]) < 1e-12       # a single pair: SD 0
    assert abs(out["equiangular_means_major"]) < 1e-12              # one pair, cos -1
    assert abs(out["equiangular_means_minor"] - np.std([0.0, 1.0, 0.0])) < 1e-12


def test_group_errors_and_singletons():
    W = np.eye(4)
    assert math.isnan(imbalance.minority_collapse(W, [3]))
    assert math.isnan(imbalance.group_metrics(W, np.zeros(4), W, [3])["equiangular_means_minor"])
    for bad in ([], [0, 1, 2, 3], [4], [1, 1]):
        with pytest.raises(ValueError, match="minority"):
            imbalance.minority_collapse(W, bad)
    assert sampling.minority_classes([50, 50, 5, 5]) == [2, 3]
    assert sampling.minority_classes([5, 5]) == []
