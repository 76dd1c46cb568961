"""Deep neural collapse at the linear head (Súkeník, Mondelli & Lampert, NeurIPS 2023; nc.measure.head): DNC2 and DNC3
on planted geometries whose values are known in closed form, the head found on a real tiny VGG (none on a ResNet),
the hooked class means equal to a direct forward's, and the values in the cube of a real tiny run."""
import math

import numpy as np
import pytest
import torch
import xarray as xr

from nc import models
from nc.measure import head
from nc.runs import cube


def _etf(C, p, seed=0):
    """C unit vectors in R^p (p >= C) forming a simplex ETF, rotated by a random orthogonal matrix."""
    Q, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    E = torch.eye(C, dtype=torch.float64) - 1.0 / C
    E = E / E.norm(dim=1, keepdim=True)
    return torch.cat([E, torch.zeros(C, p - C, dtype=torch.float64)], dim=1) @ Q.T


def test_dnc2_is_zero_on_a_simplex_etf_and_on_an_offset_orthogonal_frame():
    C, p = 6, 9
    offset = torch.linspace(-3.0, 5.0, p, dtype=torch.float64)
    assert head.etf_gram_error(4.0 * _etf(C, p) + offset) == pytest.approx(0.0, abs=1e-12)
    # the source's DNC2 geometry: non-negative class means that are an orthogonal frame of equal norms (a e_c),
    # seen here after a per-coordinate shift (a BatchNorm's): centred, they are a simplex ETF
    frame = 2.5 * torch.eye(C, p, dtype=torch.float64) + offset
    assert head.etf_gram_error(frame) == pytest.approx(0.0, abs=1e-12)
    # unequal norms are not a frame: strictly positive
    assert head.etf_gram_error(torch.diag(torch.arange(1.0, C + 1, dtype=torch.float64))) > 0.05


@pytest.mark.parametrize("C", [3, 5, 10])
def test_dnc2_of_means_on_a_line_is_its_closed_form(C):
    """Means on one line: G = v v^T with v centred, <G, P> = ||v||^2 = ||G||_F, ||P||_F = sqrt(C-1), so DNC2 =
    sqrt(2 - 2/sqrt(C-1)) whatever the positions on the line (C = 3, positions -1, 0, 1: sqrt(2 - sqrt 2))."""
    rng = np.random.default_rng(C)
    direction = torch.as_tensor(rng.normal(size=7))
    positions = torch.as_tensor(rng.normal(size=C))
    mu = positions[:, None] * direction + torch.as_tensor(rng.normal(size=7))
    assert head.etf_gram_error(mu) == pytest.approx(math.sqrt(2 - 2 / math.sqrt(C - 1)), rel=1e-12)
    assert head.etf_gram_error(torch.tensor([[-1.0], [0.0], [1.0]])) == pytest.approx(math.sqrt(2 - math.sqrt(2)))
    # two classes: always an ETF
    assert head.etf_gram_error(torch.as_tensor(rng.normal(size=(2, 5)))) == pytest.approx(0.0, abs=1e-12)


def test_dnc3_closed_forms():
    C, p = 4, 10
    rng = np.random.default_rng(1)
    mu = torch.as_tensor(rng.normal(size=(C, p)))
    M = (mu - mu.mean(dim=0)).T  # p x C, rank C-1
    # rows in the span of the centred means (the source's W = sigma M^T, and any mix of them): 0
    assert head.weight_span_misalignment(3.0 * M.T, mu) == pytest.approx(0.0, abs=1e-12)
    mix = torch.as_tensor(rng.normal(size=(12, C))) @ M.T
    assert head.weight_span_misalignment(mix, mu) == pytest.approx(0.0, abs=1e-12)
    # rows orthogonal to the span (and to nothing else): 1
    Q, _ = torch.linalg.qr(torch.cat([M, torch.as_tensor(rng.normal(size=(p, p - C + 1)))], dim=1))
    outside = Q[:, C - 1:].T  # (p-C+1) x p, orthogonal to the span
    assert head.weight_span_misalignment(outside, mu) == pytest.approx(1.0, abs=1e-12)
    # one row of norm a inside, one of norm b outside: b^2 / (a^2 + b^2)
    a, b = 2.0, 3.0
    inside = M[:, 0] / M[:, 0].norm()
    W = torch.stack([a * inside, b * outside[0]])
    assert head.weight_span_misalignment(W, mu) == pytest.approx(b * b / (a * a + b * b), rel=1e-12)
    # a weight that favours no direction (W = I_p): (C-1) of its p units of energy lie in the span
    assert head.weight_span_misalignment(torch.eye(p, dtype=torch.float64), mu) == pytest.approx(1 - (C - 1) / p)
    # a span of rank C-1 needs p >= C-1
    assert math.isnan(head.weight_span_misalignment(torch.eye(2, dtype=torch.float64),
                                                    torch.as_tensor(rng.normal(size=(C, 2)))))


def test_head_layers_are_found_on_a_vgg_and_absent_on_a_resnet():
    vgg = models.build("vgg11", 10, 1, 16, 0.125)
    layers = head.head_linears(vgg)
    assert [name for name, _ in layers] == list(head.HEAD_LAYERS)
    assert layers[0][1] is vgg.features.fc6[0] and layers[1][1] is vgg.features.fc7[0]
    assert layers[2][1] is vgg.classifier
    resnet = models.build("resnet18", 10, 1, 16, 0.125)
    assert head.head_linears(resnet) == []
    with head.HeadTap(resnet, 10, "cpu") as tap:
        out = tap.metrics(torch.zeros(10, resnet.classifier.in_features))
    assert set(out) == set(head.HEAD_METRICS) and all(math.isnan(v) for v in out.values())


def test_head_tap_on_a_real_vgg_matches_a_direct_forward():
    """The hooks' class means of fc6's and fc7's inputs are those of a direct forward through the body (the same float32
    activations, float64 means): the metrics equal those of the direct means, are finite and in range."""
    torch.manual_seed(0)
    C = 4
    model = models.build("vgg11", C, 1, 16, 0.125).eval()
    x = torch.randn(48, 1, 16, 16)
    y = torch.arange(48) % C
    f = model.features
    body = f[: list(f._modules).index("avgpool")]
    pre6, pre7, h = [], [], []
    with torch.no_grad(), head.HeadTap(model, C, "cpu") as tap:
        for i in range(0, 48, 16):  # three batches: the Chan merge across them
            model(x[i:i + 16])
            tap.update(y[i:i + 16])
            pre6.append(f.avgpool(body(x[i:i + 16])))  # the direct forward of the same batch
            pre7.append(f.fc6(pre6[-1]))
            h.append(f.fc7(pre7[-1]))
        pre6, pre7, h = torch.cat(pre6), torch.cat(pre7), torch.cat(h).double()
        out = tap.metrics(torch.stack([h[y == c].mean(0) for c in range(C)]))
    assert tap.handles == []  # removed on exit
    for name, inp in (("fc6", pre6), ("fc7", pre7)):
        direct = torch.stack([inp.double()[y == c].mean(0) for c in range(C)])
        linear = dict(head.head_linears(model))[name]
        assert out[f"dnc2_{name}"] == pytest.approx(head.etf_gram_error(direct), rel=1e-9)
        assert out[f"dnc3_{name}"] == pytest.approx(head.weight_span_misalignment(linear.weight, direct), rel=1e-9)
    for k, v in out.items():
        assert math.isfinite(v) and 0.0 <= v <= (2.0 if k.startswith("dnc2") else 1.0), (k, v)


def test_the_cube_carries_the_head_measures(tiny_cubes):
    """A real tiny VGG11 run: every head measure at every snapshot, finite and in range, NaN off the snapshots, with
    its definition; at the classifier's input DNC2 is the Part II ETF error of the train means (the same formula)."""
    with xr.open_dataset(tiny_cubes / "demo-vgg11.nc", engine="netcdf4") as ds:
        sel = cube.selected(ds)
        snap = np.isfinite(sel["nc1"].values)
        assert snap.sum() >= 2
        for k in head.HEAD_METRICS:
            v = sel[k].values
            assert ds[k].attrs["definition"] == head.DEFINITIONS[k] and ds[k].attrs["units"] == "1"
            assert np.isfinite(v[snap]).all() and np.isnan(v[~snap]).all(), k
            assert (v[snap] >= 0).all() and (v[snap] <= (2.0 if k.startswith("dnc2") else 1.0)).all(), (k, v[snap])
        np.testing.assert_allclose(sel["dnc2_classifier"].values[snap], sel["etf_error_means"].values[snap],
                                   rtol=1e-10)
