"""NC5 on another dataset (`ood_dataset`, Ammar et al. 2024): the parameter is validated, the OOD test split is put
in the run's input units (a planted set at the run's train mean standardises to 0), a tiny real run on two small
.npz files written here records NC5 and the global attribute `ood_set`, a missing OOD file is an error naming the
key and the file, and the CDNV page's table reads the cube. Nothing here reads /work/shared: the .npz files are
written into tmp_path in the format of the README."""
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from nc import data, runs
from nc.report import after
from nc.runs import cell, cube, params, sweep

TINY = {"dataset": "mnist", "network": "vgg11", "width": 0.125, "n_per_class": 10, "test_n_per_class": 6,
        "image_size": 16, "epochs": 3, "lrs": [0.05], "snapshot_epochs": [1, 3], "robustness_images": 0,
        "fig1_samples": 4, "device": "cpu", "seed": 0, "data_source": "npz", "depth": False}
ROOT = Path(__file__).resolve().parent.parent
LEVEL = 50  # the planted OOD test pixels (uint8): exactly the run's train mean (see _write)


def _write(folder):
    """mnist.npz: 10 classes x 12 train / 8 test 16x16 images, every image half 0 and half 2 * LEVEL (which pixels
    are lit depends on the class, plus noise), so the train pixel mean is exactly LEVEL / 255. fashionmnist.npz:
    random train images (its own statistics) and test images all at LEVEL: the run's train mean."""
    rng = np.random.default_rng(0)
    C, side = 10, 16

    def digits(n):
        x = np.zeros((C * n, side, side), np.uint8)
        for i in range(C * n):
            c = i // n
            block = np.roll(np.arange(side * side), 25 * c)[:96]  # the class's pixels
            rest = np.setdiff1d(np.arange(side * side), block)
            lit = np.concatenate([block, rng.choice(rest, size=32, replace=False)])  # 128 of the 256 pixels
            x[i].flat[lit] = 2 * LEVEL
        return x, np.repeat(np.arange(C), n)

    x_train, y_train = digits(12)
    x_test, y_test = digits(8)
    np.savez(folder / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array([str(c) for c in range(C)]))
    f_train = rng.integers(0, 256, size=(C * 12, side, side), dtype=np.uint8)
    np.savez(folder / "fashionmnist.npz", x_train=f_train, y_train=np.repeat(np.arange(C), 12),
             x_test=np.full((C * 8, side, side), LEVEL, np.uint8), y_test=np.repeat(np.arange(C), 8),
             class_names=np.array([f"f{c}" for c in range(C)]))


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    folder = tmp_path_factory.mktemp("npz")
    _write(folder)
    return folder


def _params(npz, **over):
    p = params.validate(TINY | {"npz_dir": str(npz), "ood_dataset": "fashionmnist"} | over, "mnist-vgg11.yaml")
    p.update(name="mnist-vgg11", profile="quick", file="mnist-vgg11.yaml")
    return p


def test_ood_dataset_is_validated_with_the_file_and_the_key():
    base = {k: v for k, v in TINY.items() if k != "data_source"}
    assert params.validate(base, "f.yaml")["ood_dataset"] is None
    p = params.validate(base | {"ood_dataset": "fashionmnist"}, "f.yaml")
    assert p["ood_dataset"] == "fashionmnist" and params.digest(p) != params.digest(params.validate(base, "f.yaml"))
    assert params.ood_data_arguments(p) == params.data_arguments(p) | {"name": "fashionmnist"}
    assert params.ood_data_arguments(params.validate(base, "f.yaml")) is None
    for over, why in (({"ood_dataset": "kmnist"}, "'ood_dataset' must be null or a registered dataset"),
                      ({"ood_dataset": "cifar10"}, "'ood_dataset': 'cifar10' has 3 colour channel"),
                      ({"dataset": "cifar10", "ood_dataset": "fashionmnist"}, "the run's dataset 'cifar10' has 3"),
                      ({"ood_dataset": "mnist"}, "is the run's own dataset"),
                      ({"ood_dataset": "fashionmnist", "held_out_classes": [5, 6]},
                       "'ood_dataset' and 'held_out_classes': give one of them"),
                      ({"ood_dataset": "fashionmnist", "data_source": "store"}, "not data_source 'store'")):
        with pytest.raises(params.ParameterError, match=why) as err:
            params.validate(base | over, "f.yaml")
        assert str(err.value).startswith("f.yaml: ")
    assert params.validate(base | {"dataset": "demo", "ood_dataset": "fashionmnist"}, "f.yaml")  # both 1 channel


def test_with_ood_puts_a_planted_set_at_the_run_mean_at_zero():
    run = data.load("demo", n_per_class=5, test_n_per_class=3, image_size=8, seed=0)
    other_mean, other_std = torch.full((1, 1, 1), 0.3), torch.full((1, 1, 1), 0.2)
    at_mean = ((run.mean - other_mean) / other_std).expand(4, 1, 8, 8).contiguous()  # raw pixels = run's mean
    noise = torch.rand(4, 1, 8, 8)
    split = lambda x: data.loader.TensorSplit(x, torch.arange(4) % 2)
    other = data.Data(name="planted", train=split(noise), test=split(at_mean), num_classes=2, class_names=["a", "b"],
                      in_channels=1, image_size=8, source="planted", mean=other_mean, std=other_std)
    d = data.with_ood(run, other)
    assert d.ood is not None and run.ood is None and d.train is run.train  # the run's own splits unchanged
    torch.testing.assert_close(d.ood.test.x, torch.zeros(4, 1, 8, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(d.ood.train.x * run.std + run.mean, noise * other_std + other_mean, atol=1e-6, rtol=0)
    small = data.Data(name="small", train=split(torch.zeros(4, 1, 4, 4)), test=split(torch.zeros(4, 1, 4, 4)),
                      num_classes=2, class_names=["a", "b"], in_channels=1, image_size=4, source="planted",
                      mean=other_mean, std=other_std)
    with pytest.raises(data.DataError, match="key 'ood_dataset': small images are \\(1, 4, 4\\)"):
        data.with_ood(run, small)


def test_a_run_with_ood_dataset_records_nc5_on_its_test_split(npz, tmp_path):
    p = _params(npz)
    d = cell.load_data(p, torch.device("cpu"))
    assert d.held_out is None and d.ood.num_classes == 10 and len(d.ood.test) == 10 * 6
    assert abs(float(d.mean) - LEVEL / 255) < 1e-6  # the run's train mean, as planted
    torch.testing.assert_close(d.ood.test.x, torch.zeros_like(d.ood.test.x), atol=1e-5, rtol=0)  # the run's units
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = runs.run(p, tmp_path / "cubes", progress=False)
    finally:
        torch.set_num_threads(threads)
    ds = cube.open_cube(path)
    assert ds.attrs["ood_set"] == "fashionmnist test split, 6 per class" and int(ds.attrs["n_ood_test"]) == 60
    assert ds.attrs["ood_source"].endswith("fashionmnist.npz")
    snaps = ds["epoch"].isin(ds["snapshot_epoch"])
    for k in ("nc5", "nc5_centred"):
        v = ds[k].isel(lr=0, seed=0).where(snaps, drop=True).values
        assert np.isfinite(v).all() and ((v >= 0) & (v <= 1)).all(), (k, v)
        assert "global attribute ood_set" in ds[k].attrs["definition"]
    assert np.isnan(ds["transfer_cdnv"].values).all() and np.isnan(ds["transfer_ncc_acc"].values).all()
    # the page's table: NC5 at the first snapshot, the TPT start and the last, named by ood_set
    got = after.ood_cells(tmp_path / "cubes")
    assert [c["name"] for c in got] == ["mnist-vgg11"] and got[0]["ood_dataset"] == "fashionmnist"
    assert got[0]["nc5"]["first"] == pytest.approx(float(ds["nc5"].isel(lr=0, seed=0).sel(epoch=1)))
    text = after.ood_markdown(got, "quick")
    assert "| mnist-vgg11 | fashionmnist test split, 6 per class |" in text
    assert f"{got[0]['nc5']['last']:.3g}" in text and "not run in this profile" not in text
    assert "not run in this profile" in after.ood_markdown(after.ood_cells(tmp_path / "nothing"), "demo")
    _page_shows_the_table(tmp_path / "cubes", tmp_path)


def _page_shows_the_table(cube_dir, tmp_path):
    """The CDNV page executed on the folder: its NC5 section shows the table (and no error)."""
    import json

    import jupytext
    import papermill

    out = tmp_path / "cdnv.ipynb"
    papermill.execute_notebook(jupytext.read(ROOT / "book" / "figures" / "cdnv.md"), str(out), cwd=str(ROOT),
                               parameters={"profile": "quick", "cube_dir": str(cube_dir),
                                           "followups_dir": str(tmp_path / "nothing")},
                               kernel_name="python3", progress_bar=False)
    outputs = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "\n".join("".join(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "| mnist-vgg11 | fashionmnist test split, 6 per class |" in text and "No transfer run" in text


def test_a_cube_without_an_ood_dataset_is_not_in_the_table(npz, tmp_path):
    ds = xr.Dataset(attrs={"format_version": cube.FORMAT_VERSION, "parameters": "dataset: mnist\n"})
    ds.to_netcdf(tmp_path / "other.nc", engine="netcdf4")
    assert after.ood_cells(tmp_path) == []


def test_a_missing_ood_file_is_an_error_naming_the_key_and_the_file(npz, tmp_path):
    (tmp_path / "mnist.npz").write_bytes((npz / "mnist.npz").read_bytes())
    p = _params(tmp_path)
    with pytest.raises(data.DatasetUnavailable, match="mnist-vgg11.yaml: key 'ood_dataset': .*fashionmnist.npz"):
        cell.load_data(p, torch.device("cpu"))
    why = sweep.dataset_missing(p)
    assert "key 'ood_dataset'" in why and "fashionmnist.npz" in why
    assert sweep.dataset_missing(_params(npz)) is None


class _Identity(torch.nn.Module):
    """A 'network' whose features are its input (N, p): the planted points are the features."""

    def __init__(self, p, C):
        super().__init__()
        self.features = torch.nn.Flatten()
        self.classifier = torch.nn.Linear(p, C).double()

    def forward(self, x):
        return self.classifier(self.features(x))


def test_nc5_on_an_ood_set_has_its_closed_form():
    """Trained class means a e_0 and a e_1 (mu_G = a (e_0 + e_1) / 2); OOD test points, two classes, with mean
    a (e_0 + e_1): |cos| = 1/sqrt(2) to each class mean uncentred, and about mu_G the OOD mean a (e_0 + e_1) / 2 is
    orthogonal to both centred means a (e_0 - e_1) / 2 and its negative: nc5_centred = 0. The transfer metrics stay
    NaN, and a run without an OOD set has NaN everywhere."""
    from nc import measure
    from nc.data.loader import TensorSplit
    from nc.train import snapshot

    a, e = 2.0, torch.eye(4, dtype=torch.float64)
    x = torch.stack([a * e[0]] * 3 + [a * e[1]] * 3)
    y = torch.tensor([0] * 3 + [1] * 3)
    ood_x = torch.stack([a * (e[0] + e[1]) + a * e[3], a * (e[0] + e[1]) - a * e[3]] * 2)  # mean a (e_0 + e_1)
    ood_split = TensorSplit(ood_x, torch.tensor([0, 0, 1, 1]))
    common = dict(num_classes=2, class_names=["0", "1"], in_channels=1, image_size=1, source="planted",
                  mean=torch.zeros(1), std=torch.ones(1))
    ood = data.Data(name="ood", train=ood_split, test=ood_split, **common)
    d = data.Data(name="planted", train=TensorSplit(x, y), test=TensorSplit(x, y), ood=ood, **common)
    moments = measure.moments(x, y, 2)
    out = snapshot.measure_transfer(_Identity(4, 2), d, moments, {"eval_batch_size": 3, "seed": 0})
    assert out["nc5"] == pytest.approx(2 ** -0.5, abs=1e-12) and out["nc5_centred"] == pytest.approx(0, abs=1e-12)
    assert np.isnan(out["transfer_cdnv"]) and np.isnan(out["transfer_ncc_acc"])
    plain = snapshot.measure_transfer(_Identity(4, 2), data.Data(name="p", train=TensorSplit(x, y),
                                                               test=TensorSplit(x, y), **common), moments, {})
    assert all(np.isnan(v) for v in plain.values())
