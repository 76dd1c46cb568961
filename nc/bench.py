"""Benchmarks: what a run of the replication costs on this machine (`nox -s bench`).

Measured on the device `nc.train` would use (CUDA when present, else CPU), with its settings there
(bf16 autocast and channels_last on CUDA, plain float32 on CPU):

1. train: training throughput in images/s (forward, cross-entropy, backward, SGD step with momentum and
   weight decay, the loop's loss/accuracy sums), batch 128, per network and width, on the real demo digits
   at 16x16x1 and on random standardised tensors at 32x32x3; a few warm-up steps, then timed steps.
2. snapshot: seconds per `nc.train.measure_snapshot` (eval passes over 4000 train / 1000 test demo images
   at 16x16, every metric, Fig. 1 features) with DeepFool robustness on 100 test images and without it.
3. accumulator: seconds for `nc.measure.CollapseAccumulator` update + finalize (float64) on random
   features, fed in eval-sized batches of 1000 as `measure_snapshot` feeds them.

Writes <out>/bench-<device type>.json (a list of records) and <out>/bench-<device type>.md (a table), and
prints the table. Wall-clock time by time.perf_counter, with torch.cuda.synchronize() around CUDA work.

    python -m nc.bench [--quick] [--out DIR] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nc import data as data_mod
from nc import measure, train
from nc import params as params_mod

ROOT = Path(__file__).resolve().parent.parent
LR = 0.05  # any learning rate: the cost of a step does not depend on it

# Step counts are per device type: CPU steps take seconds, so fewer of them (the full CPU run stays ~5 min).
FULL = {
    "networks": ["vgg11", "resnet18", "densenet40"],
    "widths": [0.25, 0.5, 1.0],
    "image_shapes": [(1, 16), (3, 32)],  # (channels, size): the demo digits, and CIFAR-shaped random tensors
    "batch_size": 128,
    "random_images": 4096,
    "warmup_steps": {"cpu": 1, "cuda": 10},
    "timed_steps": {"cpu": 3, "cuda": 50},
    "snapshot_width": 0.25,
    "snapshot_data": {"n_per_class": None, "test_n_per_class": None},  # the demo's 400 + 100 per class
    "snapshot_robustness": [100, 0],
    "snapshot_warmup": {"cpu": 0, "cuda": 1},  # on CPU a DeepFool pass takes tens of seconds: no untimed call
    "snapshot_repeats": {"cpu": 1, "cuda": 3},
    "accumulator": [(50000, 512, 10, False), (50000, 512, 100, False), (20000, 2048, 1000, True)],  # N, p, C, GPU only
    "accumulator_repeats": {"cpu": 1, "cuda": 3},
}
QUICK = {
    **FULL,
    "networks": ["vgg11"],
    "widths": [0.125],
    "batch_size": 32,
    "random_images": 64,
    "warmup_steps": {"cpu": 1, "cuda": 2},
    "timed_steps": {"cpu": 2, "cuda": 5},
    "snapshot_data": {"n_per_class": 20, "test_n_per_class": 10},
    "snapshot_width": 0.125,
    "snapshot_robustness": [2, 0],
    "snapshot_repeats": {"cpu": 1, "cuda": 1},
    "accumulator": [(2000, 64, 10, False), (2000, 256, 100, True)],
    "accumulator_repeats": {"cpu": 1, "cuda": 1},
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
    return f"cpu {model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_params(network: str, width: float, **over) -> dict:
    """The full, validated run parameters (the package defaults) for one network and width."""
    return params_mod.validate({"dataset": "demo", "network": network, "width": width, "epochs": 1,
                                "lrs": [LR], **over}, "nc.bench")


def random_data(n: int, channels: int, size: int, num_classes: int, device, seed: int = 0) -> data_mod.Data:
    """n standardised random images (N(0, 1) pixels) with uniform labels, shaped like a real dataset."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g).to(device)
    y = torch.randint(num_classes, (n,), generator=g).to(device)
    return data_mod.Data(name=f"random-{channels}x{size}x{size}", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0],
                         num_classes=num_classes, class_names=[str(c) for c in range(num_classes)],
                         in_channels=channels, image_size=size, source="torch.randn",
                         mean=torch.zeros(channels, size, size), std=torch.ones(channels, size, size))


def train_images_per_s(network: str, width: float, data, batch_size: int, warmup_steps: int, timed_steps: int) -> float:
    """Training images/s: the inner loop of `nc.train.train_one_lr` on batches of `data.x_train`."""
    device = data.x_train.device
    p = bench_params(network, width)
    model = train.build_model(p, data, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=p["momentum"], weight_decay=p["weight_decay"])
    autocast = train.autocast_for(device)
    model.train()
    N = len(data.x_train)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0)).to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    batches = max(1, N // batch_size)

    def step(s):
        nonlocal loss_sum, correct
        idx = order[(s % batches) * batch_size:(s % batches + 1) * batch_size]
        y = data.y_train[idx]
        loss, logits = train.sgd_step(model, opt, data.x_train[idx], y, autocast)
        loss_sum += loss.double() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        return len(idx)

    for s in range(warmup_steps):
        step(s)
    sync(device)
    t0 = time.perf_counter()
    images = sum(step(warmup_steps + s) for s in range(timed_steps))
    sync(device)
    return images / (time.perf_counter() - t0)


def snapshot_seconds(network: str, width: float, data, robustness_images: int, warmup: int, repeats: int) -> float:
    """Median seconds of `nc.train.measure_snapshot` on a freshly initialised network, after `warmup` untimed calls."""
    device = data.x_train.device
    p = bench_params(network, width, image_size=data.image_size, robustness_images=robustness_images)
    model = train.build_model(p, data, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    record = train.empty_record(p, LR, [1], data.num_classes, model.classifier.in_features)
    train._choose_fixed_samples(record, data, p)  # the Fig. 1 and Fig. 8 samples, as a run draws them
    for _ in range(warmup):  # cuDNN plans, allocator
        train.measure_snapshot(model, data, record, p)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        train.measure_snapshot(model, data, record, p)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def accumulator_seconds(n: int, p: int, num_classes: int, device, repeats: int, batch_size: int = 1000) -> float:
    """Median seconds of CollapseAccumulator update (batches of float32 features) + finalize (float64)."""
    g = torch.Generator().manual_seed(0)
    y = (torch.randperm(n, generator=g) % num_classes).to(device)  # balanced classes
    class_means = torch.randn(num_classes, p, generator=g).to(device)
    h = (class_means[y] + torch.randn(n, p, generator=g).to(device)).float()

    def once():
        acc = measure.CollapseAccumulator(num_classes, p, device)
        for i in range(0, n, batch_size):
            acc.update(h[i:i + batch_size], y[i:i + batch_size])
        return acc.finalize()

    if device.type == "cuda":
        once()  # warm-up (cuBLAS / cuSOLVER handles)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        once()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(quick: bool = False, device=None, log=print) -> list[dict]:
    """Every measurement of the configuration on `device` (default: as nc.train picks); returns the records."""
    cfg = QUICK if quick else FULL
    device = train.pick_device("auto") if device is None else torch.device(device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    base = {"device": device_name(device), "torch": torch.__version__}
    records = []

    def add(what, network, width, image_size, setting, value, unit, note=""):
        rec = {"what": what, "network": network, "width": width, "image_size": image_size, **base,
               "value": value, "unit": unit, "setting": setting, "note": note, "load_1min": os.getloadavg()[0]}
        records.append(rec)
        log(f"  -> {note}" if value is None else f"  -> {value:.4g} {unit}")

    sd = cfg["snapshot_data"]
    demo = data_mod.load("demo", image_size=16, device=device)
    snap_demo = demo if sd["n_per_class"] is None else data_mod.load(
        "demo", image_size=16, device=device, n_per_class=sd["n_per_class"], test_n_per_class=sd["test_n_per_class"])
    bs, warm, timed = cfg["batch_size"], cfg["warmup_steps"][kind], cfg["timed_steps"][kind]
    for channels, size in cfg["image_shapes"]:
        images = demo if (channels, size) == (1, 16) else random_data(cfg["random_images"], channels, size, 10, device)
        shape = f"{size}x{size}x{channels}"
        for network in cfg["networks"]:
            for width in cfg["widths"]:
                log(f"[bench] train {network} width {width} on {shape} ({images.name}): batch {bs}, "
                    f"{warm} warm-up + {timed} timed steps")
                value = train_images_per_s(network, width, images, bs, warm, timed)
                add("train", network, width, size,
                    f"{shape} {images.name}, batch {bs}, {timed} timed steps", value, "images/s")
    width, warm, repeats = cfg["snapshot_width"], cfg["snapshot_warmup"][kind], cfg["snapshot_repeats"][kind]
    n_train, n_test = len(snap_demo.x_train), len(snap_demo.x_test)
    for network in cfg["networks"]:
        for robustness_images in cfg["snapshot_robustness"]:
            log(f"[bench] snapshot {network} width {width} on demo 16x16 ({n_train} train / {n_test} test), "
                f"robustness_images={robustness_images}")
            value = snapshot_seconds(network, width, snap_demo, robustness_images, warm, repeats)
            add("snapshot", network, width, 16,
                f"{n_train} train / {n_test} test, robustness_images={robustness_images}", value, "s")
    for n, p, num_classes, gpu_only in cfg["accumulator"]:
        setting = f"N={n} p={p} C={num_classes}, float64"
        log(f"[bench] accumulator {setting}")
        if gpu_only and kind != "cuda":
            add("accumulator", None, None, None, setting, None, "s", note="skipped: GPU only")
            continue
        value = accumulator_seconds(n, p, num_classes, device, cfg["accumulator_repeats"][kind])
        add("accumulator", None, None, None, setting, value, "s")
    return records


def table(records: list[dict]) -> str:
    """A Markdown table of the records, with the device, torch version and load average above it."""
    head = records[0] if records else {"device": "?", "torch": "?"}
    loads = [r["load_1min"] for r in records] or [float("nan")]
    lines = [f"device: {head['device']}, torch {head['torch']}, "
             f"1-min load average {min(loads):.2f}..{max(loads):.2f} during the run", "",
             "| what | network | width | image | setting | value | unit |", "|---|---|---:|---:|---|---:|---|"]
    for r in records:
        value = r["note"] if r["value"] is None else f"{r['value']:.4g}"
        cells = [r["what"], r["network"] or "", "" if r["width"] is None else f"{r['width']:g}",
                 "" if r["image_size"] is None else f"{r['image_size']}", r["setting"], value, r["unit"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(records: list[dict], out_dir, device_kind: str) -> tuple[Path, Path]:
    """<out_dir>/bench-<device_kind>.json and .md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"bench-{device_kind}.json", out_dir / f"bench-{device_kind}.md"
    json_path.write_text(json.dumps(records, indent=1) + "\n")
    md_path.write_text(table(records))
    return json_path, md_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nc.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny subset (one network, one width, few steps)")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="output folder (default: bench/ in the repo)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda[:N]")
    args = parser.parse_args(argv)
    device = train.pick_device(args.device)
    t0 = time.perf_counter()
    records = run(args.quick, device)
    json_path, md_path = write(records, args.out, device.type)
    print("\n" + table(records))
    print(f"wrote {json_path} and {md_path} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
