"""nc.bench --gpu: what the paper's runs cost on one CUDA GPU, and whether bf16 training keeps float32's curves.

1. train: training images/s (SGD step as nc.train: forward, cross-entropy, backward, momentum + weight decay) of
   every paper network at full width, channels_last, in float32, tf32 and bf16 (nc.train.precision_context):
   VGG11/13/19, ResNet18/50/152, DenseNet40/250/201 at 32 px, batch 128, small stem; vgg19 / resnet152 /
   densenet201 with stem="imagenet" at 224 px, batch 32, 1000 classes. Random standardised images on the device,
   gathered by index as nc.data.loader does; each network's settings otherwise from its parameters/paper/ cell
   (memory_efficient DenseNets). precision_speedup: images/s of tf32 or bf16 / of float32.
2. packing: aggregate images/s of 1, 2 and 4 processes each training a demo network (VGG11 x1/4) on one GPU,
   started together behind a barrier, each for the same wall time; packing_speedup: k processes / 1.
3. accumulator: seconds of one snapshot's moments (CollapseAccumulator update + finalize, float64) at N = 50k,
   p = 512, C = 100 and at C = 1000, p = 2048 (median of 3 after a warm-up); metric_time as on the CPU.
4. bf16_check: the demo VGG11 x1/4, 30 epochs with 4 snapshots, trained from the same initial weights in float32
   and in bf16, and once more in float32 with the next seed. Every snapshot metric and per-epoch value at the
   snapshot epochs is compared. Tolerance: bf16 agrees with float32 on metric m at snapshot s if
       |bf16 - f32| <= max(slack * |f32' - f32|, rel_floor * |f32|, r_m)
   with f32' the other-seed run, slack = 2, rel_floor = 5%, r_m the resolution of a count (1/N of the images it
   counts over; 0 for the others). Why: bf16 rounds every step differently, and SGD spreads any perturbation, so
   the two runs part as two seeds do; a bf16 run answers the paper's questions as well as float32 if it differs
   from float32 no more than another float32 seed does (x2: that spread is estimated from one pair), and 5% is
   below what the book's log-scale figures resolve. bf16_verdict: the fraction of (metric, snapshot) pairs
   within tolerance; the quick profile may use bf16 only if every pair is.
5. syncs: host-device syncs of an eval pass, a snapshot and the per-layer pass under
   torch.cuda.set_sync_debug_mode("warn"), at two eval batch sizes; syncs_more_batches = 0 shows that no per-batch
   loop syncs (nc.bench.syncs).

Every case is guarded: an error (out of memory, say) becomes a record with value None and the error as its note,
and cases not started within the time budget (FULL: 7 minutes, so the suite ends within ~8) are recorded
as skipped.
"""
from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from queue import Empty

import numpy as np
import torch

from nc import paths, runs, train
from nc.bench import cases, syncs
from nc.bench import records as bench
from nc.runs import params as params_mod

PAPER = paths.profile_dir("paper")
SMALL = ["vgg11", "vgg13", "vgg19", "resnet18", "resnet50", "resnet152", "densenet40", "densenet250", "densenet201"]
FULL = {
    "budget_s": 420.0,  # no case starts after 7 min, so the suite ends within ~8
    "train": [(SMALL, "small", 32, 128, 10), (["vgg19", "resnet152", "densenet201"], "imagenet", 224, 32, 1000)],
    "width": 1.0, "precisions": ["float32", "tf32", "bf16"],
    "warmup_steps": 3, "min_seconds": 1.5, "max_steps": 300, "chunk": 5, "distinct_batches": 4,
    "accumulator": [(50000, 512, 100), (50000, 2048, 1000)], "accumulator_repeats": 3, "metric_batch": 1000,
    "metric": {"metric_cases": [(50000, 512, 100)], "metric_batch": 1000, "authors_probe_n": 5000,
               "authors_max_s": 60.0, "repeats": {"cuda": 3, "cpu": 1}},
    "bf16": {"cell": "demo-vgg11", "overrides": {"epochs": 30, "snapshot_epochs": 4, "depth": False},
             "slack": 2.0, "rel_floor": 0.05},
    "packing": {"cell": "demo-vgg11", "overrides": {}, "processes": [1, 2, 4], "seconds": 8.0, "warmup_steps": 10},
    "syncs": {"cell": "demo-vgg11", "overrides": {}, "batch_sizes": [500, 250]},
}
_TINY_DEMO = {"width": 0.125, "n_per_class": 20, "test_n_per_class": 10, "robustness_images": 0}
QUICK = {  # tiny: what tests/test_bench.py runs on a CPU to exercise every case
    **FULL, "budget_s": 600.0,
    "train": [(["vgg11", "resnet18", "densenet40"], "small", 16, 8, 10),
              (["vgg19", "resnet152"], "imagenet", 32, 4, 10)],
    "width": 0.0625, "warmup_steps": 1, "min_seconds": 0.0, "max_steps": 1, "chunk": 1, "distinct_batches": 2,
    "accumulator": [(2000, 64, 10), (2000, 256, 100)], "accumulator_repeats": 1,
    "metric": {**FULL["metric"], "metric_cases": [(2000, 64, 10)], "authors_probe_n": 1000, "authors_max_s": 0.0},
    "bf16": {**FULL["bf16"], "overrides": {**_TINY_DEMO, "epochs": 2, "snapshot_epochs": 2, "depth": False}},
    "packing": {"cell": "demo-vgg11", "overrides": _TINY_DEMO, "processes": [1, 2], "seconds": 0.5, "warmup_steps": 1},
    "syncs": {"cell": "demo-vgg11", "overrides": _TINY_DEMO, "batch_sizes": [64, 32]},
}


def paper_params(network: str, **over) -> dict:
    """The paper cell's parameters for `network` (the first parameters/paper/*-<network>.yaml), with `over`."""
    cell = sorted(PAPER.glob(f"*-{network}.yaml"))[0]
    return {**params_mod.load(cell), **over}


def train_images_per_s(params, num_classes, image_size, batch_size, device, cfg) -> tuple[float, int, float]:
    """(images/s, timed steps, peak GiB): warm-up steps, then chunks of steps until min_seconds or max_steps."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = train.build_model(params, num_classes, 3, image_size, device)
    opt = train.build_optimizer(params, model, params["lrs"][0])
    autocast = train.precision_context(params["precision"], device)
    g = torch.Generator().manual_seed(0)
    n = batch_size * cfg["distinct_batches"]
    x = torch.randn(n, 3, image_size, image_size, generator=g).to(device)
    y = torch.randint(num_classes, (n,), generator=g).to(device)
    order = torch.randperm(n, generator=g).to(device)
    model.train()

    def step(s):
        idx = order[(s % cfg["distinct_batches"]) * batch_size:][:batch_size]
        train.sgd_step(model, opt, x[idx], y[idx], autocast, params["loss"])

    for s in range(cfg["warmup_steps"]):
        step(s)
    cases.sync(device)
    t0, steps = time.perf_counter(), 0
    while steps < cfg["max_steps"] and (steps == 0 or time.perf_counter() - t0 < cfg["min_seconds"]):
        for _ in range(cfg["chunk"]):
            step(steps)
            steps += 1
        cases.sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return steps * batch_size / seconds, steps, peak


def _pack_worker(rank, device, params, cfg, barrier, queue):
    """One packed process: train the cell on its own copy of the data; after the warm-up, wait for the others, then
    train for cfg['seconds'] of wall time. Puts (rank, images, seconds, error or None) on the queue."""
    try:
        torch.set_num_threads(1)
        device = torch.device(device)
        data = runs.load_data(params, device)
        model = train.build_model(params, data.num_classes, data.in_channels, data.image_size, device)
        opt = train.build_optimizer(params, model, params["lrs"][0])
        autocast = train.precision_context(params["precision"], device)
        N, bs, g = len(data.train), params["batch_size"], torch.Generator().manual_seed(rank)
        model.train()

        def batches():
            while True:
                yield from data.train.batches(bs, torch.randperm(N, generator=g)[:N - N % bs])

        it = batches()
        for _ in range(cfg["warmup_steps"]):
            train.sgd_step(model, opt, *next(it), autocast, params["loss"])
        cases.sync(device)
        barrier.wait(timeout=300)
        t0, images = time.perf_counter(), 0
        while time.perf_counter() - t0 < cfg["seconds"]:
            for _ in range(10):
                x, y = next(it)
                train.sgd_step(model, opt, x, y, autocast, params["loss"])
                images += len(y)
            cases.sync(device)
        queue.put((rank, images, time.perf_counter() - t0, None))
    except BaseException as err:  # report it, and release the others from the barrier
        barrier.abort()
        queue.put((rank, 0, 0.0, f"{type(err).__name__}: {err}"))


def packed_images_per_s(k: int, device, params, cfg) -> list[float]:
    """Images/s of each of k processes trained at the same time on `device` (spawned, so CUDA starts fresh)."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_pack_worker, args=(r, str(device), params, cfg, barrier, queue), daemon=True)
             for r in range(k)]
    for proc in procs:
        proc.start()
    results, deadline = [], time.perf_counter() + 360 + cfg["seconds"]
    try:
        while len(results) < k:
            try:
                results.append(queue.get(timeout=1))
            except Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.perf_counter() > deadline:
                    barrier.abort()
                    raise RuntimeError(f"packed processes: {len(results)} of {k} reported, exit codes "
                                       f"{[p.exitcode for p in procs]}") from None
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    errors = [err for *_, err in results if err]
    if errors:
        raise RuntimeError(f"packed process failed: {errors[0]}")
    return [images / seconds for _, images, seconds, _ in sorted(results)]


def compare_precisions(ref: dict, test: dict, other_seed: dict, resolution: dict, slack: float = 2.0,
                       rel_floor: float = 0.05) -> list[dict]:
    """Per metric of the training records (nc.train.train_one_lr) at ref's snapshot epochs: the three runs' values,
    rel_diff = |test - ref| / max(|ref|, r_m), the tolerance max(slack |other - ref|, rel_floor |ref|, r_m) (module
    docstring) and whether test is within it. Metrics NaN in both ref and test at every snapshot are left out;
    one NaN and not the other disagrees."""
    epochs = list(ref["snapshot_epochs"])
    groups = [("snapshot", list(ref["snapshot"])), ("epoch", [k for k in ref["epoch"] if k != "lr_schedule"])]
    out = []
    for group, keys in groups:
        for key in keys:
            a, b, s = (np.array([run[group][key][e - 1] for e in epochs], dtype=np.float64)
                       for run in (ref, test, other_seed))
            both_nan = np.isnan(a) & np.isnan(b)
            if both_nan.all():
                continue
            r = float(resolution.get(key, 0.0))
            diff = np.abs(b - a)
            tol = np.fmax.reduce([slack * np.abs(s - a), rel_floor * np.abs(a), np.full_like(a, r)])
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.where(diff == 0, 0.0, diff / np.fmax(np.abs(a), r))
            agree = both_nan | (diff <= tol)
            out.append({"metric": key, "epochs": epochs, "float32": a.tolist(), "bf16": b.tolist(),
                        "float32_other_seed": s.tolist(), "rel_diff": rel.tolist(), "tolerance": tol.tolist(),
                        "agree": agree.tolist(), "compared": (~both_nan).tolist()})
    return out


def accumulator_record(rec, cfg, n, p, C, device, setting) -> None:
    h, y = cases.planted_features(n, p, C, device)
    seconds = [cases.timed(lambda: cases.ours_nc1(h, y, C, cfg["metric_batch"]), device)[0]
               for _ in range(1 + cfg["accumulator_repeats"])]
    rec.value("accumulator", statistics.median(seconds[1:]), "s", setting + ", float64; median after a warm-up")


def bf16_records(rec, cfg, device, log) -> None:
    """The bf16 check (module docstring): three runs of the cell, one record per metric, the verdict, the time."""
    c = cfg["bf16"]
    base = bench.cell_params(c["cell"], c["overrides"])
    data = runs.load_data(base, device)
    trained = {}
    for name, precision, seed in (("float32", "float32", base["seed"]), ("bf16", "bf16", base["seed"]),
                                  ("other_seed", "float32", base["seed"] + 1)):
        log(f"[bench] bf16 check: {c['cell']} in {precision}, seed {seed}, {base['epochs']} epochs")
        trained[name] = train.train_one_lr({**base, "precision": precision, "seed": seed}, base["lrs"][0], data,
                                           progress=False)
    resolution = {"eval_train_acc": 1 / len(data.train), "train_acc": 1 / len(data.train),
                  "test_acc": 1 / len(data.test), "ncc_mismatch": 1 / len(data.test)}
    rows = compare_precisions(trained["float32"], trained["bf16"], trained["other_seed"], resolution, c["slack"],
                              c["rel_floor"])
    where = dict(network=base["network"], width=base["width"], image_size=data.image_size)
    for row in rows:
        bad = [e for e, ok in zip(row["epochs"], row["agree"]) if not ok]
        rec.value("bf16_check", max((d for d in row["rel_diff"] if np.isfinite(d)), default=None), "1",
                  f"{row['metric']}: max over snapshot epochs {row['epochs']} of |bf16 - f32| / |f32|", **where,
                  note="within tolerance at every snapshot" if not bad else f"outside tolerance at epochs {bad}",
                  agree=not bad, per_snapshot=row)
    pairs = [ok for row in rows for ok, used in zip(row["agree"], row["compared"]) if used]
    agree = bool(pairs) and all(pairs)
    rec.value("bf16_verdict", sum(pairs) / max(1, len(pairs)), "1",
              f"{c['cell']}, {base['epochs']} epochs, {len(pairs)} (metric, snapshot) pairs; agree if |bf16 - f32| "
              f"<= max({c['slack']:g} |f32(seed+1) - f32|, {c['rel_floor']:g} |f32|, count resolution)", **where,
              agree=agree, note=("bf16 agrees with float32 within tolerance everywhere: the quick profile may train in "
                                 "bf16") if agree else "bf16 does not agree with float32 everywhere: keep float32")
    rec.ratio("precision_run_time", ("float32 run wall time", trained["float32"]["wall_time"], "s"),
              ("bf16 run wall time", trained["bf16"]["wall_time"], "s"), f"{c['cell']} bf16 check runs", **where)


def train_records(rec, cfg, device, budget, log=print) -> None:
    """Images/s per network and precision, and each precision's speed-up over float32."""
    for networks, stem, size, bs, num_classes in cfg["train"]:
        shape = f"{size}x{size}x3 random, {num_classes} classes, batch {bs}, stem {stem}"
        for net in networks:
            where, speed = dict(network=net, width=cfg["width"], image_size=size), {}
            for precision in cfg["precisions"]:
                log(f"[bench] train {net} width {cfg['width']:g}, {shape}, {precision}")
                speed[precision] = guarded(rec, "train", "images/s", f"{shape}, {precision}", budget, where,
                                           _train_case, rec, net, stem, size, bs, num_classes, precision, device,
                                           cfg, f"{shape}, {precision}", where)
            for precision in cfg["precisions"][1:]:
                if speed.get(precision) and speed.get("float32"):
                    rec.ratio("precision_speedup", (f"{precision}", speed[precision], "images/s"),
                              ("float32", speed["float32"], "images/s"), shape, **where)


def _train_case(rec, net, stem, size, bs, num_classes, precision, device, cfg, setting, where) -> float:
    params = paper_params(net, width=cfg["width"], stem=stem, precision=precision)
    value, steps, peak = train_images_per_s(params, num_classes, size, bs, device, cfg)
    rec.value("train", value, "images/s", setting, **where, precision=precision, timed_steps=steps, peak_gib=peak,
              memory_efficient=params["memory_efficient"])
    return value


def guarded(rec, what, unit, setting, budget, where, fn, *args):
    """fn(*args) unless the budget is spent (a skipped record); an error becomes a failed record; fn's value."""
    if time.perf_counter() > budget:
        rec.skipped(what, unit, setting, "skipped: the time budget of the GPU suite was spent", **where)
        return None
    try:
        return fn(*args)
    except Exception as err:  # recorded, not hidden: the table shows it
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rec.skipped(what, unit, setting, f"failed: {type(err).__name__}: {str(err)[:300]}", **where)
        return None


def run(cfg: dict, device, rec, log=print):
    """The GPU suite on `device` (a CPU only in tests, with QUICK); returns `rec` filled."""
    budget, device = time.perf_counter() + cfg["budget_s"], torch.device(device)
    for n, p, C in cfg["accumulator"]:
        setting = f"N={n} p={p} C={C}: CollapseAccumulator update (batches of {cfg['metric_batch']}) + finalize"
        log(f"[bench] accumulator {setting}")
        guarded(rec, "accumulator", "s", setting, budget, {}, accumulator_record, rec, cfg, n, p, C, device, setting)
    guarded(rec, "syncs", "syncs", "eval pass, snapshot and per-layer pass in sync debug mode", budget, {},
            syncs.sync_records, rec, cfg, device, log)
    guarded(rec, "bf16_check", "1", "bf16 vs float32", budget, {}, bf16_records, rec, cfg, device, log)
    pk = cfg["packing"]
    params = bench.cell_params(pk["cell"], pk["overrides"])
    rates = {}
    for k in pk["processes"]:
        setting = f"{k} processes of {pk['cell']} on one device, {pk['seconds']:g} s each after a barrier"
        log(f"[bench] packing: {setting}")
        where = dict(network=params["network"], width=params["width"], image_size=params["image_size"])
        each = guarded(rec, "packing", "images/s", setting, budget, where, packed_images_per_s, k, device, params, pk)
        if each:
            rates[k] = sum(each)
            rec.value("packing", rates[k], "images/s", setting + " (aggregate)", **where, per_process=each)
            if k != pk["processes"][0] and pk["processes"][0] in rates:
                rec.ratio("packing_speedup", (f"{k} processes, aggregate", rates[k], "images/s"),
                          (f"{pk['processes'][0]} process(es)", rates[pk["processes"][0]], "images/s"), setting,
                          **where)
    log("[bench] training images/s per paper network and precision")
    train_records(rec, cfg, device, budget, log)
    guarded(rec, "metric_time", "x", "notebook method vs ours", budget, {}, bench.metric_records, rec, cfg["metric"],
            device, log)
    return rec
