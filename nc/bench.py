"""Benchmarks (`nox -s bench`): what the replication costs, each as a ratio against a baseline measured in the same
run (on a shared machine only ratios within one run mean something). Cases and baselines: nc.bench_cases.

1. metric_time: seconds of NC1 from N=50k float32 features (p=512, C=10 and 100, batches of 1000) by the authors'
   notebook's method (neuralcollapse/neuralcollapse, neuralcollapse.ipynb, `analysis`) / by ours (nc.measure's
   streaming float64 CollapseAccumulator); nc1_rel_error: each one's |NC1 - ref| / ref against a float64 numpy
   two-pass reference (the notebook's trace(Sw inv_Sb) divided by C to compare). Where the notebook's per-sample
   outer products would take more than ~2 min, it is timed on the first rows and scaled linearly in N (said so).
2. train_throughput: training images/s of our loop / of a plain DataLoader loop as the notebook trains, same
   net, data and optimizer, per demo network (parameters/demo/: VGG11 x1/4, ResNet18 x1/4, DenseNet40 x1/2 on
   3000 demo digits at 16 px). On a CPU both are compute-bound: expect about 1.
3. tpt_cost: seconds of the eval-mode pass over the train set that marks the TPT / of one training epoch.
4. snapshot_cost (with and without DeepFool) and layer_cost (the per-layer pass) / one training epoch; the
   snapshot is nc.snapshot.measure_snapshot, so whatever metrics it computes (Part II too) are included.
5. `--gpu` (CUDA only): nc.bench_gpu (paper networks' images/s per precision, packed processes, accumulator at
   C=1000, bf16 vs float32 curves), written to bench-<gpu name>.json / .md.

Writes <out>/bench-<device type>.json (a list of records) and .md (a table), and prints the table. A ratio record
has value = numerator / denominator (unit "x"), `ratio_of`, and both measured numbers with their units.

    python -m nc.bench [--quick] [--gpu] [--out DIR] [--device auto|cpu|cuda[:N]] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import time
from pathlib import Path

import torch

from nc import bench_cases as cases
from nc import params as params_mod
from nc import runs, train

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "parameters" / "demo"

FULL = {
    "metric_cases": [(50000, 512, 10), (50000, 512, 100)],  # N, p, C
    "metric_batch": 1000,
    "authors_probe_n": 5000,   # the notebook's method is first timed on this many rows ...
    "authors_max_s": 120.0,    # ... and run on all N only if the linear extrapolation stays under this
    "cells": ["demo-vgg11", "demo-resnet18", "demo-densenet40"],
    "overrides": {},
    "repeats": {"cpu": 3, "cuda": 3},  # epochs per loop (interleaved, best kept); passes: 1 on CPU
    "warmup_steps": 2,
}
QUICK = {
    **FULL,
    "metric_cases": [(2000, 64, 10), (2000, 128, 100)],
    "authors_probe_n": 1000,
    "authors_max_s": {10: 60.0, 100: 0.0},  # C=10 runs in full, C=100 is scaled: both paths run
    "cells": ["demo-vgg11"],
    "overrides": {"width": 0.125, "n_per_class": 20, "test_n_per_class": 10, "robustness_images": 2},
    "repeats": {"cpu": 1, "cuda": 1},
    "warmup_steps": 1,
}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu {model} ({os.cpu_count()} cores)"


def slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def jsonable(obj):
    """Plain JSON values: non-finite floats become None, numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars and arrays
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class Records(list):
    """A run's records. Every record has FIELDS; a ratio record also `ratio_of`, `numerator` and `denominator`
    ({label, value, unit}); a skipped or failed case has value None and the reason as its note."""
    FIELDS = ("what", "network", "width", "image_size", "setting", "value", "unit", "note", "device", "torch",
              "threads", "load_1min")

    def __init__(self, device, log=print):
        super().__init__()
        self.base = {"device": device_name(torch.device(device)), "torch": torch.__version__,
                     "threads": torch.get_num_threads()}
        self.log = log

    def value(self, what, value, unit, setting, network=None, width=None, image_size=None, note="", **extra):
        rec = {"what": what, "network": network, "width": width, "image_size": image_size, "setting": setting,
               "value": None if value is None else float(value), "unit": unit, "note": note, **self.base,
               "load_1min": os.getloadavg()[0], **jsonable(extra)}
        self.append(rec)
        self.log(f"  -> {what}: {note}" if value is None else f"  -> {what}: {value:.4g} {unit}")
        return rec

    def ratio(self, what, numerator, denominator, setting, **kw):
        """numerator / denominator: (label, value, unit) of two numbers measured in this run, in the same unit."""
        (n_label, n_value, n_unit), (d_label, d_value, d_unit) = numerator, denominator
        return self.value(what, n_value / d_value, "x", setting, ratio_of=f"{n_label} / {d_label}",
                          numerator={"label": n_label, "value": n_value, "unit": n_unit},
                          denominator={"label": d_label, "value": d_value, "unit": d_unit}, **kw)

    def skipped(self, what, unit, setting, reason, **kw):
        return self.value(what, None, unit, setting, note=reason, **kw)


def cell_params(cell: str, overrides: dict) -> dict:
    """A demo run's parameters (parameters/demo/<cell>.yaml over its _defaults.yaml) with `overrides`."""
    params = params_mod.load(DEMO / f"{cell}.yaml")
    return {**params, **overrides}


def demo_data(params: dict, device, cache: dict):
    """The run's dataset as nc.runs loads it, once per distinct set of data keys."""
    key = tuple(params[k] for k in ("dataset", "n_per_class", "test_n_per_class", "image_size", "standardize",
                                    "seed", "class_counts", "imbalance_ratio"))
    if key not in cache:
        cache[key] = runs.load_data(params, device)
    return cache[key]


def metric_records(rec: Records, cfg: dict, device, log=print) -> None:
    """Item 1: the notebook's NC1 vs ours, time ratio and both relative errors, per (N, p, C)."""
    bs, kind = cfg["metric_batch"], torch.device(device).type
    for n, p, C in cfg["metric_cases"]:
        max_s = cfg["authors_max_s"][C] if isinstance(cfg["authors_max_s"], dict) else cfg["authors_max_s"]
        setting = f"N={n} p={p} C={C}: float32 features (random class means + noise), batches of {bs}"
        log(f"[bench] metric time, {setting}")
        r = cases.metric_time(n, p, C, bs, cfg["authors_probe_n"], max_s, device, cfg["repeats"][kind], log)
        m = r["authors_n"]
        note = "" if m == n else (
            f"notebook method timed on the first {m} rows (two passes {r['authors_passes_s']:.3g} s, scaled "
            f"x{n / m:g} linearly in N, plus its svds/trace step {r['authors_svds_s']:.3g} s): all {n} rows would "
            f"take over {max_s:g} s here")
        rec.ratio("metric_time", ("authors' notebook method (per-class loop, per-sample outer products, float32 "
                                  "svds)", r["authors_s"], "s"),
                  ("ours (nc.measure.CollapseAccumulator, float64, update + finalize)", r["ours_s"], "s"),
                  setting, note=note, authors_timed_n=m, extrapolated=m < n)
        rec.value("nc1_rel_error", cases.relative_error(r["ours_nc1"], r["reference_nc1"]), "1",
                  f"{setting}; ours: abs(NC1 - ref) / ref, ref = float64 numpy two-pass, eigh at rank C-1",
                  method="ours", nc1=r["ours_nc1"], reference_nc1=r["reference_nc1"], n_rows=n)
        rec.value("nc1_rel_error", cases.relative_error(r["authors_nc1"], r["reference_nc1_authors_n"]), "1",
                  f"{setting}; authors' notebook: trace(Sw inv_Sb) / C (the notebook has no / C: divided here to "
                  f"compare) vs the same reference" + ("" if m == n else f", both on the first {m} rows"),
                  method="authors", nc1=r["authors_nc1"], reference_nc1=r["reference_nc1_authors_n"], n_rows=m)


def network_records(rec: Records, cfg: dict, device, log=print) -> None:
    """Items 2-4 per demo network: our loop vs the DataLoader loop; TPT pass, snapshot, per-layer pass / epoch."""
    kind, cache = torch.device(device).type, {}
    for cell in cfg["cells"]:
        params = cell_params(cell, cfg["overrides"])
        data = demo_data(params, device, cache)
        net, width, size, bs = params["network"], params["width"], data.image_size, params["batch_size"]
        where = dict(network=net, width=width, image_size=size)
        base = (f"{cell}: {len(data.train)} train / {len(data.test)} test demo digits at {size}x{size}, "
                f"batch {bs}, {params['precision']}")
        log(f"[bench] {base}")
        c = cases.network_costs(params, data, cfg["repeats"][kind], cfg["warmup_steps"], log)
        epoch = (f"one training epoch, ours ({c['epoch_images']} images)", c["epoch_s"], "s")
        rec.ratio("train_throughput", ("ours: nc.train's loop, nc.loader batches indexed on the device",
                                       c["epoch_images"] / c["epoch_s"], "images/s"),
                  ("plain DataLoader loop (TensorDataset, shuffle=True, num_workers=0, batches .to(device))",
                   c["dataloader_images"] / c["dataloader_epoch_s"], "images/s"),
                  f"{base}; best of {cfg['repeats'][kind]} epochs each, interleaved", **where,
                  note="on a CPU both loops are compute-bound: a ratio near 1 is expected" if kind == "cpu" else "")
        rec.ratio("tpt_cost", ("eval-mode pass over the train set (nc.snapshot.eval_pass, batch "
                               f"{params['eval_batch_size']})", c["eval_pass_s"], "s"), epoch, base, **where,
                  note="made every epoch (eval_train_acc marks the TPT start)")
        deepfool = f"DeepFool on {params['robustness_images']} test images"
        for key, what in (("snapshot_s", deepfool), ("snapshot_no_deepfool_s", "robustness_images=0")):
            rec.ratio("snapshot_cost", (f"nc.snapshot.measure_snapshot ({c['snapshot_metrics']} values, {what})",
                                        c[key], "s"), epoch, f"{base}; {what}", **where,
                      note="made at each snapshot epoch; network after the timed epochs")
        if c["layer_s"] is None:
            rec.skipped("layer_cost", "x", base, "skipped: no per-layer pass to call (nc.snapshot.measure_depth or "
                        "nc.depth.layer_collapse with model.blocks())", **where)
        else:
            rec.ratio("layer_cost", (f"per-layer pass ({c['layer_via']}, every block of model.blocks())",
                                     c["layer_s"], "s"), epoch, base, **where,
                      note="made at up to 3 epochs of a run (first snapshot, TPT start, last snapshot)")


def run(quick: bool = False, device=None, log=print) -> Records:
    """Every measurement of the CPU/default configuration on `device` (default: as nc.train picks)."""
    cfg = QUICK if quick else FULL
    device = train.pick_device("auto") if device is None else torch.device(device)
    rec = Records(device, log)
    metric_records(rec, cfg, device, log)
    network_records(rec, cfg, device, log)
    rec.skipped("bf16_check", "1", "bf16 vs float32 training curves (every snapshot metric)",
                "skipped: runs only with --gpu on CUDA (the question is whether a GPU's bf16 autocast changes the "
                "curves; a CPU's bf16 kernels would not answer it)")
    return rec


def table(records: list[dict]) -> str:
    """A Markdown table of the records, with the device, torch version, threads and load average above it."""
    head = records[0] if records else {"device": "?", "torch": "?", "threads": "?"}
    loads = [r["load_1min"] for r in records] or [float("nan")]
    lines = [f"device: {head['device']}, torch {head['torch']}, {head['threads']} threads, "
             f"1-min load average {min(loads):.2f}..{max(loads):.2f} during the run", "",
             "| what | network | width | image | setting | value | unit | measured (numerator / denominator) | note |",
             "|---|---|---:|---:|---|---:|---|---|---|"]
    for r in records:
        value = "" if r["value"] is None else f"{r['value']:.4g}"
        measured = ""
        if "numerator" in r:
            n, d = r["numerator"], r["denominator"]
            measured = f"{n['value']:.4g} {n['unit']} {n['label']} / {d['value']:.4g} {d['unit']} {d['label']}"
        cells = [r["what"], r["network"] or "", "" if r["width"] is None else f"{r['width']:g}",
                 "" if r["image_size"] is None else f"{r['image_size']}", r["setting"], value, r["unit"],
                 measured, r["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write(records: list[dict], out_dir, stem: str) -> tuple[Path, Path]:
    """<out_dir>/<stem>.json and <stem>.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(jsonable(list(records)), indent=1) + "\n")
    md_path.write_text(table(records))
    return json_path, md_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nc.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny subset (what tests/test_bench.py runs)")
    parser.add_argument("--gpu", action="store_true", help="the GPU suite (nc.bench_gpu); needs CUDA")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="output folder (default: bench/ in the repo)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit(f"nc.bench --gpu needs a CUDA GPU, and torch.cuda.is_available() is False here (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Nothing was "
                             "measured. On a CPU run `python -m nc.bench` (or `nox -s bench`) instead.")
        from nc import bench_gpu
        device = train.pick_device("cuda" if args.device == "auto" else args.device)
        records = bench_gpu.run(bench_gpu.QUICK if args.quick else bench_gpu.FULL, device, Records(device))
        stem = "bench-" + slug(torch.cuda.get_device_name(device))
    else:
        device = train.pick_device(args.device)
        records = run(args.quick, device)
        stem = f"bench-{device.type}"
    json_path, md_path = write(records, args.out, stem)
    print("\n" + table(records))
    print(f"wrote {json_path} and {md_path} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
