"""nc.bench.suite: the quick benchmark and the GPU suite (on a CPU, tiny) run end to end and write well-formed records
(timings are never checked); the transcription of the authors' NC1 and the float64 reference are exact in float64;
the bf16 comparison applies its tolerance rule as stated."""
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nc import measure
from nc.bench import cases as bench_cases
from nc.bench import gpu as bench_gpu
from nc.bench import suite as bench
from nc.bench import syncs as bench_syncs

RATIO_KEYS = {"ratio_of", "numerator", "denominator"}
ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 900  # generous: a busy 2-core machine; only a failing test waits this long


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: on a busy 2-core machine a second thread only adds contention
    yield
    torch.set_num_threads(threads)


def check_records(records):
    """Every record has the fields; a ratio record is numerator / denominator of two same-unit numbers."""
    for r in records:
        assert set(bench.Records.FIELDS) <= set(r), r
        assert r["torch"] == torch.__version__
        if r["value"] is None:
            assert r["note"].startswith("skipped"), r  # never "failed"
            continue
        assert math.isfinite(r["value"]), r
        if r["unit"] == "x":
            assert RATIO_KEYS <= set(r), r
            n, d = r["numerator"], r["denominator"]
            assert n["unit"] == d["unit"] and n["value"] > 0 and d["value"] > 0, r
            assert r["value"] == pytest.approx(n["value"] / d["value"], rel=1e-12)
            assert r["ratio_of"] == f"{n['label']} / {d['label']}"


def by_what(records):
    out = {}
    for r in records:
        out.setdefault(r["what"], []).append(r)
    return out


def test_quick_bench_writes_json_and_markdown(tmp_path, capsys, one_thread):
    bench.main(["--quick", "--out", str(tmp_path), "--device", "cpu"])
    records = json.loads((tmp_path / "bench-cpu.json").read_text())
    check_records(records)
    assert all(r["device"].startswith("cpu") for r in records)
    what, cfg = by_what(records), bench.QUICK
    units = {"metric_time": "x", "nc1_rel_error": "1", "train_throughput": "x", "tpt_cost": "x",
             "snapshot_cost": "x", "layer_cost": "x", "store_throughput": "x", "bf16_check": "1", "collapse_time": "x",
             "collapse_memory": "x", "collapse_memory_formula": "MiB", "collapse_nc1_rel_error": "1"}
    assert set(what) == set(units)
    for name, unit in units.items():
        assert all(r["unit"] == unit for r in what[name]), name
    # the any-network measurement: four time ratios, four memory ratios, ours exact against the float64 reference
    assert len(what["collapse_time"]) == 4 and len(what["collapse_memory"]) == 4
    errors = {r["method"]: r["value"] for r in what["collapse_nc1_rel_error"]}
    assert errors["ours"] < 1e-12 and errors["two_pass"] < 1e-12
    # item 1: one time ratio and two errors (ours, the notebook's) per (N, p, C); the C=100 case is extrapolated
    assert [r["setting"].split(":")[0] for r in what["metric_time"]] == [
        f"N={n} p={p} C={c}" for n, p, c in cfg["metric_cases"]]
    assert [r["extrapolated"] for r in what["metric_time"]] == [False, True]
    assert all(r["value"] is not None for r in what["metric_time"] + what["nc1_rel_error"])
    assert [r["method"] for r in what["nc1_rel_error"]] == ["ours", "authors"] * len(cfg["metric_cases"])
    assert all(r["numerator"]["unit"] == "s" for r in what["metric_time"])
    # items 2-4 per demo network: throughput in images/s, the passes in seconds, two snapshot settings
    nets = [c.split("-")[1] for c in cfg["cells"]]
    for name in ("train_throughput", "tpt_cost", "layer_cost"):
        assert [r["network"] for r in what[name]] == nets
    assert [r["network"] for r in what["snapshot_cost"]] == [n for n in nets for _ in range(2)]
    assert all(r["numerator"]["unit"] == "images/s" for r in what["train_throughput"])
    assert all(r["denominator"]["unit"] == "s" for k in ("tpt_cost", "snapshot_cost", "layer_cost") for r in what[k])
    assert what["bf16_check"][0]["value"] is None and "--gpu" in what["bf16_check"][0]["note"]
    (store,) = what["store_throughput"]
    assert store["numerator"]["label"].startswith("streamed") and store["denominator"]["label"].startswith("in memory")
    # the Markdown table has one row per record and is what was printed
    md = (tmp_path / "bench-cpu.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert len(rows) == len(records)
    assert md in capsys.readouterr().out


def _records_in(path: Path) -> list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def test_a_bench_killed_after_its_first_record_leaves_it_on_disk(tmp_path):
    """SIGKILL (no cleanup runs) once the JSON holds a record: both files parse and hold every record written."""
    proc = subprocess.Popen([sys.executable, "-m", "nc.bench", "--quick", "--out", str(tmp_path), "--device", "cpu",
                             "--threads", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    json_path = tmp_path / "bench-cpu.json"
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not _records_in(json_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the bench ended before it was killed"
    finally:
        proc.kill()
        proc.wait()
    records = json.loads(json_path.read_text())  # parses: rewritten whole, atomically
    assert len(records) >= 1 and records[0]["what"] == "metric_time"
    check_records(records)
    rows = [line for line in (tmp_path / "bench-cpu.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| what")]
    assert len(rows) in (len(records), len(records) - 1)  # the Markdown is written just after the JSON


def test_a_spent_budget_records_the_cases_left_as_skipped(tmp_path, one_thread):
    bench.main(["--quick", "--out", str(tmp_path), "--device", "cpu", "--budget", "1e-9"])
    records = json.loads((tmp_path / "bench-cpu.json").read_text())
    check_records(records)
    what = by_what(records)
    cases = {"metric_time", "train_throughput", "tpt_cost", "snapshot_cost", "layer_cost", "store_throughput"}
    assert cases <= set(what)
    assert all(r["value"] is None for r in records)
    assert all("--budget of 1e-09 s" in r["note"] for r in records if r["what"] != "bf16_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_flag_without_cuda_exits_with_a_clear_message(tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main(["--gpu", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_gpu_suite_runs_every_case_on_a_cpu(tmp_path, one_thread):
    cfg = {**bench_gpu.QUICK, "packing": {**bench_gpu.QUICK["packing"], "processes": [1]}}  # one spawn: fast
    records = bench_gpu.run(cfg, torch.device("cpu"), bench.Records("cpu", log=lambda *a: None), log=lambda *a: None)
    bench.write(records, tmp_path, "bench-" + bench.slug("NVIDIA H200"))
    written = json.loads((tmp_path / "bench-nvidia-h200.json").read_text())
    assert len(written) == len(records)
    check_records(written)
    counted = {"syncs", "syncs_more_batches"}  # CUDA only: on a CPU the passes run, with nothing to count
    assert all(r["value"] is not None for r in written if r["what"] not in counted), [
        r["note"] for r in written if r["value"] is None]
    what = by_what(written)
    passes = [r["setting"].split(" of ")[0] for r in what["syncs"]]
    assert passes == list(bench_syncs.PASSES) * 2 and len(what["syncs_more_batches"]) == 3
    assert all("only CUDA has syncs to count" in r["note"] for k in counted for r in what[k])
    assert len(what["accumulator"]) == len(cfg["accumulator"])
    trained = [(r["network"], r["setting"].rsplit(", ", 1)[1]) for r in what["train"]]
    assert trained == [(n, p) for nets, *_ in cfg["train"] for n in nets for p in cfg["precisions"]]
    assert len(what["precision_speedup"]) == len(trained) // 3 * 2
    assert len(what["packing"]) == 1 and len(what["packing"][0]["per_process"]) == 1
    checked = {r["setting"].split(":")[0] for r in what["bf16_check"]}
    assert {"nc1", "self_duality", "eval_train_acc", "test_acc"} <= checked
    assert all(isinstance(r["agree"], bool) and len(r["per_snapshot"]["epochs"]) == 2 for r in what["bf16_check"])
    (verdict,) = what["bf16_verdict"]
    assert 0 <= verdict["value"] <= 1 and verdict["agree"] == (verdict["value"] == 1)
    assert len(what["metric_time"]) == 1 and len(what["nc1_rel_error"]) == 2


def planted(n=600, p=24, C=6, offset=0.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g) % C
    h = 3 * torch.randn(C, p, dtype=torch.float64, generator=g)[y] + torch.randn(n, p, dtype=torch.float64,
                                                                                  generator=g) + offset
    return h, y


def test_reference_nc1_equals_nc_measure_in_float64():
    h, y = planted()
    ref = bench_cases.reference_nc1(h, y, 6)
    assert ref == pytest.approx(measure.moments(h, y, 6).nc1, rel=1e-10)
    assert bench_cases.ours_nc1(h, y, 6, batch_size=100) == pytest.approx(ref, rel=1e-10)


def test_authors_method_in_float64_is_C_times_the_reference():
    h, y = planted(offset=5.0)
    passes, final, raw = bench_cases.authors_nc1(h, y, 6, batch_size=128, dtype=torch.float64)
    assert raw == pytest.approx(6 * bench_cases.reference_nc1(h, y, 6), rel=1e-9)
    assert passes >= 0 and final >= 0


def test_planted_features_are_float32_balanced_and_seeded():
    h, y = bench_cases.planted_features(1000, 8, 10)
    assert h.dtype == torch.float32 and h.shape == (1000, 8)
    assert torch.bincount(y).tolist() == [100] * 10
    assert torch.equal(bench_cases.planted_features(1000, 8, 10)[0], h)


def fake_run(values: dict, epochs=(1, 3), total=3):
    """A train_one_lr-shaped record with `values` {metric: [value at each snapshot epoch]} in the snapshot group."""
    snap = {k: np.full(total, np.nan) for k in values}
    for k, v in values.items():
        snap[k][np.array(epochs) - 1] = v
    return {"snapshot_epochs": list(epochs), "snapshot": snap, "epoch": {"lr_schedule": np.ones(total)}}


def test_compare_precisions_applies_the_stated_tolerance():
    ref = fake_run({"nc1": [1.0, 0.1], "ncc_mismatch": [0.0, 0.02], "mse": [np.nan, np.nan], "rob": [2.0, 2.0]})
    test = fake_run({"nc1": [1.04, 0.2], "ncc_mismatch": [0.01, 0.02], "mse": [np.nan, np.nan], "rob": [2.0, np.nan]})
    other = fake_run({"nc1": [1.0, 0.16], "ncc_mismatch": [0.0, 0.02], "mse": [np.nan, np.nan], "rob": [2.0, 2.0]})
    rows = {r["metric"]: r for r in bench_gpu.compare_precisions(ref, test, other, {"ncc_mismatch": 0.01})}
    assert set(rows) == {"nc1", "ncc_mismatch", "rob"}  # NaN in both runs everywhere: not compared
    nc1 = rows["nc1"]
    # epoch 1: |1.04 - 1| <= 5% of 1 (the seeds agree); epoch 3: |0.2 - 0.1| <= 2 |0.16 - 0.1| (the seed spread)
    assert nc1["tolerance"] == pytest.approx([0.05, 0.12]) and nc1["agree"] == [True, True]
    assert nc1["rel_diff"] == pytest.approx([0.04, 1.0])
    # a count metric: one test image in 100 is its resolution, and 0 -> 0.01 is relative to that resolution
    assert rows["ncc_mismatch"]["agree"] == [True, True] and rows["ncc_mismatch"]["rel_diff"] == [1.0, 0.0]
    assert rows["rob"]["agree"] == [True, False] and rows["rob"]["compared"] == [True, True]  # one NaN disagrees
    tighter = {r["metric"]: r for r in bench_gpu.compare_precisions(ref, test, other, {}, slack=1.0)}
    assert tighter["nc1"]["agree"] == [True, False]


def test_sync_warnings_are_counted_and_cpu_counts_nothing():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for message in (bench_syncs.SYNC_WARNING, "something else", bench_syncs.SYNC_WARNING):
            warnings.warn(message, UserWarning, stacklevel=1)
    assert bench_syncs.count_sync_warnings(caught) == 2
    with bench_syncs.syncs_counted("cpu") as counted:
        torch.ones(3).sum().item()
    assert counted["syncs"] is None


def test_slug_and_jsonable():
    assert bench.slug("NVIDIA H200") == "nvidia-h200" and bench.slug("Tesla V100-SXM2-16GB") == "tesla-v100-sxm2-16gb"
    assert bench.jsonable({"a": [np.float64(1.5), float("nan"), np.int64(2)]}) == {"a": [1.5, None, 2]}
