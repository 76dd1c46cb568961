"""One run's page (book/train.md): its learning rates, loss and accuracy curves, and a panel per snapshot measure.

The panels loop over the cube's snapshot variables (the built-in ones, nc.runs.cube.SNAPSHOT_VARS, then any other
variable on (lr, seed, epoch) the cube carries: a measure added with nc.measure.registry.register), so a new snapshot
metric appears on every run page without a notebook edit: a `<name>_means` / `<name>_classifiers` pair shares a panel
(blue / orange, as in the paper), and a measure spanning more than two decades is drawn on a log scale.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
import yaml

from nc.measure import imbalance
from nc.report.grid import BLUE, ORANGE, RED
from nc.runs import cube
from nc.train import losses


def selected(ds: xr.Dataset) -> xr.Dataset:
    """The first run seed at its selected lr (the first lr when none completed): the curves this page draws."""
    return cube.selected(ds)


def header_markdown(ds: xr.Dataset) -> str:
    """What was trained, on what, the lr selected for each run seed, and each (lr, seed)'s status, TPT start,
    final test accuracy and wall time."""
    rows = []
    for lr in ds["lr"].values:
        for seed in ds["seed"].values:
            run = ds.sel(lr=lr, seed=seed)
            last = run["test_acc"].dropna("epoch")
            tpt = float(run["tpt_epoch"])
            tpt = "—" if np.isnan(tpt) else f"{tpt:.0f}"
            chosen = " (selected)" if float(ds["selected_lr_by_seed"].sel(seed=seed)) == lr else ""
            rows.append(f"| {lr:g}{chosen} | {seed} | {run['status'].item()} | {tpt} "
                        f"| {100 * float(last[-1]) if last.size else math.nan:.2f} | {float(run['wall_time']):.0f} |")
    a = ds.attrs
    seeds = ds["seed"].values
    chosen = ", ".join(f"seed {s}: **{float(ds['selected_lr_by_seed'].sel(seed=s)):g}**" for s in seeds)
    shown = (f" The curves below are seed {seeds[0]}'s at its selected lr; the figure pages show every seed."
             if len(seeds) > 1 else "")
    return (f"**{a['dataset']} × {a['network']}** (profile `{a['profile']}`): {a['n_train']} train / {a['n_test']} "
            f"test images of shape {a['image_shape']}, {a['num_classes']} classes, from `{a['data_source']}`, "
            f"standardised per {a.get('standardize', 'pixel')}; precision {a.get('precision', 'float32')}; trained "
            f"on {a['device']}. TPT start: eval-mode train accuracy ≥ {100 * float(a.get('tpt_threshold', np.nan)):g}% "
            f"(`tpt_threshold`). Selected learning rate ({a['lr_selection_rule']}): {chosen}.{shown}\n\n"
            "| lr | seed | status | TPT start (epoch) | final test accuracy (%) | wall time (s) |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))


def loss_accuracy_figure(sel: xr.Dataset):
    """Training loss (log scale) and the three accuracies per epoch, red line at the TPT start."""
    tpt = float(sel["tpt_epoch"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.4))
    a.semilogy(sel["epoch"], sel["train_loss"], color="k")
    loss = (yaml.safe_load(sel.attrs.get("parameters", "")) or {}).get("loss", "cross_entropy")
    a.set(xlabel="epoch", ylabel=losses.get(loss).axis_label)  # nc.train.losses: the loss's own label
    b.plot(sel["epoch"], 100 * sel["eval_train_acc"], label="train (eval mode: marks the TPT)")
    b.plot(sel["epoch"], 100 * sel["train_acc"], label="train (training pass)", lw=0.8, alpha=0.7)
    b.plot(sel["epoch"], 100 * sel["test_acc"], label="test (eval mode)")
    b.set(xlabel="epoch", ylabel="accuracy (%)")
    b.legend(fontsize=8)
    for ax in (a, b):
        if np.isfinite(tpt):
            ax.axvline(tpt, color=RED, lw=1)
    fig.tight_layout()
    return fig


PAIRS = (("_means", "_classifiers"), ("_major", "_minor"))  # drawn together, blue then orange


def panels(names=cube.SNAPSHOT_VARS, titles=None) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(title, [(variable, colour), ...]), ...]: a _means / _classifiers (or _major / _minor) pair shares a panel.
    A single measure's title is titles[name] when given, else its long_name in the record schema."""
    out, seen = [], set()
    for name in names:
        if name in seen:
            continue
        for a, b in PAIRS:
            stem = name.removesuffix(a).removesuffix(b)
            pair = [stem + a, stem + b]
            if name in pair and all(n in names for n in pair):
                out.append((stem.replace("_", " ") + f" ({a[1:]} / {b[1:]})", [(pair[0], BLUE), (pair[1], ORANGE)]))
                seen.update(pair)
                break
        else:
            title = titles[name] if titles and name in titles else cube.variables_mod.variable(name).long_name
            out.append((title, [(name, BLUE)]))
            seen.add(name)
    return out


def metric_names(ds: xr.Dataset) -> list[str]:
    """The snapshot measures a run's page shows: all of them, but the majority / minority group measures only for
    an imbalanced run (nc.measure.imbalance), and the MSE central-path terms only for an MSE run (else they are NaN)."""
    p = yaml.safe_load(ds.attrs.get("parameters", "{}")) or {}
    imbalanced = p.get("class_counts") is not None or p.get("imbalance_ratio") not in (None, 1)
    group = {k for k in imbalance.DEFINITIONS}
    others = [n for n, v in ds.data_vars.items() if n not in cube.VARIABLES and v.dims[-1:] == ("epoch",)]
    return [n for n in (*cube.SNAPSHOT_VARS, *others) if imbalanced or n not in group]


def metrics_figure(sel: xr.Dataset, names=None, columns: int = 4):
    """One panel per snapshot measure of the selected lr, red line at the TPT start."""
    names = metric_names(sel) if names is None else names
    titles = {n: sel[n].attrs.get("long_name", n) for n in names if n in sel}
    spec = [(t, c) for t, c in panels(names, titles) if any(np.isfinite(sel[n].values).any() for n, _ in c)]
    rows = max(1, -(-len(spec) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.9 * columns, 3.0 * rows), squeeze=False)
    tpt = float(sel["tpt_epoch"])
    for ax, (title, curves) in zip(axes.flat, spec):
        values = []
        for name, colour in curves:
            s = sel[name].dropna("epoch")
            ax.plot(s["epoch"], s, marker="o", ms=3, color=colour, label=name.rsplit("_", 1)[-1])
            values += s.values.tolist()
        if np.isfinite(tpt):
            ax.axvline(tpt, color=RED, lw=1)
        v = np.array(values)
        if v.size and (v > 0).all() and v.max() / v.min() > 100:
            ax.set_yscale("log")
        if len(curves) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    for ax in axes.flat[len(spec):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def nc1_sentence(sel: xr.Dataset) -> str:
    s = sel["nc1"].dropna("epoch")
    if s.size < 2:
        return "NC1 was measured at fewer than two snapshots."
    first, last = float(s[0]), float(s[-1])
    return f"NC1 fell from {first:.3g} at the first snapshot to {last:.3g} at the last, a factor of {first / last:.0f}."
