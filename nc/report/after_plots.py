"""The figures of the book's "After the paper" pages (matplotlib): collapse by depth per cell, the MSE loss's
central-path terms stacked to the total, two or more follow-up runs side by side, minority collapse against
the imbalance ratio, transfer to held-out classes with NC5, and deep neural collapse at a linear head. Red vertical
lines mark each run's TPT start, as in the paper's figures."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from nc.measure import head, transfer
from nc.report.grid import BLUE, ORANGE, RED

STAGE_COLOURS = {"first": "#9ecae1", "tpt": "#3182bd", "last": "#08306b"}
RUN_COLOURS = (BLUE, ORANGE, "#2ca02c", "#9467bd")


def depth_figure(cells_depth: list[dict]):
    """Per cell (one row each): NC1 at each block (log) with one line per recorded epoch, and the NCC accuracies
    at each block."""
    n = max(1, len(cells_depth))
    fig, axes = plt.subplots(n, 2, figsize=(10, 3.3 * n), squeeze=False)
    for j, d in enumerate(cells_depth):
        x = np.arange(1, len(d["layer_names"]) + 1)
        left, right = axes[j, 0], axes[j, 1]
        for k, stage in enumerate(d["stages"]):
            if not np.isfinite(d["epochs"][k]):
                continue
            label = f"{stage} (epoch {d['epochs'][k]:.0f})"
            left.semilogy(x, d["nc1"][k], "o-", color=STAGE_COLOURS[stage], ms=3, label=label)
            if "flat_nc1" in d:
                left.semilogy(x, d["flat_nc1"][k], "s:", color=STAGE_COLOURS[stage], ms=3, lw=0.9)
            right.plot(x, d["ncc_acc_train"][k], "o-", color=STAGE_COLOURS[stage], ms=3, label=f"{stage}, train")
            right.plot(x, d["ncc_acc_test"][k], "s--", color=STAGE_COLOURS[stage], ms=3, lw=0.9)
        rho, r2 = d["rho"][-1], d["r2"][-1]
        flat = (f"; flattened {d['flat_rho'][-1]:.3g}, R² {d['flat_r2'][-1]:.2f}" if "flat_rho" in d else "")
        left.set_title(f"{d['dataset']} × {d['network']}, last snapshot: pooled rho = {rho:.3g} per block, "
                       f"R² = {r2:.2f}{flat}", fontsize=9, loc="left")
        left.set_ylabel("NC1 of the block\n(solid pooled, dotted flattened)")
        left.legend(fontsize=8)
        right.set_ylabel("NCC accuracy\n(solid train, dashed test)")
        for ax in (left, right):
            ax.set_xticks(x, d["layer_names"], rotation=60, fontsize=7, ha="right")
    fig.tight_layout()
    return fig


def _tpt(ax, ds, colour=RED, **kw):
    tpt = float(ds["tpt_epoch"])
    if np.isfinite(tpt):
        ax.axvline(tpt, color=colour, lw=1, **kw)


def mse_figure(ds: xr.Dataset):
    """The central-path decomposition of the MSE run's loss: L_NC1, L_NC2/3 and L_perp stacked to the classifier's
    regularised loss (left), and each term on a log scale (right)."""
    terms = [("mse_nc1_term", "L_NC1", BLUE), ("mse_nc23_term", "L_NC2/3", ORANGE), ("mse_perp_term", "L⊥", "#2ca02c")]
    s = {k: ds[k].dropna("epoch") for k, _, _ in terms}
    epochs = s["mse_nc1_term"]["epoch"].values
    fig, (a, b) = plt.subplots(1, 2, figsize=(11.5, 3.8))
    a.stackplot(epochs, *[s[k].values for k, _, _ in terms], labels=[lab for _, lab, _ in terms],
                colors=[c for _, _, c in terms], alpha=0.8)
    a.plot(epochs, sum(s[k].values for k, _, _ in terms), "k-", lw=1, label="total = loss + weight decay on W, b")
    a.set(xlabel="epoch", ylabel="loss", title="the three terms stacked")
    a.legend(fontsize=8)
    for k, lab, c in terms:
        b.semilogy(epochs, s[k].values, "o-", ms=3, color=c, label=lab)
    b.set(xlabel="epoch", title="each term (log scale)")
    b.legend(fontsize=8)
    for ax in (a, b):
        _tpt(ax, ds)
    fig.tight_layout()
    return fig


def compare_figure(runs: list[tuple[str, xr.Dataset]], panels: list[tuple[str, str, bool]]):
    """Runs side by side: one panel per (variable, title, log scale), a line (and dotted TPT line) per run."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.6), squeeze=False)
    for ax, (name, title, logy) in zip(axes[0], panels):
        for (label, ds), colour in zip(runs, RUN_COLOURS):
            s = ds[name].dropna("epoch")
            ax.plot(s["epoch"], s, "o-" if s.size < len(ds["epoch"]) else "-", ms=2.5, color=colour, label=label)
            _tpt(ax, ds, colour=colour, ls=":")
        if logy:
            ax.set_yscale("log")
        ax.set(xlabel="epoch", title=title)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def minority_figure(runs_by_ratio: list[tuple[float, xr.Dataset]]):
    """minority_collapse over the epochs per imbalance ratio R (left) and at the last epoch against R (right)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    finals = []
    for (r, ds), colour in zip(runs_by_ratio, RUN_COLOURS):
        s = ds["minority_collapse"].dropna("epoch")
        a.plot(s["epoch"], s, "o-", ms=3, color=colour, label=f"R = {r:g}")
        _tpt(a, ds, colour=colour, ls=":")
        finals.append((r, float(s[-1])))
    a.set(xlabel="epoch", ylabel="Avg cos(w_i, w_j), minority pairs")
    a.legend(fontsize=8)
    if finals:
        r, v = zip(*sorted(finals))
        b.semilogx(r, v, "o-", color="k")
        b.axhline(1.0, color="0.5", ls="--", lw=0.8)
        b.text(r[0], 0.97, "1: the minority classifiers coincide", fontsize=8, va="top", color="0.4")
    b.set(xlabel="imbalance ratio R", ylabel="at the last epoch", title="minority collapse")
    fig.tight_layout()
    return fig


def depth_residual_figure(cells_depth: list[dict], residuals):
    """The depth law's residuals at the last snapshot: log(C NC1_l) minus the fitted line, per block, one line per
    cell and feature map (solid pooled, dotted flattened)
    (`residuals(nc1_by_layer, classes)` computes them: nc.report.after.depth_residuals)."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for d, colour in zip(cells_depth, RUN_COLOURS * 4):
        x = np.arange(1, len(d["layer_names"]) + 1)
        ax.plot(x, residuals(d["nc1"][-1], d["classes"]), "o-", ms=3, color=colour,
                label=f"{d['dataset']} × {d['network']}, pooled (R² {d['r2'][-1]:.2f})")
        if "flat_nc1" in d:
            ax.plot(x, residuals(d["flat_nc1"][-1], d["classes"]), "s:", ms=3, color=colour,
                    label=f"{d['dataset']} × {d['network']}, flattened (R² {d['flat_r2'][-1]:.2f})")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set(xlabel="block l", ylabel="residual of log(C NC1_l)", title="the depth law's residuals, last snapshot")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def transfer_figure(ds: xr.Dataset):
    """The transfer run: CDNV of the held-out classes beside the trained classes' (log), the few-shot
    nearest-class-centre accuracy on the held-out classes with its chance level, and NC5 (held-out classes as the
    OOD set), uncentred and centred. The red line marks the TPT start."""
    params = ds.attrs.get("params", {})
    held = params.get("held_out_classes") or []
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, panels in ((a, (("transfer_cdnv", "held-out classes", ORANGE), ("cdnv_train", "trained classes", BLUE))),
                       (b, (("transfer_ncc_acc", "held-out classes", ORANGE),)),
                       (c, (("nc5", "NC5 (NECO, uncentred)", ORANGE), ("nc5_centred", "centred about μ_G", BLUE)))):
        for name, label, colour in panels:
            s = ds[name].dropna("epoch")
            ax.plot(s["epoch"], s, "o-", ms=2.5, color=colour, label=label)
        _tpt(ax, ds)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    a.set_yscale("log")
    a.set_title("CDNV (train images)", fontsize=10)
    if held:
        b.axhline(1 / len(held), color="0.5", ls="--", lw=0.8)
        b.text(1, 1 / len(held), f" chance 1/{len(held)}", fontsize=8, va="bottom", color="0.4")
    b.set_title(f"{transfer.SHOTS}-shot NCC accuracy, {transfer.DRAWS} draws (test images)", fontsize=10)
    c.set_title("NC5: Avg_c |cos(μ_c, μ_OOD)|", fontsize=10)
    fig.suptitle(f"trained on the other classes, held out: {', '.join(map(str, held))}", fontsize=10)
    fig.tight_layout()
    return fig


HEAD_COLOURS = dict(zip(head.HEAD_LAYERS, (BLUE, ORANGE, "#2ca02c")))


def head_figure(cells_head: list[dict]):
    """Per cell (one row each): DNC2 (the simplex-ETF Gram error of the centred class means of each head layer's
    input) and DNC3 (the share of each head layer's weight energy outside that span) over the snapshots, one line
    per head layer (nc.measure.head), log scale; the red line marks the TPT start."""
    n = max(1, len(cells_head))
    fig, axes = plt.subplots(n, 2, figsize=(10, 3.3 * n), squeeze=False)
    for j, d in enumerate(cells_head):
        for ax, key, title in ((axes[j, 0], "dnc2", "DNC2: ETF Gram error of the input's class means"),
                               (axes[j, 1], "dnc3", "DNC3: weight energy outside the class-mean span")):
            for layer in head.HEAD_LAYERS:
                v = np.asarray(d[key][layer], dtype=float)
                ok = np.isfinite(v) & (v > 0)
                ax.semilogy(d["epochs"][ok], v[ok], "o-", ms=2.5, color=HEAD_COLOURS[layer], label=layer)
            if np.isfinite(d["tpt"]):
                ax.axvline(d["tpt"], color=RED, lw=1)
            ax.set_title(f"{d['dataset']} × {d['network']}: {title}", fontsize=9, loc="left")
            ax.set_xlabel("epoch")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
