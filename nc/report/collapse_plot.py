"""The paper's Figs. 2-7 for a user's own training run: the measures of a `python -m nc.collapse --checkpoints`
result (or nc.measure.collapse results concatenated along `epoch`) over the epochs, one panel per figure, with the
curves, labels, scales and colours of the book's grid pages (nc.report.catalog.GRID_PAGES, nc.report.grid).

    ds = xr.open_dataset("series.nc"); fig = nc.report.collapse_plot.draw(ds)
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from nc.report import grid
from nc.report.catalog import GRID_PAGES, TITLES

FIGURES = ("fig2", "fig3", "fig4", "fig5", "fig6", "fig7")
COLOURS = {"means": grid.BLUE, "classifiers": grid.ORANGE}


def draw(ds: xr.Dataset, figures=FIGURES):
    """A matplotlib Figure: one panel per figure of `figures`, its measures against `epoch` (markers at the
    measured epochs); a measure that is all NaN (no test split, no head) is left out of its panel."""
    if "epoch" not in ds.dims:
        raise ValueError("draw needs a series: a Dataset with an `epoch` dimension (nc.collapse --checkpoints)")
    n = len(figures)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.1 * rows), squeeze=False, layout="constrained")
    epochs = ds["epoch"].values
    for ax, name in zip(axes.flat, figures):
        entry = GRID_PAGES[name]
        for var, colour, label in entry.curves:
            if var in ds and np.isfinite(ds[var].values).any():
                ax.plot(epochs, ds[var].values, "o-", ms=3, color=COLOURS.get(colour, colour), label=label)
        ax.set_yscale("log" if entry.log else "linear")
        ax.set_title(TITLES[name].split(" — ")[0] + " — " + TITLES[name].split(" — ")[-1], fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(entry.ylabel)
        if ax.lines:
            ax.legend(fontsize=8)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{ds.attrs.get('model', 'model')} on {ds.attrs.get('data', 'data')}", fontsize=10)
    return fig


def save(ds: xr.Dataset, path) -> None:
    """draw(ds), written to `path` (the format from its suffix)."""
    fig = draw(ds)
    fig.savefig(path, dpi=120)
    plt.close(fig)
