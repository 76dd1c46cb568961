"""The bench's records (one dict per number: what, value, unit, setting; a ratio with its numerator and
denominator) and the cases both suites share: a demo cell's parameters and data, and the metric-time comparison.
"""
from __future__ import annotations

import math
import os
import platform
import re
import time

import torch

from nc import paths, runs
from nc.bench import cases
from nc.runs import params as params_mod

DEMO = paths.profile_dir("demo")


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
    ({label, value, unit}); a skipped or failed case has value None and the reason as its note.

    on_record(records) is called after every record (the suites write their files there, so that a kill loses no
    finished number); budget_s: cases that check `out_of_time` after that many seconds are recorded as skipped."""
    FIELDS = ("what", "network", "width", "image_size", "setting", "value", "unit", "note", "device", "torch",
              "threads", "load_1min")

    def __init__(self, device, log=print, on_record=None, budget_s: float | None = None):
        super().__init__()
        self.base = {"device": device_name(torch.device(device)), "torch": torch.__version__,
                     "threads": torch.get_num_threads()}
        self.log, self.on_record, self.budget_s = log, on_record, budget_s
        self.deadline = None if budget_s is None else time.perf_counter() + budget_s

    def out_of_time(self, what, unit, setting, **where) -> bool:
        """True, with a skipped record, once the budget is spent (a case not started within it); else False."""
        if self.deadline is None or time.perf_counter() < self.deadline:
            return False
        self.skipped(what, unit, setting, f"skipped: not started within the --budget of {self.budget_s:g} s", **where)
        return True

    def value(self, what, value, unit, setting, network=None, width=None, image_size=None, note="", **extra):
        rec = {"what": what, "network": network, "width": width, "image_size": image_size, "setting": setting,
               "value": None if value is None else float(value), "unit": unit, "note": note, **self.base,
               "load_1min": os.getloadavg()[0], **jsonable(extra)}
        self.append(rec)
        if self.on_record is not None:
            self.on_record(self)
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
    key = repr(sorted(params_mod.data_arguments(params).items()))
    if key not in cache:
        cache[key] = runs.load_data(params, device)
    return cache[key]


def metric_records(rec: Records, cfg: dict, device, log=print) -> None:
    """Item 1: the notebook's NC1 vs ours, time ratio and both relative errors, per (N, p, C)."""
    bs, kind = cfg["metric_batch"], torch.device(device).type
    for n, p, C in cfg["metric_cases"]:
        max_s = cfg["authors_max_s"][C] if isinstance(cfg["authors_max_s"], dict) else cfg["authors_max_s"]
        setting = f"N={n} p={p} C={C}: float32 features (random class means + noise), batches of {bs}"
        if rec.out_of_time("metric_time", "x", setting):
            continue
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


