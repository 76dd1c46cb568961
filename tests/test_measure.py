"""Planted geometries with closed-form metric values: a simplex ETF plus within-class noise of exact covariance."""
import math

import numpy as np
import pytest
import torch

from nc import measure


def orthonormal(p, k, rng):
    q, _ = np.linalg.qr(rng.standard_normal((p, k)))
    return q


def simplex_etf(p, C, scale, rng):
    """M (p x C), p >= C-1: a simplex ETF in a random pose, columns of norm `scale` summing to zero.

    (I - 11^T/C) = U0 U0^T with U0 (C x C-1) orthonormal; M = scale sqrt(C/(C-1)) P U0^T, P (p x C-1) orthonormal."""
    U0 = np.linalg.svd(np.eye(C) - np.ones((C, C)) / C)[0][:, : C - 1]
    return scale * math.sqrt(C / (C - 1)) * orthonormal(p, C - 1, rng) @ U0.T


def planted_features(M, mu_G, A, n, rng):
    """n features per class with class means mu_G + M[:, c] and within-class covariance exactly A A^T.

    Per class, noise = sqrt(n) E A^T with E (n x r) orthonormal columns orthogonal to the ones vector,
    so its empirical mean is 0 and its empirical covariance (1/n) Z^T Z is A A^T to rounding."""
    p, C = M.shape
    r = A.shape[1]
    feats, labels = [], []
    for c in range(C):
        G = rng.standard_normal((n, r))
        G -= G.mean(axis=0)
        E, _ = np.linalg.qr(G)
        feats.append(mu_G + M[:, c] + math.sqrt(n) * E @ A.T)
        labels.append(np.full(n, c))
    order = rng.permutation(n * C)
    return np.concatenate(feats)[order], np.concatenate(labels)[order]


def nc1_closed_form(M, A):
    """Tr(Sigma_W Sigma_B^+)/C for Sigma_W = A A^T and an ETF M whose columns have norm alpha:
    Sigma_B = alpha^2/(C-1) U U^T (U an orthonormal basis of the mean span), so
    NC1 = (C-1)/(C alpha^2) ||U^T A||_F^2."""
    p, C = M.shape
    alpha2 = np.sum(M[:, 0] ** 2)
    U = np.linalg.svd(M, full_matrices=False)[0][:, : C - 1]
    return (C - 1) / (C * alpha2) * np.sum((U.T @ A) ** 2)


@pytest.mark.parametrize("C,p,n", [(10, 64, 30), (2, 5, 8), (100, 512, 6), (1000, 999, 5), (10, 4096, 5)])
def test_exact_etf_with_planted_noise(C, p, n):
    rng = np.random.default_rng(C)
    M = simplex_etf(p, C, scale=3.7, rng=rng)
    mu_G = rng.standard_normal(p) * 5
    A = rng.standard_normal((p, 4)) * 0.1
    h, y = planted_features(M, mu_G, A, n, rng)
    W = 0.3 * M.T
    b = -0.3 * M.T @ mu_G  # Theorem 1's bias: the classifier equals nearest-class-mean
    test_h, _ = planted_features(M, mu_G, A, 5, rng)
    out = measure.collapse_metrics(h, y, W, b, test_h, C)
    assert set(out) == set(measure.METRICS)
    assert out["nc1"] == pytest.approx(nc1_closed_form(M, A), rel=1e-10)
    for key in ("equinorm_means", "equinorm_classifiers", "equiangular_means", "equiangular_classifiers",
                "maxangle_means", "maxangle_classifiers", "self_duality"):
        assert abs(out[key]) < 1e-10, key
    assert out["ncc_mismatch"] == 0.0


def test_nc1_isotropic_noise_value():
    """Sigma_W = sigma^2 I: NC1 = sigma^2 (C-1)^2 / (C alpha^2), and noise off the mean span does not count."""
    rng = np.random.default_rng(1)
    C, p, n, alpha, sigma = 5, 12, 40, 2.0, 0.05
    M = simplex_etf(p, C, alpha, rng)
    h, y = planted_features(M, np.zeros(p), sigma * np.eye(p), n, rng)
    nc1 = measure.collapse_metrics(h, y, M.T, np.zeros(C))["nc1"]
    assert nc1 == pytest.approx(sigma**2 * (C - 1) ** 2 / (C * alpha**2), rel=1e-10)
    U = np.linalg.svd(M)[0]
    off_span = U[:, C:]  # orthogonal to every class mean
    h2, y2 = planted_features(M, np.zeros(p), off_span * 0.7, n, rng)
    assert abs(measure.collapse_metrics(h2, y2, M.T, np.zeros(C))["nc1"]) < 1e-20


def test_classifier_row_rescaled_closed_forms():
    """W = beta M^T with row 0 scaled by (1+t): equinorm = std/mean of (1+t, 1, ..., 1), angles unchanged,
    self-duality = (C-1)(1/sqrt(K) - 1/sqrt(C))^2 + ((1+t)/sqrt(K) - 1/sqrt(C))^2 with K = C-1+(1+t)^2."""
    rng = np.random.default_rng(2)
    C, p, t = 7, 20, 0.5
    M = simplex_etf(p, C, 1.3, rng)
    h, y = planted_features(M, np.zeros(p), np.zeros((p, 1)), 5, rng)
    d = np.ones(C)
    d[0] = 1 + t
    W = 2.0 * (M * d).T
    out = measure.collapse_metrics(h, y, W, np.zeros(C))
    assert out["equinorm_classifiers"] == pytest.approx(np.std(d) / np.mean(d), rel=1e-10)
    K = C - 1 + (1 + t) ** 2
    dual = (C - 1) * (1 / math.sqrt(K) - 1 / math.sqrt(C)) ** 2 + ((1 + t) / math.sqrt(K) - 1 / math.sqrt(C)) ** 2
    assert out["self_duality"] == pytest.approx(dual, rel=1e-10)
    assert abs(out["equiangular_classifiers"]) < 1e-12 and abs(out["maxangle_classifiers"]) < 1e-12
    assert math.isnan(out["ncc_mismatch"])


def test_orthogonal_classifier_and_biased_mismatch():
    """Orthonormal classifier rows: every cosine 0, so equiangularity 0 and max-angle exactly 1/(C-1).
    A bias that makes the network always answer class 0, on test features at the class means:
    the mismatch is exactly (C-1)/C."""
    rng = np.random.default_rng(3)
    C, p = 6, 16
    M = simplex_etf(p, C, 1.0, rng)
    h, y = planted_features(M, np.zeros(p), np.zeros((p, 1)), 4, rng)
    W = orthonormal(p, C, rng).T * 5.0
    b = np.zeros(C)
    b[0] = 1e6
    test_h = M.T.copy()  # one test feature at each class mean
    out = measure.collapse_metrics(h, y, W, b, test_h)
    assert abs(out["equiangular_classifiers"]) < 1e-12
    assert out["maxangle_classifiers"] == pytest.approx(1 / (C - 1), rel=1e-12)
    assert out["ncc_mismatch"] == pytest.approx((C - 1) / C, abs=0)


def numpy_reference(h, y, W, C):
    """Straight transcription of the paper's definitions with full p x p matrices, float64.

    mu_G is the mean of the class means (nc.measure's convention; = h.mean(0) on balanced classes)."""
    mu = np.stack([h[y == c].mean(0) for c in range(C)])
    mu_G = mu.mean(0)
    M = (mu - mu_G).T
    Sw = sum((h[y == c] - mu[c]).T @ (h[y == c] - mu[c]) for c in range(C)) / len(h)
    Sb = M @ M.T / C
    evals, evecs = np.linalg.eigh(Sb)
    top = evecs[:, -(C - 1):]
    Sb_pinv = top @ np.diag(1 / evals[-(C - 1):]) @ top.T  # pseudo-inverse at rank exactly C-1
    iu = np.triu_indices(C, 1)
    cm = (M / np.linalg.norm(M, axis=0)).T @ (M / np.linalg.norm(M, axis=0))
    Wn = W / np.linalg.norm(W, axis=1, keepdims=True)
    cw = Wn @ Wn.T
    nm, nw = np.linalg.norm(M, axis=0), np.linalg.norm(W, axis=1)
    return {
        "nc1": np.trace(Sw @ Sb_pinv) / C,
        "equinorm_means": nm.std() / nm.mean(), "equinorm_classifiers": nw.std() / nw.mean(),
        "equiangular_means": cm[iu].std(), "equiangular_classifiers": cw[iu].std(),
        "maxangle_means": np.abs(cm[iu] + 1 / (C - 1)).mean(),
        "maxangle_classifiers": np.abs(cw[iu] + 1 / (C - 1)).mean(),
        "self_duality": np.sum((W.T / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2),
    }


@pytest.mark.parametrize("rank", [None, 6])
def test_generic_geometry_matches_float64_reference(rank):
    """Random (non-collapsed) features, possibly rank-deficient (all in a 6-dim subspace of R^40)."""
    rng = np.random.default_rng(4)
    C, p, n = 5, 40, 50
    y = np.repeat(np.arange(C), n)
    h = rng.standard_normal((C * n, p)) + rng.standard_normal((C, p))[y] * 2
    if rank:
        h = h[:, :rank] @ orthonormal(p, rank, rng).T
    W = rng.standard_normal((C, p))
    got = measure.collapse_metrics(torch.tensor(h), torch.tensor(y), torch.tensor(W), torch.zeros(C))
    ref = numpy_reference(h, y, W, C)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k


def test_pseudo_inverse_rank_is_exactly_C_minus_1():
    """A default-cutoff pinv keeps the numerically-zero 1-direction of Sigma_B when the classes are
    slightly unbalanced; ours must not: it equals the explicit rank-(C-1) SVD reference."""
    rng = np.random.default_rng(5)
    C, p = 4, 10
    M = simplex_etf(p, C, 1.0, rng)
    h, y = planted_features(M, np.ones(p), rng.standard_normal((p, 3)) * 0.2, 20, rng)
    keep = np.ones(len(y), bool)
    keep[np.flatnonzero(y == 0)[:3]] = False  # unbalance: M's C-th singular value is rounding-level, not 0
    h, y = h[keep], y[keep]
    got = measure.collapse_metrics(h, y, M.T, np.zeros(C))["nc1"]
    assert got == pytest.approx(numpy_reference(h, y, M.T, C)["nc1"], rel=1e-9)


def test_streaming_equals_all_at_once():
    rng = np.random.default_rng(6)
    C, p, n = 10, 64, 40
    M = simplex_etf(p, C, 4.0, rng)
    h, y = planted_features(M, rng.standard_normal(p) * 10, rng.standard_normal((p, 8)) * 0.01, n, rng)
    W = M.T + 0.01 * rng.standard_normal((C, p))
    acc = measure.CollapseAccumulator(C, p)
    for i in range(0, len(y), 37):
        acc.update(torch.tensor(h[i:i + 37]), torch.tensor(y[i:i + 37]))
    streamed = acc.finalize()
    direct = measure.moments(h, y, C)
    assert streamed.nc1 == pytest.approx(direct.nc1, rel=1e-10)
    assert streamed.within_trace == pytest.approx(direct.within_trace, rel=1e-10)
    np.testing.assert_allclose(streamed.class_means, direct.class_means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(streamed.within_cov_means, direct.within_cov_means, rtol=1e-9, atol=1e-14)
    a = measure.metrics_from_moments(streamed, W)
    d = measure.metrics_from_moments(direct, W)
    for k in measure.METRICS[:-1]:
        assert a[k] == pytest.approx(d[k], rel=1e-10, abs=1e-14), k
    # NC1 recomputed from the stored C x C geometry alone
    again = measure.nc1_from_within_cov(direct.class_means, direct.global_mean, direct.within_cov_means)
    assert again == pytest.approx(direct.nc1, rel=1e-10)


def test_float32_input_is_computed_in_float64_and_deterministic():
    rng = np.random.default_rng(7)
    C, p = 3, 8
    h = rng.standard_normal((60, p)).astype(np.float32)
    y = np.arange(60) % C
    W = rng.standard_normal((C, p)).astype(np.float32)
    a = measure.collapse_metrics(h, y, W, np.zeros(C))
    b = measure.collapse_metrics(torch.tensor(h), torch.tensor(y), torch.tensor(W), torch.zeros(C))
    assert a == b
    assert a["nc1"] == pytest.approx(numpy_reference(h.astype(np.float64), y, W.astype(np.float64), C)["nc1"],
                                     rel=1e-12)


def test_missing_class_and_small_p_are_clear_errors():
    h = np.random.default_rng(0).standard_normal((10, 4))
    with pytest.raises(ValueError, match="every class"):
        measure.collapse_metrics(h, np.zeros(10, int), np.ones((3, 4)), np.zeros(3), num_classes=3)
    with pytest.raises(ValueError, match="C-1"):
        measure.collapse_metrics(np.ones((12, 2)) * np.arange(12)[:, None], np.arange(12) % 6,
                                 np.ones((6, 2)), np.zeros(6))


def two_pass(h, y, C):
    """numpy two-pass reference: class means, Sigma_W (p x p), Var_c, NC1 at rank C-1 with mu_G = Ave_c mu_c."""
    mu = np.stack([h[y == c].mean(0) for c in range(C)])
    d = h - mu[y]
    var = np.array([(d[y == c] ** 2).sum(1).mean() for c in range(C)])
    M = (mu - mu.mean(0)).T
    U, S, _ = np.linalg.svd(M, full_matrices=False)
    nc1 = np.sum((d @ U[:, : C - 1] / S[: C - 1]) ** 2) / len(h)
    return mu, d.T @ d / len(h), var, nc1


def feed(acc, h, y, sizes):
    i = 0
    for s in sizes:
        acc.update(torch.tensor(h[i:i + s]), torch.tensor(y[i:i + s]))
        i += s
    assert i == len(y)
    return acc.finalize()


def test_streaming_without_cancellation_at_a_huge_offset():
    """Offset 1e6, within-class spread 1e-4, float64: a scatter about one global shift (or plain Chan on
    the raw features) loses 1e-7 or more here; the accumulator must equal the two-pass values to 1e-10,
    whatever the batch sizes, including batches that lack some classes (the first ones hold class 0-2 only)."""
    rng = np.random.default_rng(8)
    C, p, n = 6, 12, 40
    y = np.repeat(np.arange(C), n)
    y = np.concatenate([rng.permutation(y[y < 3]), rng.permutation(y[y >= 3])])
    y[60:] = rng.permutation(y[60:])
    h = 1e6 + 10 * rng.standard_normal((C, p))[y] + 1e-4 * rng.standard_normal((C * n, p))
    mu, Sw, var, nc1 = two_pass(h, y, C)
    for sizes in ([len(y)], [1, 7, 31, 2, 100, 99], [17] * 14 + [2], [1] * len(y)):
        m = feed(measure.CollapseAccumulator(C, p), h, y, sizes)
        assert m.within_trace == pytest.approx(np.trace(Sw), rel=1e-10)
        assert m.nc1 == pytest.approx(nc1, rel=1e-10)
        np.testing.assert_allclose(m.class_var, var, rtol=1e-10)
        np.testing.assert_allclose(m.sigma_w, Sw, rtol=1e-8, atol=1e-10 * np.abs(Sw).max())
        np.testing.assert_allclose(m.class_means, mu, rtol=1e-15)
    direct = measure.moments(h, y, C)
    assert direct.within_trace == pytest.approx(np.trace(Sw), rel=1e-10)
    np.testing.assert_allclose(direct.class_var, var, rtol=1e-10)


def test_new_moments_on_planted_etf():
    """Planted ETF (column norm alpha) with Sigma_W = A A^T in every class: sigma_w = A A^T,
    Var_c = ||A||_F^2, Tr(Sigma_B) = alpha^2; streamed and all-at-once agree."""
    rng = np.random.default_rng(9)
    C, p, n, alpha = 7, 15, 12, 2.5
    M = simplex_etf(p, C, alpha, rng)
    A = rng.standard_normal((p, 3)) * 0.3
    h, y = planted_features(M, rng.standard_normal(p), A, n, rng)
    for m in (measure.moments(h, y, C), feed(measure.CollapseAccumulator(C, p), h, y, [5, 50, 1, 28])):
        np.testing.assert_allclose(m.sigma_w, A @ A.T, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(m.class_var, np.full(C, np.sum(A ** 2)), rtol=1e-10)
        assert m.between_trace == pytest.approx(alpha ** 2, rel=1e-10)
        assert m.within_trace == pytest.approx(np.sum(A ** 2), rel=1e-10)


def test_imbalanced_classes_use_the_mean_of_class_means():
    """mu_G = Ave_c mu_c, not Ave_i h_i; M 1 = 0 and M has rank C-1 (so does the sample-centred one: M n = 0)."""
    rng = np.random.default_rng(10)
    C, p = 4, 9
    counts = np.array([3, 10, 25, 7])
    y = rng.permutation(np.repeat(np.arange(C), counts))
    h = rng.standard_normal((C, p))[y] * 3 + rng.standard_normal((len(y), p))
    mu = np.stack([h[y == c].mean(0) for c in range(C)])
    for m in (measure.moments(h, y, C), feed(measure.CollapseAccumulator(C, p), h, y, [4, 30, 11])):
        np.testing.assert_allclose(m.global_mean, mu.mean(0), rtol=1e-12, atol=1e-14)
        assert np.abs(m.global_mean.numpy() - h.mean(0)).max() > 1e-2
        Mc = (m.class_means - m.global_mean).T.numpy()
        assert np.abs(Mc.sum(1)).max() < 1e-12
        assert np.linalg.matrix_rank(Mc) == C - 1
        assert m.between_trace == pytest.approx(np.sum(Mc ** 2) / C, rel=1e-12)
        np.testing.assert_allclose(m.counts, counts)
    Ms = (mu - h.mean(0)).T
    assert np.abs(Ms @ counts).max() < 1e-10 and np.linalg.matrix_rank(Ms) == C - 1


def test_imbalanced_collapse_onto_an_etf_is_exact_collapse():
    """Means exactly on a simplex ETF, classes imbalanced (3:10:25:7:1), no noise: with mu_G = Ave_c mu_c every
    NC2/NC3 measure is 0; centring at Ave_i h_i instead would report equinorm 0.23 (checked here)."""
    rng = np.random.default_rng(13)
    C, p = 5, 8
    M = simplex_etf(p, C, 2.0, rng)
    mu_G = rng.standard_normal(p)
    y = rng.permutation(np.repeat(np.arange(C), [3, 10, 25, 7, 1]))
    h = mu_G + M[:, y].T
    out = measure.collapse_metrics(h, y, M.T, -M.T @ mu_G)
    for key in ("equinorm_means", "equiangular_means", "maxangle_means", "self_duality"):
        assert abs(out[key]) < 1e-10, key
    sample_centred = M - (M[:, y].mean(1))[:, None]
    norms = np.linalg.norm(sample_centred, axis=0)
    assert norms.std() / norms.mean() == pytest.approx(0.2323, abs=1e-3)
