"""nc.data.prepare + nc.data.store: a generated ImageFolder of odd-sized JPEGs becomes a uint8 store equal, pixel for
pixel,
to an independent PIL + torchvision recomputation; hashes, labels, balanced subset and float64 statistics check
against hashlib / numpy; a SIGKILLed prepare resumes to a byte-identical store; StoreSplit streams exactly the
standardised rows asked for; user errors are clear."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from nc.data import balanced_indices
from nc.data import prepare as P
from nc.data.store import StoreUnavailable, channel_stats, open_store

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["n0001", "n0002", "n0003", "n0004"]
SIZES = [(37, 53), (80, 61), (64, 64), (101, 47), (53, 37)]  # (width, height), smaller and larger than 64 px
N_TRAIN, N_VAL, N_PICK, SIZE = 8, 2, 6, 64


def make_folder(root, n_train=N_TRAIN, n_val=N_VAL, classes=CLASSES, val_classes=None, seed=0):
    """ROOT/{train,val}/<class>/*.JPEG: noisy gradients at odd sizes, every 7th image greyscale (PIL mode L)."""
    rng, k = np.random.default_rng(seed), 0
    for folder, n, names in (("train", n_train, classes), ("val", n_val, val_classes or classes)):
        for c, name in enumerate(names):
            os.makedirs(root / folder / name)
            for i in range(n):
                w, h = SIZES[k % len(SIZES)]
                ramp = np.linspace(0, 255, w)[None, :, None] * np.array([1.0, 0.5, 0.2]) * (c + 1) / len(names)
                pixels = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels[..., 0] if k % 7 == 3 else pixels)
                image.save(root / folder / name / f"img_{i:03d}.JPEG", quality=90)
                k += 1
    return root


def store_files(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir())}


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(P.PAUSE_ENV, raising=False)
    monkeypatch.delenv("NC_DATA_ROOT", raising=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("imagefolder"))
    out = P.prepare(root, tmp_path_factory.mktemp("store") / "s", n_per_class=N_PICK, size=SIZE, seed=0, workers=2)
    return root, Path(out)


def reference(root, files):
    """Independent recomputation: PIL decode, RGB, Resize(round(64 * 256 / 224) = 73) + CenterCrop(64), NCHW."""
    tf = T.Compose([T.Resize(73), T.CenterCrop(SIZE)])
    return np.stack([np.asarray(tf(Image.open(root / f).convert("RGB"))).transpose(2, 0, 1) for f in files])


def test_store_equals_independent_recomputation(prepared):
    root, out = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(os.listdir(out)) == ["manifest.json", "test_images.u8", "test_labels.npy", "train_images.u8",
                                       "train_labels.npy"]
    assert manifest["format_version"] == 1 and manifest["class_names"] == CLASSES
    assert manifest["arguments"] == {"root": str(root), "n_per_class": N_PICK, "test_n_per_class": None,
                                     "size": SIZE, "seed": 0}
    # the balanced subset drawn as nc.data draws it, from the sorted listing; val complete in sorted order
    listing = {s: [f"{s}/{c}/{f}" for c in CLASSES for f in sorted(os.listdir(root / s / c))] for s in ("train", "val")}
    listed_labels = np.repeat(np.arange(4), N_TRAIN)
    expected = {"train": [listing["train"][i] for i in balanced_indices(listed_labels, N_PICK, 4, 0)],
                "test": listing["val"]}
    for split, n in (("train", 4 * N_PICK), ("test", 4 * N_VAL)):
        info = manifest["splits"][split]
        assert info["files"] == expected[split]
        assert info["shape"] == [n, 3, SIZE, SIZE] and info["dtype"] == "uint8"
        assert info["sha256"] == [hashlib.sha256((root / f).read_bytes()).hexdigest() for f in info["files"]]
        labels = np.load(out / f"{split}_labels.npy")
        assert labels.dtype == np.int64 and labels.tolist() == [CLASSES.index(f.split("/")[1]) for f in info["files"]]
        assert np.bincount(labels).tolist() == [n // 4] * 4 == info["per_class"]
        images = np.fromfile(out / f"{split}_images.u8", dtype=np.uint8).reshape(n, 3, SIZE, SIZE)
        np.testing.assert_array_equal(images, reference(root, info["files"]))
    train = np.fromfile(out / "train_images.u8", dtype=np.uint8).reshape(-1, 3, SIZE, SIZE).astype(np.float64) / 255
    np.testing.assert_allclose(manifest["mean"], train.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(manifest["std"], train.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    assert np.ptp(manifest["std"]) > 1e-3  # the channels differ, so a channel mix-up would show


def test_finished_store_is_left_alone(prepared, capsys):
    root, out = prepared
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert P.prepare(root, out, n_per_class=N_PICK, size=SIZE, seed=0, workers=0) == str(out)
    assert "already prepared" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(P.PrepareError, match="other arguments"):
        P.prepare(root, out, n_per_class=N_PICK, size=SIZE, seed=1, workers=0)


def test_channel_stats_is_exact_under_any_chunking():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (13, 3, 5, 7), dtype=np.uint8)
    x[:, 2] = 200  # a constant channel: SD exactly 0
    ref = x.astype(np.float64) / 255
    for chunk in (1, 4, 13, 100):
        mean, std = channel_stats(torch.from_numpy(x), chunk=chunk)
        np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=0, atol=1e-14)
        np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=0, atol=1e-14)
    assert std[2] == 0


def test_killed_prepare_resumes_byte_identical(prepared, tmp_path, capsys):
    root, uninterrupted = prepared
    out = tmp_path / "resumed"
    args = ["imagenet", "--from", str(root), "--out", str(out), "--n-per-class", str(N_PICK), "--size", str(SIZE),
            "--workers", "0", "--checkpoint-every", "4"]
    env = {**os.environ, P.PAUSE_ENV: "8"}  # the child sleeps once 8 of the 32 images are final
    with open(tmp_path / "log", "wb") as log:
        child = subprocess.Popen([sys.executable, "-m", "nc.prepare", *args], cwd=REPO, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        deadline, done = time.monotonic() + 300, 0
        try:
            while done < 8:
                assert child.poll() is None, f"prepare exited early:\n{(tmp_path / 'log').read_text()}"
                assert time.monotonic() < deadline, "prepare made no progress in 300 s"
                time.sleep(0.2)
                progress = out / "progress.json"
                done = sum(json.loads(progress.read_text())["done"].values()) if progress.exists() else 0
        finally:
            child.kill()
            child.wait()
    assert done == 8 and not (out / "manifest.json").exists()
    with pytest.raises(StoreUnavailable, match=r"unfinished.*--out " + str(out)):
        open_store(out)
    images = np.memmap(out / "train_images.u8", dtype=np.uint8, mode="r+", shape=(4 * N_PICK, 3, SIZE, SIZE))
    images[8:] = 171  # rows past the progress count are not trusted: garbage there must not survive
    images.flush()
    del images
    capsys.readouterr()
    assert P.main(args) == 0
    assert " 8/24 " in capsys.readouterr().err  # it continued at image 8 of train, not from the start
    assert store_files(out) == store_files(uninterrupted)


@pytest.mark.parametrize("workers", [0, 2])
def test_store_split_batches_and_take(prepared, workers):
    root, out = prepared
    store = open_store(out, num_workers=workers)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (store.num_classes, store.class_names, store.in_channels, store.image_size) == (4, CLASSES, 3, SIZE)
    assert store.source == f"store:{out}" and store.standardize == "channel"
    assert len(store.train) == 24 and len(store.test) == 8 and store.mean.shape == store.std.shape == (3, 1, 1)
    mean, std = np.array(manifest["mean"])[:, None, None], np.array(manifest["std"])[:, None, None]
    for split in (store.train, store.test):
        raw = np.fromfile(split._rows.file, dtype=np.uint8).reshape(-1, 3, SIZE, SIZE)
        labels = np.load(out / f"{split.split}_labels.npy")
        assert split.labels.dtype == torch.int64 and split.labels.tolist() == labels.tolist()
        order = torch.from_numpy(np.random.default_rng(2).permutation(len(split)))
        batches = list(split.batches(5, order))
        assert [len(y) for _, y in batches] == [5] * (len(split) // 5) + ([len(split) % 5] if len(split) % 5 else [])
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        assert x.dtype == torch.float32 and x.shape == (len(split), 3, SIZE, SIZE) and y.dtype == torch.int64
        expected = (raw[order.numpy()] / 255 - mean) / std
        np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-6)
        assert y.tolist() == labels[order.numpy()].tolist()
        xs, ys = zip(*split.batches(7))  # stored order
        np.testing.assert_allclose(torch.cat(xs).numpy(), (raw / 255 - mean) / std, rtol=0, atol=1e-6)
        assert torch.cat(ys).tolist() == labels.tolist()
        xt, yt = split.take([3, 0, 3])
        np.testing.assert_allclose(xt.numpy(), (raw[[3, 0, 3]] / 255 - mean) / std, rtol=0, atol=1e-6)
        assert yt.tolist() == labels[[3, 0, 3]].tolist()
    mean_split, std_split = channel_stats(store.train)
    np.testing.assert_allclose(mean_split, manifest["mean"], rtol=0, atol=1e-15)


def _children() -> set[int]:
    """The live child processes of this one (Linux /proc)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue
        if int(ppid) == os.getpid() and state not in ("Z", "X"):
            kids.add(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_a_split_keeps_its_workers_across_passes(prepared):
    _, out = prepared
    store = open_store(out, num_workers=2)
    split, before = store.train, _children()
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    first = [y for _, y in split.batches(5, order)]
    workers = _children() - before
    assert len(workers) == 2  # still there after the pass
    during = None
    for i, _ in enumerate(split.batches(7)):  # another pass, another batch size and order: the same workers
        if i == 0:
            during = _children() - before
            nested = torch.cat([y for _, y in split.batches(3, order)])  # a pass inside a pass: workers of its own
    assert during == workers and _children() - before == workers
    assert torch.cat(first).tolist() == nested.tolist() == split.labels[order].tolist()
    xs, _ = zip(*split.batches(4, order[:9]))  # a pass left after two batches, then a whole pass
    assert torch.cat(xs).shape[0] == 9
    gen = split.batches(2, order)
    next(gen)
    del gen
    assert torch.cat([y for _, y in split.batches(6)]).tolist() == split.labels.tolist()
    store.train.close()
    deadline = time.monotonic() + 60
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _children() - before


def test_a_store_written_from_arrays_streams_them_back(tmp_path):
    from nc.data.store import write_arrays

    rng = np.random.default_rng(0)
    splits = {s: (rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), rng.integers(0, 3, n)) for s, n in
              (("train", 12), ("test", 5))}
    store = open_store(write_arrays(tmp_path / "s", splits, ["a", "b", "c"]), num_workers=0)
    mean, std = channel_stats(splits["train"][0])
    assert store.num_classes == 3 and store.image_size == 8
    for split in (store.train, store.test):
        images, labels = splits[split.split]
        x, y = zip(*split.batches(5))
        np.testing.assert_allclose(torch.cat(x).numpy(), (images / 255 - mean[:, None, None]) / std[:, None, None],
                                   rtol=0, atol=1e-6)
        assert torch.cat(y).tolist() == labels.tolist()
    with pytest.raises(ValueError, match="uint8"):
        write_arrays(tmp_path / "t", {**splits, "test": (splits["test"][0].astype(np.float32), splits["test"][1])},
                     ["a", "b", "c"])


def test_test_subset_and_default_out(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "folder", n_train=3, n_val=3)
    monkeypatch.setenv("NC_DATA_ROOT", str(tmp_path / "data"))
    out = P.prepare(root, n_per_class=2, test_n_per_class=2, size=16, seed=5, workers=0)
    assert out == str(tmp_path / "data" / "prepared" / "imagenet-16px-2pc-seed5-test2pc")
    info = json.loads((Path(out) / "manifest.json").read_text())["splits"]["test"]
    listing = [f"val/{c}/img_{i:03d}.JPEG" for c in CLASSES for i in range(3)]
    assert info["files"] == [listing[i] for i in balanced_indices(np.repeat(np.arange(4), 3), 2, 4, 5)]
    assert info["shape"] == [8, 3, 16, 16] and np.load(Path(out) / "test_labels.npy").tolist() == [
        CLASSES.index(f.split("/")[1]) for f in info["files"]]


def test_clear_errors(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "ok", n_train=3, n_val=1)
    with pytest.raises(P.PrepareError, match=r"n0001 has 3 images, fewer than --n-per-class 4.*Lower"):
        P.prepare(root, tmp_path / "a", n_per_class=4, size=SIZE, workers=0)
    with pytest.raises(P.PrepareError, match="no such folder"):
        P.prepare(tmp_path / "nowhere", tmp_path / "a", n_per_class=1, size=SIZE)
    odd = make_folder(tmp_path / "odd", n_train=2, n_val=1, val_classes=["n0001", "n0002", "n0003", "n9999"])
    with pytest.raises(P.PrepareError, match=r"class folders of .*train and .*val differ.*n9999"):
        P.prepare(odd, tmp_path / "b", n_per_class=1, size=SIZE)
    (root / "val" / "n0002" / "broken.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(P.PrepareError, match=r"cannot decode .*n0002/broken\.JPEG.*Replace it"):
        P.prepare(root, tmp_path / "c", n_per_class=1, size=SIZE, workers=0)
    assert P.main(["imagenet", "--from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 2
    monkeypatch.setattr(P.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(P.PrepareError, match=r"not enough disk space on .*: 0\.00 GiB \(2,088 bytes\) still"):
        P.prepare(root, tmp_path / "e" / "f", n_per_class=1, size=8, workers=0)
    assert not (tmp_path / "e").exists()
    with pytest.raises(StoreUnavailable, match=r"no prepared store .*python -m nc.prepare imagenet"):
        open_store(tmp_path / "d")


def test_a_torchvision_network_trains_on_a_prepared_store_into_a_valid_cube(prepared, tmp_path):
    """The paper profile's ImageNet path end to end, tiny: the generated ImageFolder's store at 64 px streams
    (DataLoader workers) into 2 epochs of torchvision's ResNet18 with its ImageNet stem, and a valid cube comes out."""
    from nc import runs
    from nc.runs import cube, params

    _, store = prepared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = params.validate({"dataset": "imagenet", "network": "resnet18", "stem": "imagenet", "image_size": SIZE,
                             "data_source": "store", "store_dir": str(store), "n_per_class": N_PICK, "width": 0.125,
                             "epochs": 2, "lrs": [0.05], "batch_size": 8, "snapshot_epochs": [1, 2],
                             "robustness_images": 2, "fig1_classes": 2, "fig1_samples": 2, "device": "cpu",
                             "tpt_threshold": 0.996}, "imagenet-resnet18.yaml")
        p.update(name="imagenet-resnet18", profile="test")
        ds = cube.validate(cube.open_cube(runs.run(p, tmp_path, progress=False)))
    finally:
        torch.set_num_threads(threads)
    assert ds.attrs["data_source"] == f"store:{store}" and ds.attrs["image_shape"] == str((3, SIZE, SIZE))
    assert ds.attrs["n_train"] == N_PICK * len(CLASSES) and ds.attrs["n_test"] == N_VAL * len(CLASSES)
    assert ds["status"].item() == "complete" and np.isfinite(ds["nc1"].dropna("epoch").values).all()
    assert ds["layer_name"].values[0] == "stem" and ds.sizes["layer"] > 4  # the per-block pass streamed too
