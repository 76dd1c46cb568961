"""Read a prepared ImageNet store (written by `python -m nc.prepare`) as splits that stream batches to the device.

ImageNet at the paper's 224 px (600 images per class x 1000 classes = 90 GB as uint8) cannot live in one device
tensor as nc.data keeps the small datasets, so training reads it through the same loader seam in batches:
`StoreSplit.batches(batch_size, order)` yields float32 images (B, 3, H, W) standardised per channel,
(x / 255 - mean) / std with the train set's per-channel mean and population SD (ddof 0) of the [0, 1] pixels
(stored in manifest.json), and int64 labels, both on the device. The uint8 rows are read from a numpy.memmap by a
torch DataLoader with worker processes and a batch sampler over `order` (no per-sample Python in the main
process), pinned when the device is CUDA, moved non_blocking and standardised on the device. Each split keeps one
DataLoader and its workers (persistent_workers) for every epoch and eval pass: a pass sets the batches its sampler
yields, so no pass pays for starting workers (a pass begun while another is in flight gets workers of its own).

Store layout (see nc.data.prepare): <split>_images.u8 (raw uint8, N x 3 x H x W, C order), <split>_labels.npy (int64),
manifest.json (written last: a store without it is unfinished). Splits are "train" and "test" (ImageNet's val).
"""

import functools
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from nc.data.registry import MIN_STD
from nc.data.sources import DatasetUnavailable

FORMAT_VERSION = 1  # manifest["format_version"] this reader understands
SPLITS = ("train", "test")


class StoreUnavailable(DatasetUnavailable):
    """No finished prepared store at a path; the message says how to make or finish it."""


def default_workers():
    """DataLoader workers per process: the CPUs this process may use (its affinity: a Slurm task's share), at most 8,
    minus one for the process itself."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


@functools.lru_cache(maxsize=4)
def _load_manifest(file, mtime_ns):  # the manifest lists every source file (~70 MB for ImageNet): parse it once
    with open(file) as f:
        return json.load(f)


def read_manifest(path):
    """The parsed manifest.json of the store at `path`; StoreUnavailable if it is missing or unfinished."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    file = os.path.join(path, "manifest.json")
    if not os.path.isfile(file):
        progress = os.path.join(path, "progress.json")
        if os.path.isfile(progress):
            with open(progress) as f:
                command = json.load(f).get("command", f"python -m nc.prepare imagenet --from <root> --out {path}")
            raise StoreUnavailable(f"the prepared store at {path} is unfinished (a prepare was stopped before it "
                                   f"wrote manifest.json). To finish it, rerun the same command; it resumes: {command}")
        raise StoreUnavailable(f"no prepared store at {path} (no manifest.json there). Make one with: "
                               f"python -m nc.prepare imagenet --from <ImageFolder root> --out {path}")
    manifest = _load_manifest(file, os.stat(file).st_mtime_ns)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StoreUnavailable(f"{file}: store format {manifest.get('format_version')!r}, this code reads "
                               f"{FORMAT_VERSION}; prepare it again with python -m nc.prepare into a new --out")
    return manifest


class _Rows(torch.utils.data.Dataset):
    """uint8 rows of one split's memmap, read a batch at a time (DataLoader calls __getitems__ with the indices)."""

    def __init__(self, file, shape, labels):
        self.file, self.shape, self.labels, self._images = file, tuple(shape), labels, None

    def images(self):
        if self._images is None:  # opened lazily, so that each worker maps the file itself
            self._images = np.memmap(self.file, dtype=np.uint8, mode="r", shape=self.shape)
        return self._images

    def __getstate__(self):  # a memmap must not be pickled into workers (it would be copied as an array)
        return {**self.__dict__, "_images": None}

    def __len__(self):
        return self.shape[0]

    def __getitems__(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        return torch.from_numpy(self.images()[idx]), torch.from_numpy(self.labels[idx])

    def __getitem__(self, i):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def _as_is(batch):
    return batch


class _Batches:
    """A batch sampler whose batches (lists of row indices) are set before each pass, so that one DataLoader, and its
    persistent workers, serves every pass of a split (the DataLoader asks for a new iterator at each pass)."""

    def __init__(self):
        self.chunks = []

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self):
        return len(self.chunks)


class StoreSplit:
    """One split of a prepared store, behind the loader seam shared with the in-memory TensorSplit.

    mean, std: per-channel train statistics of the [0, 1] pixels (an SD below nc.data.MIN_STD divides by 1)."""

    def __init__(self, path, split, mean, std, device="cpu", num_workers=None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.path, self.split = os.path.abspath(os.path.expanduser(str(path))), split
        info = read_manifest(self.path)["splits"][split]
        self.shape = tuple(info["shape"])
        file = os.path.join(self.path, info["images_file"])
        if not os.path.isfile(file) or os.path.getsize(file) != int(np.prod(self.shape)):
            raise StoreUnavailable(f"{file} is missing or not {int(np.prod(self.shape))} bytes as manifest.json says; "
                                   f"prepare the store again (python -m nc.prepare) into a new --out")
        labels = np.load(os.path.join(self.path, info["labels_file"]))
        if labels.shape != self.shape[:1] or labels.dtype != np.int64:
            raise StoreUnavailable(f"{self.path}: {info['labels_file']} does not match {split} images {self.shape}")
        self.labels = torch.from_numpy(labels)
        self.device = torch.device(device)
        self.num_workers = default_workers() if num_workers is None else int(num_workers)
        std = np.asarray(std, dtype=np.float64)
        std = np.where(std < MIN_STD, 1.0, std)
        self.mean = torch.tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32, device=self.device)
        self.mean, self.std = self.mean.view(-1, 1, 1), torch.tensor(std, dtype=torch.float32, device=self.device)
        self.std = self.std.view(-1, 1, 1)
        self._rows = _Rows(file, self.shape, labels)
        self._loader, self._sampler, self._busy = None, _Batches(), False

    def __getstate__(self):  # the kept DataLoader and its worker processes stay with their process
        return {**self.__dict__, "_loader": None, "_sampler": _Batches(), "_busy": False}

    def close(self):
        """Stop the kept workers (they also stop when the split is garbage-collected or the process exits)."""
        self._loader = None

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"StoreSplit({self.path!r}, {self.split!r}, shape={self.shape}, device={str(self.device)!r})"

    def _standardize(self, x):
        x = x.to(self.device, non_blocking=True).float()
        return (x / 255 - self.mean) / self.std

    def _indices(self, order):
        order = torch.as_tensor(order, dtype=torch.int64).cpu()
        if order.ndim != 1:
            raise ValueError(f"order must be a 1-D tensor of row indices, got shape {tuple(order.shape)}")
        if len(order) and (order.min() < 0 or order.max() >= len(self)):
            raise IndexError(f"order has indices outside 0..{len(self) - 1} of the {self.split} split")
        return order

    def batches(self, batch_size, order=None):
        """Yield (x, y) on the device in `order` (1-D int64 row indices; None = stored order), batch_size rows each
        (the last may be smaller): x float32 (B, 3, H, W) standardised per channel, y int64 (B,)."""
        order = torch.arange(len(self)) if order is None else self._indices(order)
        chunks = [c.numpy() for c in order.split(int(batch_size))]
        kept = self.num_workers > 0 and not self._busy
        if kept:
            if self._loader is None:
                self._loader = self._data_loader(self._sampler, persistent_workers=True)
            self._sampler.chunks, self._busy, loader = chunks, True, self._loader
        else:  # no workers, or a pass while another is in flight: a loader for this pass only
            loader = self._data_loader(chunks)
        try:
            for x, y in loader:
                yield self._standardize(x), y.to(self.device, non_blocking=True)
        finally:
            if kept:
                self._busy = False

    def _data_loader(self, batch_sampler, persistent_workers=False):
        return torch.utils.data.DataLoader(self._rows, batch_sampler=batch_sampler, collate_fn=_as_is,
                                           num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                                           persistent_workers=persistent_workers)

    def take(self, indices):
        """(x, y) for a few row indices, read in the main process: standardised float32 images and labels."""
        x, y = self._rows.__getitems__(self._indices(indices).numpy())
        return self._standardize(x), y.to(self.device)


@dataclass
class PreparedStore:
    """A finished prepared store: its train and test splits and what nc.data.Data says about a dataset."""
    name: str
    path: str
    train: StoreSplit
    test: StoreSplit
    num_classes: int
    class_names: list
    in_channels: int
    image_size: int
    mean: torch.Tensor  # (3, 1, 1) float32 on the device: train mean of the [0, 1] pixels per channel
    std: torch.Tensor  # (3, 1, 1) the divisor used: train SD (ddof 0) per channel, 1 where below MIN_STD
    source: str  # "store:<path>"
    standardize: str = "channel"  # as nc.data.Data: one mean and SD per colour channel


def open_store(path, device="cpu", num_workers=None):
    """Open the finished store at `path` (StoreUnavailable if missing or unfinished) with splits on `device`."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    manifest = read_manifest(path)
    mean, std = manifest["mean"], manifest["std"]
    train, test = (StoreSplit(path, s, mean, std, device=device, num_workers=num_workers) for s in SPLITS)
    return PreparedStore(name=manifest["dataset"], path=path, train=train, test=test,
                         num_classes=len(manifest["class_names"]), class_names=list(manifest["class_names"]),
                         in_channels=train.shape[1], image_size=train.shape[-1], mean=train.mean, std=train.std,
                         source=f"store:{path}")


def write_arrays(path, splits: dict, class_names, dataset="arrays"):
    """A finished store at `path` from in-memory uint8 images: splits = {"train": (images (N, 3, H, W) uint8,
    labels (N,) int64), "test": (...)} (the bench streams it; nc.data.prepare writes ImageNet's, with its sources
    and hashes). Returns the path."""
    os.makedirs(path, exist_ok=True)
    info = {}
    for split in SPLITS:
        images, labels = (np.ascontiguousarray(a) for a in splits[split])
        if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(f"{split}: need uint8 images (N, C, H, W) and N labels, got {images.dtype} "
                             f"{images.shape} and {labels.shape}")
        images.tofile(os.path.join(path, f"{split}_images.u8"))
        np.save(os.path.join(path, f"{split}_labels.npy"), labels.astype(np.int64))
        info[split] = {"images_file": f"{split}_images.u8", "labels_file": f"{split}_labels.npy",
                       "shape": list(images.shape), "dtype": "uint8", "layout": "NCHW"}
    mean, std = channel_stats(splits["train"][0])
    manifest = {"format_version": FORMAT_VERSION, "dataset": dataset, "class_names": list(class_names),
                "mean": mean.tolist(), "std": std.tolist(), "splits": info}
    with open(os.path.join(path, "manifest.json"), "w") as f:  # last: a store without it is unfinished
        json.dump(manifest, f)
    return path


def channel_stats(images, chunk=256):
    """Per-channel mean and population SD (ddof 0), float64 numpy (C,), of uint8 images (N, C, H, W) scaled to
    [0, 1] (a numpy array or memmap, a CPU tensor, or a StoreSplit), read `chunk` images at a time.

    Exact and streaming: the histogram of the 256 pixel values of every channel is accumulated in int64 (exact
    integer counts, whatever the chunking), then the mean and the SD follow from it by a two-pass formula in
    float64 (sum of counts * (value - mean)^2), so there is no E[x^2] - E[x]^2 cancellation."""
    if isinstance(images, StoreSplit):
        images = images._rows.images()
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"channel_stats needs uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    counts = np.zeros((images.shape[1], 256), dtype=np.int64)
    for start in range(0, images.shape[0], chunk):
        block = np.asarray(images[start:start + chunk])
        for c in range(block.shape[1]):
            counts[c] += np.bincount(block[:, c].reshape(-1), minlength=256)
    n = counts.sum(axis=1)
    if (n == 0).any():
        raise ValueError("channel_stats needs at least one image")
    values = np.arange(256, dtype=np.float64) / 255
    mean = (counts * values).sum(axis=1) / n
    var = (counts * (values - mean[:, None]) ** 2).sum(axis=1) / n
    return mean, np.sqrt(var)
