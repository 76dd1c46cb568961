"""The book's Markdown: the intro's table of runs, each figure page's computed summary, Table 1 beside the paper's,
Fig. 8's improvements and the claims page's counts. Plain strings from nc.analysis rows; no plotting here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from nc import analysis, cube, models
from nc import params as params_mod
from nc.data import DATASETS, TITLES
from nc.pages import TITLES as PAGE_TITLES
from nc.profile import missing_cells


def _f(x, fmt):
    return "—" if x is None or not np.isfinite(x) else f"{x:{fmt}}"


def summary_markdown(profile: xr.Dataset, names, label: str, fmt: str = ".3g") -> str:
    """A Markdown table per cell of `names` at the first snapshot, the TPT start and the last epoch, and one
    sentence counting the cells where the last value is below the TPT-start value (the paper's claim)."""
    lines = ["| dataset | network | measure | first snapshot | TPT start (epoch) | last epoch |",
             "|---|---|---|---|---|---|"]
    lower, total = 0, 0
    for name in names:
        for r in analysis.change_table(profile, name):
            tpt = "never reached" if not np.isfinite(r["tpt_epoch"]) else f"{r['at_tpt']:{fmt}} ({r['tpt_epoch']:.0f})"
            lines.append(f"| {TITLES[r['dataset_name']]} | {r['network']} | {name.replace('_', ' ')} | "
                         f"{r['first']:{fmt}} | {tpt} | {r['last']:{fmt}} ({r['last_epoch']}) |")
            if np.isfinite(r["at_tpt"]):
                total += 1
                lower += r["last"] < r["at_tpt"]
    verdict = (f"\n\nIn this profile, {label} is lower at the last epoch than at the start of the TPT in "
               f"**{lower} of {total}** curves that reached the TPT." if total else
               "\n\nNo run of this profile reached the TPT, so the paper's claim cannot be checked here.")
    return "\n".join(lines) + verdict


def table1_markdown(profile: xr.Dataset, paper: dict) -> str:
    """Table 1 beside the paper's: every dataset x network of the paper, '—' where this profile has no run."""
    ours = {(r["dataset"], r["family"]): r for r in analysis.accuracy_table(profile)}
    theirs = {(r["dataset"], r["family"]): r for r in analysis.paper_table1(paper)}
    names = paper.get("networks", {})
    header = ("| dataset | network (paper / here) | paper: at zero error | paper: last epoch | "
              "here: at TPT start (epoch) | here: last epoch (epoch) | here: change |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for col in DATASETS:
        for row in models.FAMILIES:
            p, r = theirs[(col, row)], ours.get((col, row))
            here_net = "—" if r is None else r["network"] + (
                f", {r['dataset_name']} data" if r["dataset_name"] != col else "")
            net = f"{names.get(col, {}).get(row, models.FAMILY_TITLES[row])} / {here_net}"
            if r is None:
                here = "— | — | —"
            else:
                tpt = "TPT not reached" if r["at_tpt"] is None else f"{r['at_tpt']:.2f} ({r['tpt_epoch']})"
                here = f"{tpt} | {r['at_last']:.2f} ({r['last_epoch']}) | {_f(r['improvement'], '+.2f')}"
            lines.append(f"| {TITLES[col]} | {net} | {p['at_zero_error']:.2f} | {p['at_last']:.2f} | {here} |")
    return "\n".join(lines)


def improvements_markdown(rows: list[dict], what: str, fmt: str = ".4f") -> str:
    """A Markdown table of analysis.improvements rows: the measure at the TPT start snapshot and at the last epoch."""
    header = (f"| dataset | network | TPT start (snapshot) | {what} at TPT start | {what} at last epoch (epoch) "
              "| improvement |")
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        if r["tpt_snapshot"] is None:
            lines.append(f"| {TITLES[r['dataset_name']]} | {r['network']} | never reached | — | "
                         f"{r['last']:{fmt}} ({r['last_epoch']}) | — |")
        else:
            lines.append(f"| {TITLES[r['dataset_name']]} | {r['network']} | {r['tpt_epoch']:.0f} "
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


def claims_markdown(claim_rows: list[dict]) -> str:
    """One line per figure: in how many cells its claim held, did not hold, or could not be checked."""
    lines = ["| claim | rule | held | did not hold | not checkable |", "|---|---|---|---|---|"]
    for figure, (_, rule) in analysis.CLAIMS.items():
        held = [r["held"] for r in claim_rows if r["figure"] == figure]
        rule = rule.replace("|", "\\|")  # a literal | inside a Markdown table cell
        lines.append(f"| {PAGE_TITLES[figure]} | {rule} | {held.count(True)} | {held.count(False)} | "
                     f"{held.count(None)} |")
    return "\n".join(lines)


RUNS_HEADER = ("| dataset | network | train / test images, shape | epochs | lrs | selected lr | TPT start | status "
               "| minutes | run page |\n|---|---|---|---|---|---|---|---|---|---|")


def runs_table(cube_dir, parameters_dir) -> dict:
    """The intro's account of a profile: one Markdown row per cell (a cube, a missing dataset, a stale cube or a
    parameter file not run yet), the devices, the summed training minutes and the cells of each kind."""
    rows, total, devices, stale = [], 0.0, set(), []
    done = set()
    for path in sorted(Path(cube_dir).glob("*.nc")):
        try:
            ds = cube.open_cube(path)
        except cube.CubeError as err:
            stale.append((path.stem, str(err)))
            continue
        reason = cube.stale_reason(ds)
        if reason:
            stale.append((path.stem, f"{reason}; rebuild with `{cube.rebuild_command(path)}`"))
            continue
        done.add(path.stem)
        p = yaml.safe_load(ds.attrs["parameters"])
        lr = ds.attrs["selected_lr"]
        counts = zip(*np.unique(ds["status"].values.astype(str), return_counts=True))
        status = ", ".join(f"{n} {s}" for s, n in counts)
        tpt = ds["tpt_epoch"].sel(lr=lr).item() if np.isfinite(lr) else float("nan")
        minutes = float(ds.attrs["wall_time_total"]) / 60
        total += minutes
        devices.add(ds.attrs["device"])
        rows.append(f"| {TITLES.get(p['dataset'], p['dataset'])} | {p['network']} (width {p['width']:g}) | "
                    f"{ds.attrs['n_train']} / {ds.attrs['n_test']}, {ds.attrs['image_shape']} | {p['epochs']} | "
                    f"{len(p['lrs'])} | {lr:g} | {'not reached' if np.isnan(tpt) else f'{tpt:.0f}'} | {status} | "
                    f"{minutes:.1f} | <a href=\"runs/{path.stem}.html\">{path.stem}</a> |")
    missing = missing_cells(cube_dir)
    for m in missing:
        done.add(m.get("parameter_file") or f"{m.get('dataset')}-{m.get('network')}")
        rows.append(f"| {m.get('dataset', '?')} | {m.get('network', '?')} | data not available | | | | | missing | | |")
    for name, _ in stale:
        done.add(name)
        dataset, network = name.split("-", 1)
        rows.append(f"| {TITLES.get(dataset, dataset)} | {network} | | | | | | stale | | |")
    not_run = [f.stem for f in params_mod.profile_files(parameters_dir) if f.stem not in done]
    for name in not_run:
        dataset, network = name.split("-", 1)
        rows.append(f"| {TITLES.get(dataset, dataset)} | {network} | | | | | | not run | | |")
    return {"rows": rows, "minutes": total, "devices": sorted(devices), "missing": missing, "stale": stale,
            "not_run": not_run, "markdown": RUNS_HEADER + "\n" + "\n".join(rows) if rows else ""}


def intro_markdown(profile: str, cube_dir, parameters_dir) -> str:
    """What the intro says about a profile's runs (runs_table as prose and a table)."""
    t = runs_table(cube_dir, parameters_dir)
    if not t["rows"]:
        return f"**No runs yet for profile `{profile}`.** Run `nox -s reproduce -- {profile}`."
    out = [f"## What was run\n\nProfile **`{profile}`**, trained on {', '.join(t['devices']) or 'n/a'}; training "
           f"and measurement took {t['minutes']:.1f} min summed over the runs (parallel jobs overlap in wall-clock "
           "time).\n\n" + t["markdown"]]
    if t["not_run"]:
        out.append(f"Cells marked *not run* have a parameter file in `parameters/{profile}/` but no cube yet (not "
                   f"trained, or left out with `--only`): `nox -s reproduce -- {profile}` trains them.")
    if t["stale"]:
        out.append("Cells marked *stale* have a cube written by an older version of this code; the figures leave "
                   "them out:\n\n" + "\n".join(f"- {name}: {why}" for name, why in t["stale"]))
    if t["missing"]:
        out.append("Cells marked *missing* could not be run because their data was not available here; they are "
                   "left empty in every figure, never replaced by another dataset.\n\n"
                   + "\n".join(f"- {m.get('dataset')}-{m.get('network')}: {m.get('message', '')}"
                               for m in t["missing"]))
    return "\n\n".join(out)
