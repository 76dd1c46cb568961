"""Part II's own runs, tiny and real: the recipe parameters (loss, classifier, weight decay, class imbalance) are
validated and do what they say, and the follow-up pages execute on their cubes with claims computed from them."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from nc import data, models, runs
from nc.report import after
from nc.report import profiles as profile
from nc.runs import cube, params

TINY = {"dataset": "demo", "network": "vgg11", "width": 0.125, "n_per_class": 20, "test_n_per_class": 10,
        "image_size": 16, "epochs": 6, "lrs": [0.05], "snapshot_epochs": [1, 3, 6], "robustness_images": 0,
        "fig1_samples": 4, "device": "cpu", "seed": 0}
ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"demo-vgg11-ce": {}, "demo-vgg11-mse": {"loss": "mse"}, "demo-vgg11-fixed-etf": {"classifier": "fixed_etf"},
            "demo-vgg11-wd0": {"weight_decay": 0.0}, "demo-vgg11-imbalance10": {"imbalance_ratio": 10},
            "demo-vgg11-imbalance100": {"imbalance_ratio": 100},
            "demo-vgg11-transfer": {"held_out_classes": [5, 6, 7, 8, 9]}}
TRANSFER = ("transfer", "nc5")  # the transfer run's claims (the CDNV page); the TPT may not come in 6 tiny epochs


@pytest.fixture(scope="module")
def followups(tmp_path_factory):
    folder = tmp_path_factory.mktemp("followups")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, over in VARIANTS.items():
            p = params.validate(TINY | over, name)
            p.update(name=name, profile="followups")
            runs.run(p, folder, progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.mark.parametrize("key,value,allowed", [
    ("loss", "mae", "cross_entropy"), ("classifier", "frozen", "fixed_etf"), ("imbalance_ratio", 0.5, "R >= 1"),
    ("class_counts", [3, 0], "positive")])
def test_recipe_parameters_are_validated_with_the_allowed_values(key, value, allowed):
    with pytest.raises(params.ParameterError) as err:
        params.validate(TINY | {key: value}, "f.yaml")
    assert "f.yaml" in str(err.value) and repr(key) in str(err.value) and allowed in str(err.value)
    with pytest.raises(params.ParameterError, match="'class_counts' and 'imbalance_ratio'"):
        params.validate(TINY | {"class_counts": [5] * 10, "imbalance_ratio": 2}, "f.yaml")


def test_imbalanced_subsets_have_exactly_the_requested_counts():
    d = data.load("demo", n_per_class=300, test_n_per_class=100, imbalance_ratio=10, seed=0)
    assert torch.bincount(d.train.y).tolist() == [300] * 5 + [30] * 5
    assert torch.bincount(d.test.y).tolist() == [100] * 10  # the test set stays balanced
    counts = [7, 1, 2, 3, 4, 5, 6, 8, 9, 10]
    assert torch.bincount(data.load("demo", class_counts=counts).train.y).tolist() == counts
    with pytest.raises(data.DataError, match="key 'class_counts'.*class 0 has 400 rows"):
        data.load("demo", class_counts=[401] + [1] * 9)


def test_a_fixed_etf_classifier_is_bitwise_unchanged_by_training(followups):
    ds = cube.open_cube(followups / "demo-vgg11-fixed-etf.nc")
    W = ds["classifier_weight"].values  # every snapshot, float64 copies of the float32 weights
    p = params.validate(TINY | {"classifier": "fixed_etf"}, "etf")
    with torch.device("cpu"):
        torch.manual_seed(0)
        fresh = models.build("vgg11", 10, 1, 16, 0.125, classifier="fixed_etf", etf_seed=p["seed"])
    w0 = fresh.classifier.weight.detach().double().numpy()
    assert all(np.array_equal(W[s], w0) for s in range(W.shape[0]))
    b = ds["classifier_bias"].values  # trained by default (fixed_etf_bias: train, as Zhu et al.), from 0
    assert np.isfinite(b).all() and not np.array_equal(b[-1], np.zeros_like(b[-1]))
    G = w0 @ w0.T
    np.testing.assert_allclose(G, 10 / 9 * (np.eye(10) - 1 / 10), atol=1e-6)  # a simplex ETF (float32 weights)
    learned = cube.open_cube(followups / "demo-vgg11-ce.nc")["classifier_weight"].values
    assert not np.array_equal(learned[0], learned[-1])


@pytest.mark.parametrize("bias,trains", [("train", True), ("zero", False)])
def test_a_fixed_etf_bias_trains_or_stays_zero_as_asked(bias, trains):
    p = params.validate(TINY | {"classifier": "fixed_etf", "fixed_etf_bias": bias}, "etf")
    net = models.build("vgg11", 10, 1, 16, 0.125, classifier="fixed_etf", etf_bias=p["fixed_etf_bias"])
    assert not net.classifier.weight.requires_grad and net.classifier.bias.requires_grad is trains
    assert torch.count_nonzero(net.classifier.bias) == 0
    with pytest.raises(params.ParameterError, match="'fixed_etf_bias'.*train"):
        params.validate(TINY | {"fixed_etf_bias": "frozen"}, "f.yaml")


def test_the_mse_run_records_its_central_path_terms_and_the_others_do_not(followups):
    mse = cube.open_cube(followups / "demo-vgg11-mse.nc").isel(lr=0, seed=0)
    terms = {k: mse[k].dropna("epoch").values for k in ("mse_nc1_term", "mse_nc23_term", "mse_perp_term")}
    assert all(v.size == 3 and (v >= 0).all() for v in terms.values())
    assert mse["train_loss"].attrs["units"] == "1"
    ce = cube.open_cube(followups / "demo-vgg11-ce.nc")
    assert np.isnan(ce["mse_nc1_term"].values).all() and ce["train_loss"].attrs["units"] == "nat"


def test_followup_claims_read_the_runs_and_say_what_is_missing(followups, tmp_path):
    got = after.followup_runs(followups)
    assert set(got) == set(VARIANTS)
    rows = {r["claim"]: r for r in after.followup_claims(got)}
    assert set(rows) == {c.name for page in ("mse", "fixed_etf", "weight_decay", "imbalance")
                         for c in after.CLAIMS[page]} | set(TRANSFER)
    assert all(r["held"] is not None for k, r in rows.items() if k not in TRANSFER)  # every claim checkable
    assert rows["transfer"]["cell"] == rows["nc5"]["cell"] == "demo-vgg11-transfer"
    assert rows["mse_collapse"]["cell"] == "demo-vgg11-mse"  # each verdict names the runs it read
    assert rows["fixed_etf"]["cell"] == "demo-vgg11-ce vs demo-vgg11-fixed-etf"
    assert rows["minority_collapse"]["cell"].split(" vs ") == ["demo-vgg11-ce", "demo-vgg11-imbalance10",
                                                               "demo-vgg11-imbalance100"]
    by_r = after.minority_by_ratio(got)
    assert sorted(by_r) == [1.0, 10.0, 100.0]
    for r, ds in after.runs_by_ratio(got):
        assert float(ds["minority_collapse"].dropna("epoch")[-1]) == by_r[r]
    assert rows["minority_collapse"]["held"] == (by_r[1.0] < by_r[10.0] < by_r[100.0])
    assert "all at the one stated lr 0.05" in rows["fixed_etf"]["text"]
    assert after.find_run(got, **after.BASELINE) is got["demo-vgg11-ce"]  # the transfer run is no control
    empty = after.followup_claims({})
    assert all(r["held"] is None and r["text"] == "not trained" for r in empty)


@pytest.mark.parametrize("name", ["mse", "fixed_etf", "weight_decay", "imbalance"])
def test_followup_pages_execute_on_the_runs(name, followups, tmp_path):
    import base64

    import jupytext
    import papermill

    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(jupytext.read(ROOT / "book" / "figures" / f"{name}.md"), str(out), cwd=str(ROOT),
                               parameters={"profile": "x", "cube_dir": str(tmp_path), "followups_dir": str(followups)},
                               kernel_name="python3", progress_bar=False)
    outputs = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    images = [base64.b64decode(o["data"]["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    text = "\n".join("".join(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert images and "*Rule:*" in text and "not checkable" not in text.split("*Here:*")[1][:40]
    empty = tmp_path / "none.ipynb"
    papermill.execute_notebook(jupytext.read(ROOT / "book" / "figures" / f"{name}.md"), str(empty), cwd=str(ROOT),
                               parameters={"profile": "x", "cube_dir": str(tmp_path),
                                           "followups_dir": str(tmp_path / "nothing")}, kernel_name="python3",
                               progress_bar=False)
    assert after.FILL_COMMAND in empty.read_text()


def test_the_cdnv_page_shows_the_transfer_run_and_its_claims(followups, tmp_path):
    import jupytext
    import papermill

    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "demo-vgg11.nc").write_bytes((followups / "demo-vgg11-ce.nc").read_bytes())
    out = tmp_path / "cdnv.ipynb"
    papermill.execute_notebook(jupytext.read(ROOT / "book" / "figures" / "cdnv.md"), str(out), cwd=str(ROOT),
                               parameters={"profile": "x", "cube_dir": str(grid), "followups_dir": str(followups)},
                               kernel_name="python3", progress_bar=False)
    outputs = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5  # four grid figures and the transfer figure
    text = "\n".join("".join(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert text.count("Ammar et al.") == 1 and text.count("neural collapse carries over to classes not") == 1
    assert "demo-vgg11-transfer" in text and text.count("cdnv_test is lower") == 1
    assert "not run in this profile" in text  # no grid cube names an ood_dataset (tests/test_ood.py: one that does)


def test_the_transfer_run_trains_on_half_the_classes_and_measures_the_other_half(followups):
    ds = cube.open_cube(followups / "demo-vgg11-transfer.nc")
    assert ds.sizes["class"] == 5 and ds.attrs["num_classes"] == 5
    assert ds.attrs["n_train"] == 5 * 20 and ds.attrs["n_held_out_train"] == 5 * 20
    assert ds.attrs["n_held_out_test"] == 5 * 10
    snaps = ds["epoch"].isin(ds["snapshot_epoch"])
    for k in ("transfer_cdnv", "transfer_ncc_acc", "nc5", "nc5_centred"):
        v = ds[k].isel(lr=0, seed=0)
        assert np.isfinite(v.where(snaps, drop=True)).all() and ds[k].attrs["definition"]
        assert np.isnan(cube.open_cube(followups / "demo-vgg11-ce.nc")[k].values).all()  # NaN without held-out
    acc = ds["transfer_ncc_acc"].values
    assert ((acc[np.isfinite(acc)] >= 0) & (acc[np.isfinite(acc)] <= 1)).all()
    got = after.followup_runs(followups)
    held, text, _ = after.BY_NAME["transfer"](got)
    ch = after.tpt_change(got["demo-vgg11-transfer"], "transfer_cdnv")
    if ch["tpt_snapshot"] is not None and ch["tpt_snapshot"] < ch["last_epoch"]:  # the verdict is the stated rule
        ratio = ch["at_tpt"] / ch["last"]
        assert held == (True if ratio >= 1.1 else False if ratio <= 1 / 1.1 else "inconclusive")
        assert f"{ch['last']:.3g}" in text
    else:
        assert held is None and text == "TPT not reached"


def test_depth_is_in_every_cube_with_layer_names_and_widths(followups):
    ds = cube.open_cube(followups / "demo-vgg11-ce.nc")
    assert ds["depth_nc1"].dims == ("lr", "seed", "depth_stage", "layer")
    assert list(ds["depth_stage"].values) == ["first", "tpt", "last"]
    assert ds["layer_name"].values.tolist()[-2:] == ["fc6", "fc7"] and (ds["layer_width"].values > 0).all()
    assert ds["depth_epoch"].values[0, 0, 0] == 1 and ds["depth_epoch"].values[0, 0, 2] == 6
    finite = np.isfinite(ds["depth_trace_ratio"].values[0, 0, [0, 2]])
    assert finite.all()
    xr.testing.assert_equal(ds["layer_width"], cube.open_cube(followups / "demo-vgg11-mse.nc")["layer_width"])


def _two_seeds(ds):
    """The cube with its one seed repeated as seeds 0 and 1 (a stand-in for a two-seed run)."""
    return ds.sel(seed=[0, 0]).assign_coords(seed=[0, 1])


def test_follow_up_and_depth_claims_are_checked_in_every_seed(followups, tmp_path):
    for path in followups.glob("*.nc"):
        cube.write(cube.validate(_two_seeds(cube.open_cube(path))), tmp_path / path.name)
    assert after.followup_seeds(followups) == [0] and after.followup_seeds(tmp_path) == [0, 1]
    one, two = after.followup_claims(after.followup_runs(followups)), after.followup_claims_by_seed(tmp_path)
    assert len(two) == 2 * len(one) and [r["held"] for r in two] == [r["held"] for r in one] * 2
    assert {r["seed"] for r in two} == {0, 1} and all(r["cell"].endswith(f", seed {r['seed']}") for r in two
                                                      if r["cell"])
    assert after.followup_claims_by_seed(followups) == one  # one seed: the rows as they were
    md = after.claims_markdown(two, "mse")
    mine = [r["held"] for r in one if r["claim"] == "mse_collapse"]
    k, n = mine.count(True), len(mine) - mine.count(None)
    assert "checked in every seed" in md and (f"held in **{2 * k} of {2 * n}**" if n else "**not checkable**") in md
    depth = after.depth_claims(after.depth_cells(tmp_path, every_seed=True))
    assert len(depth) == 2 * len(after.depth_claims(after.depth_cells(followups)))
    assert sorted(r["seed"] for r in depth) == [0] * (len(depth) // 2) + [1] * (len(depth) // 2)
    assert all(r["seed"] is None for r in after.depth_claims(after.depth_cells(followups)))
    grids = {}
    for folder in (followups, tmp_path):  # the CE run alone as a one-cell grid, with one seed and with two
        grid_dir = tmp_path / f"grid-{folder.name}"
        grid_dir.mkdir()
        (grid_dir / "demo-vgg11.nc").write_bytes((folder / "demo-vgg11-ce.nc").read_bytes())
        grids[folder] = after.grid_claims(profile.open_profile(grid_dir))
    one, two = grids[followups], grids[tmp_path]
    assert len(two) == 2 * len(one) and [r["held"] for r in two] == [r["held"] for r in one] * 2
    assert all(r["seed"] is None and not r["cell"].endswith("seed 0") for r in one)
    assert [r["seed"] for r in two] == [0] * len(one) + [1] * len(one)
    assert all(r["cell"].endswith(f", seed {r['seed']}") for r in two)
    assert "checked in every seed" in after.claims_markdown(two, "cdnv")
    assert "checked in every seed" not in after.claims_markdown(one, "cdnv")
    assert len(after.depth_cells(tmp_path)) == len(after.depth_cells(followups))  # the figure: the first seed


def test_like_for_like_a_treatment_on_another_lr_grid_is_not_compared(followups, tmp_path):
    got = after.followup_runs(followups)
    etf = got["demo-vgg11-fixed-etf"]
    etf.attrs["params"] = etf.attrs["params"] | {"lrs": [0.025, 0.05, 0.1]}
    rows = {r["claim"]: r for r in after.followup_claims(got)}
    assert rows["fixed_etf"]["held"] is None and rows["fixed_etf"]["text"].startswith("not like for like")
    assert rows["weight_decay"]["held"] is not None  # the other comparisons are untouched
