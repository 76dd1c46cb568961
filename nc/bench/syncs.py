"""Host-device syncs in the per-batch loops (nc.bench --gpu): an eval pass, a snapshot and the per-layer pass of the
demo network, each run under torch.cuda.set_sync_debug_mode("warn"), which warns at every synchronising CUDA call;
the warnings are counted.

A pass makes a few syncs once (its accuracy, the finalize's scalars); a sync in a per-batch loop makes one more
per batch. So each pass is counted at two eval batch sizes, b and b/2 (about twice the batches), and
syncs_more_batches = syncs at b/2 - syncs at b is 0 when no per-batch loop syncs. On a CPU the passes run the
same code, but there is nothing to count (the records say so).
"""
from __future__ import annotations

import contextlib
import math
import warnings

import torch

from nc import runs, train
from nc.bench import records as bench
from nc.train import snapshot

PASSES = ("eval pass", "snapshot", "per-layer pass")
SYNC_WARNING = "called a synchronizing CUDA operation"  # c10/cuda's warning in sync debug mode "warn"


def count_sync_warnings(caught) -> int:
    """How many of the caught warnings (warnings.catch_warnings(record=True)) report a synchronising CUDA call."""
    return sum(SYNC_WARNING in str(w.message) for w in caught)


@contextlib.contextmanager
def syncs_counted(device):
    """While inside, on CUDA, every synchronising CUDA call warns (sync debug mode "warn", the previous mode
    restored after); yields a dict whose "syncs" is their count once the block is left (None off CUDA)."""
    out, cuda = {"syncs": None}, torch.device(device).type == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every occurrence, not once per code location
        previous = torch.cuda.get_sync_debug_mode() if cuda else None
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield out
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(previous)
    out["syncs"] = count_sync_warnings(caught) if cuda else None


def _passes(model, data, params: dict) -> dict:
    """{name: zero-argument callable} of the PASSES at params' eval_batch_size."""
    p = {**params, "robustness_images": 0}  # DeepFool iterates on a fixed set of images: no per-batch loop
    record = train.empty_record(p, p["lrs"][0], [1], data.num_classes, model.classifier.in_features)
    snapshot.choose_fixed_samples(record, data, p)
    return {"eval pass": lambda: snapshot.eval_pass(model, data.train, p["eval_batch_size"]),
            "snapshot": lambda: snapshot.measure_snapshot(model, data, record, p),
            "per-layer pass": lambda: snapshot.measure_depth(model, data, p)}


def sync_records(rec, cfg: dict, device, log=print) -> None:
    """syncs per pass and batch size, and syncs_more_batches per pass (module docstring), for cfg["syncs"]."""
    c = cfg["syncs"]
    params = bench.cell_params(c["cell"], c["overrides"])
    data = runs.load_data(params, device)
    model = train.build_model(params, data.num_classes, data.in_channels, data.image_size, device)
    where = dict(network=params["network"], width=params["width"], image_size=data.image_size)
    cuda = torch.device(device).type == "cuda"
    counts = {}
    for bs in c["batch_sizes"]:
        batches = math.ceil(len(data.train) / bs)
        for name, fn in _passes(model, data, {**params, "eval_batch_size": bs}).items():
            log(f"[bench] syncs: {name}, eval batch {bs} ({batches} train batches)")
            if cuda:
                fn()  # warm-up: one-time work (allocations, lazy initialisation) is not the loop's
            with syncs_counted(device) as counted:
                fn()
            setting = f"{name} of {c['cell']} (random weights), {len(data.train)} train / {len(data.test)} test " \
                      f"images, eval batch {bs}"
            if cuda:
                counts[(name, bs)] = counted["syncs"]
                rec.value("syncs", counted["syncs"], "syncs", setting, **where, batch_size=bs, pass_name=name)
            else:
                rec.skipped("syncs", "syncs", setting, "skipped: only CUDA has syncs to count (the pass ran)", **where)
    big, small = c["batch_sizes"]
    more = f"{math.ceil(len(data.train) / small)} train batches instead of {math.ceil(len(data.train) / big)}"
    for name in PASSES:
        setting = f"{name}: syncs at eval batch {small} - at {big} ({more}; the test split's batches likewise)"
        if cuda:
            rec.value("syncs_more_batches", counts[(name, small)] - counts[(name, big)], "syncs", setting, **where,
                      note="0: no sync in a per-batch loop")
        else:
            rec.skipped("syncs_more_batches", "syncs", setting, "skipped: only CUDA has syncs to count", **where)
