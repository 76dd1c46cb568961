"""A profile's cubes as the figures' grid (nc.profile), the intro's table of runs and the summaries (nc.reports),
asserted against the cubes' own values; duplicates, stale and empty folders."""
import shutil

import numpy as np
import pytest
import torch

from nc import cube, grid, params, profile, reports, runs

TINY = {"dataset": "demo", "width": 0.125, "n_per_class": 12, "test_n_per_class": 5, "image_size": 16, "epochs": 4,
        "lrs": [0.02, 0.05], "snapshot_epochs": [1, 2, 4], "robustness_images": 0, "fig1_samples": 3, "device": "cpu",
        "depth": False}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    (root / "parameters").mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for net in ("vgg11", "resnet18"):
            (root / "parameters" / f"demo-{net}.yaml").write_text(f"network: {net}\n")
            p = params.validate(TINY | {"network": net}, net)
            p.update(name=f"demo-{net}", profile="demo")
            runs.run(p, root / "demo", progress=False)
    finally:
        torch.set_num_threads(threads)
    (root / "parameters" / "demo-densenet40.yaml").write_text("network: densenet40\n")  # never trained: not run
    return root


def test_open_profile_is_each_cubes_selected_lr(folder):
    prof = profile.open_profile(folder / "demo")
    assert list(prof["dataset"].values) == ["demo"] and list(prof["network"].values) == ["vgg", "resnet"]
    for family, name in (("vgg", "demo-vgg11"), ("resnet", "demo-resnet18")):
        ds = cube.open_cube(folder / "demo" / f"{name}.nc")
        lr = ds.attrs["selected_lr"]
        c = prof.sel(dataset="demo", network=family)
        for var in ("train_loss", "eval_train_acc", "test_acc", "nc1", "cdnv_train", "trace_ratio"):
            np.testing.assert_array_equal(c[var].values, ds[var].sel(lr=lr).values, err_msg=var)
        assert float(c["tpt_epoch"]) == float(ds["tpt_epoch"].sel(lr=lr)) or np.isnan(float(c["tpt_epoch"]))
        assert float(c["selected_lr"]) == lr and str(c["network_name"].values) == name.split("-")[1]
    assert profile.stale_cubes(prof) == []


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
    for name, net in (("demo-vgg11", "vgg11"), ("demo-resnet18", "resnet18")):
        ds = cube.open_cube(folder / "demo" / f"{name}.nc")
        s = ds["nc1"].sel(lr=ds.attrs["selected_lr"]).dropna("epoch")
        assert f"| MNIST (demo) | {net} | nc1 | {float(s[0]):.3g} |" in md
        assert f"{float(s[-1]):.3g} ({int(s['epoch'][-1])}) |" in md


def test_the_intro_lists_every_run_and_the_cells_not_run(folder):
    table = reports.runs_table(folder / "demo", folder / "parameters")
    assert len(table["rows"]) == 3 and table["not_run"] == ["demo-densenet40"]
    vgg = next(r for r in table["rows"] if "demo-vgg11.html" in r)
    ds = cube.open_cube(folder / "demo" / "demo-vgg11.nc")
    assert f"| {ds.attrs['selected_lr']:g} |" in vgg and f"{ds.attrs['n_train']} / {ds.attrs['n_test']}" in vgg
    assert table["minutes"] == pytest.approx(sum(float(cube.open_cube(f).attrs["wall_time_total"])
                                                 for f in (folder / "demo").glob("*.nc")) / 60)
    md = reports.intro_markdown("demo", folder / "demo", folder / "parameters")
    assert "## What was run" in md and "*not run*" in md
