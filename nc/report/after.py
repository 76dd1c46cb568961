"""After the paper: each follow-up paper's claim, checked by a fixed rule in this profile's runs, and the data its
page draws. Like nc.report.analysis for the paper, every rule compares numbers read from the cubes; a claim this profile
cannot check (the TPT never reached, or the follow-up runs not trained yet) is "not checkable", never guessed.

Grid claims (CDNV, test collapse, ETF errors) are checked per cell of the profile's own grid (nc.report.profiles), the
depth
claims on the cubes' `layer` variables, and the follow-up runs' claims (MSE, fixed ETF, weight decay, minority
collapse) on the cubes of the `followups` profile (cubes/followups/, beside the demo's).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import xarray as xr
import yaml

from nc import paths
from nc.report.analysis import HELD_WORD, tpt_change
from nc.report.profiles import cells, seed_runs
from nc.runs import cube

FOLLOWUPS = "followups"  # the profile whose runs the follow-up pages read
FILL_COMMAND = "nox -s reproduce -- followups"
TEN = 10.0

# page: [(claim, source, the claim in the source's words, the rule checked here)]
CLAIMS = {
    "cdnv": [
        ("cdnv_train", "Galanti, György & Hutter, ICLR 2022",
         "the class-distance normalised variance of the train features decreases during training",
         "cdnv_train is lower at the last epoch than at the TPT start"),
        ("cdnv_test", "Galanti, György & Hutter, ICLR 2022",
         "the collapse carries over to test samples of the same classes (test collapse)",
         "cdnv_test is lower at the last epoch than at the first snapshot"),
        ("nc1_test", "Hui, Belkin & Nakkiran, 2022",
         "collapse on the train set does not carry over to the test set: test-set NC1 stays far from zero",
         f"nc1_test at the last epoch is at least {TEN:g}x the train NC1"),
    ],
    "etf": [
        ("etf_errors", "Zhu et al., NeurIPS 2021",
         "the class means and the classifier converge to a simplex ETF and to each other",
         "etf_error_means, etf_error_classifiers and classifier_mean_alignment are all lower at the last epoch than "
         "at the TPT start"),
    ],
    "depth": [
        ("depth_law", "He & Su, PNAS 2023",
         "a law of data separation: log(C NC1_l) decays linearly with the layer l",
         "at the last snapshot the fit of log(C NC1_l) on l has rho > 0 and R^2 >= 0.8"),
        ("depth_progressive", "Rangamani et al., ICML 2023",
         "within-class variability collapses progressively through the layers, and more as training proceeds",
         "the last block's NC1 is lower at the last snapshot than at the first, and the NCC train accuracy of the "
         "last block is at least that of the first block"),
    ],
    "mse": [
        ("mse_collapse", "Han, Papyan & Donoho, ICLR 2022", "neural collapse also occurs under the MSE loss",
         f"the MSE run's NC1 falls at least {TEN:g}x from the first snapshot to the last epoch"),
        ("central_path", "Han, Papyan & Donoho, ICLR 2022",
         "during the TPT the features follow the central path: the classifier stays near the least-squares one",
         "L_perp is below 10% of the classifier's regularised loss at the last epoch"),
    ],
    "fixed_etf": [
        ("fixed_etf", "Zhu et al., NeurIPS 2021",
         "fixing the classifier at a simplex ETF costs no accuracy, and the features still collapse",
         f"the fixed-ETF run's final test accuracy is within 1 point of the learned run's, and its NC1 falls at "
         f"least {TEN:g}x"),
    ],
    "weight_decay": [
        ("weight_decay", "Rangamani & Banburski-Fahey, ICASSP 2022 (homogeneous ReLU nets, square loss)",
         "weight decay is necessary for neural collapse",
         "NC1 at the last epoch is lower with weight decay 5e-4 than without; this profile's net (BatchNorm, biases, "
         "cross-entropy) is outside the theorem's assumptions"),
    ],
    "imbalance": [
        ("minority_collapse", "Fang, He, Long & Su, PNAS 2021",
         "minority collapse: as the imbalance ratio R grows, the minority classes' classifiers collapse toward each "
         "other",
         "minority_collapse (Avg cos between minority classifiers) at the last epoch increases with R: 1 < 10 < 100"),
    ],
}


def verdict_row(page: str, claim: str, held, text: str, cell: str = "", seed: int | None = None) -> dict:
    """One claim checked in one run: held True / False / None (not checkable), seed None for a one-seed run."""
    source, statement, rule = next((s, st, r) for c, s, st, r in CLAIMS[page] if c == claim)
    return {"page": page, "claim": claim, "source": source, "statement": statement, "rule": rule, "cell": cell,
            "held": held, "text": text, "seed": seed}


def _reached(ch: dict) -> bool:
    return ch["tpt_snapshot"] is not None and ch["tpt_snapshot"] < ch["last_epoch"]


def grid_claims(profile: xr.Dataset) -> list[dict]:
    """The CDNV, test-collapse and ETF-error claims in every cell of a profile's grid, seed by seed (a row per
    cell and run seed, each at the lr selected for it; `seed` is set when the cell has several)."""
    rows = []
    for _, _, cell in cells(profile):
        seeds = seed_runs(cell)
        for seed, c in seeds:
            several = len(seeds) > 1
            name = f"{cell['dataset'].values} × {cell['network_name'].values}" + (f", seed {seed}" if several else "")
            rows += _grid_rows(c, partial(verdict_row, cell=name, seed=seed if several else None))
    return rows


def _grid_rows(c: xr.Dataset, row) -> list[dict]:
    """The grid claims in one run, each made by row(page, claim, held, text)."""
    ch = {v: tpt_change(c, v) for v in ("cdnv_train", "cdnv_test", "nc1_test", "nc1", "etf_error_means",
                                         "etf_error_classifiers", "classifier_mean_alignment")}
    t = ch["cdnv_train"]
    out = [row("cdnv", "cdnv_train", bool(t["last"] < t["at_tpt"]) if _reached(t) else None,
               f"{t['at_tpt']:.3g} → {t['last']:.3g}" if _reached(t) else "TPT not reached")]
    t = ch["cdnv_test"]
    ok = t["last_epoch"] is not None and t["first_epoch"] != t["last_epoch"] and np.isfinite(t["last"])
    out.append(row("cdnv", "cdnv_test", bool(t["last"] < t["first"]) if ok else None,
                   f"{t['first']:.3g} → {t['last']:.3g}" if ok else "not measured"))
    t, n = ch["nc1_test"], ch["nc1"]
    ok = t["last_epoch"] is not None and np.isfinite(t["last"]) and n["last"] > 0
    ratio = t["last"] / n["last"] if ok else np.nan
    out.append(row("cdnv", "nc1_test", bool(ratio >= TEN) if ok else None,
                   f"test {t['last']:.3g} / train {n['last']:.3g} = {ratio:.3g}" if ok else "not measured"))
    keys = ("etf_error_means", "etf_error_classifiers", "classifier_mean_alignment")
    ok = all(_reached(ch[k]) for k in keys)
    out.append(row("etf", "etf_errors", all(ch[k]["last"] < ch[k]["at_tpt"] for k in keys) if ok else None,
                   "; ".join(f"{ch[k]['at_tpt']:.3g} → {ch[k]['last']:.3g}" for k in keys) if ok
                   else "TPT not reached"))
    return out


def depth_cells(cube_dir, every_seed: bool = False) -> list[dict]:
    """Per current cube of a folder, the collapse by depth of its first run seed at its selected lr (every_seed:
    one entry per run seed, each at its own selected lr): {name, seed, seeds (how many the cube has), layer_names,
    layer_widths, stages, epochs, nc1, trace_ratio, ncc_acc_train, ncc_acc_test (stage x layer), rho, r2 (stage),
    classes}."""
    out = []
    for path in sorted(paths.resolve(cube_dir).glob("*.nc")):
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                if cube.stale_reason(ds) or "depth_nc1" not in ds or ds.sizes.get("layer", 0) == 0:
                    continue
                seeds = [int(s) for s in ds["seed"].values]
                for seed in seeds if every_seed else seeds[:1]:
                    out.append(_depth_cell(path, ds, seed, len(seeds)))
        except (OSError, ValueError, KeyError):
            continue
    return out


def _depth_cell(path, ds: xr.Dataset, seed: int, n_seeds: int) -> dict:
    sel = cube.selected(ds, seed)
    return {"name": path.stem, "seed": seed, "seeds": n_seeds, "dataset": ds.attrs["dataset"],
            "network": ds.attrs["network"],
            "classes": int(ds.sizes["class"]), "layer_names": ds["layer_name"].values.tolist(),
            "layer_widths": ds["layer_width"].values.tolist(), "stages": ds["depth_stage"].values.tolist(),
            "epochs": sel["depth_epoch"].values,
            **{k: sel[f"depth_{k}"].values for k in ("nc1", "trace_ratio", "ncc_acc_train", "ncc_acc_test", "rho",
                                                     "r2")}}


def depth_claims(cells_depth: list[dict]) -> list[dict]:
    """The two depth claims per entry of depth_cells (a row per cell and run seed with every_seed)."""
    rows = []
    for d in cells_depth:
        several = d.get("seeds", 1) > 1
        name = f"{d['dataset']} × {d['network']}" + (f", seed {d['seed']}" if several else "")
        row = partial(verdict_row, cell=name, seed=d["seed"] if several else None)
        rho, r2 = d["rho"][-1], d["r2"][-1]
        ok = np.isfinite(rho)
        rows.append(row("depth", "depth_law", bool(rho > 0 and r2 >= 0.8) if ok else None,
                        f"rho {rho:.3g}, R² {r2:.3f}" if ok else "not measured"))
        first, last = d["nc1"][0, -1], d["nc1"][-1, -1]
        acc = d["ncc_acc_train"][-1]
        ok = np.isfinite(first) and np.isfinite(last) and np.isfinite(acc[[0, -1]]).all()
        held = bool(last < first and acc[-1] >= acc[0]) if ok else None
        rows.append(row("depth", "depth_progressive", held,
                        f"last block NC1 {first:.3g} → {last:.3g}; NCC train acc {acc[0]:.3f} (first block) "
                        f"vs {acc[-1]:.3f} (last)" if ok else "not measured"))
    return rows


def followup_seeds(followups_dir) -> list[int]:
    """The run seeds every current follow-up cube has (the follow-up claims compare runs of the same seed)."""
    common = None
    for path in sorted(paths.resolve(followups_dir).glob("*.nc")):
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                if cube.stale_reason(ds):
                    continue
                seeds = {int(s) for s in ds["seed"].values}
        except (OSError, ValueError, KeyError):
            continue
        common = seeds if common is None else common & seeds
    return sorted(common or [])


def followup_claims_by_seed(followups_dir) -> list[dict]:
    """followup_claims for every seed the follow-up runs share (followup_seeds), each on that seed's runs at their
    selected lrs; with several seeds each row's run names the seed, so a page's count reads k of n."""
    seeds = followup_seeds(followups_dir)
    if not seeds:
        return followup_claims({})
    rows = []
    for seed in seeds:
        for r in followup_claims(followup_runs(followups_dir, seed)):
            rows.append(r | ({"cell": f"{r['cell']}, seed {seed}", "seed": seed} if len(seeds) > 1 else {}))
    return rows


def followup_runs(followups_dir, seed: int | None = None) -> dict[str, xr.Dataset]:
    """The follow-up runs' cubes (current ones only), a run seed (default each cube's first) at its selected lr,
    keyed by parameter file name, each with its parameters as attrs['params'] (a dict)."""
    runs = {}
    for path in sorted(paths.resolve(followups_dir).glob("*.nc")):
        try:
            ds = cube.open_cube(path)
        except cube.CubeError:
            continue
        if cube.stale_reason(ds):
            continue
        if seed is not None and seed not in ds["seed"].values:
            continue
        sel = cube.selected(ds, seed)
        sel.attrs["params"] = yaml.safe_load(ds.attrs["parameters"])
        sel.attrs["run_name"] = path.stem
        runs[path.stem] = sel
    return runs


def _names(*runs) -> str:
    """The parameter-file names of the runs a verdict reads, for its table's run column."""
    return " vs ".join(ds.attrs.get("run_name", "?") for ds in runs if ds is not None)


def _series(ds: xr.Dataset, name: str) -> xr.DataArray:
    return ds[name].dropna("epoch")


def _drop(ds) -> float:
    s = _series(ds, "nc1")
    return float(s[0] / s[-1]) if s.size > 1 and float(s[-1]) > 0 else np.nan


def find_run(runs: dict, **match) -> xr.Dataset | None:
    """The follow-up run whose parameters have the given values (e.g. loss="mse"), None when not trained."""
    for ds in runs.values():
        p = ds.attrs["params"]
        if all(p.get(k) == v for k, v in match.items()):
            return ds
    return None


BASELINE = {"loss": "cross_entropy", "classifier": "learned", "weight_decay": 5e-4, "imbalance_ratio": None}


def followup_claims(runs: dict) -> list[dict]:
    """The MSE, fixed-ETF, weight-decay and minority-collapse claims on the follow-up runs (None where a run the rule
    needs is missing: the page then says which command trains it)."""
    base = find_run(runs, **BASELINE)
    mse = find_run(runs, **(BASELINE | {"loss": "mse"}))
    etf = find_run(runs, **(BASELINE | {"classifier": "fixed_etf"}))
    wd0 = find_run(runs, **(BASELINE | {"weight_decay": 0.0}))
    rows = []
    d = _drop(mse) if mse is not None else np.nan
    rows.append(verdict_row("mse", "mse_collapse", bool(d >= TEN) if np.isfinite(d) else None,
                            f"NC1 ÷{d:.3g}" if np.isfinite(d) else "not trained", _names(mse)))
    if mse is not None:
        perp = _series(mse, "mse_perp_term")
        total = sum(_series(mse, k) for k in ("mse_nc1_term", "mse_nc23_term", "mse_perp_term"))
        share = float(perp[-1] / total[-1])
        rows.append(verdict_row("mse", "central_path", bool(share < 0.1), f"L⊥ is {100 * share:.2g}% of the loss",
                                _names(mse)))
    else:
        rows.append(verdict_row("mse", "central_path", None, "not trained"))
    if etf is not None and base is not None:
        gap = 100 * (float(_series(base, "test_acc")[-1]) - float(_series(etf, "test_acc")[-1]))
        held = bool(abs(gap) <= 1.0 and _drop(etf) >= TEN)
        rows.append(verdict_row("fixed_etf", "fixed_etf", held, f"test accuracy learned − fixed = {gap:+.2f} points; "
                                f"fixed-ETF NC1 ÷{_drop(etf):.3g}", _names(base, etf)))
    else:
        rows.append(verdict_row("fixed_etf", "fixed_etf", None, "not trained"))
    if wd0 is not None and base is not None:
        a, b = float(_series(base, "nc1")[-1]), float(_series(wd0, "nc1")[-1])
        rows.append(verdict_row("weight_decay", "weight_decay", bool(a < b), f"NC1 {a:.3g} with, {b:.3g} without",
                                _names(base, wd0)))
    else:
        rows.append(verdict_row("weight_decay", "weight_decay", None, "not trained"))
    by_r = minority_by_ratio(runs)
    if len(by_r) == 3:
        v = [by_r[r] for r in sorted(by_r)]
        rows.append(verdict_row("imbalance", "minority_collapse", bool(v[0] < v[1] < v[2]),
                                ", ".join(f"R={r:g}: {by_r[r]:.3f}" for r in sorted(by_r)),
                                _names(*(ds for _, ds in runs_by_ratio(runs)))))
    else:
        rows.append(verdict_row("imbalance", "minority_collapse", None, "not trained"))
    return rows


def runs_by_ratio(runs: dict) -> list[tuple[float, xr.Dataset]]:
    """The baseline recipe's runs by imbalance ratio R (R = 1: the balanced baseline), sorted by R."""
    out = []
    for ds in runs.values():
        p = ds.attrs["params"]
        if all(p.get(k) == BASELINE[k] for k in ("loss", "classifier", "weight_decay")):
            out.append((1.0 if p.get("imbalance_ratio") is None else float(p["imbalance_ratio"]), ds))
    return sorted(out, key=lambda t: t[0])


def minority_by_ratio(runs: dict) -> dict[float, float]:
    """minority_collapse at the last epoch per imbalance ratio R."""
    return {r: float(_series(ds, "minority_collapse")[-1]) for r, ds in runs_by_ratio(runs)
            if _series(ds, "minority_collapse").size}


def claims_markdown(rows: list[dict], page: str) -> str:
    """A page's claims: the source's claim, the rule, and per cell whether it held."""
    lines = []
    if any(r.get("seed") is not None for r in rows):
        lines.append("With several run seeds each claim is checked in every seed (a row per run and seed); the "
                     "figures above draw the first seed's runs, each at its selected lr.")
    for claim, source, statement, rule in CLAIMS[page]:
        mine = [r for r in rows if r["claim"] == claim]
        held = [r["held"] for r in mine]
        verdict = (f"held in **{held.count(True)} of {len(held) - held.count(None)}** checkable run(s)"
                   if len(held) - held.count(None) else "**not checkable** here")
        lines.append(f"**{source}:** {statement}. *Rule:* {rule}. *Here:* {verdict}.")
        if mine:
            lines.append("| run | verdict | numbers |\n|---|---|---|\n" + "\n".join(
                f"| {r['cell'] or '—'} | {HELD_WORD[r['held']]} "
                f"| {r['text']} |" for r in mine))
    return "\n\n".join(lines)
