"""nc.measure.collapse(..., layers=...): collapse by depth on any network. Pooled ("mean") and flattened outputs of
named modules give the NC1 and trace ratio of nc.measure.moments on the same features extracted by hand (to 1e-10;
the flattened NC1 through M^+ in two passes, never a p x p matrix), NCC accuracies from the train class means, the
cube's variable names and definitions, and "all" measures every child; a one-shot iterator is refused."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from nc import measure
from nc.measure import depth

C = 3


def model_and_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 5, 3, padding=1), nn.Flatten(),
                          nn.Linear(5 * 16, C)).double()
    g = torch.Generator().manual_seed(1)
    x, tx = torch.randn(30, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(12, 2, 4, 4, generator=g,
                                                                                     dtype=torch.float64)
    y, ty = torch.arange(30) % C, torch.arange(12) % C
    split = lambda a, b: [(a[i:i + 7], b[i:i + 7]) for i in range(0, len(b), 7)]
    return model, split(x, y), split(tx, ty), (x, y, tx, ty)


def by_hand(model, index, x, pool):
    with torch.no_grad():
        out = model[:index + 1](x)
    return depth.block_features(out) if pool == "mean" else out.flatten(1)


@pytest.mark.parametrize("pool", ["mean", "flatten"])
def test_layers_equal_moments_of_the_features_by_hand(pool):
    model, train, test, (x, y, tx, ty) = model_and_batches()
    ds = measure.collapse(model, train, test, layers=["0", "2"], pool=pool, progress=False)
    assert list(ds["layer_name"].values) == ["0", "2"] and ds["depth_nc1"].dims == ("layer",)
    for i, index in enumerate((0, 2)):
        h, th = by_hand(model, index, x, pool), by_hand(model, index, tx, pool)
        m = measure.moments(h, y, C)
        assert ds["layer_width"].values[i] == h.shape[1]
        assert ds["depth_nc1"].values[i] == pytest.approx(m.nc1, rel=1e-10)
        ratio = m.within_trace / (m.within_trace + m.between_trace)
        assert ds["depth_trace_ratio"].values[i] == pytest.approx(ratio, rel=1e-10)
        mu = m.class_means
        for feats, labels, key in ((h, y, "depth_ncc_acc_train"), (th, ty, "depth_ncc_acc_test")):
            ncc = torch.cdist(feats, mu).argmin(dim=1)
            assert ds[key].values[i] == pytest.approx((ncc == labels).double().mean().item())
    assert ds["depth_nc1"].attrs["definition"].startswith(depth.DEFINITIONS["depth_nc1"][:40])
    assert ("flattened" in ds["depth_nc1"].attrs["definition"]) == (pool == "flatten")
    assert np.isfinite(ds["depth_rho"].item()) and "nc1" in ds
    assert ("depth_flat_nc1" in ds) == (pool == "mean")  # flattened, depth_nc1 IS the flattened NC1


def test_the_pooled_run_flattened_measures_equal_the_flattened_pool():
    """Two implementations of the flattened NC1 (the cube's depth.layer_collapse beside the pooled measures, and
    layers.flattened for pool="flatten") agree in float64 on the same features."""
    model, train, test, _ = model_and_batches()
    pooled = measure.collapse(model, train, test, layers=["0", "2"], pool="mean", progress=False)
    flat = measure.collapse(model, train, test, layers=["0", "2"], pool="flatten", progress=False)
    np.testing.assert_allclose(pooled["depth_flat_nc1"].values, flat["depth_nc1"].values, rtol=1e-10)
    np.testing.assert_allclose(pooled["depth_flat_trace_ratio"].values, flat["depth_trace_ratio"].values, rtol=1e-10)


def test_all_children_and_one_shot_iterators():
    model, train, test, _ = model_and_batches()
    ds = measure.collapse(model, train, None, layers="all", progress=False)
    assert list(ds["layer_name"].values) == ["0", "1", "2", "3", "4"]
    assert np.isnan(ds["depth_ncc_acc_test"].values).all()
    with pytest.raises(ValueError, match="one-shot iterator"):
        measure.collapse(model, iter(train), layers="all", progress=False)
    with pytest.raises(ValueError, match="no module of that name"):
        measure.collapse(model, train, layers=["9"], progress=False)
