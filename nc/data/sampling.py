"""Which train images a run uses: balanced subsets (the paper's, Section 2E) and imbalanced ones (Fang et al.,
PNAS 2021: n_A images in each majority class, n_A / R in each minority class). One sampler draws both, so equal
counts give exactly the balanced indices.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from nc.data.sources import DataError


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def class_counts(n_per_class, num_classes, imbalance_ratio=None, counts=None) -> list[int]:
    """Images per class: the first ceil(C/2) classes keep n_per_class, the other floor(C/2) keep
    max(1, floor(n_per_class / R + 1/2)) (nearest integer, halves up). R = None or 1 is balanced.

    An explicit `counts` (one positive int per class) overrides n_per_class and imbalance_ratio."""
    if not _is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if counts is not None:
        counts = list(counts)
        if len(counts) != num_classes:
            raise ValueError(f"counts must hold num_classes={num_classes} entries, got {len(counts)}")
        bad = {c: k for c, k in enumerate(counts) if not _is_int(k) or k < 1}
        if bad:
            raise ValueError(f"counts must be positive integers; bad entries (class: count): {bad}")
        return [int(k) for k in counts]
    if not _is_int(n_per_class) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    if imbalance_ratio is None:
        return [int(n_per_class)] * num_classes
    if isinstance(imbalance_ratio, bool) or not isinstance(imbalance_ratio, numbers.Real) \
            or not math.isfinite(imbalance_ratio) or imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be a finite number >= 1 (or None), got {imbalance_ratio!r}")
    n_major = math.ceil(num_classes / 2)
    n_minor = max(1, math.floor(n_per_class / imbalance_ratio + 0.5))
    return [int(n_per_class)] * n_major + [n_minor] * (num_classes - n_major)


def minority_classes(counts) -> list[int]:
    """The classes whose count is below the largest count (empty when balanced)."""
    counts = np.asarray(counts)
    return [int(c) for c in np.flatnonzero(counts < counts.max())]


def counts_indices(labels, counts, seed) -> np.ndarray:
    """Row indices with exactly counts[c] rows of class c, drawn without replacement by
    numpy.random.default_rng(seed) (classes in id order), then shuffled once by the same generator: the
    algorithm of nc.data.balanced_indices, so equal counts give exactly its indices. Classes >= len(counts) are
    never drawn. Raises ValueError naming the class and its count when a class has fewer rows."""
    labels, rng, picked = np.asarray(labels), np.random.default_rng(seed), []
    counts = list(counts)
    bad = {c: k for c, k in enumerate(counts) if not _is_int(k) or k < 1}
    if bad:
        raise ValueError(f"counts must be positive integers; bad entries (class: count): {bad}")
    have = np.bincount(labels, minlength=len(counts))
    short = {c: int(have[c]) for c, k in enumerate(counts) if have[c] < k}
    if short:
        c = next(iter(short))
        raise ValueError(f"class {c} has {short[c]} rows but counts[{c}] = {counts[c]} were requested "
                         f"(all short classes, class: rows available: {short})")
    for c, k in enumerate(counts):
        picked.append(rng.choice(np.flatnonzero(labels == c), size=k, replace=False))
    return rng.permutation(np.concatenate(picked))


def balanced_indices(labels, n_per_class, num_classes, seed):
    """Row indices with `n_per_class` rows of every class 0..num_classes-1, drawn without replacement by
    numpy.random.default_rng(seed) (classes in id order), then shuffled once by the same generator.
    None keeps every row in its stored order (returns None). Raises DataError if a class has too few rows."""
    if n_per_class is None:
        return None
    if n_per_class < 1:
        raise DataError(f"n_per_class must be >= 1, got {n_per_class}")
    have = np.bincount(np.asarray(labels), minlength=num_classes)
    if (have < n_per_class).any():
        short = {int(c): int(have[c]) for c in np.flatnonzero(have < n_per_class)}
        raise DataError(f"{n_per_class} images per class requested, but these classes have fewer: {short}")
    return counts_indices(labels, [n_per_class] * num_classes, seed)
