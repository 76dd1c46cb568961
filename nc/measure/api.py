"""Neural collapse of any network: `nc.measure.collapse(model, train, test)` returns an xarray Dataset of every
snapshot measure the cube has (nc.measure.registry: the same names, long_name, units and definition), the class
means and the classifier geometry, from one eval-mode pass over `train` and one over `test`.

Claim: the numbers are nc.measure's, float64, exact up to rounding, from streamed moments (features are never all
held in memory; memory 8 (p^2 + 2 C p) bytes for the train pass, 8 C p for the test pass), whatever the dtype of the
model (bf16 / fp16 features are upcast exactly). Features h: the input of the model's head (nc.measure.network),
or the output of the module named by `features=`. Under an initialised torch.distributed group each rank passes its
shard and the statistics are all-reduced (Chan's merge in rank order), so every rank returns the result of one
process on all the data. For shards measured apart: `train_stats` / `test_stats`, `.save`, nc.measure.stats.merge,
then `from_stats`.
"""
from __future__ import annotations

import itertools
import math
import warnings

import torch
import xarray as xr
from tqdm import tqdm  # not tqdm.auto: without ipywidgets it warns on every book page that imports nc

from nc.measure import distributed, network, paper, result, robustness
from nc.measure.stats import TestStats, TrainStats

DEGENERATE = 1e-10  # sigma_min / sigma_max of M below this: the class means are nearly affinely dependent


class CollapseWarning(UserWarning):
    """A result that is computed exactly but says little (nearly degenerate class means, one-sample classes)."""


def _device_of(model, device):
    if device is not None:
        return torch.device(device)
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    return param.device if param is not None else torch.device("cpu")


def _logits(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    return output[0] if isinstance(output, (tuple, list)) and output else None


def _length(loader):
    try:
        return len(loader)
    except TypeError:
        return None


def _batches(loader, where: str, input_key, label_key, device, progress: bool, total=None):
    """(index, x on the device, int64 labels) of each batch; an empty loader is an error. total: the number of
    batches for the progress bar's ETA (default len(loader) where it has one)."""
    total = total if total is not None else _length(loader)
    n = -1
    for n, batch in enumerate(tqdm(loader, desc=f"measure {where}", total=total, disable=not progress,
                                   unit="batch")):
        x, y = network.split_batch(batch, n, input_key, label_key)
        yield n, (x.to(device) if isinstance(x, torch.Tensor) else x), y
    if n < 0:
        raise ValueError(f"{where}= yielded no batch (an empty loader)")


class _Pass:
    """One eval-mode, no-grad pass: the model's flags restored after it; per batch (features, logits, labels)."""

    def __init__(self, model, head, features, num_classes):
        self.model, self.head, self.features, self.C = model, head, features, num_classes

    def run(self, batches, where: str):
        flags = [(m, m.training) for m in self.model.modules()]
        bad = None
        try:
            self.model.eval()
            with torch.no_grad(), network.FeatureTap(self.model, self.head, self.features) as tap:
                for i, x, y in batches:
                    y = network.check_labels(y, i, self.C, where)
                    logits = _logits(self.model(x))
                    h = tap.take()
                    y = y.to(h.device)
                    flag = ~torch.isfinite(h).all()  # kept on the device: no sync per batch
                    bad = torch.where(flag, i, -1) if bad is None else torch.where((bad < 0) & flag, i, bad)
                    yield h, logits, y, x
        finally:
            for m, flag in flags:
                m.training = flag
        if bad is not None and int(bad) >= 0:
            raise FloatingPointError(f"{where}: the features of batch {int(bad)} are not finite (NaN or inf): "
                                     f"the network has diverged or its input is not finite")


def _hits(logits, y, C):
    if logits is None or logits.ndim != 2 or logits.shape[1] != C:
        return torch.zeros((), dtype=torch.int64, device=y.device)
    return (logits.argmax(dim=1) == y.to(logits.device)).sum().to(y.device)


def _setup(model, train_iter, num_classes, features, classifier, input_key, label_key, device):
    """The first batch, the number of classes (from the model's output width unless given) and the head."""
    first = next(train_iter, None)
    if first is None:
        raise ValueError("train= yielded no batch (an empty loader)")
    C = num_classes
    if C is None:
        x, _ = network.split_batch(first, 0, input_key, label_key)
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        with torch.no_grad():
            C = network.output_width(model(x.to(device)))
        for m, flag in flags:
            m.training = flag
    if int(C) < 2:
        raise ValueError(f"num_classes={C}: neural collapse needs at least 2 classes")
    found = network.find_head(model, int(C), classifier, features)
    return first, int(C), found


def train_stats(model, train, *, num_classes=None, features=None, classifier=None, device=None, input_key=None,
                label_key=None, progress=True) -> TrainStats:
    """One pass over `train` (or this process's shard of it): TrainStats (nc.measure.stats), not yet merged."""
    device = _device_of(model, device)
    total, it = _length(train), iter(train)
    first, C, found = _setup(model, it, num_classes, features, classifier, input_key, label_key, device)
    head_name, head = found if found is not None else (None, None)
    feat_name = network.FeatureTap(model, head, features).name if features is not None else None
    names = {"features": feat_name or f"input of {head_name or 'the model'}", "classifier": head_name or ""}
    acc = None
    batches = _batches(itertools.chain([first], it), "train", input_key, label_key, device, progress, total)
    for h, logits, y, _ in _Pass(model, head, features, C).run(batches, "train"):
        if acc is None:
            if head is not None and head.in_features != h.shape[1]:
                raise ValueError(f"features have width {h.shape[1]} but classifier={head_name!r} takes "
                                 f"{head.in_features}: name the head's input module in features=")
            bias = None if head is None else (head.bias if head.bias is not None else torch.zeros(C))
            acc = TrainStats(C, h.shape[1], h.device, None if head is None else head.weight, bias, names)
        acc.stats.update(h, y)
        acc.hits += _hits(logits, y, C)
        acc.seen += len(y)
    return acc


def test_stats(model, test, train: TrainStats, *, features=None, device=None, input_key=None, label_key=None,
               progress=True, keep_images=0) -> tuple[TestStats, list]:
    """One pass over `test` (or a shard) against the merged train statistics; also the first `keep_images`
    test inputs (for DeepFool)."""
    device = _device_of(model, device)
    moments = checked_moments(train)
    out, kept = TestStats(train, moments), []
    head = _head(model, train)
    batches = _batches(test, "test", input_key, label_key, device, progress)
    for h, logits, y, x in _Pass(model, head, features, train.C).run(batches, "test"):
        out.acc.update(h, y)
        if train.W is not None:
            out.disagree += paper.ncc_disagreement_count(h, train.W, train.b, moments.class_means)
        out.hits += _hits(logits, y, train.C)
        out.seen += len(y)
        if sum(len(k) for k in kept) < keep_images and isinstance(x, torch.Tensor):
            kept.append(x[:keep_images - sum(len(k) for k in kept)])
    return out, kept


def _head(model, train: TrainStats):
    return model.get_submodule(train.names["classifier"]) if train.W is not None else None


def checked_moments(train: TrainStats):
    """The train Moments, after the checks: every class seen, nothing degenerate unannounced."""
    counts = train.stats.counts
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise ValueError(f"train has no sample of class(es) {missing} (num_classes={train.C}): every class needs "
                         f"at least one; pass the right num_classes or a train set with every class")
    m = train.moments()
    single = torch.nonzero(counts == 1).flatten().tolist()
    if single:
        warnings.warn(f"class(es) {single} have one train sample: their within-class variance is 0 by "
                      f"construction, so NC1 and CDNV understate their spread", CollapseWarning, stacklevel=3)
    S = m.mean_singular_values  # of M at rank C-1, from the moments' own SVD
    if S[-1] <= DEGENERATE * S[0]:
        warnings.warn(f"the class means are nearly degenerate (sigma_min/sigma_max of M = {float(S[-1] / S[0]):.2e} "
                      f"< {DEGENERATE:g}): Sigma_B^+ at rank C-1 amplifies rounding, so NC1 and test NC1 are not "
                      f"meaningful here", CollapseWarning, stacklevel=3)
    return m


def from_stats(train: TrainStats, test: TestStats | None = None, robustness: float = math.nan) -> xr.Dataset:
    """The Dataset of merged (or loaded) statistics: what `collapse` returns, without the model."""
    return result.dataset(train, checked_moments(train), test, robustness)


def collapse(model, train, test=None, *, num_classes=None, features=None, classifier=None, layers=None,
             pool="mean", robustness_images=0, device=None, input_key=None, label_key=None,
             progress=True) -> xr.Dataset:
    """Neural collapse of `model` on `train` (and `test`): an xarray Dataset (nc.measure.result).

    train / test: iterables of batches, (x, y) or mappings (input_key / label_key name the keys). num_classes:
    default the width of the model's output. features / classifier: modules or dotted names (default: the input
    of the one nn.Linear with num_classes outputs, and that layer). layers: module names, "blocks" or "all" (every
    child of the model) for collapse by depth, features pooled (pool="mean") or flattened (pool="flatten").
    robustness_images: DeepFool on the first that many test inputs. Under torch.distributed: each rank's shard,
    the statistics merged over the ranks."""
    device = _device_of(model, device)
    kw = dict(device=device, input_key=input_key, label_key=label_key, progress=progress)
    with distributed.joined():
        tr = distributed.merge_accumulator(train_stats(model, train, num_classes=num_classes, features=features,
                                                       classifier=classifier, **kw))
        te, kept, fool = None, [], math.nan
        if test is not None:
            te, kept = test_stats(model, test, tr, features=features, keep_images=robustness_images, **kw)
            te = distributed.merge_accumulator(te)
        if robustness_images and kept:
            x = torch.cat(kept)
            fool = distributed.broadcast_float(robustness.robustness(model.eval(), x) if distributed.is_main()
                                               else math.nan)
        ds = from_stats(tr, te, fool)
        if layers is not None:
            by_depth = _by_depth(model, layers, pool, train, test, tr.C, kw)
            ds = ds.merge(by_depth, combine_attrs="override").assign_attrs(by_depth.attrs | ds.attrs)
    return ds


def _by_depth(model, layers, pool, train, test, C, kw):
    """Collapse by depth (nc.measure.layers): train and test are read again, so they must be re-iterable."""
    from nc.measure import layers as layers_mod

    for name, data in (("train", train), ("test", test)):
        if data is not None and iter(data) is data:
            raise ValueError(f"layers= reads {name}= again (two or three more passes): pass a list or a DataLoader, "
                             f"not a one-shot iterator")
    keys = dict(input_key=kw["input_key"], label_key=kw["label_key"], device=kw["device"], progress=False)
    again = lambda data, where: (lambda: ((x, y) for _, x, y in _batches(data, where, **keys)) if data is not None
                                 else iter(()))
    return layers_mod.dataset(model, layers, again(train, "train"), again(test, "test"), C, pool)
