"""After the paper: each follow-up paper's claim, one nc.report.claims.Claim entry (page, variables, thresholds,
the rule's text formatted from them, the check), checked in this profile's runs. A claim this profile cannot check
(the TPT never reached, the follow-up runs not trained yet, a treatment and its control not run like for like) is
"not checkable", never guessed; a difference inside its stated noise is "inconclusive".

Grid claims (CDNV, test collapse, ETF errors) are checked per run (cell and seed) of the profile's grid, the depth
claims on the cubes' `layer` variables (nc.report.after_runs.depth_cells), and the follow-up runs' claims (MSE,
fixed ETF, weight decay, minority collapse) on the cubes of the `followups` profile (cubes/followups/).
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from nc.measure import transfer
from nc.measure.depth import fit_depth_decay
from nc.report import claims as K
from nc.report.after_runs import (  # noqa: F401
    BASELINE,
    FILL_COMMAND,
    FOLLOWUPS,
    depth_cells,
    find_run,
    followup_runs,
    followup_seeds,
    head_cells,
    minority_by_ratio,
    nc1_drop,
    ood_cells,
    run_names,
    runs_by_ratio,
    series,
    transfer_run,
)
from nc.report.analysis import tpt_change
from nc.report.profiles import cells, seed_runs

GALANTI, HUI, ZHU = "Galanti, György & Hutter, ICLR 2022", "Hui, Belkin & Nakkiran, 2022", "Zhu et al., NeurIPS 2021"
HAN, AMMAR = "Han, Papyan & Donoho, ICLR 2022", "Ammar et al., ICLR 2024 (NECO)"
# He & Su's fits of log(C NC1_l) on l are near-perfect lines (their Pearson correlations are close to -1); a fit with
# R^2 below R2_LAW (|r| < 0.975) is visibly not a line on a log plot, so the law is said to hold from R2_LAW.
R2_LAW = 0.95
# Run-to-run noise of a final NC1: the same seeds and commit on two 2-core machines gave 0.035 vs 0.047 (weight
# decay on) and 0.044 vs 0.046 (off), and three run seeds of the demo's VGG11 spread its NC1 drop over 25-58x: a
# ratio of two final NC1s inside [1/NC1_NOISE, NC1_NOISE] is not a finding.
NC1_NOISE = 2.0
# The transfer run is one run (no seed spread): a change of its held-out CDNV or NC5 over the TPT by less than a factor
# TRANSFER_NOISE is read as no change ("inconclusive"). In the demo's transfer run the snapshots after the last lr
# milestone, with the network nearly frozen, already vary by up to 1% (CDNV) and 3% (NC5).
TRANSFER_NOISE = 1.1


def _window(claim, run: xr.Dataset) -> tuple[dict, str | None]:
    ch = {v: tpt_change(run, v) for v in claim.variables}
    first = ch[claim.variables[0]]
    reached = first["tpt_snapshot"] is not None and first["tpt_snapshot"] < first["last_epoch"]
    return ch, None if reached else "TPT not reached"


def _lower_over_tpt(claim, run):
    """Every variable lower at the last epoch than at the TPT start; the text gives each, TPT start -> last."""
    ch, why = _window(claim, run)
    if why:
        return None, why, {}
    ok = all(np.isfinite(ch[v]["last"]) and np.isfinite(ch[v]["at_tpt"]) for v in claim.variables)
    if not ok:
        return None, "not measured", {}
    held = all(ch[v]["last"] < ch[v]["at_tpt"] for v in claim.variables)
    return bool(held), "; ".join(f"{v} {ch[v]['at_tpt']:.3g} → {ch[v]['last']:.3g}" for v in claim.variables), ch


def _test_over_tpt(claim, run):
    """cdnv_test lower at the last epoch than at the TPT start; cdnv_train over the same window beside it."""
    ch, why = _window(claim, run)
    t, tr = ch["cdnv_test"], ch["cdnv_train"]
    if why or not (np.isfinite(t["last"]) and np.isfinite(t["at_tpt"])):
        return None, why or "not measured", {}
    return bool(t["last"] < t["at_tpt"]), (f"test {t['at_tpt']:.3g} → {t['last']:.3g} (train {tr['at_tpt']:.3g} → "
                                           f"{tr['last']:.3g}), epochs {t['tpt_snapshot']} → {t['last_epoch']}"), ch


def _test_far(claim, run):
    t, n = tpt_change(run, "nc1_test"), tpt_change(run, "nc1")
    if t["last_epoch"] is None or not np.isfinite(t["last"]) or not n["last"] > 0:
        return None, "not measured", {}
    ratio = t["last"] / n["last"]
    return bool(ratio >= claim.thresholds["factor"]), \
        f"test {t['last']:.3g} / train {n['last']:.3g} = {ratio:.3g}", {"ratio": ratio}


def _depth_law(claim, d, prefix: str = ""):
    """The law on the pooled block outputs (prefix "") or on the flattened ones (prefix "flat_")."""
    if prefix + "rho" not in d:
        return None, "not measured", {}
    rho, r2 = d[prefix + "rho"][-1], d[prefix + "r2"][-1]
    if not np.isfinite(rho):
        return None, "not measured", {}
    res = depth_residuals(d[prefix + "nc1"][-1], d["classes"])
    held = rho > 0 and r2 >= claim.thresholds["r2"]
    return bool(held), f"rho {rho:.3g}, R² {r2:.3f}; largest |residual| {np.nanmax(np.abs(res)):.2g}", \
        {"rho": rho, "r2": r2}


def _depth_law_flat(claim, d):
    return _depth_law(claim, d, "flat_")


def depth_residuals(nc1_by_layer, classes: int) -> np.ndarray:
    """log(C NC1_l) minus the fitted line a - rho l at each block (NaN where NC1_l is not finite and > 0)."""
    v = np.asarray(nc1_by_layer, dtype=np.float64)
    a, rho, _ = fit_depth_decay(v, classes)
    ok = np.isfinite(v) & (v > 0)
    out = np.full(v.shape, np.nan)
    out[ok] = np.log(classes * v[ok]) - (a - rho * np.arange(1, v.size + 1)[ok])
    return out


def depth_trend(nc1_by_layer) -> tuple[float, float, int]:
    """(Spearman's rank correlation of NC1_l with l, share of consecutive blocks where NC1 falls, blocks used), over
    the blocks where NC1_l is finite."""
    v = np.asarray(nc1_by_layer, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 3:
        return np.nan, np.nan, int(v.size)
    return float(stats.spearmanr(np.arange(v.size), v).statistic), float(np.mean(np.diff(v) < 0)), int(v.size)


def spearman_bound(blocks: int) -> float:
    """The one-sided 5% critical value of Spearman's rho under no trend, -1.645 / sqrt(L - 1) (normal approximation)."""
    return -1.645 / np.sqrt(blocks - 1)


def _depth_progressive(claim, d):
    first, last = depth_trend(d["nc1"][0]), depth_trend(d["nc1"][-1])
    if not (np.isfinite(first[0]) and np.isfinite(last[0])):
        return None, "not measured", {}
    bound = spearman_bound(last[2])
    held = last[0] < bound and last[1] > claim.thresholds["share"] and last[0] < first[0]
    return bool(held), (f"Spearman {first[0]:+.2f} → {last[0]:+.2f} (bound {bound:+.2f} for {last[2]} blocks); "
                        f"falling blocks {100 * first[1]:.0f}% → {100 * last[1]:.0f}%"), \
        {"spearman_first": first[0], "spearman_last": last[0], "share_last": last[1], "bound": bound}


def _held_out(run) -> str:
    return ", ".join(str(c) for c in run.attrs["params"]["held_out_classes"])


def _transfer(claim, runs):
    """The transfer run's held-out CDNV lower at the last epoch than at the TPT start; the few-shot accuracy beside
    it (first snapshot, TPT start, last)."""
    run = transfer_run(runs)
    if run is None:
        return None, "not trained", {}
    ch, why = _window(claim, run)
    c, a = ch["transfer_cdnv"], ch["transfer_ncc_acc"]
    if why or not (np.isfinite(c["last"]) and np.isfinite(c["at_tpt"])):
        return None, why or "not measured", {"runs": run_names(run)}
    n = int(run.attrs.get("n_held_out_test", 0))
    se = 100 * K.Z * np.sqrt(a["last"] * (1 - a["last"]) / n) if n else np.nan
    return K.ratio_verdict(c["at_tpt"] / c["last"], claim.thresholds["noise"]), (
        f"held-out classes {_held_out(run)}: CDNV {c['first']:.3g} → {c['at_tpt']:.3g} → {c['last']:.3g}, "
        f"{claim.thresholds['shots']}-shot NCC accuracy {100 * a['first']:.1f}% → {100 * a['at_tpt']:.1f}% → "
        f"{100 * a['last']:.1f}% (± {se:.1f} points at the last: 1.96 binomial SE of one draw on its {n} test images); "
        f"first snapshot → TPT start, epoch {c['tpt_snapshot']} → last, epoch {c['last_epoch']}"), \
        {"runs": run_names(run), **ch}


def _nc5(claim, runs):
    """The transfer run's NC5 (held-out classes as the OOD set) lower at the last epoch than at the TPT start."""
    run = transfer_run(runs)
    if run is None:
        return None, "not trained", {}
    ch, why = _window(claim, run)
    o, c = ch["nc5"], ch["nc5_centred"]
    if why or not (np.isfinite(o["last"]) and np.isfinite(o["at_tpt"])):
        return None, why or "not measured", {"runs": run_names(run)}
    return K.ratio_verdict(o["at_tpt"] / o["last"], claim.thresholds["noise"]), (
        f"OOD = held-out classes {_held_out(run)}: NC5 {o['first']:.3g} → {o['at_tpt']:.3g} → {o['last']:.3g} "
        f"(centred {c['first']:.3g} → {c['at_tpt']:.3g} → {c['last']:.3g}); first snapshot → TPT start, epoch "
        f"{o['tpt_snapshot']} → last, epoch {o['last_epoch']}"), {"runs": run_names(run), **ch}


def _like_for_like(*runs) -> str | None:
    """Why the runs are not comparable (different lr grids or seeds), None when they are."""
    grids = {tuple(ds.attrs["params"].get("lrs", ())) for ds in runs}
    return None if len(grids) == 1 else "not like for like: lr grids " + " vs ".join(map(str, sorted(grids)))


def lr_statement(*runs) -> str:
    """How the runs' lrs were chosen: one stated lr for all, or the same grid and the paper's rule."""
    lrs = runs[0].attrs["params"]["lrs"]
    chosen = ", ".join(f"{float(ds['lr']):g}" for ds in runs if "lr" in ds.coords)
    if len(lrs) == 1:
        return f"all at the one stated lr {lrs[0]:g}"
    return f"each selects its lr from {lrs} by best final test accuracy (chosen: {chosen})"


def _mse_collapse(claim, runs):
    mse = find_run(runs, **(BASELINE | {"loss": "mse"}))
    d = nc1_drop(mse) if mse is not None else np.nan
    if not np.isfinite(d):
        return None, "not trained", {}
    return bool(d >= claim.thresholds["factor"]), f"NC1 ÷{d:.3g}", {"drop": d, "runs": run_names(mse)}


def _central_path(claim, runs):
    mse = find_run(runs, **(BASELINE | {"loss": "mse"}))
    if mse is None:
        return None, "not trained", {}
    perp = series(mse, "mse_perp_term")
    total = sum(series(mse, k) for k in ("mse_nc1_term", "mse_nc23_term", "mse_perp_term"))
    share = float(perp[-1] / total[-1])
    return bool(100 * share < claim.thresholds["percent"]), f"L⊥ is {100 * share:.2g}% of the loss", \
        {"share": share, "runs": run_names(mse)}


def _final_acc(ds) -> tuple[float, int]:
    return float(series(ds, "test_acc")[-1]), int(ds.attrs.get("n_test", 0))


def _fixed_etf(claim, runs):
    base, etf = find_run(runs, **BASELINE), find_run(runs, **(BASELINE | {"classifier": "fixed_etf"}))
    if base is None or etf is None:
        return None, "not trained", {}
    names = run_names(base, etf)
    why = _like_for_like(base, etf)
    if why:
        return None, why, {"runs": names}
    (a, na), (b, nb) = _final_acc(base), _final_acc(etf)
    gap, se = 100 * (a - b), 100 * K.binomial_se(a, na, b, nb)
    acc = K.equivalence_verdict(gap, se, claim.thresholds["points"])
    drop = nc1_drop(etf)
    held = False if not drop >= claim.thresholds["factor"] else acc
    return held, (f"learned − fixed = {gap:+.2f} ± {K.Z * se:.2f} points ({K.Z:g} SE, {na} and {nb} test images); "
                  f"fixed-ETF NC1 ÷{drop:.3g}; {lr_statement(base, etf)}"), {"gap": gap, "se": se, "runs": names}


def _weight_decay(claim, runs):
    base, wd0 = find_run(runs, **BASELINE), find_run(runs, **(BASELINE | {"weight_decay": 0.0}))
    if base is None or wd0 is None:
        return None, "not trained", {}
    names = run_names(base, wd0)
    why = _like_for_like(base, wd0)
    if why:
        return None, why, {"runs": names}
    a, b = float(series(base, "nc1")[-1]), float(series(wd0, "nc1")[-1])
    held = K.ratio_verdict(b / a, claim.thresholds["noise"])
    return held, (f"NC1 {a:.3g} with, {b:.3g} without (ratio {b / a:.3g}); without it NC1 fell ÷{nc1_drop(wd0):.3g}; "
                  f"{lr_statement(base, wd0)}"), {"ratio": b / a, "runs": names}


def _minority(claim, runs):
    by_r = minority_by_ratio(runs)
    if len(by_r) != 3:
        return None, "not trained", {}
    pairs = runs_by_ratio(runs)
    why = _like_for_like(*(ds for _, ds in pairs))
    names = run_names(*(ds for _, ds in pairs))
    if why:
        return None, why, {"runs": names}
    v = [by_r[r] for r in sorted(by_r)]
    return bool(v[0] < v[1] < v[2]), ", ".join(f"R={r:g}: {by_r[r]:.3f}" for r in sorted(by_r)) + \
        f"; {lr_statement(*(ds for _, ds in pairs))}", {"runs": names}


C = K.Claim
# Part II's claims; the subject a check reads: a run (grid), a depth entry (depth), the follow-up runs (the rest).
REGISTRY = (
    C("cdnv_train", "cdnv", ("cdnv_train",), GALANTI,
      "the class-distance normalised variance of the train features decreases during training",
      "cdnv_train is lower at the last epoch than at the TPT start", _lower_over_tpt),
    C("cdnv_test", "cdnv", ("cdnv_test", "cdnv_train"), GALANTI,
      "the collapse carries over to test samples of the same classes (test collapse)",
      "cdnv_test is lower at the last epoch than at the TPT start (the TPT window; cdnv_train over the same window "
      "beside it)", _test_over_tpt),
    C("nc1_test", "cdnv", ("nc1_test", "nc1"), HUI,
      "collapse on the train set does not carry over to the test set: test-set NC1 stays far from zero",
      "nc1_test at the last epoch is at least {factor:g}x the train NC1", _test_far, {"factor": 10.0}),
    C("transfer", "cdnv", ("transfer_cdnv", "transfer_ncc_acc"), GALANTI,
      "neural collapse carries over to classes not trained on: their CDNV falls as training goes on, and with it the "
      "few-shot nearest-class-centre error",
      "in the follow-up run trained without its held-out classes, their CDNV (on their own train images) at the TPT "
      "start / at the last epoch is at least {noise:g} (held), at most 1/{noise:g} (did not hold), inconclusive "
      "between (one run: a smaller change is not a finding); their {shots}-shot nearest-class-centre accuracy is "
      "stated beside it", _transfer, {"shots": transfer.SHOTS, "noise": TRANSFER_NOISE}),
    C("nc5", "cdnv", ("nc5", "nc5_centred"), AMMAR,
      "NC5: as training goes on, out-of-distribution features become orthogonal to the in-distribution class means",
      "in the same run, with its held-out classes as the OOD set, NC5 = Avg_c |cos(mu_c, mu_G^OOD)| at the TPT start / "
      "at the last epoch is at least {noise:g} (held), at most 1/{noise:g} (did not hold), inconclusive between (the "
      "centred variant beside it)", _nc5, {"noise": TRANSFER_NOISE}),
    C("etf_errors", "etf", ("etf_error_means", "etf_error_classifiers", "classifier_mean_alignment"), ZHU,
      "the class means and the classifier converge to a simplex ETF and to each other",
      "etf_error_means, etf_error_classifiers and classifier_mean_alignment are all lower at the last epoch than at "
      "the TPT start", _lower_over_tpt),
    C("depth_law", "depth", ("depth_nc1", "depth_rho", "depth_r2"), "He & Su, PNAS 2023",
      "a law of data separation: log(C NC1_l) decays linearly with the layer l",
      "at the last snapshot the fit of log(C NC1_l) on l has rho > 0 and R² ≥ {r2:g} (He & Su's fits are near-perfect "
      "lines; the residuals are drawn on the page); the block outputs global-average-pooled over space",
      _depth_law, {"r2": R2_LAW}),
    C("depth_law_flat", "depth", ("depth_flat_nc1",), "He & Su, PNAS 2023",
      "a law of data separation: log(C NC1_l) decays linearly with the layer l (on the whole activations, as "
      "Rangamani et al.'s code flattens them)",
      "as depth_law, rho > 0 and R² ≥ {r2:g} at the last snapshot, on the FLATTENED block outputs", _depth_law_flat,
      {"r2": R2_LAW}),
    C("depth_progressive", "depth", ("depth_nc1",), "Rangamani et al., ICML 2023",
      "within-class variability collapses progressively through the layers, and more as training proceeds",
      "at the last snapshot Spearman's rank correlation of NC1_l with l is below -1.645/√(L−1) (one-sided 5%, L "
      "blocks), NC1 falls in more than {share:.0%} of consecutive blocks, and the correlation is lower than at the "
      "first snapshot", _depth_progressive, {"share": 0.5}),
    C("mse_collapse", "mse", ("nc1",), HAN, "neural collapse also occurs under the MSE loss",
      "the MSE run's NC1 falls at least {factor:g}x from the first snapshot to the last epoch", _mse_collapse,
      {"factor": 10.0}),
    C("central_path", "mse", ("mse_nc1_term", "mse_nc23_term", "mse_perp_term"), HAN,
      "during the TPT the features follow the central path: the classifier stays near the least-squares one",
      "L_perp is below {percent:g}% of the classifier's regularised loss at the last epoch", _central_path,
      {"percent": 10.0}),
    C("fixed_etf", "fixed_etf", ("test_acc", "nc1"), ZHU,
      "fixing the classifier at a simplex ETF costs no accuracy, and the features still collapse",
      "the interval (±1.96 binomial SE) of learned − fixed final test accuracy lies within ±{points:g} points (held), "
      "wholly outside (did not hold) or across the edge (inconclusive), and the fixed-ETF run's NC1 falls at least "
      "{factor:g}x; both runs chose their lr alike", _fixed_etf, {"points": 2.0, "factor": 10.0}),
    C("weight_decay", "weight_decay", ("nc1",),
      "Rangamani & Banburski-Fahey, ICASSP 2022 (homogeneous ReLU nets, square loss)",
      "weight decay is necessary for neural collapse",
      "NC1 at the last epoch without weight decay / with 5e-4 is at least {noise:g} (held), at most 1/{noise:g} (did "
      "not hold), inconclusive between (the run-to-run noise of a final NC1); this profile's net (BatchNorm, biases, "
      "cross-entropy) is outside the theorem's assumptions", _weight_decay, {"noise": NC1_NOISE}),
    C("minority_collapse", "imbalance", ("minority_collapse",), "Fang, He, Long & Su, PNAS 2021",
      "minority collapse: as the imbalance ratio R grows, the minority classes' classifiers collapse toward each "
      "other", "minority_collapse (Avg cos between minority classifiers) at the last epoch increases with R: "
      "1 < 10 < 100 (no noise estimate: one run per R)", _minority),
)
CLAIMS = K.by_page(REGISTRY)  # page -> [Claim]
BY_NAME = {c.name: c for c in REGISTRY}


def verdict_row(claim: str, held, text: str, cell: str = "", seed: int | None = None) -> dict:
    """One claim checked in one run: held True / False / INCONCLUSIVE / None (not checkable); seed None for a
    one-seed run."""
    c = BY_NAME[claim]
    return {"page": c.page, "claim": claim, "source": c.source, "statement": c.statement, "rule": c.rule_text,
            "cell": cell, "held": held, "text": text, "seed": seed}


def _rows(names, subject, cell: str = "", seed=None) -> list[dict]:
    out = []
    for name in names:
        held, text, numbers = BY_NAME[name](subject)
        out.append(verdict_row(name, held, text, cell or numbers.get("runs", ""), seed))
    return out


def grid_claims(profile: xr.Dataset) -> list[dict]:
    """The CDNV, test-collapse and ETF-error claims in every cell of a profile's grid, seed by seed (a row per
    cell and run seed, each at the lr selected for it; `seed` is set when the cell has several)."""
    rows = []
    for _, _, cell in cells(profile):
        seeds = seed_runs(cell)
        for seed, c in seeds:
            several = len(seeds) > 1
            name = f"{cell['dataset'].values} × {cell['network_name'].values}" + (f", seed {seed}" if several else "")
            rows += _rows(GRID_CLAIMS, c, name,
                          seed if several else None)
    return rows


def depth_claims(cells_depth: list[dict]) -> list[dict]:
    """The two depth claims per entry of depth_cells (a row per cell and run seed with every_seed)."""
    rows = []
    for d in cells_depth:
        several = d.get("seeds", 1) > 1
        name = f"{d['dataset']} × {d['network']}" + (f", seed {d['seed']}" if several else "")
        rows += _rows(("depth_law", "depth_law_flat", "depth_progressive"), d, name, d["seed"] if several else None)
    return rows


FOLLOWUP_CLAIMS = ("transfer", "nc5", "mse_collapse", "central_path", "fixed_etf", "weight_decay",
                   "minority_collapse")
GRID_CLAIMS = ("cdnv_train", "cdnv_test", "nc1_test", "etf_errors")


def followup_claims(runs: dict) -> list[dict]:
    """The transfer, NC5, MSE, fixed-ETF, weight-decay and minority-collapse claims on the follow-up runs (None where
    a run the rule needs is missing: the page then says which command trains it)."""
    return _rows(FOLLOWUP_CLAIMS, runs)


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


def ood_markdown(cells_ood: list[dict], profile: str) -> str:
    """The grid cells' NC5 with another dataset as the OOD set (after_runs.ood_cells): a table of NC5 and its centred
    variant at the first snapshot, the TPT start and the last snapshot; a sentence when no cell of the profile has
    one."""
    if not cells_ood:
        return (f"No cell of the **{profile}** profile measures NC5 on another dataset (`ood_dataset`): not run in "
                "this profile. The quick profile's MNIST and FashionMNIST cells do (each the other's OOD set).")
    fmt = lambda ch: " → ".join("–" if not np.isfinite(ch[k]) else f"{ch[k]:.3g}" for k in ("first", "at_tpt", "last"))
    epochs = lambda ch: (f"{ch['first_epoch']} → {ch['tpt_snapshot'] if ch['tpt_snapshot'] is not None else '–'} → "
                         f"{ch['last_epoch']}")
    lines = ["| cell | OOD set (`ood_set`) | NC5 first → TPT start → last | centred | epochs |",
             "|---|---|---|---|---|"]
    for d in cells_ood:
        lines.append(f"| {d['name']} | {d['ood_set']} | {fmt(d['nc5'])} | {fmt(d['nc5_centred'])} | "
                     f"{epochs(d['nc5'])} |")
    return "\n".join(lines) + ("\n\n– : the TPT was not reached (or no snapshot follows it). NC5 = "
                               "Avg_c |cos(μ_c, μ_G^OOD)|, 0 = the OOD mean orthogonal to every class mean.")


def claims_markdown(rows: list[dict], page: str, only=None) -> str:
    """A page's claims: the source's claim, the rule, and per run whether it held, was inconclusive or did not;
    `only`: the names of the page's claims to show (all of them by default)."""
    lines = []
    if any(r.get("seed") is not None for r in rows):
        lines.append("With several run seeds each claim is checked in every seed (a row per run and seed); the "
                     "figures above draw the first seed's runs, each at its selected lr.")
    for c in CLAIMS[page]:
        if only is not None and c.name not in only:
            continue
        mine = [r for r in rows if r["claim"] == c.name]
        lines.append(f"**{c.source}:** {c.statement}. *Rule:* {c.rule_text}. *Here:* "
                     f"{K.summary([r['held'] for r in mine])}.")
        if mine:
            lines.append("| run | verdict | numbers |\n|---|---|---|\n" + "\n".join(
                f"| {r['cell'] or '—'} | {K.HELD_WORD[r['held']]} | {r['text']} |" for r in mine))
    return "\n\n".join(lines)
