"""The paper's figure layout (Section 3): a 3 x 7 grid, rows VGG / ResNet / DenseNet, columns the seven
datasets left to right by difficulty, epoch on the x axis, blue for class means, orange for classifiers,
a red vertical line at the start of the terminal phase (TPT). Shared by every figure notebook.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

COLUMNS = ("mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "stl10", "imagenet")
TITLES = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "svhn": "SVHN", "cifar10": "CIFAR10",
          "cifar100": "CIFAR100", "stl10": "STL10", "imagenet": "ImageNet", "demo": "MNIST (demo)"}
ROWS = ("vgg", "resnet", "densenet")
ROW_TITLES = {"vgg": "VGG", "resnet": "ResNet", "densenet": "DenseNet"}
BLUE, ORANGE, RED = "#1f77b4", "#ff7f0e", "#d62728"


def column_of(dataset: str) -> str:
    """The paper's column a dataset belongs to (the demo is real MNIST, a 500-per-class subset)."""
    return "mnist" if dataset == "demo" else dataset


def cell(profile: xr.Dataset, column: str, row: str) -> xr.Dataset | None:
    """The selected-lr curves of one grid cell, or None when the profile has no run there."""
    for d in profile["dataset"].values:
        if column_of(str(d)) == column and row in profile["network"].values:
            c = profile.sel(dataset=d, network=row)
            if str(c["status"].values) not in ("missing", "") and np.isfinite(c["train_loss"].values).any():
                return c
    return None


def snapshot_series(c: xr.Dataset, name: str) -> xr.DataArray:
    """A snapshot variable without the NaNs between snapshot epochs."""
    return c[name].dropna("epoch")


def grid(profile: xr.Dataset, curves, ylabel: str, *, logy: bool = False, suptitle: str = "",
         reference: float | None = None, height: float = 7.5):
    """Draw `curves` = [(variable, colour, label), ...] in every cell that has data; say so where not.

    `reference`: an optional horizontal dashed line (e.g. the value at exact collapse)."""
    fig, axes = plt.subplots(len(ROWS), len(COLUMNS), figsize=(19, height), squeeze=False, sharex=False)
    present = {column_of(str(d)): str(d) for d in profile["dataset"].values}
    for j, col in enumerate(COLUMNS):
        axes[0, j].set_title(TITLES[present.get(col, col)], fontsize=11)
        for i, row in enumerate(ROWS):
            ax = axes[i, j]
            c = cell(profile, col, row)
            if j == 0:
                ax.set_ylabel(f"{ROW_TITLES[row]}\n{ylabel}", fontsize=10)
            if c is None:
                ax.text(0.5, 0.5, "no run in\nthis profile", ha="center", va="center", color="0.5",
                        transform=ax.transAxes, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_color("0.85")
                continue
            for name, colour, label in curves:
                s = snapshot_series(c, name) if name in SNAPSHOT_VARS else c[name].dropna("epoch")
                ax.plot(s["epoch"], s, color=colour, marker="o" if name in SNAPSHOT_VARS else None,
                        ms=2.5, lw=1.4, label=label)
            tpt = float(c["tpt_epoch"])
            if np.isfinite(tpt):
                ax.axvline(tpt, color=RED, lw=1.2)
            if reference is not None:
                ax.axhline(reference, color="0.4", lw=0.8, ls="--")
            if logy:
                ax.set_yscale("log")
            ax.tick_params(labelsize=8)
            if i == len(ROWS) - 1:
                ax.set_xlabel("epoch", fontsize=9)
            ax.text(0.98, 0.97, str(c["network_name"].values), transform=ax.transAxes, ha="right", va="top",
                    fontsize=8, color="0.35")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    handles.append(plt.Line2D([], [], color=RED, lw=1.2))
    labels.append("TPT start")
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=9, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, x=0.01, ha="left", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


SNAPSHOT_VARS = ("nc1", "equinorm_means", "equinorm_classifiers", "equiangular_means", "equiangular_classifiers",
                 "maxangle_means", "maxangle_classifiers", "self_duality", "ncc_mismatch", "robustness",
                 "eval_train_acc", "within_trace")


def change_table(profile: xr.Dataset, name: str) -> list[dict]:
    """Per cell: the variable at the first snapshot, at the TPT start (nearest snapshot at or after it)
    and at the last snapshot; for the captions' summaries."""
    rows = []
    for col in COLUMNS:
        for row in ROWS:
            c = cell(profile, col, row)
            if c is None:
                continue
            s = snapshot_series(c, name)
            if s.size == 0:
                continue
            tpt = float(c["tpt_epoch"])
            at_tpt = s.sel(epoch=s["epoch"][s["epoch"] >= tpt][0]) if np.isfinite(tpt) and (s["epoch"] >= tpt).any() \
                else xr.DataArray(np.nan)
            rows.append({"dataset": col, "network": str(c["network_name"].values), "first": float(s[0]),
                         "tpt": float(at_tpt), "last": float(s[-1]),
                         "tpt_epoch": tpt, "last_epoch": int(s["epoch"][-1])})
    return rows


def summary_markdown(profile: xr.Dataset, names, label: str, fmt: str = ".3g") -> str:
    """A Markdown table per cell of `names` at the first snapshot, the TPT start and the last epoch, and one
    sentence counting the cells where the last value is below the TPT-start value (the paper's claim)."""
    lines = ["| dataset | network | measure | first snapshot | TPT start (epoch) | last epoch |", "|---|---|---|---|---|---|"]
    lower, total = 0, 0
    for name in names:
        for r in change_table(profile, name):
            tpt = "never reached" if not np.isfinite(r["tpt_epoch"]) else f"{r['tpt']:{fmt}} ({r['tpt_epoch']:.0f})"
            lines.append(f"| {TITLES[r['dataset']]} | {r['network']} | {name.replace('_', ' ')} | "
                         f"{r['first']:{fmt}} | {tpt} | {r['last']:{fmt}} ({r['last_epoch']}) |")
            if np.isfinite(r["tpt"]):
                total += 1
                lower += r["last"] < r["tpt"]
    verdict = (f"\n\nIn this profile, {label} is lower at the last epoch than at the start of the TPT in "
               f"**{lower} of {total}** curves that reached the TPT." if total else
               "\n\nNo run of this profile reached the TPT, so the paper's claim cannot be checked here.")
    return "\n".join(lines) + verdict
