"""The paper's figure layout (Section 3): a 3 x 7 grid, rows VGG / ResNet / DenseNet, columns the seven
datasets left to right by difficulty, epoch on the x axis, blue for class means, orange for classifiers,
a red vertical line at the start of the terminal phase (TPT). Shared by every figure notebook.
"""
from __future__ import annotations

from pathlib import Path

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
                s = c[name].dropna("epoch")
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
    for col, _, c in cells(profile):
        ch = tpt_change(c, name)
        if ch["last_epoch"] is not None:
            rows.append({"dataset": col, "network": str(c["network_name"].values), "first": ch["first"],
                         "tpt": ch["at_tpt"], "last": ch["last"], "tpt_epoch": ch["tpt_epoch"],
                         "last_epoch": ch["last_epoch"]})
    return rows


def summary_markdown(profile: xr.Dataset, names, label: str, fmt: str = ".3g") -> str:
    """A Markdown table per cell of `names` at the first snapshot, the TPT start and the last epoch, and one
    sentence counting the cells where the last value is below the TPT-start value (the paper's claim)."""
    lines = ["| dataset | network | measure | first snapshot | TPT start (epoch) | last epoch |",
             "|---|---|---|---|---|---|"]
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


# ---------------------------------------------------------------------------------------------------------
# Fig. 8, Table 1 and the claims page: improvements over the TPT and whether the paper's claims held.

PAPER_VALUES = Path(__file__).resolve().parent.parent / "book" / "paper_values.yaml"


def paper_values(path=PAPER_VALUES) -> dict:
    """The paper's published numbers (Table 1 and the Fig. 8 / Table 1 summaries), from book/paper_values.yaml."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


def cells(profile: xr.Dataset) -> list[tuple[str, str, xr.Dataset]]:
    """(column, row, cell) for every grid cell with a run, in the paper's order (columns, then rows)."""
    out = []
    for col in COLUMNS:
        for row in ROWS:
            c = cell(profile, col, row)
            if c is not None:
                out.append((col, row, c))
    return out


def tpt_change(c: xr.Dataset, name: str) -> dict:
    """A snapshot variable of one cell at the first snapshot, at the TPT start (the first snapshot at or after
    tpt_epoch) and at the last snapshot. `at_tpt` is NaN when the TPT was never reached (or no snapshot follows
    it); `tpt_snapshot` is then None."""
    s = snapshot_series(c, name)
    tpt = float(c["tpt_epoch"])
    out = {"tpt_epoch": tpt, "tpt_snapshot": None, "first": np.nan, "at_tpt": np.nan, "last": np.nan,
           "first_epoch": None, "last_epoch": None}
    if s.size == 0:
        return out
    epochs = s["epoch"].values
    out.update(first=float(s[0]), last=float(s[-1]), first_epoch=int(epochs[0]), last_epoch=int(epochs[-1]))
    after = np.flatnonzero(epochs >= tpt) if np.isfinite(tpt) else []
    if len(after):
        out.update(tpt_snapshot=int(epochs[after[0]]), at_tpt=float(s[after[0]]))
    return out


def improvements(profile: xr.Dataset, name: str) -> list[dict]:
    """Per cell with a run: `name` at the TPT start and at the last snapshot, and the improvement last - TPT
    (None when the TPT was never reached). Fig. 8's summary is over these."""
    rows = []
    for col, row, c in cells(profile):
        ch = tpt_change(c, name)
        if ch["last_epoch"] is None:
            continue
        imp = ch["last"] - ch["at_tpt"] if ch["tpt_snapshot"] is not None else None
        rows.append({"dataset": col, "network": row, "network_name": str(c["network_name"].values),
                     "dataset_name": str(c["dataset"].values), **ch, "improvement": imp})
    return rows


def improvement_summary(values) -> dict:
    """Median and mean of the improvements that exist (None / NaN dropped) and how many there are."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    return {"n": int(v.size), "median": float(np.median(v)) if v.size else np.nan,
            "mean": float(v.mean()) if v.size else np.nan}


def accuracy_table(profile: xr.Dataset) -> list[dict]:
    """Table 1 for this profile: per cell with a run, the test accuracy (%) of the selected lr at the TPT start
    epoch exactly and at the last epoch, and the improvement in percentage points (None if no TPT)."""
    rows = []
    for col, row, c in cells(profile):
        acc = c["test_acc"].dropna("epoch")
        if acc.size == 0:
            continue
        tpt = float(c["tpt_epoch"])
        at_tpt = float(acc.sel(epoch=int(tpt))) * 100 if np.isfinite(tpt) and int(tpt) in acc["epoch"] else None
        last = float(acc[-1]) * 100
        rows.append({"dataset": col, "network": row, "network_name": str(c["network_name"].values),
                     "dataset_name": str(c["dataset"].values), "tpt_epoch": int(tpt) if np.isfinite(tpt) else None,
                     "last_epoch": int(acc["epoch"][-1]),
                     "at_tpt": at_tpt, "at_last": last, "improvement": None if at_tpt is None else last - at_tpt})
    return rows


def paper_table1(paper: dict) -> list[dict]:
    """The paper's Table 1 as rows {dataset, network, at_zero_error, at_last, improvement} (21 rows)."""
    acc = paper["table1"]["accuracy"]
    return [{"dataset": col, "network": row, "at_zero_error": acc[col][row][0], "at_last": acc[col][row][1],
             "improvement": acc[col][row][1] - acc[col][row][0]} for col in COLUMNS for row in ROWS]


def _f(x, fmt):
    return "—" if x is None or not np.isfinite(x) else f"{x:{fmt}}"


def table1_markdown(profile: xr.Dataset, paper: dict) -> str:
    """Table 1 beside the paper's: every dataset x network of the paper, '—' where this profile has no run."""
    ours = {(r["dataset"], r["network"]): r for r in accuracy_table(profile)}
    theirs = {(r["dataset"], r["network"]): r for r in paper_table1(paper)}
    names = paper.get("networks", {})
    header = ("| dataset | network (paper / here) | paper: at zero error | paper: last epoch | "
              "here: at TPT start (epoch) | here: last epoch (epoch) | here: change |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for col in COLUMNS:
        for row in ROWS:
            p, r = theirs[(col, row)], ours.get((col, row))
            here_net = "—" if r is None else r["network_name"] + (
                f", {r['dataset_name']} data" if r["dataset_name"] != col else "")
            net = f"{names.get(col, {}).get(row, ROW_TITLES[row])} / {here_net}"
            if r is None:
                here = "— | — | —"
            else:
                tpt = "TPT not reached" if r["at_tpt"] is None else f"{r['at_tpt']:.2f} ({r['tpt_epoch']})"
                here = f"{tpt} | {r['at_last']:.2f} ({r['last_epoch']}) | {_f(r['improvement'], '+.2f')}"
            lines.append(f"| {TITLES[col]} | {net} | {p['at_zero_error']:.2f} | {p['at_last']:.2f} | {here} |")
    return "\n".join(lines)


def improvements_markdown(rows: list[dict], what: str, fmt: str = ".4f") -> str:
    """A Markdown table of improvements(...) rows: the measure at the TPT start snapshot and at the last epoch."""
    header = (f"| dataset | network | TPT start (snapshot) | {what} at TPT start | {what} at last epoch (epoch) "
              "| improvement |")
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        if r["tpt_snapshot"] is None:
            lines.append(f"| {TITLES[r['dataset_name']]} | {r['network_name']} | never reached | — | "
                         f"{r['last']:{fmt}} ({r['last_epoch']}) | — |")
        else:
            lines.append(f"| {TITLES[r['dataset_name']]} | {r['network_name']} | {r['tpt_epoch']:.0f} "
                         f"({r['tpt_snapshot']}) | {r['at_tpt']:{fmt}} | {r['last']:{fmt}} ({r['last_epoch']}) | "
                         f"{r['improvement']:+{fmt}} |")
    return "\n".join(lines)


def summary_beside_paper(ours: dict, paper_median: float, paper_mean: float, what: str, unit: str = "",
                         fmt: str = ".4f") -> str:
    """A Markdown table: this profile's median and mean improvement beside the paper's."""
    n = ours["n"]
    return (f"| {what} | median | mean | cells |\n|---|---|---|---|\n"
            f"| paper | {paper_median:{fmt}}{unit} | {paper_mean:{fmt}}{unit} | 21 |\n"
            f"| this profile | {_f(ours['median'], fmt)}{unit if n else ''} | {_f(ours['mean'], fmt)}"
            f"{unit if n else ''} | {n} |")


NCC_THRESHOLD = 0.05
ORDER_OF_MAGNITUDE = 10.0
# figure: (title, variables, the rule as the claims page states it)
CLAIMS = {
    "fig2": ("Fig. 2 — equinorm", ("equinorm_means", "equinorm_classifiers"),
             "the coefficients of variation of the centred class-mean norms and of the classifier norms are "
             + "both lower at the last epoch than at the TPT start"),
    "fig3": ("Fig. 3 — equiangularity", ("equiangular_means", "equiangular_classifiers"),
             "the SDs of the pairwise cosines of the class means and of the classifiers are both lower at the "
             + "last epoch than at the TPT start"),
    "fig4": ("Fig. 4 — maximal angle", ("maxangle_means", "maxangle_classifiers"),
             "Avg |cos + 1/(C−1)| of the class means and of the classifiers are both lower at the last epoch "
             + "than at the TPT start"),
    "fig5": ("Fig. 5 — self-duality", ("self_duality",),
             "‖W/‖W‖ − M/‖M‖‖² is lower at the last epoch than at the TPT start"),
    "fig6": ("Fig. 6 — NC1", ("nc1",),
             f"Tr(Σ_W Σ_B†)/C falls by at least {ORDER_OF_MAGNITUDE:g}× from the first snapshot to the last "
             + "epoch and is lower at the last epoch than at the TPT start"),
    "fig7": ("Fig. 7 — NCC", ("ncc_mismatch",),
             f"the test NCC mismatch at the last epoch is below {NCC_THRESHOLD:g} and not higher than at the "
             + "TPT start (both can be exactly 0 on a small test set)"),
    "fig8": ("Fig. 8 — robustness", ("robustness",),
             "the DeepFool robustness Ave ‖r(x)‖/‖x‖ is higher at the last epoch than at the TPT start"),
    "table1": ("Table 1 — test accuracy", ("test_acc",),
               "the test accuracy at the last epoch is at least that at the TPT start epoch"),
}


def _claim(figure: str, c: xr.Dataset) -> tuple[bool | None, str, dict]:
    """(held, cell text, numbers) for one figure's claim in one cell; held None when it cannot be checked."""
    _, names, _ = CLAIMS[figure]
    if figure == "table1":
        acc = c["test_acc"].dropna("epoch")
        tpt = float(c["tpt_epoch"])
        if acc.size == 0 or not np.isfinite(tpt) or int(tpt) not in acc["epoch"]:
            return None, "TPT not\nreached", {"tpt_epoch": None}
        a, b, last = float(acc.sel(epoch=int(tpt))), float(acc[-1]), int(acc["epoch"][-1])
        numbers = {"tpt_epoch": int(tpt), "last_epoch": last, "test_acc_tpt": a, "test_acc_last": b}
        if int(tpt) >= last:
            return None, "TPT at the\nlast epoch", numbers
        return bool(b >= a), f"{a * 100:.1f}→{b * 100:.1f}%", numbers
    changes = {n: tpt_change(c, n) for n in names}
    ch = changes[names[0]]
    numbers = {"tpt_epoch": None if not np.isfinite(ch["tpt_epoch"]) else int(ch["tpt_epoch"]),
               "tpt_snapshot": ch["tpt_snapshot"], "last_epoch": ch["last_epoch"],
               **{f"{n}_{k}": changes[n][k] for n in names for k in ("first", "at_tpt", "last")}}
    if ch["last_epoch"] is None:
        return None, "not\nmeasured", numbers
    if ch["tpt_snapshot"] is None:
        return None, "TPT not\nreached", numbers
    if ch["tpt_snapshot"] >= ch["last_epoch"]:
        return None, "TPT at the\nlast epoch", numbers
    if figure == "fig6":
        drop = ch["first"] / ch["last"] if ch["last"] > 0 else np.inf
        held = drop >= ORDER_OF_MAGNITUDE and ch["last"] < ch["at_tpt"]
        return bool(held), f"{ch['at_tpt']:.3g}→{ch['last']:.3g}\n÷{drop:.3g} from 1st", numbers
    if figure == "fig7":
        held = ch["last"] < NCC_THRESHOLD and ch["last"] <= ch["at_tpt"]
        return bool(held), f"{ch['at_tpt']:.3f}→{ch['last']:.3f}", numbers
    if figure == "fig8":
        return bool(ch["last"] > ch["at_tpt"]), f"{ch['at_tpt']:.3g}→{ch['last']:.3g}", numbers
    held = all(changes[n]["last"] < changes[n]["at_tpt"] for n in names)
    text = "\n".join(f"{changes[n]['at_tpt']:.3g}→{changes[n]['last']:.3g}" for n in names)
    return bool(held), text, numbers


def claims(profile: xr.Dataset) -> list[dict]:
    """Did each figure's claim hold in each cell with a run? One dict per (figure, cell): figure, dataset
    (column), network (row), network_name, held (True / False / None = not checkable, e.g. TPT never
    reached), text (the numbers, for the table) and numbers. The rules are CLAIMS[figure][2]."""
    out = []
    for figure in CLAIMS:
        for col, row, c in cells(profile):
            held, text, numbers = _claim(figure, c)
            out.append({"figure": figure, "dataset": col, "network": row, "network_name":
                        str(c["network_name"].values), "held": held, "text": text, "numbers": numbers})
    return out


GREEN_HELD, RED_NOT, GREY_NA, EMPTY = "#b7e1b0", "#f4b6b0", "#e3e3e3", "#ffffff"


def claims_grid(claim_rows: list[dict], figure: str, present: dict | None = None):
    """A colour-coded 3 x 7 table of one figure's claim: green held, red did not, grey not checkable, white no
    run; each cell shows its numbers (TPT start → last epoch). `present`: column -> dataset name for titles."""
    rows = {(r["dataset"], r["network"]): r for r in claim_rows if r["figure"] == figure}
    fig, ax = plt.subplots(figsize=(15, 2.9))
    ax.set_xlim(0, len(COLUMNS))
    ax.set_ylim(len(ROWS), 0)
    ax.axis("off")
    for j, col in enumerate(COLUMNS):
        ax.text(j + 0.5, -0.08, TITLES[(present or {}).get(col, col)], ha="center", va="bottom", fontsize=10)
        for i, row in enumerate(ROWS):
            r = rows.get((col, row))
            colour = EMPTY if r is None else {True: GREEN_HELD, False: RED_NOT, None: GREY_NA}[r["held"]]
            ax.add_patch(plt.Rectangle((j + 0.03, i + 0.04), 0.94, 0.92, color=colour, ec="0.75", lw=0.8))
            if r is None:
                ax.text(j + 0.5, i + 0.5, "no run", ha="center", va="center", fontsize=8, color="0.6")
                continue
            verdict = {True: "held", False: "did not hold", None: "not checkable"}[r["held"]]
            ax.text(j + 0.5, i + 0.2, f"{r['network_name']}: {verdict}", ha="center", va="center", fontsize=7.5,
                    weight="bold")
            ax.text(j + 0.5, i + 0.6, r["text"], ha="center", va="center", fontsize=7.5, linespacing=1.1)
    for i, row in enumerate(ROWS):
        ax.text(-0.05, i + 0.5, ROW_TITLES[row], ha="right", va="center", fontsize=10)
    fig.suptitle(CLAIMS[figure][0], x=0.01, ha="left", fontsize=11)
    fig.tight_layout()
    return fig


def claims_markdown(claim_rows: list[dict]) -> str:
    """One line per figure: in how many cells its claim held, did not hold, or could not be checked."""
    lines = ["| claim | rule | held | did not hold | not checkable |", "|---|---|---|---|---|"]
    for figure, (title, _, rule) in CLAIMS.items():
        held = [r["held"] for r in claim_rows if r["figure"] == figure]
        rule = rule.replace("|", "\\|")  # a literal | inside a Markdown table cell
        lines.append(f"| {title} | {rule} | {held.count(True)} | {held.count(False)} | {held.count(None)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Fig. 1: neural collapse in three dimensions from real snapshots (the paper's footnote to Fig. 1).

FIG1_PAPER_EPOCHS = (2, 16, 65, 350)  # of the paper's 350 (VGG13 on CIFAR10)
FIG1_SHADES = {"means": ("#9ecae1", "#3182bd", "#08306b"), "classifiers": ("#fc9272", "#de2d26", "#67000d"),
               "vertices": ("#a1d99b", "#31a354", "#00441b")}


def fig1_cube(cube_dir, run: str | None = None) -> Path:
    """The cube Fig. 1 is drawn from: `run` (a file stem such as 'cifar10-vgg13') if given, else the VGG run of
    the first dataset column present (the paper used VGG13), else the first run of that column."""
    paths = sorted(Path(cube_dir).glob("*.nc"))
    if run is not None:
        path = Path(cube_dir) / (run if run.endswith(".nc") else f"{run}.nc")
        if not path.is_file():
            raise FileNotFoundError(f"no cube {path}; runs here: {', '.join(p.stem for p in paths)}")
        return path
    if not paths:
        raise FileNotFoundError(f"no cubes (*.nc) in {cube_dir}")
    keys = []
    for p in paths:
        with xr.open_dataset(p, engine="netcdf4") as ds:
            d, n = ds.attrs["dataset"], ds.attrs["network"]
        col = column_of(d)
        keys.append((COLUMNS.index(col) if col in COLUMNS else len(COLUMNS), not n.startswith("vgg"), p.name, p))
    return min(keys)[-1]


def fig1_epochs(snapshot_epochs, last_epoch: int, paper_epochs=FIG1_PAPER_EPOCHS, paper_last: int = 350) -> list[int]:
    """The snapshots nearest to the paper's epochs 2, 16, 65 and 350 scaled to this run (the same fractions of
    the last epoch), each later than the one before (a short run's nearest snapshots coincide: the next one is
    taken); fewer when the run has fewer snapshots."""
    snaps = np.sort(np.asarray(snapshot_epochs))
    out = []
    for e in paper_epochs:
        later = snaps[snaps > out[-1]] if out else snaps
        if later.size:
            out.append(int(later[np.argmin(np.abs(later - e / paper_last * last_epoch))]))
    return out


def simplex_vertices(num_classes: int) -> np.ndarray:
    """Three unit vectors in R^3 (rows) with pairwise cosine -1/(C-1): three vertices of the C-class simplex
    ETF, seen in their own span; for C = 3 the planar 120-degree triangle."""
    k = 3
    gram = (1 + 1 / (num_classes - 1)) * np.eye(k) - np.ones((k, k)) / (num_classes - 1)
    vals, vecs = np.linalg.eigh(gram)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


# rotates the simplex's axis of symmetry (1,1,1)/sqrt(3) onto the vertical axis, for the view
_UPRIGHT = np.stack([np.array([1, -1, 0]) / np.sqrt(2), np.array([1, 1, -2]) / np.sqrt(6), np.ones(3) / np.sqrt(3)], 1)


def fig1_project(means, global_mean, classifiers, features, num_classes: int) -> dict:
    """Three classes' class means (3, p), classifiers (3, p) and features (3, n, p) in three dimensions.

    Centre at the global mean mu_G (of all classes); project onto the 3 left singular vectors of the three
    centred class means [mu_c - mu_G]; rescale the means (and, by the same factor, the features) to unit average
    norm, and the classifiers to unit average norm; rotate (orthogonal Procrustes, another SVD) so the means
    best match three simplex-ETF vertices (pairwise cosine -1/(C-1)), then stand the simplex upright. At exact
    collapse the means and classifiers sit on the vertices and every feature on its mean."""
    means, mu_g = np.asarray(means, np.float64), np.asarray(global_mean, np.float64)
    centred = means - mu_g
    u = np.linalg.svd(centred.T, full_matrices=False)[0]  # (p, 3)
    m3, w3 = centred @ u, np.asarray(classifiers, np.float64) @ u
    f3 = (np.asarray(features, np.float64) - mu_g) @ u
    scale = np.linalg.norm(m3, axis=1).mean()
    m3, f3 = m3 / scale, f3 / scale
    w3 = w3 / np.linalg.norm(w3, axis=1).mean()
    vertices = simplex_vertices(num_classes)
    p, _, qt = np.linalg.svd(m3.T @ vertices)
    rot = (p @ qt) @ _UPRIGHT
    return {"means": m3 @ rot, "classifiers": w3 @ rot, "features": f3 @ rot, "vertices": vertices @ _UPRIGHT}


def fig1_panels(ds: xr.Dataset) -> list[tuple[int, dict]]:
    """(epoch, fig1_project(...)) at the fig1_epochs snapshots of one cube, for its fig1_class classes."""
    classes = ds["fig1_class"].values
    snaps = ds["snapshot_epoch"].values
    out = []
    for e in fig1_epochs(snaps, int(snaps.max())):
        k = int(np.flatnonzero(snaps == e)[0])
        out.append((e, fig1_project(ds["class_means"].isel(snapshot=k).sel({"class": classes}).values,
                                    ds["global_mean"].isel(snapshot=k).values,
                                    ds["classifier_weight"].isel(snapshot=k).sel({"class": classes}).values,
                                    ds["fig1_features"].isel(snapshot=k).values, ds.sizes["class"])))
    return out


def fig1_matplotlib(panels, title: str = ""):
    """The Fig. 1 panels as static 3-D axes: green simplex vertices, red classifiers and blue class means as
    ball-and-stick from the origin, small blue features; the shade tells the class."""
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = plt.figure(figsize=(5.2 * ncols, 4.8 * nrows + 0.6))
    for i, (epoch, g) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="3d")
        for c in range(3):
            v, m, w = g["vertices"][c], g["means"][c], g["classifiers"][c]
            ax.scatter(*v, s=110, color=FIG1_SHADES["vertices"][c], depthshade=False)
            for vec, fam in ((m, "means"), (w, "classifiers")):
                ax.plot(*np.stack([np.zeros(3), vec], 1), color=FIG1_SHADES[fam][c], lw=2)
                ax.scatter(*vec, s=45, color=FIG1_SHADES[fam][c], depthshade=False)
            ax.scatter(*g["features"][c].T, s=6, color=FIG1_SHADES["means"][c], alpha=0.7, depthshade=False)
        lim = 1.3
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), zlim=(-lim, lim), xticklabels=[], yticklabels=[], zticklabels=[])
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=25, azim=-60)
        ax.set_title(f"epoch {epoch}", fontsize=11)
    handles = [plt.Line2D([], [], marker="o", ls="", color=FIG1_SHADES["vertices"][1], ms=9),
               plt.Line2D([], [], marker="o", color=FIG1_SHADES["classifiers"][1], ms=6),
               plt.Line2D([], [], marker="o", color=FIG1_SHADES["means"][1], ms=6),
               plt.Line2D([], [], marker="o", ls="", color=FIG1_SHADES["means"][1], ms=3)]
    fig.legend(handles, ["simplex ETF vertices", "classifiers", "class means", "last-layer features"],
               loc="lower center", ncol=4, frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    return fig


def fig1_plotly(panels, title: str = ""):
    """The same panels as an interactive plotly figure (rotate and zoom each 3-D scene)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, specs=[[{"type": "scene"}] * ncols] * nrows,
                        subplot_titles=[f"epoch {e}" for e, _ in panels], horizontal_spacing=0.01,
                        vertical_spacing=0.04)
    names = ("class means", "classifiers", "features", "simplex ETF vertices")
    for i, (_, g) in enumerate(panels):
        at = (i // ncols + 1, i % ncols + 1)
        for c in range(3):
            first = i == 0 and c == 1
            for fam, label in (("means", names[0]), ("classifiers", names[1])):
                v = g[fam][c]
                fig.add_trace(go.Scatter3d(x=[0, v[0]], y=[0, v[1]], z=[0, v[2]], mode="lines+markers",
                                           line={"color": FIG1_SHADES[fam][c], "width": 5},
                                           marker={"size": [0, 6], "color": FIG1_SHADES[fam][c]},
                                           name=label, legendgroup=label, showlegend=first), *at)
            f = g["features"][c]
            fig.add_trace(go.Scatter3d(x=f[:, 0], y=f[:, 1], z=f[:, 2], mode="markers",
                                       marker={"size": 2.5, "color": FIG1_SHADES["means"][c]}, name=names[2],
                                       legendgroup=names[2], showlegend=first), *at)
            v = g["vertices"][c]
            fig.add_trace(go.Scatter3d(x=[v[0]], y=[v[1]], z=[v[2]], mode="markers",
                                       marker={"size": 9, "color": FIG1_SHADES["vertices"][c]}, name=names[3],
                                       legendgroup=names[3], showlegend=first), *at)
    axis = {"range": [-1.3, 1.3], "showticklabels": False, "title": ""}
    fig.update_scenes(xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="cube",
                      camera={"eye": {"x": 1.3, "y": -1.3, "z": 0.9}})
    fig.update_layout(height=380 * nrows + 60, margin={"l": 0, "r": 0, "t": 60, "b": 0}, title=title or None,
                      legend={"orientation": "h", "y": -0.02})
    return fig
