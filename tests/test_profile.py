"""A profile's cubes as the figures' grid (nc.report.profiles), the intro's table of runs and the summaries
(nc.report.reports),
asserted against the cubes' own values; duplicates, stale and empty folders. The VGG cell has two run seeds, the
ResNet cell one: every reader is checked against each seed at its own selected lr."""
import shutil

import numpy as np
import pytest
import torch

from nc import runs
from nc.report import grid, reports
from nc.report import profiles as profile
from nc.runs import cube, params

TINY = {"dataset": "demo", "width": 0.125, "n_per_class": 12, "test_n_per_class": 5, "image_size": 16, "epochs": 4,
        "lrs": [0.02, 0.05], "snapshot_epochs": [1, 2, 4], "robustness_images": 0, "fig1_samples": 3, "device": "cpu",
        "depth": False}
SEEDS = {"vgg11": {"seeds": [0, 1]}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    (root / "parameters").mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for net in ("vgg11", "resnet18"):
            (root / "parameters" / f"demo-{net}.yaml").write_text(f"network: {net}\n")
            p = params.validate(TINY | {"network": net} | SEEDS.get(net, {}), net)
            p.update(name=f"demo-{net}", profile="demo")
            runs.run(p, root / "demo", progress=False)
    finally:
        torch.set_num_threads(threads)
    (root / "parameters" / "demo-densenet40.yaml").write_text("network: densenet40\n")  # never trained: not run
    return root


def test_open_profile_is_each_seed_at_its_selected_lr(folder):
    prof = profile.open_profile(folder / "demo")
    assert list(prof["dataset"].values) == ["demo"] and list(prof["network"].values) == ["vgg", "resnet"]
    assert list(prof["seed"].values) == [0, 1]
    for family, name, seeds in (("vgg", "demo-vgg11", [0, 1]), ("resnet", "demo-resnet18", [0])):
        ds = cube.open_cube(folder / "demo" / f"{name}.nc")
        c = prof.sel(dataset="demo", network=family)
        assert [s for s, _ in profile.seed_runs(c)] == seeds and list(ds["seed"].values) == seeds
        for seed, run in profile.seed_runs(c):
            lr = float(ds["selected_lr_by_seed"].sel(seed=seed))
            assert lr in ds["lr"].values and float(run["selected_lr"]) == lr
            want = ds.sel(lr=lr, seed=seed)
            for var in ("train_loss", "eval_train_acc", "test_acc", "nc1", "cdnv_train", "trace_ratio"):
                np.testing.assert_array_equal(run[var].values, want[var].values, err_msg=f"{var} seed {seed}")
            np.testing.assert_equal(float(run["tpt_epoch"]), float(want["tpt_epoch"]))
        assert ds.attrs["selected_lr"] == float(ds["selected_lr_by_seed"][0])  # the first seed's (its geometry)
        assert str(c["network_name"].values) == name.split("-")[1]
    assert not np.isfinite(prof["train_loss"].sel(network="resnet", seed=1)).any()  # ResNet has no seed 1
    assert profile.stale_cubes(prof) == []


def test_each_seed_gets_its_own_lr_by_the_selection_rule(folder):
    ds = cube.open_cube(folder / "demo" / "demo-vgg11.nc")
    for seed in ds["seed"].values:
        runs_of_seed = ds.sel(seed=seed)
        last = runs_of_seed["test_acc"].isel(epoch=-1).where(runs_of_seed["status"] == "complete")
        assert float(ds["selected_lr_by_seed"].sel(seed=seed)) == float(ds["lr"][int(last.argmax("lr"))])
    assert ds["seed"].values[0] == 0 and ds.attrs["geometry_seed"] == 0
    assert ds["tpt_epoch"].dims == ("lr", "seed") and ds["nc1"].dims == ("lr", "seed", "epoch")


def test_open_profile_reads_only_the_variables_asked_for(folder):
    prof = profile.open_profile(folder / "demo", ["nc1"])
    assert "nc1" in prof and "train_loss" in prof and "cdnv_train" not in prof and "class_means" not in prof


def test_two_cubes_in_one_grid_cell_are_an_error(folder, tmp_path):
    twin = tmp_path / "demo"
    shutil.copytree(folder / "demo", twin, ignore=shutil.ignore_patterns("parts"))
    ds = cube.open_cube(twin / "demo-vgg11.nc")
    ds.attrs["network"] = "vgg13"
    cube.write(ds, twin / "demo-vgg13.nc")
    with pytest.raises(cube.CubeError, match="both the vgg cell of demo"):
        profile.open_profile(twin)


def test_an_empty_folder_is_an_empty_grid_that_pages_draw(tmp_path):
    import matplotlib.pyplot as plt

    prof = profile.open_profile(tmp_path)
    assert profile.cells(prof) == [] and prof.sizes["dataset"] == 0
    fig = grid.grid(prof, [("nc1", grid.BLUE, "NC1")], ylabel="NC1", logy=True)
    assert len(fig.axes) == 21  # the full grid, every cell "no run in this profile"
    plt.close(fig)
    assert "No run of this profile reached the TPT" in reports.summary_markdown(prof, ["nc1"], "NC1")


def test_a_profile_of_few_cells_is_drawn_with_just_its_rows_and_columns(folder):
    import matplotlib.pyplot as plt

    prof = profile.open_profile(folder / "demo")
    assert grid.layout(prof) == (["mnist"], ["vgg", "resnet"])
    fig = grid.grid(prof, [("nc1", grid.BLUE, "NC1")], ylabel="NC1", logy=True)
    assert len(fig.axes) == 2 and fig.get_figwidth() < 8  # one column at a size that reads at the page width
    assert fig.axes[0].get_title() == "MNIST (demo)"
    plt.close(fig)
    full = grid.grid(prof, [("nc1", grid.BLUE, "NC1")], ylabel="NC1", full=True)
    assert len(full.axes) == 21
    plt.close(full)


def test_summary_markdown_rows_are_the_cubes_values(folder):
    prof = profile.open_profile(folder / "demo")
    md = reports.summary_markdown(prof, ["nc1"], "NC1")
    ds = cube.open_cube(folder / "demo" / "demo-resnet18.nc")  # one seed: the values themselves
    s = cube.selected(ds)["nc1"].dropna("epoch")
    assert f"| MNIST (demo) | resnet18 | 1 | nc1 | {float(s[0]):.3g} |" in md
    assert f"{float(s[-1]):.3g} ({int(s['epoch'][-1])}) |" in md
    ds = cube.open_cube(folder / "demo" / "demo-vgg11.nc")  # two seeds: median [min–max] of each seed's own curve
    firsts = [float(cube.selected(ds, seed)["nc1"].dropna("epoch")[0]) for seed in (0, 1)]
    assert f"| MNIST (demo) | vgg11 | 2 | nc1 | {np.median(firsts):.3g} [{min(firsts):.3g}–{max(firsts):.3g}] |" in md


def test_several_seeds_are_drawn_as_the_median_and_a_min_max_band(folder):
    import matplotlib.pyplot as plt

    prof = profile.open_profile(folder / "demo")
    fig = grid.grid(prof, [("nc1", grid.BLUE, "NC1")], ylabel="NC1", logy=True)
    vgg, resnet = fig.axes[0], fig.axes[1]
    ds = cube.open_cube(folder / "demo" / "demo-vgg11.nc")
    curves = np.array([cube.selected(ds, seed)["nc1"].dropna("epoch").values for seed in (0, 1)])
    np.testing.assert_allclose(vgg.lines[0].get_ydata(), np.median(curves, axis=0))
    band = vgg.collections[0].get_paths()[0].vertices[:, 1]
    assert np.isclose(band.min(), curves.min()) and np.isclose(band.max(), curves.max())
    assert len(resnet.collections) == 0  # one seed: no band
    tpts = [float(cube.selected(ds, seed)["tpt_epoch"]) for seed in (0, 1)]
    red = [ln for ln in vgg.lines if ln.get_color() == grid.RED]
    if np.isfinite(tpts).any():
        assert red[0].get_xdata()[0] == np.median(np.array(tpts)[np.isfinite(tpts)])
    plt.close(fig)


def test_claims_are_checked_per_seed_and_counted_k_of_n(folder):
    from nc.report import analysis

    prof = profile.open_profile(folder / "demo")
    rows = analysis.claims(prof)
    for r in (r for r in rows if r["network"] == "vgg11"):
        c = profile.cell(prof, "mnist", "vgg")
        held = [analysis.claim(r["figure"], run)[0] for _, run in profile.seed_runs(c)]
        assert r["n_seeds"] == 2 and [s["held"] for s in r["per_seed"]] == held
        assert r["k"] == held.count(True) and r["n"] == 2 - held.count(None)
        assert r["verdict"] == analysis.verdict(r["k"], r["n"]) and f"in {r['k']} of {r['n']} seeds" in r["text"]
    assert [analysis.verdict(k, n) for k, n in ((2, 2), (1, 2), (0, 2), (0, 0))] == [
        "held", "some", "not held", "not checkable"]
    md = reports.claims_markdown(rows)
    assert "held in some seeds" in md
    assert "| 0 |" in reports.claims_by_seed_markdown(rows, "fig6") and "| 1 |" in reports.claims_by_seed_markdown(
        rows, "fig6")


def test_the_intro_lists_every_run_and_the_cells_not_run(folder):
    table = reports.runs_table(folder / "demo", folder / "parameters")
    assert len(table["rows"]) == 3 and table["not_run"] == ["demo-densenet40"]
    vgg = next(r for r in table["rows"] if "demo-vgg11.html" in r)
    ds = cube.open_cube(folder / "demo" / "demo-vgg11.nc")
    chosen = ", ".join(f"{lr:g}" for lr in ds["selected_lr_by_seed"].values)
    assert f"| 2 | {chosen} |" in vgg and f"{ds.attrs['n_train']} / {ds.attrs['n_test']}" in vgg
    assert table["minutes"] == pytest.approx(sum(float(cube.open_cube(f).attrs["wall_time_total"])
                                                 for f in (folder / "demo").glob("*.nc")) / 60)
    assert reports.tpt_text([np.nan, np.nan]) == "not reached" and reports.tpt_text([14.0]) == "14"
    assert reports.tpt_text([14.0, np.nan, np.nan]) == "14 (1 of 3 seeds)" and reports.tpt_text([7, 9]) == "8 [7–9]"
    md = reports.intro_markdown("demo", folder / "demo", folder / "parameters")
    assert "## What was run" in md and "*not run*" in md
