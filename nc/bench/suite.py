"""Benchmarks (`nox -s bench`): what the replication costs, each as a ratio against a baseline measured in the same
run (on a shared machine only ratios within one run mean something). Cases and baselines: nc.bench.cases.

1b. collapse_time / collapse_memory (nc.bench.collapse): nc.measure.collapse on N=100k float32 features at
   p=2048, C=1000 through an identity model against the notebook's method, an all-in-memory float64 numpy
   reference, a two-pass pooled-covariance accumulator and the floor (one float64 H^T H), with peak RSS of each.
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
   snapshot is nc.train.snapshot.measure_snapshot, so whatever metrics it computes (Part II too) are included.
5. store_throughput: images/s of a shuffled pass streamed from a prepared store (nc.data.store: kept DataLoader
   workers, memmap) / of the same images held in memory (nc.data.loader.TensorSplit), nc.bench.streaming.
6. `--gpu` (CUDA only): nc.bench.gpu (paper networks' images/s per precision, packed processes, accumulator at
   C=1000, bf16 vs float32 curves), written to bench-<gpu name>.json / .md.

Writes <out>/bench-<device type>.json (a list of records) and .md (a table), both rewritten atomically after every
record (a kill loses no finished number), and prints the table. `--budget SECONDS`: no case starts after that
(both suites); the cases left are recorded as skipped. `--device cuda` without `--gpu` says in one line that it
runs the CPU suite's cases on the GPU and how to get the GPU suite. A ratio record
has value = numerator / denominator (unit "x"), `ratio_of`, and both measured numbers with their units.

    python -m nc.bench [--quick] [--gpu] [--out DIR] [--device auto|cpu|cuda[:N]] [--threads N] [--budget S]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nc import files, paths, train
from nc.bench import cases, streaming
from nc.bench import collapse as collapse_case
from nc.bench.records import DEMO, Records, cell_params, demo_data, device_name, jsonable, metric_records, slug  # noqa: F401

ROOT = paths.ROOT

FULL = {
    "metric_cases": [(50000, 512, 10), (50000, 512, 100)],  # N, p, C
    "metric_batch": 1000,
    "authors_probe_n": 5000,   # the notebook's method is first timed on this many rows ...
    "authors_max_s": 120.0,    # ... and run on all N only if the linear extrapolation stays under this
    "collapse_case": (100000, 2048, 1000),  # N, p, C of the any-network measurement (nc.bench.collapse)
    "collapse_batch": 2000,
    "collapse_probe_n": 2000,  # the notebook's method on this many rows, scaled linearly in N
    "cells": ["demo-vgg11", "demo-resnet18", "demo-densenet40"],
    "overrides": {},
    "repeats": {"cpu": 3, "cuda": 3},  # epochs per loop (interleaved, best kept); passes: 1 on CPU
    "warmup_steps": 2,
    "store": {"n": 2000, "size": 64, "batch_size": 128, "repeats": 3, "workers": None},  # None: default_workers()
}
QUICK = {
    **FULL,
    "metric_cases": [(2000, 64, 10), (2000, 128, 100)],
    "authors_probe_n": 1000,
    "authors_max_s": {10: 60.0, 100: 0.0},  # C=10 runs in full, C=100 is scaled: both paths run
    "collapse_case": (3000, 128, 20),
    "collapse_batch": 500,
    "collapse_probe_n": 500,
    "cells": ["demo-vgg11"],
    "overrides": {"width": 0.125, "n_per_class": 20, "test_n_per_class": 10, "robustness_images": 2},
    "repeats": {"cpu": 1, "cuda": 1},
    "warmup_steps": 1,
    "store": {"n": 200, "size": 16, "batch_size": 32, "repeats": 1, "workers": None},
}


def network_records(rec: Records, cfg: dict, device, log=print) -> None:
    """Items 2-4 per demo network: our loop vs the DataLoader loop; TPT pass, snapshot, per-layer pass / epoch."""
    kind, cache = torch.device(device).type, {}
    for cell in cfg["cells"]:
        params = cell_params(cell, cfg["overrides"])
        where = dict(network=params["network"], width=params["width"], image_size=params["image_size"])
        if any([rec.out_of_time(what, "x", f"{cell} demo digits", **where)
                for what in ("train_throughput", "tpt_cost", "snapshot_cost", "layer_cost")]):
            continue
        data = demo_data(params, device, cache)
        net, width, size, bs = params["network"], params["width"], data.image_size, params["batch_size"]
        where = dict(network=net, width=width, image_size=size)
        base = (f"{cell}: {len(data.train)} train / {len(data.test)} test demo digits at {size}x{size}, "
                f"batch {bs}, {params['precision']}")
        log(f"[bench] {base}")
        c = cases.network_costs(params, data, cfg["repeats"][kind], cfg["warmup_steps"], log)
        epoch = (f"one training epoch, ours ({c['epoch_images']} images)", c["epoch_s"], "s")
        rec.ratio("train_throughput", ("ours: nc.train's loop, nc.data.loader batches indexed on the device",
                                       c["epoch_images"] / c["epoch_s"], "images/s"),
                  ("plain DataLoader loop (TensorDataset, shuffle=True, num_workers=0, batches .to(device))",
                   c["dataloader_images"] / c["dataloader_epoch_s"], "images/s"),
                  f"{base}; best of {cfg['repeats'][kind]} epochs each, interleaved", **where,
                  note="on a CPU both loops are compute-bound: a ratio near 1 is expected" if kind == "cpu" else "")
        rec.ratio("tpt_cost", ("eval-mode pass over the train set (nc.train.snapshot.eval_pass, batch "
                               f"{params['eval_batch_size']})", c["eval_pass_s"], "s"), epoch, base, **where,
                  note="made every epoch (eval_train_acc marks the TPT start)")
        deepfool = f"DeepFool on {params['robustness_images']} test images"
        for key, what in (("snapshot_s", deepfool), ("snapshot_no_deepfool_s", "robustness_images=0")):
            rec.ratio("snapshot_cost", (f"nc.train.snapshot.measure_snapshot ({c['snapshot_metrics']} values, {what})",
                                        c[key], "s"), epoch, f"{base}; {what}", **where,
                      note="made at each snapshot epoch; network after the timed epochs")
        if c["layer_s"] is None:
            rec.skipped("layer_cost", "x", base, "skipped: no per-layer pass to call "
                        "(nc.train.snapshot.measure_depth or nc.measure.depth.layer_collapse with model.blocks())",
                        **where)
        else:
            rec.ratio("layer_cost", (f"per-layer pass ({c['layer_via']}, every block of model.blocks())",
                                     c["layer_s"], "s"), epoch, base, **where,
                      note="made at up to 3 epochs of a run (first snapshot, TPT start, last snapshot)")


CASES = ("metric", "collapse", "network")


def run(quick: bool = False, device=None, log=print, rec: Records | None = None, only=CASES) -> Records:
    """Every measurement of the CPU/default configuration on `device` (default: as nc.train picks) into `rec`
    (default: new Records; give one with on_record / budget_s to write as it goes or to bound the time); `only`:
    the groups of CASES to run."""
    cfg = QUICK if quick else FULL
    device = train.pick_device("auto") if device is None else torch.device(device)
    rec = Records(device, log) if rec is None else rec
    if "metric" in only:
        metric_records(rec, cfg, device, log)
    if "collapse" in only:
        collapse_case.records(rec, cfg, log)
    if "network" not in only:
        return rec
    network_records(rec, cfg, device, log)
    streaming.store_records(rec, cfg, device, log)
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
    """<out_dir>/<stem>.json and <stem>.md, each atomically (nc.files): a kill at any moment leaves the last
    complete pair, never half a file."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    files.write_text(json_path, json.dumps(jsonable(list(records)), indent=1) + "\n")
    files.write_text(md_path, table(records))
    return json_path, md_path


GPU_SUITE_LINE = ("nc.bench: this is the CPU suite's cases run on {device} (our loop vs a DataLoader, the passes / an "
                  "epoch); the GPU suite (paper networks' images/s per precision, packing, bf16 vs float32, syncs) is "
                  "`python -m nc.bench --gpu` (`nox -s bench -- --gpu`)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nc.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny subset (what tests/test_bench.py runs)")
    parser.add_argument("--gpu", action="store_true", help="the GPU suite (nc.bench.gpu); needs CUDA")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="output folder (default: bench/ in the repo)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="start no case after this many seconds (those left are recorded as skipped); the GPU "
                             "suite's default is its own (FULL: 420 s)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"CPU suite: the groups to run, of {','.join(CASES)} "
                        "(a subset writes bench-<device>-<groups>.json / .md)")
    args = parser.parse_args(argv)
    only = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    if not set(only) <= set(CASES):
        parser.error(f"--cases {args.cases!r}: choose from {', '.join(CASES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit(f"nc.bench --gpu needs a CUDA GPU, and torch.cuda.is_available() is False here (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Nothing was "
                             "measured. On a CPU run `python -m nc.bench` (or `nox -s bench`) instead.")
        from nc.bench import gpu as bench_gpu
        device = train.pick_device("cuda" if args.device == "auto" else args.device)
        cfg = bench_gpu.QUICK if args.quick else bench_gpu.FULL
        cfg = cfg if args.budget is None else {**cfg, "budget_s": args.budget}
        stem = "bench-" + slug(torch.cuda.get_device_name(device))
    else:
        device = train.pick_device(args.device)
        stem = f"bench-{device.type}" + ("" if set(only) == set(CASES) else "-" + "-".join(only))
        if device.type == "cuda":
            print(GPU_SUITE_LINE.format(device=torch.cuda.get_device_name(device)), flush=True)
    rec = Records(device, on_record=lambda records: write(records, args.out, stem),
                  budget_s=None if args.gpu else args.budget)
    records = bench_gpu.run(cfg, device, rec) if args.gpu else run(args.quick, device, rec=rec, only=only)
    json_path, md_path = write(records, args.out, stem)
    print("\n" + table(records))
    print(f"wrote {json_path} and {md_path} (rewritten after every record) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
