"""nc.bench: the quick benchmark runs end to end and writes well-formed records (timings are never checked)."""
import json
import math

import torch

from nc import bench

FIELDS = {"what", "network", "width", "image_size", "device", "torch", "value", "unit"}


def test_quick_bench_writes_json_and_markdown(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: on a busy 2-core machine a second thread only adds contention
    try:
        bench.main(["--quick", "--out", str(tmp_path), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    records = json.loads((tmp_path / "bench-cpu.json").read_text())
    cfg = bench.QUICK
    train = [r for r in records if r["what"] == "train"]
    snapshot = [r for r in records if r["what"] == "snapshot"]
    accumulator = [r for r in records if r["what"] == "accumulator"]
    assert len(records) == len(train) + len(snapshot) + len(accumulator)
    for r in records:
        assert FIELDS <= set(r), r
        assert r["torch"] == torch.__version__ and r["device"].startswith("cpu")
    # one train record per network x width x image shape, 16x16 (demo) and 32x32 (random)
    assert sorted((r["network"], r["width"], r["image_size"]) for r in train) == sorted(
        (n, w, s) for n in cfg["networks"] for w in cfg["widths"] for _, s in cfg["image_shapes"])
    assert all(r["unit"] == "images/s" and math.isfinite(r["value"]) and r["value"] > 0 for r in train)
    # with and without DeepFool, per network
    assert sorted((r["network"], r["setting"].split("robustness_images=")[1]) for r in snapshot) == sorted(
        (n, str(k)) for n in cfg["networks"] for k in cfg["snapshot_robustness"])
    assert all(r["unit"] == "s" and r["value"] > 0 and r["image_size"] == 16 for r in snapshot)
    # GPU-only sizes are recorded as skipped on the CPU, the others measured
    assert len(accumulator) == len(cfg["accumulator"])
    for r, (n, p, c, gpu_only) in zip(accumulator, cfg["accumulator"]):
        assert f"N={n} p={p} C={c}" in r["setting"] and r["unit"] == "s"
        assert (r["value"] is None and "skipped" in r["note"]) if gpu_only else r["value"] > 0
    # the Markdown table has one row per record and is what was printed
    md = (tmp_path / "bench-cpu.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert len(rows) == len(records)
    assert md in capsys.readouterr().out
