"""Follow-up metrics on planted geometries (closed forms, float64) and against straight numpy transcriptions."""
import math

import numpy as np
import pytest
import torch
from test_measure import orthonormal, planted_features, simplex_etf

from nc import measure
from nc.measure import followups

SIZES = [(2, 3, 6), (10, 32, 8), (100, 128, 4)]  # (C, p, n per class), p >= C-1


def feed(acc, h, y, sizes):
    """Feed (h, y) in consecutive batches of the given sizes (cycled) and finalize."""
    i, k = 0, 0
    while i < len(y):
        s = sizes[k % len(sizes)]
        acc.update(torch.tensor(h[i:i + s]), torch.tensor(y[i:i + s]))
        i, k = i + s, k + 1
    return acc.finalize()


def etf_distance_closed_form(d):
    """|| DPD/||DPD||_F - P/||P||_F ||_F for D = diag(d): the Gram of an ETF whose vector c is scaled by d_c.
    <DPD, P> = Sum_ij d_i d_j P_ij^2 and ||DPD||_F^2 = Sum_ij d_i^2 d_j^2 P_ij^2, P_ii = 1 - 1/C, P_ij = -1/C."""
    C = len(d)
    s1, s2, s4 = d.sum(), (d ** 2).sum(), (d ** 4).sum()
    inner = (1 - 1 / C) ** 2 * s2 + (s1 ** 2 - s2) / C ** 2
    norm2 = (1 - 1 / C) ** 2 * s4 + (s2 ** 2 - s4) / C ** 2
    return math.sqrt(max(2 - 2 * inner / (math.sqrt(norm2) * math.sqrt(C - 1)), 0.0))


@pytest.mark.parametrize("C,p,n", SIZES)
def test_planted_etf_closed_forms(C, p, n):
    """ETF with column norm alpha, Sigma_W = A A^T in every class, W = k M^T:
    CDNV = ||A||_F^2 (C-1)/(2 alpha^2 C), trace ratio = ||A||_F^2/(||A||_F^2 + alpha^2), ETF errors and alignment 0.
    Test set: class means mu_G + q + (1+t) m_c, within-class covariance B B^T, so with U a basis of the mean span
    nc1_test = (C-1)/(C alpha^2) (||U^T q||^2 + ||U^T B||_F^2) + t^2 (C-1)/C,
    cdnv_test = ||B||_F^2 (C-1)/(2 (1+t)^2 alpha^2 C), and about the test means (centred (1+t) M, q cancels)
    nc1_test_means = (C-1)/(C (1+t)^2 alpha^2) ||U^T B||_F^2; trace_quotient = ||A||_F^2 / alpha^2."""
    rng = np.random.default_rng(C)
    alpha, t, k = 2.5, 0.3, 0.7
    M = simplex_etf(p, C, alpha, rng)
    mu_G = 3 * rng.standard_normal(p)
    A = 0.2 * rng.standard_normal((p, min(n - 1, 3)))
    h, y = planted_features(M, mu_G, A, n, rng)
    q = 0.1 * rng.standard_normal(p)
    B = 0.15 * rng.standard_normal((p, 2))
    test_h, test_y = planted_features((1 + t) * M, mu_G + q, B, 3, rng)
    U = np.linalg.svd(M, full_matrices=False)[0][:, : C - 1]
    a2, b2 = np.sum(A ** 2), np.sum(B ** 2)
    expected = {
        "cdnv_train": a2 * (C - 1) / (2 * alpha ** 2 * C),
        "cdnv_test": b2 * (C - 1) / (2 * (1 + t) ** 2 * alpha ** 2 * C),
        "nc1_test": (C - 1) / (C * alpha ** 2) * (np.sum((U.T @ q) ** 2) + np.sum((U.T @ B) ** 2))
        + t ** 2 * (C - 1) / C,
        "nc1_test_means": (C - 1) / (C * (1 + t) ** 2 * alpha ** 2) * np.sum((U.T @ B) ** 2),
        "trace_ratio": a2 / (a2 + alpha ** 2),
        "trace_quotient": a2 / alpha ** 2,
    }
    streamed = feed(measure.CollapseAccumulator(C, p), h, y, [7, 50, 1])
    for m in (measure.moments(h, y, C), streamed):
        test = feed(followups.TestAccumulator(m, C, p), test_h, test_y, [5, 1, 40])
        out = followups.followup_metrics(m, k * M.T, test)
        assert tuple(out) == followups.FOLLOWUP_METRICS
        for key, value in expected.items():
            assert out[key] == pytest.approx(value, rel=1e-10), key
        for key in ("etf_error_means", "etf_error_classifiers", "classifier_mean_alignment"):
            assert abs(out[key]) < 1e-10, key
        np.testing.assert_allclose(test.counts, np.full(C, 3))
        np.testing.assert_allclose(test.class_means, (mu_G + q + (1 + t) * M.T), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(test.class_var, np.full(C, b2), rtol=1e-10)


@pytest.mark.parametrize("C", [2, 10, 100])
def test_orthonormal_vectors(C):
    """C orthonormal vectors: Gram I, distance sqrt(2 - 2 sqrt((C-1)/C)) from the ETF. As class means they
    centre to an exact ETF (M^T M = P), so etf_error_means is 0 while the same vectors as classifier rows are not."""
    rng = np.random.default_rng(C + 1)
    p = C + 3
    Q = orthonormal(p, C, rng).T  # C x p, orthonormal rows
    gap = math.sqrt(2 - 2 * math.sqrt((C - 1) / C))
    assert followups.etf_gram_error(Q) == pytest.approx(gap, rel=1e-12)
    y = np.repeat(np.arange(C), 2)
    m = measure.moments(Q[y], y, C)
    out = followups.followup_metrics(m, Q)
    assert abs(out["etf_error_means"]) < 1e-12
    assert out["etf_error_classifiers"] == pytest.approx(gap, rel=1e-12)
    assert out["cdnv_train"] == 0.0 and out["trace_ratio"] == 0.0
    assert math.isnan(out["cdnv_test"]) and math.isnan(out["nc1_test"])


@pytest.mark.parametrize("C", [2, 10, 100])
def test_rescaled_and_perturbed_classifiers(C):
    """W = D M^T (row 0 scaled by s): Gram D P D (closed form above), alignment sqrt(2 - 2 Sum d/sqrt(C Sum d^2));
    W = -M^T: alignment 2; W = M^T + beta Q with Q's rows orthonormal and orthogonal to the mean span:
    W M unchanged (alignment 0), W W^T = a P + beta^2 I with a = alpha^2 C/(C-1)."""
    rng = np.random.default_rng(C + 2)
    p, alpha, s, beta = 2 * C + 1, 1.7, 2.5, 0.9
    M = simplex_etf(p, C, alpha, rng)
    d = np.ones(C)
    d[0] = s
    W = (M * d).T
    assert followups.etf_gram_error(W) == pytest.approx(etf_distance_closed_form(d), rel=1e-10)
    align = math.sqrt(2 - 2 * d.sum() / math.sqrt(C * (d ** 2).sum()))
    assert followups.classifier_mean_alignment(W, M) == pytest.approx(align, rel=1e-10)
    assert followups.classifier_mean_alignment(-M.T, M) == pytest.approx(2.0, rel=1e-12)
    U = np.linalg.svd(M)[0]
    Q = U[:, C - 1: 2 * C - 1].T  # C x p, orthonormal rows, orthogonal to every column of M
    Wp = M.T + beta * Q
    assert abs(followups.classifier_mean_alignment(Wp, M)) < 1e-10
    a, b = alpha ** 2 * C / (C - 1), beta ** 2
    gap = math.sqrt(2 - 2 * (a + b) * (C - 1) / (math.sqrt((a + b) ** 2 * (C - 1) + b ** 2) * math.sqrt(C - 1)))
    assert followups.etf_gram_error(Wp) == pytest.approx(gap, rel=1e-10)


def numpy_followups(h, y, test_h, test_y, W, C):
    """Straight transcription with full p x p matrices and loops over pairs, float64, mu_G = Ave_c mu_c."""
    mu = np.stack([h[y == c].mean(0) for c in range(C)])
    M = (mu - mu.mean(0)).T
    Sw = sum((h[y == c] - mu[c]).T @ (h[y == c] - mu[c]) for c in range(C)) / len(h)
    evals, evecs = np.linalg.eigh(M @ M.T / C)
    top = evecs[:, -(C - 1):]
    Sb_pinv = top @ np.diag(1 / evals[-(C - 1):]) @ top.T
    dt = test_h - mu[test_y]
    Sw_test = dt.T @ dt / len(test_h)
    mu_te = np.stack([test_h[test_y == c].mean(0) for c in range(C)])
    M_te = (mu_te - mu_te.mean(0)).T
    d_own = test_h - mu_te[test_y]
    ev_te, vec_te = np.linalg.eigh(M_te @ M_te.T / C)
    Sb_te_pinv = vec_te[:, -(C - 1):] @ np.diag(1 / ev_te[-(C - 1):]) @ vec_te[:, -(C - 1):].T
    Sb = M @ M.T / C

    def cdnv_ref(X, labels):
        means = np.stack([X[labels == c].mean(0) for c in range(C)])
        var = [np.mean(np.sum((X[labels == c] - means[c]) ** 2, 1)) for c in range(C)]
        return np.mean([(var[a] + var[b]) / (2 * np.sum((means[a] - means[b]) ** 2))
                        for a in range(C) for b in range(a + 1, C)])

    P = np.eye(C) - 1 / C
    dist = lambda G: np.linalg.norm(G / np.linalg.norm(G) - P / np.linalg.norm(P))
    return {
        "cdnv_train": cdnv_ref(h, y), "cdnv_test": cdnv_ref(test_h, test_y),
        "nc1_test": np.trace(Sw_test @ Sb_pinv) / C,
        "nc1_test_means": np.trace(d_own.T @ d_own / len(test_h) @ Sb_te_pinv) / C,
        "trace_ratio": np.trace(Sw) / (np.trace(Sw) + np.trace(Sb)),
        "ncc_test_means_acc": np.mean(np.argmin(((test_h[:, None] - mu_te[None]) ** 2).sum(-1), 1) == test_y),
        "trace_quotient": np.trace(Sw) / np.trace(Sb),
        "vci": 1 - np.trace(np.linalg.pinv(Sw + Sb, hermitian=True) @ Sb) / (C - 1),
        "etf_error_means": dist(M.T @ M), "etf_error_classifiers": dist(W @ W.T),
        "classifier_mean_alignment": dist(W @ M),
    }


@pytest.mark.parametrize("C,p,n", SIZES)
def test_streaming_equals_numpy_reference(C, p, n):
    """Generic (not collapsed) imbalanced features, uneven batches, some batches lacking classes."""
    rng = np.random.default_rng(C + 3)
    counts = n + rng.integers(0, 4, C)
    y = rng.permutation(np.repeat(np.arange(C), counts))
    centres = 2 * rng.standard_normal((C, p))
    h = 5 + centres[y] + rng.standard_normal((len(y), p))
    test_y = np.sort(rng.permutation(np.repeat(np.arange(C), 3)))  # sorted: early batches hold few classes
    test_h = 5 + 1.1 * centres[test_y] + rng.standard_normal((len(test_y), p))
    W = rng.standard_normal((C, p))
    ref = numpy_followups(h, y, test_h, test_y, W, C)
    m = feed(measure.CollapseAccumulator(C, p), h, y, [3, 17, 1])
    test = feed(followups.TestAccumulator(m, C, p), test_h, test_y, [2, 9, 1, 30])
    hits = sum(int(followups.ncc_hits(test_h[i:i + 7], test_y[i:i + 7], test.class_means))
               for i in range(0, len(test_y), 7))
    got = followups.followup_metrics(m, W, test, hits / len(test_y))
    for key in followups.FOLLOWUP_METRICS:
        assert got[key] == pytest.approx(ref[key], rel=1e-12), key


def test_cdnv_without_cancellation_at_a_huge_offset():
    """Offset 1e6, within-class spread 1e-4: E||h||^2 - ||mu||^2 is useless here (shown), the accumulators are
    exact to 1e-10 relative (train and test CDNV against numpy two-pass values)."""
    rng = np.random.default_rng(11)
    C, p, n = 5, 8, 30
    y = rng.permutation(np.repeat(np.arange(C), n))
    centres = 10 * rng.standard_normal((C, p))
    h = 1e6 + centres[y] + 1e-4 * rng.standard_normal((len(y), p))
    test_y = rng.permutation(np.repeat(np.arange(C), 10))
    test_h = 1e6 + centres[test_y] + 2e-4 * rng.standard_normal((len(test_y), p))
    ref = numpy_followups(h, y, test_h, test_y, np.eye(C, p), C)
    naive_var0 = np.mean(np.sum(h[y == 0] ** 2, 1)) - np.sum(h[y == 0].mean(0) ** 2)
    true_var0 = np.mean(np.sum((h[y == 0] - h[y == 0].mean(0)) ** 2, 1))
    assert abs(naive_var0 / true_var0 - 1) > 1e-3  # the data really defeats the one-pass formula
    m = feed(measure.CollapseAccumulator(C, p), h, y, [1, 13, 40])
    test = feed(followups.TestAccumulator(m, C, p), test_h, test_y, [4, 1, 11])
    assert followups.cdnv(m.class_means, m.class_var) == pytest.approx(ref["cdnv_train"], rel=1e-10)
    assert test.cdnv_test == pytest.approx(ref["cdnv_test"], rel=1e-10)
    assert test.nc1_test == pytest.approx(ref["nc1_test"], rel=1e-10)


def test_missing_test_class_and_names():
    """A class absent from the test set: cdnv_test is NaN, nc1_test averages the samples present."""
    rng = np.random.default_rng(12)
    C, p = 4, 6
    y = np.repeat(np.arange(C), 5)
    h = rng.standard_normal((C, p))[y] * 3 + rng.standard_normal((len(y), p))
    m = measure.moments(h, y, C)
    test_y = np.array([0, 1, 1, 2, 0])
    test_h = rng.standard_normal((5, p))
    test = feed(followups.TestAccumulator(m, C, p), test_h, test_y, [2])
    assert math.isnan(test.cdnv_test) and test.counts[3] == 0 and math.isnan(test.class_var[3])
    mu = np.stack([h[y == c].mean(0) for c in range(C)])
    d = test_h - mu[test_y]
    Mp = np.linalg.pinv((mu - mu.mean(0)).T, rcond=1e-10)
    assert test.nc1_test == pytest.approx(np.mean(np.sum((d @ Mp.T) ** 2, 1)), rel=1e-12)
    assert set(followups.DEFINITIONS) == set(followups.FOLLOWUP_METRICS)
    with pytest.raises(ValueError, match="shape"):
        followups.TestAccumulator(m, C + 1, p)


@pytest.mark.parametrize("C,p,n", [(2, 3, 6), (4, 6, 10), (10, 12, 14)])
def test_vci_closed_form_and_invariance(C, p, n):
    """Sigma_W = s^2 I on a simplex ETF of column norm alpha: Sigma_B has C-1 eigenvalues beta = alpha^2/(C-1) on
    the mean span, Sigma_T = s^2 I + Sigma_B, so Tr(Sigma_T^+ Sigma_B) = (C-1) beta/(s^2 + beta) and
    VCI = s^2/(s^2 + beta). The same features through a random invertible map G (h -> G h) give the same VCI,
    while the trace quotient changes. Sigma_W confined to the complement of the mean span gives VCI = 0."""
    rng = np.random.default_rng(7 * C + p)
    alpha, s = 2.0, 0.4
    M = simplex_etf(p, C, alpha, rng)
    mu_G = rng.standard_normal(p)
    h, y = planted_features(M, mu_G, s * np.eye(p), n, rng)
    beta = alpha ** 2 / (C - 1)
    m = measure.moments(h, y, C)
    assert followups.vci(m) == pytest.approx(s ** 2 / (s ** 2 + beta), rel=1e-10)
    G = rng.standard_normal((p, p)) + 3 * np.eye(p)
    mapped = measure.moments(h @ G.T, y, C)
    assert followups.vci(mapped) == pytest.approx(followups.vci(m), rel=1e-9)
    assert followups.trace_quotient(mapped) != pytest.approx(followups.trace_quotient(m), rel=1e-3)
    U = np.linalg.svd(M)[0]
    if p - (C - 1) >= 1:  # within-class spread only off the mean span: Sigma_T^+ Sigma_B is the span's projector
        A = U[:, C - 1:C - 1 + min(n - 1, p - C + 1)]
        off = measure.moments(*planted_features(M, mu_G, 0.5 * A, n, rng), C)
        assert abs(followups.vci(off)) < 1e-10


def test_ncc_about_the_test_means_differs_from_the_train_means():
    """Train means -1, +1 on a line; test class 0 at 0.5, 0.7 (its mean 0.6), class 1 at 2, 3 (mean 2.5): the train
    means label 0.5 and 0.7 as class 1 (2 of 4 right), the test means all 4; a tie goes to the lower class."""
    train_means = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    h, y = torch.tensor([[0.5], [0.7], [2.0], [3.0]]), torch.tensor([0, 0, 1, 1])
    test_means = torch.stack([h[y == c].double().mean(0) for c in range(2)])
    assert int(followups.ncc_hits(h, y, train_means)) == 2
    assert int(followups.ncc_hits(h, y, test_means)) == 4
    assert int(followups.ncc_hits(torch.zeros(2, 1), torch.tensor([0, 1]), train_means)) == 1  # tie -> class 0
    m = measure.moments(np.array([[-1.0], [1.0], [-1.2], [0.8]]), np.array([0, 1, 0, 1]), 2)
    assert math.isnan(followups.followup_metrics(m, np.eye(2, 1))["ncc_test_means_acc"])
    assert followups.followup_metrics(m, np.eye(2, 1), None, 0.75)["ncc_test_means_acc"] == 0.75
