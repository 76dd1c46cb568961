"""Fig. 1, Fig. 8, Table 1 and the claims page: improvements and claim verdicts on hand-made profiles with known
values, the Fig. 1 projection on a planted simplex ETF, the paper's published numbers, and the four notebooks
executed by papermill on a tiny real run."""
import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from nc.data import DATASETS
from nc.report import analysis, fig1, grid, pages, reports

ROOT = Path(__file__).resolve().parent.parent
PAPER_TEXT = Path("/work/shared/paper/000_6551384d1c0f97b8.txt")
EPOCHS = np.arange(1, 11)
SNAPSHOTS = [1, 2, 4, 7, 10]
NAN = np.nan


def curve(values):
    """A snapshot variable: `values` at SNAPSHOTS, NaN between them."""
    out = np.full(EPOCHS.size, np.nan)
    out[np.array(SNAPSHOTS) - 1] = values
    return out


def cell_vars(tpt, robustness, test_acc, nc1=(10, 5, 1, .5, .2), ncc=(.5, .3, .1, .05, .02),
              means=(.5, .4, .3, .2, .1), classifiers=(.5, .4, .3, .2, .1), status="complete", name="x"):
    snaps = {"robustness": robustness, "nc1": nc1, "ncc_mismatch": ncc, "self_duality": means,
             **{f"{k}_means": means for k in ("equinorm", "equiangular", "maxangle")},
             **{f"{k}_classifiers": classifiers for k in ("equinorm", "equiangular", "maxangle")}}
    return {"train_loss": np.linspace(2, .1, EPOCHS.size), "test_acc": np.asarray(test_acc, float),
            **{k: curve(v) for k, v in snaps.items()}, "tpt_epoch": tpt, "status": status, "network_name": name}


ACC_UP = np.linspace(.5, .92, 10)  # epoch 4: 0.64, epoch 10: 0.92
ACC_B = np.array([.1, .2, .3, .4, .5, .80, .85, .80, .79, .79])  # epoch 6 exactly: 0.80 (epoch 7 would be 0.85)


def grid_of(cells: dict, datasets, networks) -> xr.Dataset:
    """Dims (dataset, network, seed, epoch) as nc.report.profiles.open_profile returns them, from {(dataset, family):
    [one
    cell_vars dict per seed]}; every cell has the same number of seeds."""
    n_seeds = len(next(iter(cells.values())))
    data = {}
    for k in next(iter(cells.values()))[0]:
        if k == "network_name":
            data[k] = (("dataset", "network"), np.array([[cells[(d, n)][0][k] for n in networks] for d in datasets]))
            continue
        arr = np.array([[[seed[k] for seed in cells[(d, n)]] for n in networks] for d in datasets])
        data[k] = (("dataset", "network", "seed", "epoch")[:arr.ndim], arr)
    data["selected_lr"] = (("dataset", "network", "seed"), np.full((len(datasets), len(networks), n_seeds), 0.1))
    return xr.Dataset(data, coords={"dataset": datasets, "network": networks, "seed": np.arange(n_seeds),
                                    "epoch": EPOCHS})


def hand_made_profile():
    """One seed per cell, with known values:
    demo/vgg    TPT at 4: robustness 0.1 -> 0.3 (+0.2), test acc 64 -> 92, classifiers' equinorm rises after the TPT;
    demo/resnet TPT at 6 (snapshot 7): robustness 0.4 -> 0.35, test acc 80 -> 79, NC1 falls only 2x;
    demo/densenet never reaches the TPT;
    cifar10/vgg missing; cifar10/resnet TPT at the last epoch; cifar10/densenet NCC mismatch ends at 0.06."""
    cells = {
        ("demo", "vgg"): cell_vars(4., (.05, .08, .1, .2, .3), ACC_UP, classifiers=(.5, .4, .3, .35, .4),
                                   name="vgg11"),
        ("demo", "resnet"): cell_vars(6., (.05, .1, .2, .4, .35), ACC_B, nc1=(1, .9, .8, .7, .5),
                                      ncc=(.5, .3, .1, 0, 0), name="resnet18"),
        ("demo", "densenet"): cell_vars(NAN, (.01, .02, .03, .04, .05), ACC_UP, name="densenet40"),
        ("cifar10", "vgg"): cell_vars(NAN, [NAN] * 5, [NAN] * 10, status="missing", name=""),
        ("cifar10", "resnet"): cell_vars(10., (.1, .2, .3, .4, .5), ACC_UP, name="resnet18"),
        ("cifar10", "densenet"): cell_vars(3., (.1, .2, .3, .4, .5), ACC_UP, ncc=(.5, .3, .2, .1, .06),
                                           name="densenet40"),
    }
    return grid_of({k: [v] for k, v in cells.items()}, ["demo", "cifar10"], ["vgg", "resnet", "densenet"])


def three_seed_profile():
    """demo/vgg with three seeds: robustness rises in the TPT in seeds 0 and 1 (+0.2, +0.1), falls in seed 2
    (-0.05); the TPT starts at epochs 4, 4 and 7; test accuracy 64 -> 92, 64 -> 92 and 85 -> 79 (lower)."""
    seeds = [cell_vars(4., (.05, .08, .1, .2, .3), ACC_UP, name="vgg11"),
             cell_vars(4., (.05, .08, .1, .15, .2), ACC_UP, name="vgg11"),
             cell_vars(7., (.05, .1, .2, .4, .35), ACC_B, name="vgg11")]
    return grid_of({("demo", "vgg"): seeds}, ["demo"], ["vgg"])


@pytest.fixture(scope="module")
def profile():
    return hand_made_profile()


def paper_values():
    return yaml.safe_load((ROOT / "book" / "paper_values.yaml").read_text())


def by_cell(rows, **match):
    return {(r["dataset"], r["family"]): r for r in rows if all(r[k] == v for k, v in match.items())}


def test_robustness_improvements_from_the_tpt_snapshot_to_the_last_epoch(profile):
    rows = by_cell(analysis.improvements(profile, "robustness"))
    assert set(rows) == {("mnist", "vgg"), ("mnist", "resnet"), ("mnist", "densenet"), ("cifar10", "resnet"),
                         ("cifar10", "densenet")}  # the missing cell is not a cell
    assert rows[("mnist", "vgg")]["improvement"] == pytest.approx(0.2)
    assert rows[("mnist", "vgg")]["tpt_snapshot"] == 4 and rows[("mnist", "vgg")]["at_tpt"] == pytest.approx(0.1)
    assert rows[("mnist", "resnet")]["tpt_snapshot"] == 7  # the first snapshot at or after epoch 6
    assert rows[("mnist", "resnet")]["improvement"] == pytest.approx(-0.05)
    assert rows[("mnist", "densenet")]["improvement"] is None and rows[("mnist", "densenet")]["tpt_snapshot"] is None
    assert rows[("cifar10", "resnet")]["improvement"] == 0.0  # TPT at the last epoch
    assert rows[("cifar10", "densenet")]["improvement"] == pytest.approx(0.5 - 0.3)  # TPT 3 -> snapshot 4
    s = analysis.improvement_summary(list(rows.values()))
    assert s["n"] == 4
    assert s["median"] == pytest.approx(np.median([0.2, -0.05, 0.0, 0.2]))
    assert s["mean"] == pytest.approx(np.mean([0.2, -0.05, 0.0, 0.2]))
    empty = [{"dataset": "mnist", "family": f, "improvement": x} for f, x in (("vgg", None), ("resnet", np.nan))]
    assert np.isnan(analysis.improvement_summary(empty)["median"]) and analysis.improvement_summary(empty)["n"] == 0


def test_table1_uses_the_test_accuracy_at_the_tpt_epoch_exactly(profile):
    rows = by_cell(analysis.accuracy_table(profile))
    vgg, resnet = rows[("mnist", "vgg")], rows[("mnist", "resnet")]
    assert vgg["at_tpt"] == pytest.approx(ACC_UP[3] * 100) and vgg["at_last"] == pytest.approx(92.0)
    assert vgg["improvement"] == pytest.approx(92.0 - ACC_UP[3] * 100)
    assert resnet["at_tpt"] == pytest.approx(80.0) and resnet["improvement"] == pytest.approx(-1.0)
    assert rows[("mnist", "densenet")]["at_tpt"] is None and rows[("mnist", "densenet")]["improvement"] is None
    assert rows[("mnist", "densenet")]["at_last"] == pytest.approx(92.0)
    md = reports.table1_markdown(profile, paper_values())
    lines = md.splitlines()
    assert len(lines) == 2 + 21
    svhn_vgg = next(line for line in lines if line.startswith("| SVHN | VGG11"))
    assert svhn_vgg.endswith("| 93.82 | 94.53 | — | — | — | — | — |")  # not run here
    mnist_resnet = next(line for line in lines if line.startswith("| MNIST | ResNet18"))
    assert "80.00 (6)" in mnist_resnet and "79.00 (10)" in mnist_resnet and "-1.00" in mnist_resnet
    assert "TPT not reached" in next(line for line in lines if line.startswith("| MNIST | DenseNet40"))


def test_claim_verdicts(profile):
    rows = analysis.claims(profile)
    assert {r["figure"] for r in rows} == set(analysis.CLAIMS)
    assert len(rows) == len(analysis.CLAIMS) * 5
    for r in rows:
        assert r["held"] in (True, False, None)
    held = {f: {k: r["held"] for k, r in by_cell(rows, figure=f).items()} for f in analysis.CLAIMS}
    # never reached the TPT, or reached it at the last epoch: not checkable, for every figure
    assert all(held[f][("mnist", "densenet")] is None for f in analysis.CLAIMS)
    assert all(held[f][("cifar10", "resnet")] is None for f in analysis.CLAIMS)
    assert held["fig8"][("mnist", "vgg")] is True and held["fig8"][("mnist", "resnet")] is False
    assert held["table1"][("mnist", "vgg")] is True and held["table1"][("mnist", "resnet")] is False
    # Fig. 2-4 need both means and classifiers lower: the VGG cell's classifiers rise after the TPT
    for f in ("fig2", "fig3", "fig4"):
        assert held[f][("mnist", "vgg")] is False and held[f][("mnist", "resnet")] is True
    assert held["fig5"][("mnist", "vgg")] is True
    # Fig. 6: the ResNet cell's NC1 falls after the TPT but only 2x overall
    assert held["fig6"][("mnist", "vgg")] is True and held["fig6"][("mnist", "resnet")] is False
    # Fig. 7: 0 -> 0 holds (not higher, below the threshold); 0.06 at the end is above it
    assert held["fig7"][("mnist", "resnet")] is True and held["fig7"][("cifar10", "densenet")] is False
    r = by_cell(rows, figure="fig8")[("mnist", "vgg")]
    assert r["numbers"]["robustness_at_tpt"] == pytest.approx(0.1)
    assert r["numbers"]["robustness_last"] == pytest.approx(0.3) and "0.1→0.3" in r["text"]
    md = reports.claims_markdown(rows)
    assert f"| {pages.TITLES['fig8']} |" in md and md.count("\n") == len(analysis.CLAIMS) + 1
    fig6 = re.escape(f"| {pages.TITLES['fig6']} |") + r" [^\n]* \| 2 \| 1 \| 2 \|"  # held, not, not checkable
    assert re.search(fig6, md)
    assert all(line.count("|") - line.count("\\|") == 6 for line in md.splitlines())  # a | in a rule is escaped


def test_claims_grid_colours_each_cell_by_its_verdict(profile):
    import matplotlib.colors as mc
    import matplotlib.pyplot as plt

    fig = grid.claims_grid(analysis.claims(profile), "fig8", pages.TITLES["fig8"], profile, full=True)
    colour = {(round(p.get_x()), round(p.get_y())): mc.to_hex(p.get_facecolor()) for p in fig.axes[0].patches}
    assert len(colour) == 21
    mnist, cifar10 = DATASETS.index("mnist"), DATASETS.index("cifar10")
    assert colour[(mnist, 0)] == grid.GREEN_HELD and colour[(mnist, 1)] == grid.RED_NOT
    assert colour[(mnist, 2)] == grid.GREY_NA and colour[(cifar10, 1)] == grid.GREY_NA
    assert colour[(cifar10, 0)] == grid.EMPTY and colour[(DATASETS.index("svhn"), 0)] == grid.EMPTY
    plt.close(fig)


def test_three_seeds_are_counted_k_of_n_with_their_spread_and_per_cell_medians():
    import matplotlib.colors as mc
    import matplotlib.pyplot as plt

    prof = three_seed_profile()
    claims = analysis.claims(prof)
    r = by_cell(claims, figure="fig8")[("mnist", "vgg")]
    assert (r["k"], r["n"], r["n_seeds"], r["verdict"], r["held"]) == (2, 3, 3, "some", False)
    assert r["text"] == "in 2 of 3 seeds\n0✓ 1✓ 2✗" and [s["held"] for s in r["per_seed"]] == [True, True, False]
    t1 = by_cell(claims, figure="table1")[("mnist", "vgg")]
    assert (t1["k"], t1["n"], t1["verdict"]) == (2, 3, "some")
    imp = analysis.improvements(prof, "robustness")
    assert [x["seed"] for x in imp] == [0, 1, 2]
    assert [x["improvement"] for x in imp] == pytest.approx([0.2, 0.1, -0.05])
    summary = analysis.improvement_summary(imp)  # one cell: its median over the seeds
    assert summary["n"] == 1 and summary["median"] == pytest.approx(0.1)
    line = next(x for x in reports.table1_markdown(prof, paper_values()).splitlines() if x.startswith("| MNIST | VGG"))
    assert "| 64.00 [64.00–85.00] (4 [4–7]) | 92.00 [79.00–92.00] (10) |" in line
    assert "| 2 of 3 seeds | 0.1, 0.1, 0.1 |" in line
    md = reports.claims_markdown(claims)
    fig8 = re.escape(f"| {pages.TITLES['fig8']} |") + r" [^\n]* \| 0 \| 1 \| 0 \| 0 \|"  # held, some, not, n/a
    assert "held in some seeds" in md and re.search(fig8, md)
    assert "| MNIST (demo) | vgg11 | 2 | did not hold |" in reports.claims_by_seed_markdown(claims, "fig8")
    assert grid.tpt_ranges(prof) == ["vgg11 (demo): median 4 [4–7], 3 of 3 seeds reached it"]
    summary_md = reports.summary_markdown(prof, ["robustness"], "robustness")
    want = ("| MNIST (demo) | vgg11 | 3 | robustness | 0.05 [0.05–0.05] | 4 [4–7] | 0.1 [0.1–0.4] | "
            "0.3 [0.2–0.35] (10) |")
    assert want in summary_md
    assert "**1 of 3** curves" in summary_md  # lower at the end: seed 2 only
    fig = grid.grid(prof, [("robustness", grid.BLUE, "robustness")], ylabel="r")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [.05, .08, .1, .2, .3])  # the median at each snapshot
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(.05) and band.max() == pytest.approx(.4)
    assert ax.lines[1].get_xdata()[0] == 4  # the median TPT start
    plt.close(fig)
    fig = grid.claims_grid(claims, "fig8", pages.TITLES["fig8"], prof)
    assert mc.to_hex(fig.axes[0].patches[0].get_facecolor()) == grid.AMBER_SOME
    plt.close(fig)


def test_a_seed_without_a_complete_run_is_left_out_and_a_short_seed_does_not_cut_the_band():
    from nc.report import profiles as profile_mod

    prof = three_seed_profile()
    prof["selected_lr"].loc[{"dataset": "demo", "network": "vgg", "seed": 2}] = np.nan  # every lr of seed 2 failed
    assert [s for s, _ in profile_mod.seed_runs(profile_mod.cell(prof, "mnist", "vgg"))] == [0, 1]
    assert by_cell(analysis.claims(prof), figure="fig8")[("mnist", "vgg")]["n_seeds"] == 2
    short = three_seed_profile()
    short["robustness"].loc[{"seed": 2, "epoch": [7, 10]}] = np.nan  # seed 2 ends early
    middle, low, high = grid.seed_band(profile_mod.cell(short, "mnist", "vgg")["robustness"])
    assert list(middle["epoch"].values) == SNAPSHOTS and float(high.sel(epoch=10)) == pytest.approx(.3)


def planted(num_classes=10, p=16, n=5, noise=0.0, seed=0):
    """A C-class simplex ETF embedded in R^p by a random orthogonal map, shifted by a global mean."""
    rng = np.random.default_rng(seed)
    etf = np.sqrt(num_classes / (num_classes - 1)) * (np.eye(num_classes) - 1 / num_classes)
    q = np.linalg.qr(rng.normal(size=(p, p)))[0][:, :num_classes]
    mu_g = rng.normal(size=p) * 3
    means = 2.5 * etf @ q.T + mu_g  # rows: class means
    classes = [1, 4, 7]
    feats = means[classes][:, None, :] + noise * rng.normal(size=(3, n, p))
    return means[classes], mu_g, 7.0 * (means[classes] - mu_g), feats, num_classes


def test_fig1_projection_puts_a_collapsed_configuration_on_the_simplex_vertices():
    g = fig1.fig1_project(*planted())
    v = g["vertices"]
    assert np.allclose(np.linalg.norm(v, axis=1), 1)
    cos = v @ v.T
    assert np.allclose(cos[~np.eye(3, dtype=bool)], -1 / 9)  # pairwise cosine -1/(C-1) for C = 10
    assert np.allclose(g["means"], v, atol=1e-9)
    assert np.allclose(g["classifiers"], v, atol=1e-9)
    assert np.allclose(g["features"], v[:, None, :], atol=1e-9)
    # C = 3: the planar 120-degree triangle
    v3 = fig1.simplex_vertices(3)
    assert np.allclose(v3 @ v3.T, [[1, -.5, -.5], [-.5, 1, -.5], [-.5, -.5, 1]])


def test_fig1_projection_is_a_rotation_and_rescaling_of_the_data():
    means, mu_g, w, feats, c = planted(noise=0.3)
    means = means + np.random.default_rng(1).normal(size=means.shape) * 0.5  # not collapsed
    g = fig1.fig1_project(means, mu_g, w, feats, c)
    assert np.linalg.norm(g["means"], axis=1).mean() == pytest.approx(1)
    assert np.linalg.norm(g["classifiers"], axis=1).mean() == pytest.approx(1)
    assert not np.allclose(g["means"], g["vertices"], atol=1e-2)
    # distances between means are those of the data, divided by the means' scale
    centred = means - mu_g
    scale = np.linalg.norm(centred, axis=1).mean()
    d = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)
    assert np.allclose(d(g["means"]), d(centred) / scale)
    # the features keep their distance to their own class mean (in the means' span) on the same scale
    # and the picture does not depend on how the feature space is rotated
    rng = np.random.default_rng(2)
    q = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    g2 = fig1.fig1_project(means @ q, mu_g @ q, w @ q, feats @ q, c)
    for k in ("means", "classifiers", "features", "vertices"):
        assert np.allclose(g[k], g2[k], atol=1e-9)


def test_fig1_epochs_follow_the_papers_fractions():
    assert fig1.fig1_epochs([1, 2, 3, 5, 8, 16, 30, 65, 100, 200, 350], 350) == [2, 16, 65, 350]
    # 25 epochs: targets 0.14, 1.14, 4.6, 25 -> the nearest snapshots, each later than the one before
    assert fig1.fig1_epochs([1, 2, 3, 4, 6, 10, 16, 25], 25) == [1, 2, 4, 25]
    assert fig1.fig1_epochs([1, 5], 5) == [1, 5]


def test_fig1_cube_is_the_vgg_run_of_the_first_dataset_present(tmp_path):
    def make(d, n):
        xr.Dataset(attrs={"dataset": d, "network": n}).to_netcdf(tmp_path / f"{d}-{n}.nc", engine="netcdf4")

    for d, n in [("cifar10", "vgg13"), ("svhn", "densenet40"), ("svhn", "vgg11")]:
        make(d, n)
    assert fig1.fig1_cube(tmp_path).name == "svhn-vgg11.nc"
    make("demo", "resnet18")  # the demo is the MNIST column; it has no VGG run
    assert fig1.fig1_cube(tmp_path).name == "demo-resnet18.nc"
    assert fig1.fig1_cube(tmp_path, "cifar10-vgg13").name == "cifar10-vgg13.nc"
    with pytest.raises(FileNotFoundError):
        fig1.fig1_cube(tmp_path, "stl10-vgg13")


def test_paper_values_are_the_papers_table_1():
    paper = paper_values()
    assert "PNAS" in paper["source"] and "Table 1" in paper["source"]
    acc = paper["table1"]["accuracy"]
    assert acc["mnist"]["vgg"] == [99.40, 99.56]
    assert acc["cifar100"]["densenet"] == [77.19, 76.56]
    assert acc["stl10"]["densenet"] == [67.79, 70.81]
    assert acc["imagenet"]["resnet"] == [65.41, 64.45]
    assert (paper["fig8"]["median_improvement"], paper["fig8"]["mean_improvement"]) == (0.0252, 0.2452)
    rows = analysis.paper_table1(paper)
    assert len(rows) == 21
    # The paper's summary (median 0.3495%, mean 0.4984%) recomputed from the table's own 21 rows: 0.35 and
    # 0.4990. They agree to the table's rounding (two values to 0.01 each: a difference is off by < 0.01), as
    # expected when the paper summarised unrounded accuracies.
    s = analysis.improvement_summary(rows)
    assert s["n"] == 21
    assert s["median"] == pytest.approx(0.35) and s["mean"] == pytest.approx(10.48 / 21)
    assert abs(s["median"] - paper["table1"]["median_improvement"]) < 0.01
    assert abs(s["mean"] - paper["table1"]["mean_improvement"]) < 0.01


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason="the paper's text is not on this machine")
def test_paper_values_match_the_papers_text_row_by_row():
    text = PAPER_TEXT.read_text()
    table = text[text.index("**Table 1."):text.index("The median improvement of test accuracy")]
    published = [tuple(map(float, m)) for m in re.findall(r"(?:VGG|ResNet|DenseNet)\s+([\d.]+)\s+([\d.]+)", table)]
    ours = [(r["at_zero_error"], r["at_last"]) for r in analysis.paper_table1(paper_values())]
    assert published == ours
    assert "0.3495%; the mean improvement is 0.4984%" in text
    assert "is 0.0252; the mean improvement is 0.2452" in text


# ---------------------------------------------------------------------------------------------------------
# The notebooks on a tiny real run (conftest.tiny_cubes: about 7 s of training, then ~6 s per notebook).

def execute(name, cubes, tmp_path):
    import jupytext
    import papermill

    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(jupytext.read(ROOT / "book" / "figures" / f"{name}.md"), str(out),
                               parameters={"profile": "tiny", "cube_dir": str(cubes)}, cwd=str(ROOT),
                               kernel_name="python3", progress_bar=False)
    outputs = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    data = [o.get("data", {}) for o in outputs]
    images = [base64.b64decode(d["image/png"]) for d in data if "image/png" in d]
    assert images and all(i.startswith(b"\x89PNG") for i in images)
    text = "\n".join("".join(d.get("text/markdown", "")) + "".join(d.get("text/html", "")) for d in data)
    return images, text


@pytest.mark.parametrize("name", ["fig2", "fig3", "fig4", "fig5", "fig6", "fig7"])
def test_grid_page_summary_is_the_cubes_values(name, tiny_cubes, tmp_path):
    """Each grid page's table gives, per measure, the cube's value at the first snapshot, at the first snapshot at
    or after tpt_epoch, and at the last epoch: recomputed here from the cube with xarray alone."""
    import xarray as xr

    from nc.runs import cube

    images, text = execute(name, tiny_cubes, tmp_path)
    assert len(images) == 1
    ds = cube.open_cube(tiny_cubes / "demo-vgg11.nc").sel(lr=0.05, seed=0)
    tpt = float(ds["tpt_epoch"])
    for variable, _, _ in pages.FIGURES[name].curves:
        s = ds[variable].dropna("epoch")
        first, last = float(s[0]), float(s[-1])
        at = s.where(s["epoch"] >= tpt, drop=True) if np.isfinite(tpt) else xr.DataArray([])
        tpt_text = f"{tpt:.0f} | {float(at[0]):.3g}" if at.size else "never reached | —"
        row = (f"| MNIST (demo) | vgg11 | 1 | {variable.replace('_', ' ')} | {first:.3g} | {tpt_text} | "
               f"{last:.3g} ({int(s['epoch'][-1])}) |")
        assert row in text, (row, text[:2000])


@pytest.mark.parametrize("name", ["fig8", "table1", "claims"])
def test_notebook_runs_on_a_real_cube(name, tiny_cubes, tmp_path):
    images, text = execute(name, tiny_cubes, tmp_path)
    if name == "fig8":
        assert "| paper | 0.0252 | 0.2452 | 21 |" in text and "| MNIST (demo) | vgg11 |" in text
    if name == "table1":
        assert "| paper | 0.3495% | 0.4984% | 21 |" in text and "| MNIST | VGG11 / vgg11, demo data | 99.40" in text
    if name == "claims":
        assert len(images) == len(analysis.CLAIMS)


def test_fig1_notebook_embeds_plotly_and_a_static_image(tiny_cubes, tmp_path):
    images, text = execute("fig1", tiny_cubes, tmp_path)
    assert len(images) == 1
    assert "Plotly.newPlot" in text and "scene4" in text  # four interactive 3-D panels
    assert text.count("plotly.js v") >= 1 and len(text) > 1_000_000  # plotly.js embedded: works offline
    assert "demo-vgg11" in text
