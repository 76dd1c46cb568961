"""The book's Markdown: the intro's table of runs, each figure page's computed summary, Table 1 beside the paper's,
Fig. 8's improvements and the claims page's counts. Plain strings from nc.report.analysis rows; no plotting here.

A cell with several run seeds shows each number as the median over its seeds with the range, `median [min–max]`
(`spread`), and each verdict as "k of n"."""
from __future__ import annotations

import numpy as np
import xarray as xr
import yaml

from nc import data, models, paths
from nc.data import TITLES
from nc.report import analysis
from nc.report.catalog import TITLES as PAGE_TITLES
from nc.report.profiles import missing_cells
from nc.runs import cube
from nc.runs import params as params_mod


def _f(x, fmt):
    return "—" if x is None or not np.isfinite(x) else f"{x:{fmt}}"


def spread(values, fmt: str = ".3g") -> str:
    """One value as it is; several as `median [min–max]` (None / NaN dropped); '—' when none is left."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return "—"
    if v.size == 1:
        return f"{v[0]:{fmt}}"
    return f"{np.median(v):{fmt}} [{v.min():{fmt}}–{v.max():{fmt}}]"


def summary_markdown(profile: xr.Dataset, names, label: str, fmt: str = ".3g") -> str:
    """A Markdown table per cell of `names` at the first snapshot, the TPT start and the last epoch (with several
    seeds: median [min–max] over them), and one sentence counting the curves (cell x seed) whose last value is
    below their TPT-start value (the paper's claim)."""
    lines = ["| dataset | network | seeds | measure | first snapshot | TPT start epoch | at TPT start | last epoch |",
             "|---|---|---|---|---|---|---|---|"]
    lower, total = 0, 0
    for name in names:
        for rows in analysis.by_cell(analysis.change_table(profile, name)).values():
            r = rows[0]
            reached = [x for x in rows if np.isfinite(x["at_tpt"])]
            tpt = spread([x["tpt_epoch"] for x in reached], ".0f") if reached else "never reached"
            lines.append(f"| {TITLES[r['dataset_name']]} | {r['network']} | {len(rows)} | {name.replace('_', ' ')} | "
                         f"{spread([x['first'] for x in rows], fmt)} | {tpt} | "
                         f"{spread([x['at_tpt'] for x in reached], fmt)} | {spread([x['last'] for x in rows], fmt)} "
                         f"({r['last_epoch']}) |")
            total += len(reached)
            lower += sum(x["last"] < x["at_tpt"] for x in reached)
    verdict = (f"\n\nIn this profile, {label} is lower at the last epoch than at the start of the TPT in "
               f"**{lower} of {total}** curves (cell × seed) that reached the TPT." if total else
               "\n\nNo run of this profile reached the TPT, so the paper's claim cannot be checked here.")
    return "\n".join(lines) + verdict


def table1_markdown(profile: xr.Dataset, paper: dict) -> str:
    """Table 1 beside the paper's: every dataset x network of the paper, '—' where this profile has no run. With
    several seeds: median [min–max] over them, the lr selected for each seed, and in how many seeds the test
    accuracy at the last epoch was at least that at the TPT start."""
    ours = analysis.by_cell(analysis.accuracy_table(profile))
    theirs = {(r["dataset"], r["family"]): r for r in analysis.paper_table1(paper)}
    names = paper.get("networks", {})
    header = ("| dataset | network (paper / here) | paper: at zero error | paper: last epoch | "
              "here: at TPT start (epoch) | here: last epoch (epoch) | here: change | here: held in | "
              "selected lr (per seed) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for col in data.columns():
        for row in models.FAMILIES:
            p, rs = theirs.get((col, row)), ours.get((col, row))
            r = rs[0] if rs else None
            if p is None and r is None:
                continue  # a dataset of the user's own, not run in this row
            here_net = "—" if r is None else r["network"] + (
                f", {r['dataset_name']} data" if r["dataset_name"] != col else "")
            net = f"{names.get(col, {}).get(row, models.FAMILY_TITLES[row])} / {here_net}"
            if r is None:
                here = "— | — | — | — | — |"
            else:
                reached = [x for x in rs if x["at_tpt"] is not None]
                tpt = (f"{spread([x['at_tpt'] for x in reached], '.2f')} "
                       f"({spread([x['tpt_epoch'] for x in reached], '.0f')})" if reached else "TPT not reached")
                checkable = [x for x in reached if x["tpt_epoch"] < x["last_epoch"]]  # the claims page's rule
                held = sum(x["improvement"] >= 0 for x in checkable)
                here = (f"{tpt} | {spread([x['at_last'] for x in rs], '.2f')} ({r['last_epoch']}) | "
                        f"{spread([x['improvement'] for x in reached], '+.2f')} | "
                        f"{f'{held} of {len(checkable)} seeds' if checkable else '—'} | "
                        f"{', '.join(format(x['selected_lr'], 'g') for x in rs)} |")
            paper_cells = "— | —" if p is None else f"{p['at_zero_error']:.2f} | {p['at_last']:.2f}"
            lines.append(f"| {TITLES[col]} | {net} | {paper_cells} | {here}")
    return "\n".join(lines)


def improvements_markdown(rows: list[dict], what: str, fmt: str = ".4f") -> str:
    """A Markdown table of analysis.improvements rows (a row per cell and seed, with the seed's selected lr): the
    measure at the TPT start snapshot and at the last epoch."""
    header = (f"| dataset | network | seed (lr) | TPT start (snapshot) | {what} at TPT start | {what} at last epoch "
              "(epoch) | improvement |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        run = f"{r['seed']} ({r['selected_lr']:g})"
        if r["tpt_snapshot"] is None:
            lines.append(f"| {TITLES[r['dataset_name']]} | {r['network']} | {run} | never reached | — | "
                         f"{r['last']:{fmt}} ({r['last_epoch']}) | — |")
        else:
            lines.append(f"| {TITLES[r['dataset_name']]} | {r['network']} | {run} | {r['tpt_epoch']:.0f} "
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
    """One line per figure: in how many cells its claim held (with several seeds: in every checkable seed), held in
    some seeds only, did not hold (in no seed), or could not be checked."""
    several = any(r["n_seeds"] > 1 for r in claim_rows)
    lines = ["| claim | rule | held | " + ("held in some seeds | " if several else "") + "did not hold | "
             "not checkable |", "|---|---|---|" + ("---|" if several else "") + "---|---|"]
    for figure, c in analysis.CLAIMS.items():
        v = [r["verdict"] for r in claim_rows if r["figure"] == figure]
        rule = c.rule_text.replace("|", "\\|")  # a literal | inside a Markdown table cell
        some = f"{v.count('some')} | " if several else ""
        lines.append(f"| {PAGE_TITLES[figure]} | {rule} | {v.count('held')} | {some}{v.count('not held')} | "
                     f"{v.count('not checkable')} |")
    if several:
        lines.append("\nWith several run seeds, a cell's claim *held* when it held in every seed where it could be "
                     "checked, *did not hold* when it held in none.")
    return "\n".join(lines)


def claims_by_seed_markdown(claim_rows: list[dict], figure: str) -> str:
    """One figure's claim per cell and seed: the verdict and the numbers of every seed (for several seeds)."""
    lines = ["| dataset | network | seed | verdict | numbers |", "|---|---|---|---|---|"]
    for r in (r for r in claim_rows if r["figure"] == figure):
        for s in r["per_seed"]:
            lines.append(f"| {TITLES[r['dataset_name']]} | {r['network']} | {s['seed']} | "
                         f"{analysis.HELD_WORD[s['held']]} | "
                         f"{s['text'].replace(chr(10), '; ')} |")
    return "\n".join(lines)


def tpt_text(tpts) -> str:
    """The TPT start epochs of a cell's seeds: `not reached`, the epoch, or its spread, saying how many seeds
    reached it when not all did."""
    t = np.asarray(tpts, dtype=np.float64)
    if not np.isfinite(t).any():
        return "not reached"
    reached = np.isfinite(t).sum()
    return spread(t, ".0f") + (f" ({reached} of {t.size} seeds)" if reached < t.size else "")


RUNS_HEADER = ("| dataset | network | train / test images, shape | epochs | lrs | seeds | selected lr | TPT start "
               "| status | minutes | run page |\n|---|---|---|---|---|---|---|---|---|---|---|")


def runs_table(cube_dir, parameters_dir) -> dict:
    """The intro's account of a profile: one Markdown row per cell (a cube, a missing dataset, a stale cube or a
    parameter file not run yet), the devices, the summed training minutes and the cells of each kind. Relative
    folders are read against the repository root (nc.paths.resolve)."""
    rows, total, devices, stale = [], 0.0, set(), []
    done = set()
    for path in sorted(paths.resolve(cube_dir).glob("*.nc")):
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
        chosen = ds["selected_lr_by_seed"].values
        counts = zip(*np.unique(ds["status"].values.astype(str), return_counts=True))
        status = ", ".join(f"{n} {s}" for s, n in counts)
        tpts = [float(cube.selected(ds, int(seed))["tpt_epoch"]) for seed in ds["seed"].values]
        minutes = float(ds.attrs["wall_time_total"]) / 60
        total += minutes
        devices.add(ds.attrs["device"])
        rows.append(f"| {TITLES.get(p['dataset'], p['dataset'])} | {p['network']} (width {p['width']:g}) | "
                    f"{ds.attrs['n_train']} / {ds.attrs['n_test']}, {ds.attrs['image_shape']} | {p['epochs']} | "
                    f"{len(p['lrs'])} | {ds.sizes['seed']} | {', '.join(f'{lr:g}' for lr in chosen)} | "
                    f"{tpt_text(tpts)} | {status} | "
                    f"{minutes:.1f} | <a href=\"runs/{path.stem}.html\">{path.stem}</a> |")
    missing = missing_cells(cube_dir)
    for m in missing:
        done.add(m.get("parameter_file") or f"{m.get('dataset')}-{m.get('network')}")
        rows.append(f"| {m.get('dataset', '?')} | {m.get('network', '?')} | data not available | | | | | | missing "
                    "| | |")
    for name, _ in stale:
        done.add(name)
        dataset, network = name.split("-", 1)
        rows.append(f"| {TITLES.get(dataset, dataset)} | {network} | | | | | | | stale | | |")
    not_run = [f.stem for f in params_mod.profile_files(paths.resolve(parameters_dir)) if f.stem not in done]
    for name in not_run:
        dataset, network = name.split("-", 1)
        rows.append(f"| {TITLES.get(dataset, dataset)} | {network} | | | | | | | not run | | |")
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
