"""Theorems 1-3 (nc.measure.theory) against closed forms and independent solvers: least squares, SLSQP, exact error
rates."""
import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from nc.measure import theory


def test_simplex_etf_geometry():
    for C, p in [(2, 1), (3, 3), (10, 10), (10, 37)]:
        M = theory.simplex_etf(C, p, scale=2.5, rng=C + p)
        assert M.shape == (p, C)
        gram = M.T @ M
        want = 2.5**2 * (C / (C - 1) * np.eye(C) - np.ones((C, C)) / (C - 1))  # norms 2.5, cosines -1/(C-1)
        np.testing.assert_allclose(gram, want, atol=1e-12)
        np.testing.assert_allclose(M.sum(axis=1), 0, atol=1e-12)
    poses = [theory.simplex_etf(5, 8, rng=s) for s in (0, 1)]
    assert np.abs(poses[0] - poses[1]).max() > 0.1  # the pose is random, the Gram matrix is not


def test_webb_lowe_is_least_squares_on_generic_data():
    rng = np.random.default_rng(0)
    C, p = 6, 9
    means = rng.standard_normal((p, C))
    h, y = theory.features_around(means, 40, 0.7, 5 * rng.standard_normal(p), rng)
    W, b = theory.webb_lowe_classifier(h, y)
    W_ls, b_ls = theory.least_squares_classifier(h, y)
    np.testing.assert_allclose(W, W_ls, atol=1e-8)
    np.testing.assert_allclose(b, b_ls, atol=1e-8)
    # and eq. 6 literally, with an ordinary inverse (Sigma_T is full rank here)
    mu_G = h.mean(axis=0)
    M = np.stack([h[y == c].mean(axis=0) for c in range(C)], axis=1) - mu_G[:, None]
    sigma_T = (h - mu_G).T @ (h - mu_G) / len(y)
    np.testing.assert_allclose(W, M.T @ np.linalg.inv(sigma_T) / C, atol=1e-10)
    with pytest.raises(ValueError, match="balanced"):
        theory.webb_lowe_classifier(h[:-1], y[:-1])


@pytest.mark.parametrize("C,p,n,scale,far", [(2, 3, 5, 1.0, 3), (5, 12, 20, 2.0, 3), (10, 20, 1000, 0.3, 10),
                                               (15, 30, 2000, 0.007, 40), (29, 58, 1, 0.0065, 40)])
def test_webb_lowe_on_collapsed_etf_is_self_dual_and_ncc(C, p, n, scale, far):
    # far: the global mean's entries are ~far x the class-mean norm, so rounding h = mu_G + m_c is far above eps
    rng = np.random.default_rng(C)
    M = theory.simplex_etf(C, p, scale, rng)
    mu_G = far * scale * rng.standard_normal(p)
    h, y = theory.features_around(M, n, 0.0, mu_G)
    W, b = theory.webb_lowe_classifier(h, y)
    alpha = (C - 1) / (C * scale**2)  # M^+ = M^T / s^2 with s^2 = C scale^2 / (C-1)  (eq. 7a)
    np.testing.assert_allclose(W * scale, alpha * scale * M.T, atol=1e-10)
    np.testing.assert_allclose(b, 1 / C - alpha * M.T @ mu_G, atol=1e-9)  # eq. 7b
    test_h, _ = theory.features_around(M, 100, scale, mu_G, rng)
    out = theory.nc3_nc4(h, y, W, b, test_h)
    assert out["self_duality"] < 1e-10
    assert out["ncc_disagreements"] == 0


def test_webb_lowe_without_nc2_is_not_self_dual():
    rng = np.random.default_rng(1)
    means = rng.standard_normal((8, 5))
    h, y = theory.features_around(means, 4, 0.0)
    test_h, _ = theory.features_around(means, 200, 1.0, None, rng)
    out = theory.nc3_nc4(h, y, *theory.webb_lowe_classifier(h, y), test_h)
    assert out["self_duality"] > 1e-2 and out["ncc_disagreements"] > 0


def test_margins_match_a_direct_loop():
    rng = np.random.default_rng(2)
    C, p = 4, 3
    h, y = rng.standard_normal((7, p)), rng.integers(0, C, 7)
    W = rng.standard_normal((C, p))
    got = theory.margins(W, h, y)
    want = [[(W[y[i]] - W[c]) @ h[i] for c in range(C) if c != y[i]] for i in range(7)]
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("C,p,orthogonal_offset", [(3, 3, False), (6, 10, False), (6, 10, True)])
def test_max_margin_on_collapsed_etf_is_proportional_to_means(C, p, orthogonal_offset):
    rng = np.random.default_rng(C + p)
    scale = 1.7
    M = theory.simplex_etf(C, p, scale, rng)
    offset = None
    if orthogonal_offset:  # a global mean outside the span of the means leaves eq. 9's solution unchanged
        offset = 2 * (np.eye(p) - M @ np.linalg.pinv(M)) @ rng.standard_normal(p)
    h, y = theory.features_around(M, 3, 0.0, offset)
    W = theory.max_margin_classifier(h, y)
    alpha = (C - 1) / (C * scale**2)
    assert np.linalg.norm(W - alpha * M.T) / np.linalg.norm(alpha * M.T) < 1e-6
    np.testing.assert_allclose(theory.margins(W, h, y), 1.0, atol=1e-7)  # every constraint binds (eq. 12)
    test_h, _ = theory.features_around(M, 200, scale, offset, rng)
    out = theory.nc3_nc4(h, y, W, np.zeros(C), test_h)
    assert out["self_duality"] < 1e-6
    assert out["ncc_disagreements"] == 0


def test_max_margin_matches_slsqp_on_generic_separable_data():
    rng = np.random.default_rng(3)
    C, p = 3, 4
    h, y = theory.features_around(theory.simplex_etf(C, p, 2.0, rng), 3, 0.3, None, rng)
    W = theory.max_margin_classifier(h, y)
    A = theory.margin_matrix(h, y)
    ref = optimize.minimize(lambda w: w @ w, np.zeros(C * p), jac=lambda w: 2 * w, method="SLSQP",
                            constraints=[{"type": "ineq", "fun": lambda w: A @ w - 1, "jac": lambda w: A}],
                            options={"ftol": 1e-15, "maxiter": 1000})
    assert ref.success
    np.testing.assert_allclose(W.ravel(), ref.x, atol=1e-6)
    m = theory.margins(W, h, y)
    assert m.min() > 1 - 1e-8 and abs(m.min() - 1) < 1e-8  # feasible, and the binding margins are exactly 1
    assert theory.nc3_nc4(h, y, W, np.zeros(C), h)["self_duality"] > 1e-4  # not collapsed: not self-dual


def test_max_margin_without_collapse_or_etf_is_not_self_dual():
    rng = np.random.default_rng(4)
    M = theory.simplex_etf(5, 10, 1.0, rng)
    h, y = theory.features_around(M, 10, 0.1, None, rng)
    assert theory.nc3_nc4(h, y, theory.max_margin_classifier(h, y), np.zeros(5), h)["self_duality"] > 1e-3
    means = rng.standard_normal((10, 5))
    h, y = theory.features_around(means - means.mean(axis=1, keepdims=True), 2, 0.0)
    assert theory.nc3_nc4(h, y, theory.max_margin_classifier(h, y), np.zeros(5), h)["self_duality"] > 1e-2


def test_max_margin_rejects_inseparable_features():
    h = np.array([[1.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="separable"):
        theory.max_margin_classifier(h, np.array([0, 1]))


def test_error_exponent_of_two_antipodal_points_is_exact():
    # C = 2: codewords +-scale v, so P(error) = Q(d / (2 sigma)) = Q(scale / sigma) exactly; extra dims don't matter.
    for scale, p, sigma in [(1.0, 2, 0.5), (2.0, 5, 0.7)]:
        M = theory.simplex_etf(2, p, scale, rng=0)
        exact = stats.norm.sf(scale / sigma)
        p_hat, errors, n = theory.error_probability(M, sigma, 200_000, rng=1)
        assert abs(p_hat - exact) < 4 * math.sqrt(exact * (1 - exact) / n)
        got = theory.error_exponent(M, sigma, 200_000, rng=1)
        assert abs(got / (-sigma**2 * math.log(exact)) - 1) < 0.02
        assert theory.union_bound_exponent(M, sigma) == pytest.approx(-sigma**2 * math.log(exact), rel=1e-12)
    # two codewords of unequal norms: nearest-codeword decoding still errs with probability Q(d / (2 sigma))
    M = np.array([[0.9, -0.2], [0.1, 0.4], [0.3, -0.5]])
    sigma = 0.35
    exact = stats.norm.sf(np.linalg.norm(M[:, 0] - M[:, 1]) / (2 * sigma))
    p_hat, _, n = theory.error_probability(M, sigma, 200_000, rng=2)
    assert abs(p_hat - exact) < 4 * math.sqrt(exact * (1 - exact) / n)
    assert theory.union_bound_exponent(M, sigma) == pytest.approx(-sigma**2 * math.log(exact), rel=1e-12)


def test_error_probability_of_etf_and_orthogonal_codebooks_is_exact():
    # Orthogonal codewords a e_c: P(correct) = int phi(x) Phi(x + a/sigma)^(C-1) dx. The unit ETF is the orthogonal
    # codebook with a = sqrt(C/(C-1)) shifted by a constant vector, which nearest-codeword decoding ignores.
    C, sigma = 10, 0.3
    books = [(theory.simplex_etf(C, C, rng=5), math.sqrt(C / (C - 1))), (theory.orthogonal_codebook(C, 12, rng=6), 1.0)]
    for M, a in books:
        exact = 1 - integrate.quad(lambda x, a=a: stats.norm.pdf(x) * stats.norm.cdf(x + a / sigma) ** (C - 1),
                                   -np.inf, np.inf, epsabs=1e-13)[0]
        p_hat, _, n = theory.error_probability(M, sigma, 200_000, rng=7)
        assert abs(p_hat - exact) < 4 * math.sqrt(exact / n)
        assert abs(-sigma**2 * math.log(p_hat) / (-sigma**2 * math.log(exact)) - 1) < 0.02
        assert theory.union_bound_exponent(M, sigma) <= -sigma**2 * math.log(exact)  # union bound: P <= bound


def test_error_probability_over_sigma_array_reuses_the_noise():
    M = theory.orthogonal_codebook(4, 4, rng=0)
    sigmas = np.array([0.3, 0.5, 0.8])
    together = theory.error_probability(M, sigmas, 10_000, rng=3)[1]
    assert together.shape == (3,) and (np.diff(together) > 0).all()
    for s, e in zip(sigmas, together):
        assert theory.error_probability(M, s, 10_000, rng=3)[1] == e  # same seed, same draws, same count


def test_etf_attains_the_optimal_exponent():
    for C in (2, 3, 5, 10, 100):
        etf = theory.simplex_etf(C, C, rng=C)
        assert theory.min_distance_exponent(etf) == pytest.approx(C / (4 * (C - 1)), rel=1e-12)
        assert theory.etf_exponent_limit(C) == pytest.approx(C / (4 * (C - 1)), rel=1e-15)
        np.testing.assert_allclose(np.linalg.norm(etf, axis=0), 1.0)  # Theorem 3's constraint, with equality
        if C > 2:
            assert theory.min_distance_exponent(theory.orthogonal_codebook(C, C, rng=C)) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    for per_column in (True, False):
        books = [theory.random_codebook(10, 10, rng=rng, per_column=per_column) for _ in range(200)]
        energy = [np.mean(np.sum(b**2, axis=0)) for b in books]
        np.testing.assert_allclose(energy, 1.0)
        assert max(theory.min_distance_exponent(b) for b in books) < theory.etf_exponent_limit(10)
