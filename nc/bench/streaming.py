"""The streamed loader against the in-memory one, on the same images (nc.bench, both suites' device).

The same n random uint8 images (3 x size x size, ten classes) are written as a prepared store (nc.data.store) in
a temporary folder and also held in memory, standardised, as nc.data keeps the small datasets. A pass is every
image once in a seeded shuffled order, in batches, as a training epoch reads them: from the store through its
kept DataLoader workers (a memmap read, standardised on the device), or by indexing the in-memory tensor on the
device (nc.data.loader.TensorSplit). One untimed pass each first (the store's workers start there: they are kept
for the passes after), then the best of `repeats` passes.
"""
from __future__ import annotations

import tempfile

import numpy as np
import torch

from nc.bench import cases
from nc.data import loader, store


def _pass(split, batch_size: int, order) -> int:
    images = 0
    for x, _ in split.batches(batch_size, order):
        images += len(x)
    return images


def streamed_vs_memory(n: int, size: int, batch_size: int, repeats: int, workers: int | None, device) -> dict:
    """{"streamed", "memory": images/s (best of `repeats` passes), "workers": the store's DataLoader workers}."""
    device = torch.device(device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    with tempfile.TemporaryDirectory(prefix="nc-bench-store-") as folder:
        prepared = store.open_store(store.write_arrays(folder, {"train": (images, labels), "test": (images[:1],
                                                                                                     labels[:1])},
                                                       [str(c) for c in range(10)], "bench"), device, workers)
        x = (torch.from_numpy(images).to(device).float() / 255 - prepared.mean) / prepared.std
        memory = loader.TensorSplit(x, torch.from_numpy(labels).to(device))
        g = torch.Generator().manual_seed(0)
        rates = {"streamed": [], "memory": []}
        for r in range(repeats + 1):
            order = torch.randperm(n, generator=g)
            for name, split in (("streamed", prepared.train), ("memory", memory)):
                seconds, seen = cases.timed(lambda split=split, order=order: _pass(split, batch_size, order), device)
                if r:  # the first pass of each is a warm-up
                    rates[name].append(seen / seconds)
        prepared.train.close()
        workers = prepared.train.num_workers
        del prepared
    return {"streamed": max(rates["streamed"]), "memory": max(rates["memory"]), "workers": workers}


def store_records(rec, cfg: dict, device, log=print) -> None:
    """The record: streamed images/s / in-memory images/s (cfg["store"]: n, size, batch_size, repeats, workers)."""
    c = cfg["store"]
    setting = (f"{c['n']} random uint8 images 3x{c['size']}x{c['size']}, batch {c['batch_size']}, a shuffled pass; "
               f"best of {c['repeats']} passes after one untimed")
    if rec.out_of_time("store_throughput", "x", setting, image_size=c["size"]):
        return
    log(f"[bench] streamed store vs in memory: {setting}")
    r = streamed_vs_memory(c["n"], c["size"], c["batch_size"], c["repeats"], c["workers"], device)
    rec.ratio("store_throughput",
              (f"streamed: nc.data.store.StoreSplit ({r['workers']} kept DataLoader workers, memmap, standardised on "
               "the device)", r["streamed"], "images/s"),
              ("in memory: nc.data.loader.TensorSplit (standardised float32 on the device, batches indexed)",
               r["memory"], "images/s"), setting, image_size=c["size"], workers=r["workers"],
              note="ImageNet at 224 px streams; the small datasets are held in memory")
