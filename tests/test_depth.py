"""Collapse by depth on a planted geometry: a net whose blocks are known affine maps T_l x + t_l of features with
exact class means mu_c and exact within-class covariance A A^T, so block l has class means T_l mu_c + t_l and
within covariance T_l A A^T T_l^T, and NC1_l and the trace ratio have closed forms (numpy, float64).

The input's coordinate 0 is a noise-free integer class code (classes 3 and 4 share one); every block carries it
unchanged (weight 1, zeros elsewhere, so exactly), and the last block keeps only it: classes 3 and 4 land on one
point, the nearest-class-centre rule ties there and picks class 3, so its accuracy is exactly (C-1)/C."""
import copy
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import stats

from nc.measure import depth

C = 5
CODES = np.array([0.0, 1.0, 2.0, 3.0, 3.0])
WIDE, NARROW = ("fc1", "conv"), ("fc2", "fc3")  # widths 10, 8 >= C-1 = 4 > 2, 1


def planted(means, A, n, rng):
    """n samples per class with class means exactly means[c] and within-class covariance exactly A A^T
    (noise sqrt(n) E A^T, E with orthonormal columns orthogonal to the ones vector), in random order."""
    feats, labels = [], []
    for c in range(len(means)):
        G = rng.standard_normal((n, A.shape[1]))
        E, _ = np.linalg.qr(G - G.mean(axis=0))
        feats.append(means[c] + math.sqrt(n) * E @ A.T)
        labels.append(np.full(n, c))
    order = rng.permutation(n * len(means))
    return np.concatenate(feats)[order], np.concatenate(labels)[order]


def with_code(rest):
    """Block matrix [[1, 0], [0, rest]]: the code passes through exactly, the rest is mixed by `rest`."""
    out = np.zeros((rest.shape[0] + 1, rest.shape[1] + 1))
    out[0, 0] = 1.0
    out[1:, 1:] = rest
    return out


class Spread(nn.Module):
    """(B, c) -> (B, c, 2, 2): channel k times 1 + k/16, 1 - k/16, 1 - k/32, 1 + k/32 (mean exactly 1), so pooling
    recovers the input only if all four positions are averaged (any one position is a non-uniform rescaling)."""

    def __init__(self, channels):
        super().__init__()
        k = torch.arange(channels, dtype=torch.float64)[:, None, None]
        pattern = torch.tensor([[1 / 16, -1 / 16], [-1 / 32, 1 / 32]], dtype=torch.float64)
        self.register_buffer("scale", 1 + k * pattern)

    def forward(self, x):
        return x[:, :, None, None] * self.scale


class Probe(nn.Identity):
    """Records (grad enabled, training) at every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append((torch.is_grad_enabled(), self.training))
        return x


def planted_net(rng, means, A):
    """The network, its blocks and each block's affine map (T_l, t_l) on the input. fc2's noisy row reads a
    direction v that separates classes 3 and 4 by only ~1.5 noise standard deviations."""
    W1, b1 = with_code(rng.standard_normal((9, 6))), np.r_[0.0, rng.standard_normal(9)]
    W2, b2 = with_code(rng.standard_normal((7, 9)) / 3), np.r_[0.0, rng.standard_normal(7)]
    u = (W2 @ W1 @ (means[3] - means[4]))[1:]
    u /= np.linalg.norm(u)
    z = rng.standard_normal(7)
    z -= (z @ u) * u
    z /= np.linalg.norm(z)
    noise_sd = np.linalg.norm(A.T @ (W2 @ W1).T[:, 1:] @ z)
    v = z + 1.5 * noise_sd / np.linalg.norm((W2 @ W1 @ (means[3] - means[4]))[1:]) * u
    W3, b3 = with_code(v[None, :]), np.array([0.0, 0.3])
    W4, b4 = np.array([[1.0, 0.0]]), np.array([0.25])  # keeps the code only
    net = nn.Sequential(OrderedDict(
        fc1=nn.Linear(7, 10), drop=nn.Dropout(0.5), probe=Probe(), spread=Spread(10), conv=nn.Conv2d(10, 8, 1),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc2=nn.Linear(8, 2), fc3=nn.Linear(2, 1))).double()
    with torch.no_grad():
        for mod, W, b in ((net.fc1, W1, b1), (net.conv, W2, b2), (net.fc2, W3, b3), (net.fc3, W4, b4)):
            mod.weight.copy_(torch.tensor(W).reshape(mod.weight.shape))
            mod.bias.copy_(torch.tensor(b))
    maps, T, t = [], np.eye(7), np.zeros(7)
    for W, b in ((W1, b1), (W2, b2), (W3, b3), (W4, b4)):
        T, t = W @ T, W @ t + b
        maps.append((T, t))
    blocks = [(name, getattr(net, name)) for name in WIDE + NARROW]
    return net, blocks, maps


def flat_conv_map(net, T1, t1):
    """The conv block's FLATTENED output (8 channels x 4 positions) as an affine map of the input: at position q,
    W2 diag(s_q) (T1 x + t1) + b2, s_q the Spread scale of that position (rows in any order: NC1 and the trace
    ratio do not depend on the order of the coordinates)."""
    W2, b2 = net.conv.weight.detach().numpy()[:, :, 0, 0], net.conv.bias.detach().numpy()
    scale = net.spread.scale.numpy().reshape(10, 4)
    T = np.vstack([W2 @ np.diag(scale[:, q]) @ T1 for q in range(4)])
    t = np.concatenate([W2 @ (scale[:, q] * t1) + b2 for q in range(4)])
    return T, t


def batches(x, y, sizes):
    """A callable giving (x, y) batches of cycling, uneven sizes."""
    spans, i, k = [], 0, 0
    while i < len(y):
        spans.append((i, min(i + sizes[k % len(sizes)], len(y))))
        i, k = spans[-1][1], k + 1
    return lambda: ((x[a:b], y[a:b]) for a, b in spans), len(spans)


def closed_forms(T, t, means, A):
    """NC1 (NaN if width < C-1) and trace ratio of block features T x + t."""
    mu = means @ T.T + t
    M = (mu - mu.mean(axis=0)).T
    Sw, Sb = T @ A @ A.T @ T.T, M @ M.T / C
    nc1 = math.nan
    if T.shape[0] >= C - 1:
        evals, evecs = np.linalg.eigh(Sb)
        top = evecs[:, -(C - 1):]
        nc1 = np.trace(Sw @ top @ np.diag(1 / evals[-(C - 1):]) @ top.T) / C
    return nc1, np.trace(Sw) / np.trace(Sw + Sb)


def ncc_reference(h, y, mu, check_margin=True):
    """Accuracy of argmin_c ||h - mu_c||, asserting no near-tie decides it."""
    d = np.linalg.norm(h[:, None, :] - mu[None], axis=2)
    if check_margin:
        two = np.sort(d, axis=1)[:, :2]
        assert np.min(two[:, 1] - two[:, 0]) > 1e-9
    return np.mean(d.argmin(axis=1) == y)


@pytest.fixture(scope="module")
def planted_case():
    rng = np.random.default_rng(11)
    means = np.column_stack([CODES, 2.0 * rng.standard_normal((C, 6)) + rng.standard_normal(6) * 5])
    A = np.vstack([np.zeros((1, 4)), 0.15 * rng.standard_normal((6, 4))])  # no noise on the code
    net, blocks, maps = planted_net(rng, means, A)
    x, y = planted(means, A, 40, rng)
    test_means = means + np.column_stack([np.zeros(C), 0.3 * rng.standard_normal((C, 6))])
    x_test, y_test = planted(test_means, A, 7, rng)
    net.train()
    net.pool.eval()  # a mixed state, to be restored exactly
    flags = [m.training for m in net.modules()]
    train, n_train = batches(torch.tensor(x), torch.tensor(y), (1, 17, 64, 3, 50))
    test, n_test = batches(torch.tensor(x_test), torch.tensor(y_test), (4, 9, 1))
    out = depth.layer_collapse(net, blocks, train, test, C)
    return dict(net=net, flags=flags, out=out, maps=maps, means=means, test_means=test_means, A=A,
                data=(x, y, x_test, y_test), forwards=3 * n_train + n_test)


def test_closed_form_nc1_and_trace_ratio(planted_case):
    out, maps = planted_case["out"], planted_case["maps"]
    assert out["names"] == list(WIDE + NARROW)
    assert out["widths"].dtype == np.int64 and out["widths"].tolist() == [10, 8, 2, 1]
    for key in depth.LAYER_KEYS:
        assert out[key].dtype == np.float64 and out[key].shape == (4,)
    for i, (T, t) in enumerate(maps):
        nc1, ratio = closed_forms(T, t, planted_case["means"], planted_case["A"])
        if i < len(WIDE):
            assert out["nc1"][i] == pytest.approx(nc1, rel=1e-10), i
        else:
            assert math.isnan(out["nc1"][i]) and math.isnan(nc1)
        assert out["trace_ratio"][i] == pytest.approx(ratio, rel=1e-10, abs=1e-12), i
        if i < 3:
            assert 0 < out["trace_ratio"][i] < 1
        else:  # fc3 keeps only the noise-free code
            assert out["trace_ratio"][i] == 0.0


def test_flattened_nc1_and_trace_ratio(planted_case):
    """A (B, c) block's flattened features are its pooled ones; the conv block's flattened (B, 8 x 2 x 2) output is
    another affine map of the input (flat_conv_map), with its own closed forms, which pooling does not give."""
    out, maps, means, A = (planted_case[k] for k in ("out", "maps", "means", "A"))
    assert out["flat_nc1"][0] == pytest.approx(out["nc1"][0], rel=1e-12)
    assert out["flat_trace_ratio"][0] == pytest.approx(out["trace_ratio"][0], rel=1e-12)
    T, t = flat_conv_map(planted_case["net"], *maps[0])
    nc1, ratio = closed_forms(T, t, means, A)
    assert out["flat_nc1"][1] == pytest.approx(nc1, rel=1e-10)
    assert out["flat_trace_ratio"][1] == pytest.approx(ratio, rel=1e-10)
    assert out["flat_nc1"][1] != pytest.approx(out["nc1"][1], rel=1e-3)
    assert np.isnan(out["flat_nc1"][2:]).all()  # width 2 and 1 < C-1
    assert out["flat_trace_ratio"][2:].tolist() == pytest.approx(out["trace_ratio"][2:].tolist(), abs=1e-12)


def test_flattened_measures_are_skipped_over_the_memory_budget(planted_case, monkeypatch):
    net, (x, y, _, _) = copy.deepcopy(planted_case["net"]), planted_case["data"]  # its own probe
    monkeypatch.setattr(depth, "FLAT_BYTES", 24 * C * 10)  # fc1 (D = 10) fits, conv (D = 32) does not
    data = lambda: [(torch.tensor(x), torch.tensor(y))]
    out = depth.layer_collapse(net, [("fc1", net.fc1), ("conv", net.conv)], data, data, C)
    assert out["flat_nc1"][0] == pytest.approx(planted_case["out"]["flat_nc1"][0], rel=1e-10)
    assert math.isnan(out["flat_nc1"][1]) and math.isnan(out["flat_trace_ratio"][1])


def test_nearest_class_centre_accuracies(planted_case):
    out, maps, means, test_means = (planted_case[k] for k in ("out", "maps", "means", "test_means"))
    x, y, x_test, y_test = planted_case["data"]
    for i, (T, t) in enumerate(maps[:3]):
        mu = means @ T.T + t  # the train class means
        assert out["ncc_acc_train"][i] == ncc_reference(x @ T.T + t, y, mu), i
        assert out["ncc_acc_test"][i] == ncc_reference(x_test @ T.T + t, y_test, mu), i
    assert out["ncc_acc_train"][:2].tolist() == [1.0, 1.0] and out["ncc_acc_test"][:2].tolist() == [1.0, 1.0]
    # fc2 (one code row, one noisy row) confuses classes 3 and 4 in part; the test set is scored with the
    # TRAIN means, which here gives a different answer from the test set's own means
    T, t = maps[2]
    assert 0.5 < out["ncc_acc_train"][2] < 1.0 and 0.5 < out["ncc_acc_test"][2] < 1.0
    own = ncc_reference(x_test @ T.T + t, y_test, test_means @ T.T + t)
    assert own != out["ncc_acc_test"][2]
    # fc3 maps classes 3 and 4 onto one point: a tie, resolved to class 3, so class 4 is always wrong
    assert out["ncc_acc_train"][3] == (C - 1) / C and out["ncc_acc_test"][3] == (C - 1) / C


def test_eval_mode_no_grad_flags_restored_hooks_removed(planted_case):
    net = planted_case["net"]
    assert [m.training for m in net.modules()] == planted_case["flags"]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    calls = net.probe.calls
    assert len(calls) == planted_case["forwards"]  # one forward per batch, all blocks at once
    assert set(calls) == {(False, False)}


def test_hooks_removed_and_flags_restored_on_error():
    lin = nn.Linear(3, 3).double()
    shared = nn.Sequential(lin, nn.ReLU(), lin, nn.Dropout(0.1))
    shared.train()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.arange(12) % 3
    data = lambda: [(x, y)]
    with pytest.raises(ValueError, match="exactly once"):
        depth.layer_collapse(shared, [("lin", lin)], data, data, 3)

    def failing():
        yield x, y
        raise RuntimeError("loader broke")

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().train()
    with pytest.raises(RuntimeError, match="loader broke"):
        depth.layer_collapse(net, [("a", net[0]), ("b", net[2])], data, failing, 3)
    with pytest.raises(ValueError, match="every class"):
        depth.layer_collapse(net, [("a", net[0]), ("b", net[2])], lambda: [(x, y % 2)], data, 3)
    for model in (shared, net):
        assert all(m.training for m in model.modules())
        assert all(not m._forward_hooks for m in model.modules())


def test_fit_recovers_exact_geometric_decay():
    a, rho, L, Cn = 2.3, 0.37, 12, 10
    nc1 = np.exp(a - rho * np.arange(1, L + 1)) / Cn
    nc1[[2, 7]] = [np.nan, 0.0]  # skipped; the other blocks keep their depth index
    got_a, got_rho, r2 = depth.fit_depth_decay(nc1, Cn)
    assert abs(got_rho - rho) < 1e-12 and abs(got_a - a) < 1e-12
    assert abs(r2 - 1.0) < 1e-12
    assert all(math.isnan(v) for v in depth.fit_depth_decay([np.nan, 0.5, -1.0], Cn))


def test_fit_matches_linregress_on_noisy_data():
    rng = np.random.default_rng(3)
    L, Cn = 16, 100
    nc1 = np.exp(1.0 - 0.25 * np.arange(1, L + 1) + 0.3 * rng.standard_normal(L)) / Cn
    nc1[0] = np.inf
    a, rho, r2 = depth.fit_depth_decay(nc1, Cn)
    ref = stats.linregress(np.arange(2, L + 1), np.log(Cn * nc1[1:]))
    assert a == pytest.approx(ref.intercept, rel=1e-10)
    assert rho == pytest.approx(-ref.slope, rel=1e-10)
    assert r2 == pytest.approx(ref.rvalue ** 2, rel=1e-10)
    assert 0 < r2 < 1


def test_definitions_cover_the_cube_variables():
    assert depth.DEPTH_METRICS == ("depth_nc1", "depth_trace_ratio", "depth_ncc_acc_train", "depth_ncc_acc_test",
                                   "depth_flat_nc1", "depth_flat_trace_ratio")
    for name in depth.DEPTH_METRICS + depth.DEPTH_FIT:
        assert depth.DEFINITIONS[name] and depth.UNITS[name] and depth.LONG_NAMES[name]
    assert set(depth.DEFINITIONS) == set(depth.DEPTH_METRICS + depth.DEPTH_FIT) == set(depth.UNITS) \
        == set(depth.LONG_NAMES)
