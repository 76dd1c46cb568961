"""A plan before the spend: what a profile's sweep will cost, computed from its parameter files alone (read-only:
it trains nothing and reads no data). `python -m nc.sweep parameters/paper --plan`.

Per job (parameter file x lr): the images it processes (training steps, the per-epoch eval passes over train and
test, the three depth passes), its GPU memory (weights, gradients and momentum in float32, plus the activations a
per-GPU batch keeps for backward, counted on the meta device) and its hours. Hours come from the training
throughput `nox -s bench -- --gpu` measured on the named GPU (bench/bench-<GPU name>.json, read on any machine)
when it has one for that network, image size and precision, and the plan says which file; otherwise from the
network's forward FLOPs (torch's FlopCounterMode on the meta device) at REFERENCE_UTILISATION of the named GPU's
peak (vendor datasheets), which is an estimate and says so. Then the
profile's total GPU-hours and disk (cubes, the checkpoints kept while a job runs, a prepared ImageNet store).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from nc import paths, train
from nc.data import SIZES
from nc.runs import params as params_mod

ROOT = paths.ROOT
# dense peak TFLOP/s by precision, vendor datasheets (SXM parts); V100 has no TF32 / BF16 (its FP16 tensor cores
# are listed for bf16)
REFERENCE_GPUS = {"V100": {"float32": 15.7, "tf32": 15.7, "bf16": 125.0},
                  "A100": {"float32": 19.5, "tf32": 156.0, "bf16": 312.0},
                  "H100": {"float32": 67.0, "tf32": 495.0, "bf16": 989.0},
                  "H200": {"float32": 67.0, "tf32": 495.0, "bf16": 989.0}}
REFERENCE_UTILISATION = 0.35  # the fraction of peak a CNN's training step reaches: an assumption, not a measurement
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward (two matmuls per forward one)


def splits(p: dict) -> tuple[int, int, int]:
    """(train images, test images, classes) of a parameter file, without reading any data."""
    n_train, n_test, C, _, _ = SIZES[p["dataset"]]
    if p["npz_file"] == "imagenette32.npz":
        C = 10
    if p["n_per_class"] is not None:
        n_train = p["n_per_class"] * C
    if p["test_n_per_class"] is not None:
        n_test = p["test_n_per_class"] * C
    return n_train, n_test, C


@functools.cache
def _network_cost(network, stem, classes, channels, size, width, growth_rate, feature_dim, memory_efficient, batch):
    """(forward FLOPs per image, parameters, activation bytes per image kept for backward), on the meta device:
    every leaf module's output, but for a memory-efficient DenseNet not the bottleneck's (recomputed in backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from nc import models

    with torch.device("meta"):
        model = models.build(network, classes, channels, size, width, growth_rate=growth_rate, stem=stem,
                             feature_dim=feature_dim)
        acts = []
        recomputed = (".norm1", ".relu1", ".conv1") if memory_efficient else ()
        hooks = [m.register_forward_hook(lambda mod, i, o: acts.append(o.numel() if torch.is_tensor(o) else 0))
                 for name, m in model.named_modules() if not list(m.children()) and not name.endswith(recomputed)]
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(batch, channels, size, size))
        for h in hooks:
            h.remove()
    return counter.get_total_flops() / batch, models.parameter_count(model), 4 * sum(acts) / batch


def network_cost(p: dict) -> dict:
    _, _, C = splits(p)
    channels, native = SIZES[p["dataset"]][3:]
    size = p["image_size"] or native
    flops, n_params, act = _network_cost(p["network"], p["stem"], C, channels, size, p["width"], p["growth_rate"],
                                         p["feature_dim"], p["memory_efficient"], 2)
    return {"flops": flops, "params": n_params, "activation_bytes": act, "image_size": size, "classes": C}


def bench_throughput(gpu: str, bench_dir=ROOT / "bench") -> tuple[dict, list[Path]]:
    """({(network, image_size, precision): training images/s}, the files read) from the GPU bench files
    (`nox -s bench -- --gpu` writes bench/bench-<GPU name>.json) of the named GPU: those whose GPU's name has `gpu`
    as a word ('H100' reads 'NVIDIA H100 80GB HBM3'), whatever machine makes the plan."""
    word = gpu.lower()
    out, read = {}, []
    for f in sorted(Path(bench_dir).glob("bench-*.json")):
        if word not in f.stem.lower().split("-")[1:]:
            continue
        try:
            records = json.loads(f.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{f}: cannot read the bench records: {err}") from err
        rates = {(r["network"], r.get("image_size"), r.get("precision", "float32")): float(r["value"])
                 for r in records if isinstance(r, dict) and r.get("what") == "train" and r.get("value")
                 and word in str(r.get("device", "")).lower().replace("-", " ").split()}
        if rates:
            out.update(rates)
            read.append(f)
    return out, read


def job_plan(p: dict, world_size: int = 1, gpu: str = "A100", measured: dict | None = None,
             measured_in: str = "bench") -> dict:
    """One job's images, memory and hours (see the module docstring); world_size GPUs per job (DDP)."""
    n_train, n_test, C = splits(p)
    cost = network_cost(p)
    E = p["epochs"]
    train_images = E * n_train
    eval_images = E * (n_train + n_test) + (3 * (2 * n_train + n_test) if p["depth"] else 0)
    per_gpu_batch = max(1, p["batch_size"] // world_size)
    memory = 4 * 3 * cost["params"] + per_gpu_batch * cost["activation_bytes"]
    rate = (measured or {}).get((p["network"], cost["image_size"], p["precision"]))
    if rate:
        seconds = (train_images + eval_images / TRAIN_FLOPS_PER_FORWARD) / (rate * world_size)
        source = f"measured: training images/s in {measured_in} ({gpu})"
    else:
        flops = cost["flops"] * (TRAIN_FLOPS_PER_FORWARD * train_images + eval_images)
        seconds = flops / (REFERENCE_GPUS[gpu][p["precision"]] * 1e12 * REFERENCE_UTILISATION * world_size)
        source = f"estimated: forward FLOPs at {REFERENCE_UTILISATION:.0%} of an {gpu}'s {p['precision']} peak"
    return {"name": p["name"], "images": train_images + eval_images, "train_images": train_images,
            "memory_gb": memory / 2**30, "hours": seconds / 3600, "gpu_hours": seconds * world_size / 3600,
            "gpus": world_size, "source": source, **cost}


def disk_bytes(p: dict, cost: dict) -> dict:
    """Disk of one parameter file: its cube (curves and the kept geometry), a running job's checkpoint (weights and
    momentum; nc.train.record) with its geometry files, and the prepared store an ImageNet cell at 224 px streams
    from."""
    n_train, n_test, C = splits(p)
    snaps = train.snapshot_schedule(p["epochs"], p["snapshot_epochs"])
    with torch.device("meta"):
        from nc import models

        dim = models.feature_dim_of(p["network"], C, SIZES[p["dataset"]][3], cost["image_size"], p["width"],
                                    stem=p["stem"], feature_dim=p["feature_dim"], growth_rate=p["growth_rate"])
    kept = train.geometry_epochs(snaps, p["epochs"], C, dim, 60)
    per = 2 * C * dim + dim + C + C * C + 60 * dim
    geometry = len(kept) * per * (4 if len(kept) * per * 8 > 64 * 2**20 else 8)
    curves = len(p["lrs"]) * len(p["seeds"]) * p["epochs"] * 40 * 8
    store = (n_train + n_test) * 3 * cost["image_size"] ** 2 if p["data_source"] == "store" else 0
    checkpoint = 2 * 4 * cost["params"] + geometry  # weights + momentum (float32), then the geometry files
    return {"cube": geometry + curves, "checkpoint": checkpoint, "store": store}


def plan(profile_dir, gpu: str = "A100", world_sizes: dict | None = None, only=None, seeds: int | None = None,
         bench_dir=ROOT / "bench") -> dict:
    """Every job of a profile (one per lr and run seed), and the totals. world_sizes: {dataset: GPUs per job}
    (default 1); seeds: run seeds 0..seeds-1 instead of each file's (`--seeds`); bench_dir: where the GPU bench
    files are read from (`bench_throughput`)."""
    files = params_mod.select(params_mod.profile_files(profile_dir), only)
    measured, bench_files = bench_throughput(gpu, bench_dir)
    measured_in = ", ".join(f.name for f in bench_files)
    rows, disk = [], {"cube": 0, "checkpoint_max": 0, "checkpoints_kept": 0, "store": 0}
    stores = {}
    for f in files:
        p = params_mod.with_seeds(params_mod.load(f), seeds)
        row = job_plan(p, (world_sizes or {}).get(p["dataset"], 1), gpu, measured, measured_in)
        row["lrs"], row["seeds"] = len(p["lrs"]), len(p["seeds"])
        rows.append(row)
        d = disk_bytes(p, row)
        disk["cube"] += d["cube"]
        disk["checkpoint_max"] = max(disk["checkpoint_max"], d["checkpoint"])
        disk["checkpoints_kept"] += d["checkpoint"] * row["lrs"] * row["seeds"]
        if d["store"]:
            stores[(p["dataset"], row["image_size"], p["n_per_class"])] = d["store"]  # one store for the cells
    disk["store"] = sum(stores.values())
    total = sum(r["gpu_hours"] * r["lrs"] * r["seeds"] for r in rows)
    return {"rows": rows, "gpu_hours": total, "disk": disk, "gpu": gpu, "bench_files": bench_files}


def markdown(result: dict) -> str:
    files = ", ".join(str(f) for f in result.get("bench_files", []))
    measured = sum("measured" in r["source"] for r in result["rows"])
    lines = [(f"Hours from the training images/s measured in {files} for {measured} of {len(result['rows'])} cells; "
              f"the others estimated from FLOPs (see the source column)." if files else
              f"Hours estimated from FLOPs: no bench/bench-*.json of an {result['gpu']} "
              f"(`nox -s bench -- --gpu` on one writes it)."), "",
             "| cell | lrs | seeds | GPUs per job | images per job | GPU memory per GPU (GB) | hours per job | "
             "source |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['lrs']} | {r['seeds']} | {r['gpus']} | {r['images']:.3g} | "
                     f"{r['memory_gb']:.1f} | {r['hours']:.1f} | {r['source']} |")
    d = result["disk"]
    lines += ["", f"Total: **{result['gpu_hours']:,.0f} GPU-hours** (every lr and run seed of every cell). Disk: cubes "
              f"{d['cube'] / 2**30:.1f} GiB; a running job's checkpoint and geometry files up to "
              f"{d['checkpoint_max'] / 2**30:.2f} GiB "
              f"(deleted once its cell is merged; with --keep-checkpoints all of them stay: "
              f"{d['checkpoints_kept'] / 2**30:.1f} GiB); prepared stores {d['store'] / 2**30:.1f} GiB."]
    return "\n".join(lines)
