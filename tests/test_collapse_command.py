"""`python -m nc.collapse` (nc.measure.command, nc.measure.checkpoints): on an .npz file and on a generated ImageFolder
it equals nc.measure.collapse on the same model and the same standardised data (to 1e-12); `--checkpoints` over
three saved checkpoints gives an `epoch` dimension of three, sorted by the epoch in the names, each equal to the
measurement of that file alone; a checkpoint whose pickle carries code is refused and runs nothing; keys that do not
fit the model are one error naming the first missing and unexpected keys; our own runs' checkpoints (weights
under "model") and a named key load."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import xarray as xr
from PIL import Image

from nc import collapse as cli
from nc import data, measure
from nc.measure import checkpoints, command, registry

C, SIZE = 3, 8
MODEL = '''
import torch
import torch.nn as nn

def build(num_classes, in_channels):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 8 * 8, 16), nn.Tanh(), nn.Linear(16, num_classes))
'''


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(MODEL)
    return path


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    y_train, y_test = np.arange(30) % C, np.arange(12) % C
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=rng.integers(0, 256, (30, SIZE, SIZE), dtype=np.uint8), y_train=y_train,
             x_test=rng.integers(0, 256, (12, SIZE, SIZE), dtype=np.uint8), y_test=y_test,
             class_names=np.array(["a", "b", "c"]))
    return path


def tiny(num_classes=C, in_channels=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 16), nn.Tanh(), nn.Linear(16, num_classes))


def by_api(model, d, batch_size=256):
    return measure.collapse(model, command.Batches(d.train, batch_size, d.in_channels),
                            command.Batches(d.test, batch_size, d.in_channels), progress=False)


def assert_same(ds, expected):
    for k in (*registry.MEASURES, *registry.ACCURACY):
        np.testing.assert_allclose(ds[k].values, expected[k].values, rtol=1e-12, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(ds["class_means"].values, expected["class_means"].values, rtol=1e-12, atol=1e-12)


def run(*argv):
    return cli.main([*map(str, argv), "--no-progress"])


def test_the_command_on_an_npz_equals_the_api_on_the_same_data(npz, model_file, tmp_path, capsys):
    out = tmp_path / "r.nc"
    assert run("--model", f"{model_file}:build", "--data", f"npz:{npz}", "--out", out, "--layers", "1,2") == 0
    ds = xr.open_dataset(out, engine="netcdf4")
    assert list(ds["layer_name"].values) == ["1", "2"] and ds["depth_nc1"].attrs["units"] == "1"
    expected = by_api(tiny(), data.load_path(f"npz:{npz}"))
    assert_same(ds, expected)
    assert ds.attrs["n_train"] == 30 and ds.attrs["n_test"] == 12 and ds.attrs["classifier"] == "3"
    assert ds["nc1"].attrs["definition"] == registry.MEASURES["nc1"].definition
    printed = capsys.readouterr().out
    assert "nc1" in printed and "test_acc" in printed


def _png_folder(root, n_per_class, seed):
    rng = np.random.default_rng(seed)
    for c in "abc":
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_the_command_on_a_generated_imagefolder_writes_one_csv_row_per_measure(model_file, tmp_path):
    _png_folder(tmp_path / "imgs" / "train", 5, 0)
    _png_folder(tmp_path / "imgs" / "val", 2, 1)
    out = tmp_path / "r.csv"
    spec = f"imagefolder:{tmp_path / 'imgs'}"
    assert run("--model", f"{model_file}:build", "--data", spec, "--image-size", SIZE, "--out", out) == 0
    table = pd.read_csv(out, index_col="measure")
    assert list(table.index) == [*registry.MEASURES, *registry.ACCURACY]
    d = data.load_path(spec, image_size=SIZE)
    assert d.in_channels == 3 and len(d.train) == 15 and len(d.test) == 6 and d.class_names == list("abc")
    expected = by_api(tiny(in_channels=3), d)
    for k in ("nc1", "nc1_test", "equinorm_means", "self_duality", "test_acc"):
        assert table.loc[k, "value"] == pytest.approx(expected[k].item(), rel=1e-12, abs=1e-12), k
    assert table.loc["nc1", "units"] == "1"


def _perturbed_states(n):
    states = []
    for i in range(n):
        model = tiny()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.5 * i)
        states.append(model.state_dict())
    return states


def test_checkpoints_give_an_epoch_dimension_sorted_by_the_epoch_in_the_names(npz, model_file, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    states = _perturbed_states(3)
    for epoch, state in zip((5, 10, 1), states):  # "epoch-10" sorts before "epoch-5" as text
        torch.save({"model": state, "optimizer": {}, "record": {"epoch": epoch}}, run_dir / f"epoch-{epoch}.pt")
    out, png = tmp_path / "series.nc", tmp_path / "series.png"
    argv = ["--model", f"{model_file}:build", "--data", f"npz:{npz}"]
    assert run(*argv, "--checkpoints", run_dir / "epoch-*.pt", "--out", out, "--plot", png) == 0
    ds = xr.open_dataset(out, engine="netcdf4")
    assert ds.sizes["epoch"] == 3 and list(ds["epoch"].values) == [1, 5, 10]
    assert ds["class_means"].dims == ("epoch", "class", "feature") and png.stat().st_size > 0
    d = data.load_path(f"npz:{npz}")
    for epoch, state in zip((5, 10, 1), states):
        model = tiny()
        model.load_state_dict(state)
        assert_same(ds.sel(epoch=epoch), by_api(model, d))
    single = tmp_path / "one.nc"
    assert run(*argv, "--weights", run_dir / "epoch-10.pt", "--weights-key", "model", "--out", single) == 0
    assert_same(xr.open_dataset(single, engine="netcdf4"), ds.sel(epoch=10))


class Payload:
    """A pickle that carries code: unpickling it calls open(marker, "w"), which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("wrap", [lambda s, p: p, lambda s, p: {"model": s, "extra": p}])
def test_a_checkpoint_that_carries_code_is_refused_and_runs_nothing(npz, model_file, tmp_path, capsys, wrap):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save(wrap(tiny().state_dict(), Payload(marker)), evil)
    assert run("--model", f"{model_file}:build", "--data", f"npz:{npz}", "--weights", evil) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "--trust-checkpoint" in err and str(evil) in err
    assert not marker.exists()
    with pytest.raises(checkpoints.CheckpointError, match="trust-checkpoint"):
        checkpoints.read(evil)
    assert not marker.exists()


def test_keys_that_do_not_fit_the_model_name_the_first_missing_and_unexpected(npz, model_file, tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, C)).state_dict(), other)
    assert run("--model", f"{model_file}:build", "--data", f"npz:{npz}", "--weights", other) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "missing (first: ['3.weight', '3.bias'])" in err
    assert "unexpected (first: ['1.weight'" not in err  # 1.weight exists in both; its shape is the problem
    torch.save({"layer.weight": torch.zeros(2)}, other)
    with pytest.raises(checkpoints.CheckpointError, match=r"unexpected \(first: \['layer.weight'\]\)"):
        checkpoints.load_into(tiny(), other)
    torch.save({"weights_of": {"a": 1}}, other)
    with pytest.raises(checkpoints.CheckpointError, match="--weights-key"):
        checkpoints.load_into(tiny(), other)


def test_ddp_prefixed_weights_load_and_bad_specs_are_errors(npz, tmp_path):
    path = tmp_path / "ddp.pt"
    state = _perturbed_states(2)[1]
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = checkpoints.load_into(tiny(), path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    for spec in ("torchvision:no_such_net", "timm:no_such_net", "nc:no_such_net", "x.py:build", "resnet18"):
        with pytest.raises(ValueError, match="--model"):
            command.build_model(spec, C, 1, SIZE)
    with pytest.raises(checkpoints.CheckpointError, match="no file matches"):
        checkpoints.series(str(tmp_path / "none-*.pt"))
