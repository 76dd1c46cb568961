"""The MSE loss split into collapse terms: Han, Papyan & Donoho, "Neural collapse under MSE loss: proximity to
and dynamics on the central path", ICLR 2022 (the decomposition L = L_NC1 + L_NC2/3 + L_perp).

Claim: for train features h (input of the last layer) and any classifier W~ = [W b] (C x (p+1)), the ridge
objective restricted to the classifier,

    L(W~) = 1/2 Ave_i ||W h_i + b - e_{y_i}||^2 + (lambda/2)(||W||_F^2 + ||b||^2),

equals L_NC1 + L_NC2/3 + L_perp EXACTLY, each term computed in float64 from the train moments alone: class
means mu_c (C x p), class counts n_c, Sigma_W (p x p, sample-weighted). All terms are in loss units (squared
logits; the one-hot targets are unitless), so 1 for the cube.

Derivation. Let x = [h; 1], pi_c = n_c / N, B = Ave_i x x^T + lambda I, R = Ave_i e_{y_i} x^T = [diag(pi) mu, pi].
Then L(W~) = 1/2 Tr(W~ B W~^T) - Tr(W~ R^T) + 1/2 is a quadratic with minimiser W~_LS = R B^-1 (the ridge
least-squares classifier on the current features, one-hot targets), hence exactly
    L(W~) = L(W~_LS) + L_perp,   L_perp = 1/2 Tr((W~ - W~_LS) B (W~ - W~_LS)^T).
Writing h_i = mu_{y_i} + (h_i - mu_{y_i}), the within-class deviations average to zero in every class, so for
any (W, b):  1/2 Ave_i ||W h_i + b - e||^2 = 1/2 Tr(W Sigma_W W^T) + 1/2 Sum_c pi_c ||W mu_c + b - e_c||^2.
At W~_LS that is L(W~_LS) = L_NC1 + L_NC2/3 with
    L_NC1   = 1/2 [Tr(W_LS (Sigma_W + lambda I) W_LS^T) + lambda ||b_LS||^2],
    L_NC2/3 = 1/2 Sum_c pi_c ||W_LS mu_c + b_LS - e_c||^2.

Balanced classes (pi_c = 1/C): L_NC2/3 = (1/(2C)) ||W_LS Mbar + b_LS 1^T - I||_F^2 with Mbar = [mu_c] (p x C,
uncentred), Ave x x^T = [[Sigma_T + mu_G mu_G^T, mu_G], [mu_G^T, 1]] with Sigma_T = Sigma_W + Sigma_B: the
paper's and the notebook's formulas. Imbalanced classes change three things: (1) L_NC2/3 is the pi-weighted
sum, and the unweighted 1/(2C) form no longer adds up to L; (2) the least-squares targets R carry the weights pi
(the notebook's W_LS = (1/C)(M^T - ...) assumes pi = 1/C); (3) B is the SAMPLE second moment
Sigma_W + Sum_c pi_c mu_c mu_c^T, which is not Sigma_T + mu_G mu_G^T built from the repository's class-weighted
mu_G = Ave_c mu_c and Sigma_B (it would be with sample-weighted ones). Decision: this module always computes the
general pi-weighted form from `counts` (it never refuses); with equal counts it IS the paper's form, and the
three terms always sum to L. Call it with the counts of the features the moments came from.

Convention (the repository's `loss: mse`). The network is trained with F.mse_loss(logits, onehot), the mean over
the N*C entries, as the authors' notebook trains (nn.MSELoss(), tuned lr 0.0184), with SGD weight_decay wd on
every parameter (b included). Restricted to the classifier, SGD descends
    J = (1/C) Ave_i ||W h + b - e||^2 + (wd/2)(||W||^2 + ||b||^2) = (2/C) L   with   lambda = C wd / 2.
`central_path_terms` returns the three terms scaled by 2/C (they sum to J, the number a training loop reports for
the classifier: mean MSE + (wd/2)(||W||^2 + ||b||^2)), and J itself as `mse_classifier_loss`.
The notebook instead uses lambda = wd/2 with loss = Ave_i ||.||^2 (summed over classes, criterion_summed / N),
and its "MSE+wd" curve is 1/2 [Ave_i ||.||^2 + (wd/2)||W~||^2] = L at lambda = wd/2. That is the decomposition of
Ave_i ||.||^2 + (wd/2)||W~||^2, the objective of training with the class-SUMMED loss (MSELoss(reduction='sum')
/ batch). The notebook trains with the class-MEAN loss, whose ridge is lambda = C wd / 2 (10x larger on MNIST),
so its W_LS is the ridge solution of a different problem than the one its SGD descends: its three terms still
add up to its own curve (the identity holds at any lambda), but L_perp there is not the distance to the minimiser
of the trained objective. We follow the training objective. (The notebook also works in float32 with
torch.inverse.)

Numerics: b is eliminated (Schur complement, as in the notebook) so the solve is p x p and centred:
A W_LS^T = (mu - m)^T diag(pi) + (lambda/(1+lambda)) m pi^T, A = Sigma_T + (lambda/(1+lambda)) m m^T + lambda I,
with m = Sum_c pi_c mu_c and Sigma_T = Sigma_W + (mu - m)^T diag(pi) (mu - m) (no cancellation from a large
feature mean), b_LS = (pi - W_LS m) / (1 + lambda). A Cholesky factorisation in float64; where A is not
numerically positive definite (lambda = 0 with dead units or p >= N) the minimum-norm solution from an
eigendecomposition at rank tolerance p * eps * max eigenvalue. Never an explicit inverse. Every term is evaluated
as a sum of non-negative parts.
"""
from __future__ import annotations

import torch

TERMS = ("mse_nc1_term", "mse_nc23_term", "mse_perp_term")

_CONVENTION = ("terms of J = F.mse_loss(logits, onehot) [mean over N*C entries] + (wd/2)(||W||^2 + ||b||^2) "
               "= (2/C) L with lambda = C*wd/2, L = 1/2 Ave_i ||W h_i + b - e_{y_i}||^2 + (lambda/2)||[W b]||^2; "
               "train features, pi_c = n_c/N (pi_c = 1/C when balanced), Sigma_W sample-weighted; "
               "mse_nc1_term + mse_nc23_term + mse_perp_term = J exactly; units: loss (squared logits)")
DEFINITIONS = {
    "mse_nc1_term": "(2/C) L_NC1, L_NC1 = 1/2 [Tr(W_LS (Sigma_W + lambda I) W_LS^T) + lambda ||b_LS||^2], "
                    "[W_LS b_LS] the ridge least-squares classifier on the current features; " + _CONVENTION
                    + " (Han, Papyan & Donoho, ICLR 2022, L_NC1)",
    "mse_nc23_term": "(2/C) L_NC2/3, L_NC2/3 = 1/2 Sum_c pi_c ||W_LS mu_c + b_LS - e_c||^2 "
                     "(balanced: (1/(2C)) ||W_LS Mbar + b_LS 1^T - I||_F^2, Mbar the uncentred class means); "
                     + _CONVENTION + " (Han, Papyan & Donoho, ICLR 2022, L_NC2/3)",
    "mse_perp_term": "(2/C) L_perp, L_perp = 1/2 Tr((W~ - W~_LS) B (W~ - W~_LS)^T), W~ = [W b], B = Ave [h;1][h;1]^T "
                     "+ lambda I (balanced: [[Sigma_T + mu_G mu_G^T + lambda I, mu_G], [mu_G^T, 1 + lambda]]); "
                     + _CONVENTION + " (Han, Papyan & Donoho, ICLR 2022, L_perp)",
}


def _f64(x, device=None) -> torch.Tensor:
    """A float64 torch tensor (from numpy, a list or torch), on `device` if given."""
    t = torch.as_tensor(x)
    return t.to(device=device or t.device, dtype=torch.float64)


def ridge_from_weight_decay(weight_decay: float, num_classes: int) -> float:
    """The paper's lambda for a net trained on F.mse_loss (mean over N*C entries) with SGD weight_decay: C wd / 2."""
    return num_classes * weight_decay / 2


def _moments(class_means, counts, sigma_w):
    mu = _f64(class_means)
    if mu.ndim != 2:
        raise ValueError(f"class_means must be (C, p), got shape {tuple(mu.shape)}")
    C, p = mu.shape
    n = _f64(counts, mu.device).reshape(-1)
    if n.numel() != C or not bool((n > 0).all()):
        raise ValueError(f"counts must hold {C} positive class counts, got {n.tolist()}")
    sigma_w = _f64(sigma_w, mu.device)
    if tuple(sigma_w.shape) != (p, p):
        raise ValueError(f"sigma_w must be ({p}, {p}), got shape {tuple(sigma_w.shape)}")
    return mu, n / n.sum(), (sigma_w + sigma_w.T) / 2


def _solve_psd(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """A^-1 rhs for symmetric PSD A: Cholesky, or the minimum-norm solution where A is numerically singular."""
    L, info = torch.linalg.cholesky_ex(A)
    tol = A.shape[0] * torch.finfo(A.dtype).eps
    if int(info) == 0:
        d = torch.diagonal(L)
        if float((d.min() / d.max()) ** 2) > tol:
            return torch.cholesky_solve(rhs, L)
    evals, Q = torch.linalg.eigh(A)
    keep = evals > tol * evals.max().clamp_min(0)
    Qk = Q[:, keep]
    return Qk @ ((Qk.T @ rhs) / evals[keep, None])


def ridge_least_squares(class_means, counts, sigma_w, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_LS (C x p), b_LS (C,)): the minimiser of L at ridge lambda from the train moments, float64."""
    mu, pi, sigma_w = _moments(class_means, counts, sigma_w)
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    m = pi @ mu                                   # sample mean of h
    dev = mu - m                                  # (C, p)
    sigma_t = sigma_w + dev.T @ (pi[:, None] * dev)
    shrink = ridge / (1 + ridge)
    A = sigma_t + shrink * torch.outer(m, m) + ridge * torch.eye(mu.shape[1], dtype=mu.dtype, device=mu.device)
    rhs = dev.T * pi + shrink * torch.outer(m, pi)  # (p, C)
    W_ls = _solve_psd(A, rhs).T
    b_ls = (pi - W_ls @ m) / (1 + ridge)
    return W_ls, b_ls


def _fit_terms(W, b, mu, pi, sigma_w):
    """(1/2 Tr(W Sigma_W W^T), 1/2 Sum_c pi_c ||W mu_c + b - e_c||^2): the within and between parts of the fit."""
    within = 0.5 * ((W @ sigma_w) * W).sum()
    resid = mu @ W.T + b - torch.eye(mu.shape[0], dtype=mu.dtype, device=mu.device)  # row c: (W mu_c + b - e_c)^T
    return within, 0.5 * (pi * resid.pow(2).sum(dim=1)).sum()


def central_path_decomposition(class_means, counts, sigma_w, W, b, ridge: float) -> dict[str, float]:
    """The paper's terms at ridge lambda, in L's units: {nc1, nc23, perp, loss} with nc1 + nc23 + perp = loss = L(W~).

    `loss` is computed directly from the moments (not as the sum), so the identity is a check."""
    mu, pi, sigma_w = _moments(class_means, counts, sigma_w)
    C, p = mu.shape
    W, b = _f64(W, mu.device), _f64(b, mu.device).reshape(-1)
    if tuple(W.shape) != (C, p) or b.numel() != C:
        raise ValueError(f"W must be ({C}, {p}) and b ({C},), got {tuple(W.shape)} and {tuple(b.shape)}")
    W_ls, b_ls = ridge_least_squares(mu, counts, sigma_w, ridge)
    within_ls, between_ls = _fit_terms(W_ls, b_ls, mu, pi, sigma_w)
    nc1 = within_ls + 0.5 * ridge * (W_ls.pow(2).sum() + b_ls.pow(2).sum())
    m = pi @ mu
    dev = mu - m
    dW, db = W - W_ls, b - b_ls
    dW_dev = dW @ dev.T                                             # (C, C): rows d_c^T (mu_k - m)
    perp = 0.5 * (((dW @ sigma_w) * dW).sum() + (pi * dW_dev.pow(2)).sum()   # Tr(dW Sigma_T dW^T)
                  + (dW @ m + db).pow(2).sum() + ridge * (dW.pow(2).sum() + db.pow(2).sum()))
    within, between = _fit_terms(W, b, mu, pi, sigma_w)
    loss = within + between + 0.5 * ridge * (W.pow(2).sum() + b.pow(2).sum())
    return {"nc1": nc1.item(), "nc23": between_ls.item(), "perp": perp.item(), "loss": loss.item()}


def central_path_terms(class_means, counts, sigma_w, W, b, weight_decay: float) -> dict[str, float]:
    """The cube's MSE terms for a net trained on F.mse_loss + SGD weight_decay: the paper's terms at
    lambda = C wd / 2 scaled by 2/C, so mse_nc1_term + mse_nc23_term + mse_perp_term = mse_classifier_loss = J,
    J = mean-over-entries MSE of the classifier on the train features + (wd/2)(||W||^2 + ||b||^2).

    class_means (C, p), counts (C,), sigma_w (p, p) sample-weighted, W (C, p), b (C,); numpy or torch."""
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    C = _f64(class_means).shape[0]
    terms = central_path_decomposition(class_means, counts, sigma_w, W, b, ridge_from_weight_decay(weight_decay, C))
    scale = 2.0 / C
    return {"mse_nc1_term": scale * terms["nc1"], "mse_nc23_term": scale * terms["nc23"],
            "mse_perp_term": scale * terms["perp"], "mse_classifier_loss": scale * terms["loss"]}
