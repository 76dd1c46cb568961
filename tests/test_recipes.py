"""The README's "Adding a dataset, a network, a metric, a loss", followed literally: what a recipe adds trains,
is measured and reaches the cube and the figures' grid."""
import numpy as np
import pytest
import torch.nn as nn
from conftest import tiny

from nc import data, models, runs
from nc.data import registry
from nc.report import grid
from nc.report import profiles as profile
from nc.runs import cube


def _toy_npz(path, classes=4, n_train=40, n_test=12, size=8, seed=0):
    """An .npz in the README's format: uint8 N x H x W images (a bright square per class, plus noise)."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = np.arange(n) % classes
        x = rng.integers(0, 60, size=(n, size, size))
        for c in range(classes):
            r, k = divmod(c, 2)
            x[y == c, r * 4:r * 4 + 4, k * 4:k * 4 + 4] += 180
        return x.astype(np.uint8), y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array([f"square {c}" for c in range(classes)]))


@pytest.fixture
def toy_dataset(tmp_path):
    """The recipe's two steps: the .npz file in a folder, one `register` call (a line in nc/data/registry.py)."""
    _toy_npz(tmp_path / "toy.npz")
    entry = data.register("toy", "Toy squares")
    yield tmp_path, entry
    for index in (registry.REGISTRY, registry.TITLES, registry.NPZ_FILES, registry.SIZES, registry.COLUMN):
        index.pop("toy", None)


def test_an_npz_dataset_added_the_documented_way_trains_and_is_a_column_of_its_own(toy_dataset, tmp_path):
    folder, entry = toy_dataset
    assert entry.npz_file == "toy.npz" and "toy" in data.columns() and data.column_of("toy") == "toy"
    p = tiny("toy-vgg11", dataset="toy", npz_dir=str(folder), n_per_class=None, test_n_per_class=None,
             image_size=None, epochs=4, snapshot_epochs=[1, 4])
    p.update(name="toy-vgg11", profile="mine")
    path = runs.run(p, tmp_path / "cubes", progress=False)
    ds = cube.open_cube(path)
    assert ds.attrs["dataset"] == "toy" and ds.attrs["n_train"] == 40 and ds.attrs["num_classes"] == 4
    loss = ds["train_loss"].sel(seed=0).isel(lr=0).values
    assert np.isfinite(loss).all() and loss[-1] < loss[0]  # it trains
    nc1 = cube.selected(ds)["nc1"].dropna("epoch").values
    assert nc1.size == 2 and np.isfinite(nc1).all() and (nc1 >= 0).all()  # and is measured
    prof = profile.open_profile(tmp_path / "cubes")
    assert grid.layout(prof) == (["toy"], ["vgg"])
    assert [(col, row) for col, row, _ in profile.cells(prof)] == [("toy", "vgg")]
    assert grid.layout(prof, full=True)[0][-1] == "toy"  # the full grid: after the paper's seven columns


def test_a_dataset_without_its_npz_folder_is_named_with_the_fix(toy_dataset):
    with pytest.raises(data.DatasetUnavailable, match="toy.npz.*NC_NPZ_DIR"):
        data.load("toy", npz_dir=None)
    with pytest.raises(ValueError, match="registered already"):
        data.register("toy", "again")
    with pytest.raises(ValueError, match="column must be a registered dataset"):
        data.register("toy2", "Toy 2", column="nowhere")


def test_a_network_registered_the_documented_way_trains_in_its_row(tmp_path):
    def tiny_mlp(num_classes, in_channels, image_size, width, stem, **options):
        features = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 16), nn.ReLU(),
                                 nn.Linear(16, 16), nn.BatchNorm1d(16))
        return features, 16, {"hidden": "2", "h": "4"}

    models.register("mlp16", "vgg", tiny_mlp)
    try:
        p = tiny("demo-mlp16", network="mlp16", epochs=3, snapshot_epochs=[1, 3])
        p.update(name="demo-mlp16", profile="mine")
        ds = cube.open_cube(runs.run(p, tmp_path, progress=False))
        loss = ds["train_loss"].sel(seed=0).isel(lr=0).values
        assert ds.attrs["network"] == "mlp16" and np.isfinite(loss).all() and loss[-1] < loss[0]
        assert list(ds["layer_name"].values) == ["hidden", "h"]  # its blocks, measured by depth
        assert grid.layout(profile.open_profile(tmp_path)) == (["mnist"], ["vgg"])
    finally:
        models.REGISTRY.pop("mlp16", None)
        models.NETWORKS.remove("mlp16")


def test_a_metric_registered_the_documented_way_reaches_the_cube_the_run_page_a_figure_page_and_the_api(tmp_path,
                                                                                                      monkeypatch):
    """README "Adding a metric": one `register` call on a function of the moments, one `figure` entry. The measure
    here is Tr(Sigma_B) = ||M||_F^2 / C, whose closed form the cube's stored geometry gives back."""
    import matplotlib.pyplot as plt
    import torch

    from nc.measure import collapse, registry
    from nc.report import catalog, pages, run_page

    @registry.register("between_trace", "trace of the between-class covariance", "feature units squared",
                       "Tr(Sigma_B) = ||M||_F^2 / C, M = [mu_c - mu_G], train features")
    def between_trace(moments, W, test):
        M = moments.class_means - moments.global_mean
        return float((M * M).sum() / M.shape[0])

    catalog.figure("between_trace", [("between_trace", "means", "Tr Σ_B")], "Tr Σ_B", log=True)
    try:
        with pytest.raises(ValueError, match="exists already"):
            registry.register("nc1", "again", "1", "again")
        p = tiny("demo-vgg11", epochs=3, snapshot_epochs=[1, 3])
        p.update(name="demo-vgg11", profile="mine")
        ds = cube.open_cube(runs.run(p, tmp_path, progress=False))
        v = ds["between_trace"]
        assert v.dims == cube.LE and v.attrs["units"] == "feature units squared"
        assert v.attrs["definition"].startswith("Tr(Sigma_B)")
        sel = cube.selected(ds)
        values = sel["between_trace"].values
        assert np.isnan(values[1]) and np.isfinite(values[[0, 2]]).all()  # at the snapshots only
        for s, epoch in enumerate(sel["geometry_epoch"].values):  # the closed form on the stored geometry
            M = ds["class_means"].isel(geometry=s).values - ds["global_mean"].isel(geometry=s).values
            assert values[epoch - 1] == pytest.approx((M ** 2).sum() / M.shape[0], rel=1e-12)

        fig = run_page.metrics_figure(sel)  # the run page: a panel titled by the measure's long name
        assert "trace of the between-class covariance" in [ax.get_title() for ax in fig.axes]
        plt.close(fig)

        assert "more" in [page.name for page in pages.book_pages()]  # the "More measures" page is now in the book
        prof = pages.setup("mine", tmp_path, cube.EPOCH_VARS + cube.SNAPSHOT_VARS + pages.figure_variables("more"))
        before = set(plt.get_fignums())
        monkeypatch.setattr(plt, "show", lambda: None)  # keep the figure open to look at it
        pages.show_page_figures(prof, "more")
        drawn = [plt.figure(n) for n in set(plt.get_fignums()) - before]
        assert drawn and any(ax.get_ylabel().endswith("Tr Σ_B") and ax.get_yscale() == "log"
                             for f in drawn for ax in f.axes)
        plt.close("all")

        x = torch.randn(60, 5, dtype=torch.float64)  # the any-network API computes it too, by the same function
        y = torch.arange(60) % 3
        head = nn.Linear(5, 3).double()
        out = collapse(nn.Sequential(nn.Identity(), head), [(x, y)], progress=False)
        mu = torch.stack([x[y == c].mean(0) for c in range(3)])
        assert float(out["between_trace"]) == pytest.approx(float(((mu - mu.mean(0)) ** 2).sum() / 3), rel=1e-12)
    finally:
        registry.unregister("between_trace")
        catalog.FIGURES.pop("between_trace")
    assert "between_trace" not in cube.variables_mod.snapshot_names("cross_entropy")
