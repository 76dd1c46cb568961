"""The statistics of a measurement pass, as data: saved, loaded and merged exactly, so that a dataset measured in
shards (a Slurm array, one shard per task; or the ranks of torch.distributed) gives the same result as one pass.

- `TrainStats`: the float64 streaming moments of the train features (nc.measure.moments.ClassStats with the p x p
  scatter: counts, per-class shift and residual mean, within-class sums of squares), the eval-mode hits of the
  model's own logits, and the head (W, b) in float64. Memory 8 (p^2 + 2 C p + C) bytes.
- `TestStats`: the test pass, which needs the merged train moments first (NCC mismatch and test NC1 are taken
  about the TRAIN class means): nc.measure.followups.TestAccumulator, the NCC disagreements and the hits; it
  carries a fingerprint of the train moments it was measured against, and refuses to merge with another.

Merges are Chan, Golub & LeVeque's pairwise update (exact up to float64 rounding); counts and hits add. Files are
`torch.save` dicts of tensors, numbers and strings, read back with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch

from nc.files import atomic_path
from nc.measure import distributed
from nc.measure.followups import TestAccumulator
from nc.measure.moments import ClassStats, Moments, _moments_from

# 2: the scatter kept about the class shifts (ClassStats.raw); 3: the test pass also keeps its p x p scatter about
# the test means
FORMAT = "nc-collapse-stats-3"


def _fingerprint(m: Moments) -> str:
    """sha256 (16 hex digits) of the train counts and class means: which train moments a test pass used."""
    data = torch.cat([m.counts.double().cpu(), m.class_means.double().cpu().reshape(-1)]).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


class TrainStats:
    """One pass (or shard) over train: moments, hits of the model's argmax, and the head (W, b) or None."""

    def __init__(self, num_classes: int, feature_dim: int, device="cpu", W=None, b=None, names=None):
        self.C, self.p, self.device = int(num_classes), int(feature_dim), torch.device(device)
        self.stats = ClassStats(self.C, self.p, self.device, with_scatter=True)
        zero = lambda: torch.zeros((), dtype=torch.int64, device=self.device)
        self.hits, self.seen = zero(), zero()
        self.W = None if W is None else W.detach().to(self.device, torch.float64).clone()
        self.b = None if b is None else b.detach().to(self.device, torch.float64).clone()
        self.names = dict(names or {})  # "features", "classifier": where the features and the head were taken

    STATE = tuple("stats." + n for n in ClassStats.STATE) + ("hits", "seen")  # distributed.merge_accumulator

    def merge(self, other: TrainStats) -> TrainStats:
        _same_shape(self, other)
        self.stats.merge(other.stats)
        self.hits, self.seen = self.hits + other.hits.to(self.device), self.seen + other.seen.to(self.device)
        return self

    def moments(self) -> Moments:
        """The train Moments (nc.measure.moments); the caller checks that every class has a sample."""
        s = self.stats
        counts = s.counts.clamp(min=1)
        return _moments_from(s.counts.clone(), s.class_means(), s.scatter / s.counts.sum(), s.class_m2 / counts)

    def save(self, path) -> Path:
        state = {n: _get(self, n) for n in self.STATE}
        return _save(path, "train", self, state)


class TestStats:
    """One pass (or shard) over test, against given train moments: TestAccumulator, NCC disagreements, hits."""
    __test__ = False

    def __init__(self, train: TrainStats, train_moments: Moments):
        self.C, self.p, self.device = train.C, train.p, train.device
        self.acc = TestAccumulator(train_moments, self.C, self.p, self.device)
        self.train_key = _fingerprint(train_moments)
        zero = lambda: torch.zeros((), dtype=torch.int64, device=self.device)
        self.hits, self.seen, self.disagree = zero(), zero(), zero()
        self.names = dict(train.names)

    STATE = tuple("acc." + n for n in TestAccumulator.STATE) + ("hits", "seen", "disagree")

    def merge(self, other: TestStats) -> TestStats:
        _same_shape(self, other)
        if other.train_key != self.train_key:
            raise ValueError(f"test statistics measured against different train moments ({self.train_key} vs "
                             f"{other.train_key}): merge the train shards first, then measure every test shard "
                             f"against the merged train statistics")
        self.acc.merge(other.acc)
        for n in ("hits", "seen", "disagree"):
            setattr(self, n, getattr(self, n) + getattr(other, n).to(self.device))
        return self

    def save(self, path) -> Path:
        return _save(path, "test", self, {n: _get(self, n) for n in self.STATE}, train_key=self.train_key)


def _same_shape(a, b) -> None:
    if (a.C, a.p) != (b.C, b.p):
        raise ValueError(f"cannot merge statistics of C={b.C}, p={b.p} into C={a.C}, p={a.p}")


def _get(obj, path):
    return distributed._get(obj, path)


def _save(path, kind: str, obj, state: dict, **extra) -> Path:
    head = {"W": obj.W, "b": obj.b} if kind == "train" else {}
    data = {"format": FORMAT, "kind": kind, "C": obj.C, "p": obj.p, "names": obj.names,
            "state": {k: v.cpu() for k, v in state.items() if v is not None},
            **{k: v.cpu() for k, v in head.items() if v is not None}, **extra}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return Path(path)


def _read(path, kind: str) -> dict:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a file of nc.measure statistics (format {FORMAT})")
    if data["kind"] != kind:
        raise ValueError(f"{path}: holds {data['kind']} statistics, expected {kind}")
    return data


def load_train(path, device="cpu") -> TrainStats:
    """TrainStats saved by `TrainStats.save`."""
    d = _read(path, "train")
    out = TrainStats(d["C"], d["p"], device, d.get("W"), d.get("b"), d["names"])
    for name, value in d["state"].items():
        distributed._set(out, name, value.to(out.device))
    return out


def load_test(path, train: TrainStats) -> TestStats:
    """TestStats saved by `TestStats.save`, re-attached to the (merged) train statistics it was measured against."""
    d = _read(path, "test")
    out = TestStats(train, train.moments())
    if d["train_key"] != out.train_key:
        raise ValueError(f"{path}: measured against other train moments ({d['train_key']}) than the ones given "
                         f"({out.train_key})")
    for name, value in d["state"].items():
        distributed._set(out, name, value.to(out.device))
    return out


def merge(parts):
    """The merge of several TrainStats (or several TestStats of the same train moments), in order: a new object."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge needs at least one part")
    out = copy.deepcopy(parts[0])
    for part in parts[1:]:
        out.merge(part)
    return out
