"""The paper's figure layout (Section 3), drawn with matplotlib: rows VGG / ResNet / DenseNet, columns the seven
datasets left to right by difficulty, epoch on the x axis, blue for class means, orange for classifiers, a red
vertical line at the start of the terminal phase (TPT). With several run seeds, each curve is the median over the
seeds (each at its own selected lr) with a shaded min–max band, and the red line is the median TPT start.

A profile that ran only a few cells is drawn with just its rows and columns, at a size whose labels read at the
book's page width; the full 3 x 7 grid, with its empty cells marked, is drawn when most cells ran or on request
(`full=True`). The claims page's colour-coded tables use the same layout.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from nc import data, models
from nc.data import DATASETS, TITLES, column_of
from nc.report.profiles import cell, cells, seed_runs
from nc.runs import cube

BLUE, ORANGE, RED = "#1f77b4", "#ff7f0e", "#d62728"
GREEN_HELD, AMBER_SOME, RED_NOT, GREY_NA, EMPTY = "#b7e1b0", "#f7dc8f", "#f4b6b0", "#e3e3e3", "#ffffff"
VERDICT_COLOURS = {"held": GREEN_HELD, "some": AMBER_SOME, "not held": RED_NOT, "not checkable": GREY_NA}
FULL_GRID_FROM = 11  # cells with a run (of 21) from which the whole grid is drawn


def layout(profile: xr.Dataset, full: bool | None = None) -> tuple[list[str], list[str]]:
    """(columns, rows) to draw: all of them for a full grid, else those with at least one run."""
    ran = cells(profile)
    if full or (full is None and len(ran) >= FULL_GRID_FROM) or not ran:
        extra = [c for c in data.columns() if c not in DATASETS and any(col == c for col, _, _ in ran)]
        return [*DATASETS, *extra], list(models.FAMILIES)
    cols = [c for c in data.columns() if any(col == c for col, _, _ in ran)]
    rows = [r for r in models.FAMILIES if any(row == r for _, row, _ in ran)]
    return cols, rows


def _size(cols, rows, full_width=19.0, panel=(4.6, 2.9)):
    if len(cols) >= len(DATASETS):
        return full_width, 2.5 * len(rows) + 0.6
    return min(full_width, panel[0] * len(cols) + 0.8), panel[1] * len(rows) + 0.9


def _titles(profile):
    return {column_of(str(d)): str(d) for d in profile["dataset"].values}


def seed_band(curve: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """(median, min, max) over the `seed` dimension of the seeds that have a value, at the epochs where at least
    one has (the snapshot epochs, for a snapshot variable)."""
    curve = curve.dropna("epoch", how="all")
    return curve.median("seed", skipna=True), curve.min("seed", skipna=True), curve.max("seed", skipna=True)


def median_tpt(c: xr.Dataset) -> float:
    """The median TPT start epoch over a cell's seeds that reached it; NaN when none did."""
    t = c["tpt_epoch"].values
    return float(np.median(t[np.isfinite(t)])) if np.isfinite(t).any() else np.nan


def tpt_ranges(profile: xr.Dataset) -> list[str]:
    """Per cell with several seeds: `network (dataset): TPT start median [min–max], k of n seeds reached it`."""
    out = []
    for _, _, c in cells(profile):
        runs = seed_runs(c)
        if len(runs) > 1:
            t = np.array([float(r["tpt_epoch"]) for _, r in runs])
            reached = t[np.isfinite(t)]
            what = (f"median {np.median(reached):g} [{reached.min():g}–{reached.max():g}]" if reached.size
                    else "never reached")
            out.append(f"{c['network_name'].values} ({c['dataset'].values}): {what}, "
                       f"{reached.size} of {len(runs)} seeds reached it")
    return out


def grid(profile: xr.Dataset, curves, ylabel: str, *, logy: bool = False, suptitle: str = "",
         reference: float | None = None, full: bool | None = None):
    """Draw `curves` = [(variable, colour, label), ...] in every cell that has data; say so where not.

    `reference`: an optional horizontal dashed line (e.g. the value at exact collapse)."""
    cols, rows = layout(profile, full)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=_size(cols, rows), squeeze=False)
    present, small = _titles(profile), len(cols) < len(DATASETS)
    fs = 11 if small else 9
    for j, col in enumerate(cols):
        axes[0, j].set_title(TITLES[present.get(col, col)], fontsize=fs + 1)
        for i, row in enumerate(rows):
            ax, c = axes[i, j], cell(profile, col, row)
            if j == 0:
                ax.set_ylabel(f"{models.FAMILY_TITLES[row]}\n{ylabel}", fontsize=fs)
            if c is None:
                ax.text(0.5, 0.5, "no run in\nthis profile", ha="center", va="center", color="0.5",
                        transform=ax.transAxes, fontsize=fs)
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_color("0.85")
                continue
            ran = c.sel(seed=[seed for seed, _ in seed_runs(c)])
            for name, colour, label in curves:
                middle, low, high = seed_band(ran[name])
                ax.plot(middle["epoch"], middle, color=colour, marker="o" if name in cube.SNAPSHOT_VARS else None,
                        ms=3 if small else 2.5, lw=1.5, label=label)
                if ran.sizes["seed"] > 1:
                    ax.fill_between(middle["epoch"], low, high, color=colour, alpha=0.25, lw=0)
            tpt = median_tpt(ran)
            if np.isfinite(tpt):
                ax.axvline(tpt, color=RED, lw=1.2)
            if reference is not None:
                ax.axhline(reference, color="0.4", lw=0.8, ls="--")
            if logy:
                ax.set_yscale("log")
            ax.tick_params(labelsize=fs - 1)
            if i == len(rows) - 1:
                ax.set_xlabel("epoch", fontsize=fs)
            ax.text(0.98, 0.97, str(c["network_name"].values), transform=ax.transAxes, ha="right", va="top",
                    fontsize=fs - 1, color="0.35")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    handles.append(plt.Line2D([], [], color=RED, lw=1.2))
    labels.append("TPT start")
    ncol = len(labels) if not small or len(cols) > 1 else 1
    fig.legend(handles, labels, loc="upper right", ncol=ncol, fontsize=fs, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, x=0.01, ha="left", fontsize=fs + 2)
    top = 1 - (0.35 + 0.25 * (ncol == 1) * len(labels)) / fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def claims_grid(claim_rows: list[dict], figure: str, title: str, profile: xr.Dataset, full: bool | None = None):
    """A colour-coded table of one figure's claim in the grid's layout: green held (in every checkable seed),
    amber held in some seeds, red did not, grey not checkable, white no run; each cell shows its numbers (TPT
    start -> last epoch), or with several seeds in how many it held and each seed's verdict."""
    cols, rows = layout(profile, full)
    by_cell = {(r["dataset"], r["family"]): r for r in claim_rows if r["figure"] == figure}
    width, _ = _size(cols, rows, full_width=15, panel=(3.2, 0))
    fig, ax = plt.subplots(figsize=(width, 0.95 * len(rows) + 0.6))
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(rows), 0)
    ax.axis("off")
    present = _titles(profile)
    for j, col in enumerate(cols):
        ax.text(j + 0.5, -0.08, TITLES[present.get(col, col)], ha="center", va="bottom", fontsize=10)
        for i, row in enumerate(rows):
            r = by_cell.get((col, row))
            colour = EMPTY if r is None else VERDICT_COLOURS[r["verdict"]]
            ax.add_patch(plt.Rectangle((j + 0.03, i + 0.04), 0.94, 0.92, color=colour, ec="0.75", lw=0.8))
            if r is None:
                ax.text(j + 0.5, i + 0.5, "no run", ha="center", va="center", fontsize=8, color="0.6")
                continue
            verdict = {"held": "held", "some": "held in some seeds", "not held": "did not hold",
                       "not checkable": "not checkable"}[r["verdict"]]
            ax.text(j + 0.5, i + 0.2, f"{r['network']}: {verdict}", ha="center", va="center", fontsize=8,
                    weight="bold")
            ax.text(j + 0.5, i + 0.6, r["text"], ha="center", va="center", fontsize=8, linespacing=1.1)
    for i, row in enumerate(rows):
        ax.text(-0.05, i + 0.5, models.FAMILY_TITLES[row], ha="right", va="center", fontsize=10)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.tight_layout()
    return fig
