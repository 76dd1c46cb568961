"""Adversarial robustness by DeepFool (paper Fig. 8).

Claim (Fig. 8): during the terminal phase of training, the minimal L2 perturbation that changes the network's
prediction grows. Robustness = Ave_i ||r(x_i)||_2 / ||x_i||_2 over 100 test images drawn once (the same images at
every snapshot), with r(x) the DeepFool perturbation (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016, ref. 23).
Units: a dimensionless ratio of L2 norms, measured in the network's input space (standardised pixels).

`deepfool` follows the authors' reference implementation (LTS4/DeepFool, Python/deepfool.py) step for step:
candidates = the top `num_candidates` classes of the clean logits (k0 = the top one); at each iteration linearise at
x + (1 + overshoot) r_tot, take l = argmin_k |f_k - f_k0| / ||grad f_k - grad f_k0||, step
r_i = (|f_l - f_k0| / ||w_l|| + 1e-4) w_l / ||w_l|| (the reference adds 1e-4 to the distance), r_tot += r_i;
stop an image once its prediction (argmax over all classes) differs from k0; return (1 + overshoot) r_tot.
It is batched: one forward pass and `num_candidates - 1` backward passes per iteration for all unfooled images.
"""
import torch
from torch import Tensor


def deepfool(model, x: Tensor, *, overshoot=0.02, max_iter=50, num_candidates=10) -> tuple[Tensor, Tensor, Tensor]:
    """DeepFool (L2) on a batch x of shape (N, ...). Returns r (N, ...) with x + r adversarial, the perturbation
    including the (1 + overshoot) factor; the iterations used per image (int64, N); whether the label flipped (bool, N).

    The caller should put the model in eval mode; the attack runs it in eval mode regardless (BatchNorm running
    statistics, no dropout) and restores every module's `training` flag afterwards. Gradients are taken with respect
    to the input only: no `.grad` accumulates in the model's parameters. Rows are independent in eval mode, which the
    batched gradients (one backward pass of a batch sum per candidate class) rely on.
    """
    modes = [(module, module.training) for module in model.modules()]  # restored module by module
    model.eval()
    try:
        with torch.enable_grad():
            return _deepfool(model, x.detach(), overshoot, max_iter, num_candidates)
    finally:
        for module, training in modes:
            module.training = training


def _deepfool(model, x, overshoot, max_iter, num_candidates):
    n = x.shape[0]
    r_tot = torch.zeros_like(x)  # sum of the steps r_i, in the network's precision (float32 in the reference)
    iterations = torch.zeros(n, dtype=torch.int64, device=x.device)
    flipped = torch.zeros(n, dtype=torch.bool, device=x.device)
    active = torch.arange(n, device=x.device)  # images not yet fooled
    candidates = None  # (N, K) class indices, top-K of the clean logits, column 0 = k0
    for step in range(max_iter + 1):
        x_pert = (x[active] + (1 + overshoot) * r_tot[active]).requires_grad_(True)
        logits = model(x_pert)
        if candidates is None:  # step 0: the clean forward pass fixes k0 and the candidates
            candidates = logits.detach().topk(min(num_candidates, logits.shape[1]), dim=1).indices
            if candidates.shape[1] < 2:
                raise ValueError("DeepFool needs at least 2 candidate classes")
            unfooled = torch.ones(len(active), dtype=torch.bool, device=x.device)
        else:
            unfooled = logits.detach().argmax(1) == candidates[active, 0]
            flipped[active] = ~unfooled
        if step == max_iter or not unfooled.any():
            break
        r_i = _linearised_step(logits.gather(1, candidates[active]), x_pert)
        r_tot[active[unfooled]] += r_i[unfooled]
        iterations[active[unfooled]] += 1
        active = active[unfooled]
    return (1 + overshoot) * r_tot, iterations, flipped


def _linearised_step(f, x_pert):
    """One DeepFool step for every row: f (m, K) candidate logits at x_pert (m, ...), column 0 = k0. Returns r_i."""
    f_diff = f[:, 1:] - f[:, :1]  # f_k - f_k0, (m, K-1)
    best_dist = torch.full((len(f),), torch.inf, dtype=torch.float64, device=f.device)
    best_norm = torch.ones_like(best_dist)
    best_w = torch.zeros_like(x_pert)
    for k in range(f_diff.shape[1]):  # one backward pass per candidate, for all rows at once (rows independent)
        (w_k,) = torch.autograd.grad(f_diff[:, k].sum(), x_pert, retain_graph=k < f_diff.shape[1] - 1)
        norm_k = torch.linalg.vector_norm(w_k.flatten(1), dim=1, dtype=torch.float64)
        dist_k = f_diff[:, k].detach().double().abs() / norm_k
        dist_k = torch.where(norm_k > 0, dist_k, torch.inf)  # a flat direction never wins
        better = dist_k < best_dist  # strict: the first minimum wins, as in the reference
        best_dist = torch.where(better, dist_k, best_dist)
        best_norm = torch.where(better, norm_k, best_norm)
        best_w[better] = w_k[better]
    scale = torch.where(best_dist.isfinite(), (best_dist + 1e-4) / best_norm, 0.0)  # reference: (pert + 1e-4) w/||w||
    return scale.to(x_pert.dtype).view(-1, *[1] * (x_pert.dim() - 1)) * best_w


def robustness(model, x: Tensor, **kw) -> float:
    """Ave_i ||r(x_i)||_2 / ||x_i||_2 over the batch (Fig. 8), in the network's input space; kw go to `deepfool`.
    Images DeepFool fails to fool within max_iter (rare) count with their last perturbation."""
    r, _, _ = deepfool(model, x, **kw)
    ratio = r.flatten(1).double().norm(dim=1) / x.flatten(1).double().norm(dim=1)
    return ratio.mean().item()


def fixed_test_indices(y_test, n=100, seed=0) -> Tensor:
    """n test indices drawn once without replacement (all of them if fewer), seeded, sorted ascending (int64)."""
    generator = torch.Generator().manual_seed(seed)
    drawn = torch.randperm(len(y_test), generator=generator)[:n]
    return drawn.sort().values
