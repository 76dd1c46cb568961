"""The any-network measurement's speed and memory (issue "Measure any network", item 5): nc.measure.collapse on N
float32 features of width p in C classes, fed through an identity model (the features are the batches), against

- the authors' notebook's method (nc.bench.cases.authors_nc1: per-class loop, per-sample outer products, float32),
  timed on the first rows and scaled linearly in N;
- an all-in-memory float64 numpy reference (nc.bench.cases.reference_nc1: every feature in float64, centred, one
  Z^T Z);
- a two-pass pooled-covariance float64 accumulator (the other streaming design: class means in a first pass, then
  one p x p scatter of the centred batches in a second), finished as ours is;
- the floor: one float64 matmul H^T H of the N x p features (already in float64: the copy is not timed).

Peak memory: the largest resident set size (/proc/self/statm, sampled every 2 ms in a thread) above the one before
the call, so it counts torch's and numpy's allocations alike; the features themselves (N p float32) are held before
every call and not counted. Ours needs 8 (p^2 + 2 C p + C) bytes (ClassStats) plus a batch.
"""
from __future__ import annotations

import os
import threading
import time

import torch
import torch.nn as nn

from nc import measure
from nc.bench import cases
from nc.measure.moments import _moments_from, class_counts

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_memory(fn):
    """(seconds, bytes of peak RSS above the start, fn()): RSS sampled every 2 ms while fn runs."""
    start, peak, done = _rss(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        t.join()
    return seconds, max(0, max(peak[0], _rss()) - start), out


def batches(h, y, size):
    return [(h[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def ours(h, y, C, size) -> float:
    """NC1 by nc.measure.collapse through an identity model (features: its output; no head)."""
    ds = measure.collapse(nn.Sequential(nn.Identity()), batches(h, y, size), num_classes=C, features="0",
                          progress=False)
    return float(ds["nc1"])


def two_pass(h, y, C, size) -> float:
    """NC1 by a two-pass float64 accumulator: class means, then the scatter of the centred batches."""
    p = h.shape[1]
    counts = class_counts(y, C)
    sums = torch.zeros(C, p, dtype=torch.float64)
    for hb, yb in batches(h, y, size):
        sums.index_add_(0, yb, hb.double())
    mu = sums / counts[:, None]
    scatter, m2 = torch.zeros(p, p, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    for hb, yb in batches(h, y, size):
        z = hb.double() - mu[yb]
        scatter.addmm_(z.T, z)
        m2.index_add_(0, yb, z.pow(2).sum(dim=1))
    return _moments_from(counts, mu, scatter / counts.sum(), m2 / counts).nc1


def floor(h64) -> torch.Tensor:
    return h64.T @ h64


def timed_floor(h):
    """peak_memory of floor on a float64 copy of h made before (not timed, not counted)."""
    h64 = h.double()
    return peak_memory(lambda: floor(h64))


def run(n: int, p: int, C: int, size: int, probe_n: int, log=print) -> dict:
    """Seconds, peak bytes and NC1 of each method on the same planted features (cases.planted_features)."""
    h, y = cases.planted_features(n, p, C)
    out = {"n": n, "p": p, "C": C, "batch": size, "formula_bytes": 8 * (p * p + 2 * C * p + C)}
    for name, fn in (("ours", lambda: ours(h, y, C, size)), ("two_pass", lambda: two_pass(h, y, C, size)),
                     ("reference", lambda: cases.reference_nc1(h, y, C))):
        log(f"    {name} ...")
        out[f"{name}_s"], out[f"{name}_bytes"], out[f"{name}_nc1"] = peak_memory(fn)
        log(f"    {name}: {out[f'{name}_s']:.3g} s, peak +{out[f'{name}_bytes'] / 2**20:.0f} MiB")
    out["floor_s"], out["floor_bytes"], _ = timed_floor(h)
    m = min(max(probe_n, 2 * C), n)  # its probe: the first m rows relabelled so that every class has two or more
    yp = torch.arange(m) % C
    _, out["authors_bytes"], (passes, final, raw) = peak_memory(lambda: cases.authors_nc1(h[:m], yp, C, size))
    out.update(authors_s=passes * n / m + final, authors_n=m, authors_nc1=raw / C,
               authors_reference_nc1=cases.reference_nc1(h[:m], yp, C))
    log(f"    notebook method on {m} rows: {passes:.3g} s + {final:.3g} s -> {out['authors_s']:.3g} s at N={n}")
    return out


def records(rec, cfg: dict, log=print) -> None:
    """The ratios: time (and peak memory) of each baseline / ours, ours / the floor; each NC1's error."""
    n, p, C = cfg["collapse_case"]
    size = cfg["collapse_batch"]
    setting = f"N={n} p={p} C={C}: float32 features through an identity model, batches of {size}, CPU"
    if rec.out_of_time("collapse_time", "x", setting):
        return
    log(f"[bench] any-network measurement, {setting}")
    r = run(n, p, C, size, cfg["collapse_probe_n"], log)
    mine = ("ours: nc.measure.collapse (float64, one pass, symmetric block update)", r["ours_s"], "s")
    names = {"two_pass": "two-pass pooled-covariance float64 accumulator",
             "reference": "all-in-memory float64 numpy reference",
             "authors": f"authors' notebook method (timed on {r['authors_n']} rows, scaled linearly in N)"}
    for key, label in names.items():
        rec.ratio("collapse_time", (label, r[f"{key}_s"], "s"), mine, setting)
    rec.ratio("collapse_time", mine, ("floor: one float64 matmul H^T H of the N x p features", r["floor_s"], "s"),
              setting, note="ours / the floor")
    for key, label in {**names, "floor": "floor H^T H (its N x p float64 input not counted)"}.items():
        note = f"the notebook's method on its {r['authors_n']} rows" if key == "authors" else ""
        rec.ratio("collapse_memory", (label, r[f"{key}_bytes"] / 2**20, "MiB"),
                  ("ours: peak RSS above the start", r["ours_bytes"] / 2**20, "MiB"), setting, note=note)
    rec.value("collapse_memory_formula", r["formula_bytes"] / 2**20, "MiB", f"{setting}; 8 (p^2 + 2 C p + C) bytes",
              measured_ours=r["ours_bytes"] / 2**20)
    for key in ("ours", "two_pass", "authors"):
        ref = r["authors_reference_nc1"] if key == "authors" else r["reference_nc1"]
        rec.value("collapse_nc1_rel_error", cases.relative_error(r[f"{key}_nc1"], ref), "1",
                  f"{setting}; {key} vs the float64 numpy reference", method=key)
