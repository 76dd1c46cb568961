"""Datasets as standardised splits on the device: the registry (nc.data.registry), raw sources (sources), balanced
and imbalanced sampling (sampling), the loader seam (loader), ImageNet's prepared store (store, prepare) and
`load`, which puts them together (datasets). The public names are re-exported here: `nc.data.load("mnist", ...)`.
"""
from nc.data.datasets import (  # noqa: F401
    Data,
    describe,
    hold_out,
    load,
    load_path,
    npz_dir_from_env,
    standardize,
    train_statistics,
    with_ood,
)
from nc.data.registry import (  # noqa: F401
    COLUMN,
    DATASETS,
    IMAGENET_IMAGE_SIZE,
    MIN_STD,
    NPZ_FILES,
    REGISTRY,
    SIZES,
    SOURCES,
    STANDARDIZE,
    TITLES,
    column_of,
    columns,
    names,
    register,
)
from nc.data.sampling import balanced_indices, class_counts, counts_indices, minority_classes  # noqa: F401
from nc.data.sources import DataError, DatasetUnavailable  # noqa: F401
