"""The MSE decomposition L = L_NC1 + L_NC2/3 + L_perp against the loss evaluated on explicit features (numpy and
torch's F.mse_loss), the least-squares classifier against numpy's lstsq, and the authors' notebook formulas."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nc.measure import central_path as cp


def features(counts, p, rng, offset=0.0, scale=1.0):
    """Random features with class structure: (h (N, p), y (N,))."""
    C = len(counts)
    centres = 2.0 * rng.standard_normal((C, p)) + offset
    y = np.repeat(np.arange(C), counts)
    h = centres[y] + scale * rng.standard_normal((len(y), p)) @ rng.standard_normal((p, p)) / np.sqrt(p)
    order = rng.permutation(len(y))
    return h[order], y[order]


def train_moments(h, y, C):
    """(class means (C, p), counts (C,), Sigma_W sample-weighted) computed directly, float64."""
    counts = np.bincount(y, minlength=C)
    mu = np.stack([h[y == c].mean(axis=0) for c in range(C)])
    dev = h - mu[y]
    return mu, counts, dev.T @ dev / len(y)


def loss_on_features(h, y, W, b, lam):
    """L(W~) = 1/2 Ave_i ||W h_i + b - e_{y_i}||^2 + lam/2 (||W||^2 + ||b||^2), directly on the features."""
    E = np.eye(W.shape[0])[y]
    return 0.5 * ((h @ W.T + b - E) ** 2).sum(axis=1).mean() + 0.5 * lam * ((W ** 2).sum() + (b ** 2).sum())


def lstsq_reference(h, y, C, lam):
    """Ridge least squares by numpy's lstsq on the stacked system [X/sqrt(N); sqrt(lam) I] w = [E/sqrt(N); 0]."""
    N, p = h.shape
    X = np.hstack([h, np.ones((N, 1))]) / np.sqrt(N)
    A = np.vstack([X, np.sqrt(lam) * np.eye(p + 1)])
    T = np.vstack([np.eye(C)[y] / np.sqrt(N), np.zeros((p + 1, C))])
    sol = np.linalg.lstsq(A, T, rcond=None)[0].T
    return sol[:, :p], sol[:, p]


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("lam", [0.0, 1e-3, 0.5, 3.0])
def test_identity_balanced_on_explicit_features(lam):
    rng = np.random.default_rng(0)
    C, p = 4, 12
    h, y = features([50] * C, p, rng, offset=1.5)
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    mu, counts, sw = train_moments(h, y, C)
    t = cp.central_path_decomposition(mu, counts, sw, W, b, lam)
    L = loss_on_features(h, y, W, b, lam)
    assert rel(t["nc1"] + t["nc23"] + t["perp"], L) < 1e-8
    assert rel(t["loss"], L) < 1e-10
    assert min(t["nc1"], t["nc23"], t["perp"]) > 0


@pytest.mark.parametrize("lam", [0.0, 0.2])
def test_least_squares_matches_lstsq_and_is_the_minimiser(lam):
    rng = np.random.default_rng(1)
    C, p = 5, 8
    counts = [30, 30, 30, 7, 7]
    h, y = features(counts, p, rng, offset=3.0)
    mu, n, sw = train_moments(h, y, C)
    W_ls, b_ls = cp.ridge_least_squares(mu, n, sw, lam)
    W_ref, b_ref = lstsq_reference(h, y, C, lam)
    np.testing.assert_allclose(W_ls.numpy(), W_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b_ls.numpy(), b_ref, rtol=0, atol=1e-10)
    t = cp.central_path_decomposition(mu, n, sw, W_ls, b_ls, lam)  # on the central path: no perp part
    assert abs(t["perp"]) < 1e-14
    assert rel(t["nc1"] + t["nc23"], loss_on_features(h, y, W_ref, b_ref, lam)) < 1e-10


def test_paper_nc23_form_balanced_and_notebook_formulas():
    """Balanced: nc23 = (1/(2C))||W_LS Mbar + b 1^T - I||_F^2, and every term equals the notebook's code (its
    class-weighted mu_G, St = Sw + Sb and explicit inverse, transcribed into numpy as an independent reference)."""
    rng = np.random.default_rng(2)
    C, p, lam = 3, 6, 0.3
    h, y = features([40] * C, p, rng, offset=2.0)
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    mu, counts, Sw = train_moments(h, y, C)
    t = cp.central_path_decomposition(mu, counts, Sw, W, b, lam)
    M = mu.T                                     # p x C, uncentred, as the notebook's M
    muG = M.mean(axis=1, keepdims=True)
    Sb = (M - muG) @ (M - muG).T / C
    St = Sw + Sb
    St_inv = np.linalg.inv(St + (lam / (lam + 1)) * (muG @ muG.T) + lam * np.eye(p))
    w_LS = 1 / C * (M.T - 1 / (1 + lam) * muG.T) @ St_inv
    b_LS = (1 / C * np.ones(C) - w_LS @ muG[:, 0]) / (1 + lam)
    LNC1 = 0.5 * (np.trace(w_LS @ (Sw + lam * np.eye(p)) @ w_LS.T) + lam * np.sum(b_LS ** 2))
    LNC23 = 0.5 / C * np.sum((w_LS @ M + b_LS[:, None] - np.eye(C)) ** 2)
    A = np.block([[St + muG @ muG.T + lam * np.eye(p), muG], [muG.T, np.ones((1, 1)) + lam]])
    D = np.hstack([W, b[:, None]]) - np.hstack([w_LS, b_LS[:, None]])
    Lperp = 0.5 * np.trace(D @ A @ D.T)
    W_ls, b_ls = cp.ridge_least_squares(mu, counts, Sw, lam)
    np.testing.assert_allclose(W_ls.numpy(), w_LS, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b_ls.numpy(), b_LS, rtol=0, atol=1e-10)
    assert rel(t["nc1"], LNC1) < 1e-10 and rel(t["nc23"], LNC23) < 1e-10 and rel(t["perp"], Lperp) < 1e-10


@pytest.mark.parametrize("wd", [0.0, 5e-4, 0.1])
@pytest.mark.parametrize("counts", [[25] * 4, [40, 40, 5, 5]])
def test_public_terms_sum_to_torch_mse_plus_weight_decay(wd, counts):
    rng = np.random.default_rng(3)
    C, p = len(counts), 10
    h, y = features(counts, p, rng, offset=1.0)
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    mu, n, sw = train_moments(h, y, C)
    Wt, bt = torch.from_numpy(W), torch.from_numpy(b)
    logits = torch.from_numpy(h) @ Wt.T + bt
    J = (F.mse_loss(logits, F.one_hot(torch.from_numpy(y), C).double())
         + wd / 2 * (Wt.pow(2).sum() + bt.pow(2).sum())).item()
    out = cp.central_path_terms(torch.from_numpy(mu), n, torch.from_numpy(sw), Wt, bt, wd)
    assert set(out) == {*cp.TERMS, "mse_classifier_loss"}
    assert rel(sum(out[k] for k in cp.TERMS), J) < 1e-8
    assert rel(out["mse_classifier_loss"], J) < 1e-10
    paper = cp.central_path_decomposition(mu, n, sw, W, b, C * wd / 2)
    assert rel(out["mse_perp_term"], 2 / C * paper["perp"]) < 1e-12


def test_imbalanced_needs_the_weighted_nc23():
    """With unequal counts the weighted L_NC2/3 closes the identity and the paper's 1/(2C) form does not."""
    rng = np.random.default_rng(4)
    C, p, lam = 4, 7, 0.1
    h, y = features([60, 60, 6, 6], p, rng)
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    mu, counts, sw = train_moments(h, y, C)
    t = cp.central_path_decomposition(mu, counts, sw, W, b, lam)
    L = loss_on_features(h, y, W, b, lam)
    assert rel(t["nc1"] + t["nc23"] + t["perp"], L) < 1e-8
    W_ls, b_ls = (x.numpy() for x in cp.ridge_least_squares(mu, counts, sw, lam))
    unweighted = 0.5 / C * np.sum((W_ls @ mu.T + b_ls[:, None] - np.eye(C)) ** 2)
    assert rel(t["nc1"] + unweighted + t["perp"], L) > 1e-3


def test_singular_second_moment_at_zero_ridge():
    """lambda = 0 with a dead unit (a feature identically 0): the minimum-norm least squares, identity intact."""
    rng = np.random.default_rng(5)
    C, p = 3, 9
    h, y = features([30] * C, p, rng, offset=1.0)
    h[:, 4] = 0.0
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    mu, counts, sw = train_moments(h, y, C)
    t = cp.central_path_decomposition(mu, counts, sw, W, b, 0.0)
    assert rel(t["nc1"] + t["nc23"] + t["perp"], loss_on_features(h, y, W, b, 0.0)) < 1e-8
    W_ls, _ = cp.ridge_least_squares(mu, counts, sw, 0.0)
    assert W_ls[:, 4].abs().max() < 1e-12
    W_ref, _ = lstsq_reference(np.delete(h, 4, axis=1), y, C, 0.0)
    np.testing.assert_allclose(np.delete(W_ls.numpy(), 4, axis=1), W_ref, rtol=0, atol=1e-9)


def test_large_p_with_large_feature_mean():
    """p = 600, post-ReLU-like offset 20, a small ridge: the Cholesky path keeps the identity to 1e-8."""
    rng = np.random.default_rng(6)
    C, p = 10, 600
    h, y = features([80] * C, p, rng, offset=20.0, scale=0.3)
    W, b = 0.05 * rng.standard_normal((C, p)), rng.standard_normal(C)
    mu, counts, sw = train_moments(h, y, C)
    out = cp.central_path_terms(mu, counts, sw, W, b, 5e-4)
    J = 2 / C * loss_on_features(h, y, W, b, C * 5e-4 / 2)
    assert rel(sum(out[k] for k in cp.TERMS), J) < 1e-8


def test_numpy_and_torch_inputs_agree_and_errors():
    rng = np.random.default_rng(7)
    C, p = 3, 5
    h, y = features([20] * C, p, rng)
    W, b = rng.standard_normal((C, p)), rng.standard_normal(C)
    mu, counts, sw = train_moments(h, y, C)
    a = cp.central_path_terms(mu, counts, sw, W, b, 1e-2)
    t = cp.central_path_terms(*(torch.from_numpy(np.asarray(x)) for x in (mu, counts, sw, W, b)), 1e-2)
    assert a == t
    with pytest.raises(ValueError, match="weight_decay"):
        cp.central_path_terms(mu, counts, sw, W, b, -1.0)
    with pytest.raises(ValueError, match="counts"):
        cp.central_path_terms(mu, counts[:2], sw, W, b, 0.0)
    with pytest.raises(ValueError, match="sigma_w"):
        cp.central_path_terms(mu, counts, sw[:4, :4], W, b, 0.0)
    with pytest.raises(ValueError, match="W must be"):
        cp.central_path_terms(mu, counts, sw, W.T, b, 0.0)
    assert set(cp.DEFINITIONS) == set(cp.TERMS)
