"""What the runs show: each measure at the TPT start and at the last epoch, the improvements over the TPT (Fig. 8,
Table 1) and, per figure, whether the paper's claim held in each cell by a fixed rule.

Rows returned here use `dataset` for the paper's column (demo -> mnist), `dataset_name` for the cube's own dataset,
`family` for the paper's row (vgg / resnet / densenet) and `network` for the exact network (vgg11, ...).
The TPT start snapshot is the first snapshot at or after tpt_epoch (the first epoch with eval-mode train accuracy
at the threshold); Table 1 uses the test accuracy at tpt_epoch exactly (it is measured every epoch).

With several run seeds, every table has a row per (cell, seed) with the `seed` (each seed at the lr selected for
it), every claim is checked per seed and reported per cell as "held in k of n seeds" (`claims`), and summaries over
cells take each cell's median over its seeds first (`improvement_summary`).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from nc import models
from nc.data import DATASETS
from nc.report.claims import HELD_MARK, HELD_WORD, Claim  # noqa: F401  (HELD_WORD: the words, re-exported)
from nc.report.profiles import cells, seed_runs, snapshot_series


def _names(col: str, row: str, c: xr.Dataset, seed: int | None = None) -> dict:
    return {"dataset": col, "dataset_name": str(c["dataset"].values), "family": row,
            "network": str(c["network_name"].values), "seed": seed,
            "selected_lr": None if seed is None else float(c["selected_lr"].sel(seed=seed))}


def runs(profile: xr.Dataset):
    """(column, row, cell, seed, that seed's run) for every run seed of every cell with a run, in the paper's order."""
    for col, row, c in cells(profile):
        for seed, run in seed_runs(c):
            yield col, row, c, seed, run


def tpt_change(c: xr.Dataset, name: str) -> dict:
    """A snapshot variable of one run (one cell, one seed) at the first snapshot, at the TPT start (the first
    snapshot at or after tpt_epoch) and at the last snapshot. `at_tpt` is NaN when the TPT was never reached (or no
    snapshot follows it); `tpt_snapshot` is then None."""
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


def change_table(profile: xr.Dataset, name: str) -> list[dict]:
    """Per (cell, seed) with a run: `name` at the first snapshot, the TPT start and the last snapshot (tpt_change)."""
    rows = []
    for col, row, c, seed, run in runs(profile):
        ch = tpt_change(run, name)
        if ch["last_epoch"] is not None:
            rows.append({**_names(col, row, c, seed), **ch})
    return rows


def improvements(profile: xr.Dataset, name: str) -> list[dict]:
    """change_table rows with `improvement` = last - TPT start (None when the TPT was never reached)."""
    return [{**r, "improvement": r["last"] - r["at_tpt"] if r["tpt_snapshot"] is not None else None}
            for r in change_table(profile, name)]


def by_cell(rows: list[dict]) -> dict:
    """Rows (one per cell and seed) grouped by cell, {(dataset column, family): [rows]}, in their order."""
    out = {}
    for r in rows:
        out.setdefault((r["dataset"], r["family"]), []).append(r)
    return out


def improvement_summary(rows: list[dict]) -> dict:
    """Median and mean over cells of the improvements that exist (None / NaN dropped), each cell first reduced to
    the median over its seeds, and how many cells there are (n)."""
    kept = [r for r in rows if r["improvement"] is not None and np.isfinite(r["improvement"])]
    v = np.array([np.median([r["improvement"] for r in rs]) for rs in by_cell(kept).values()], dtype=np.float64)
    return {"n": int(v.size), "median": float(np.median(v)) if v.size else np.nan,
            "mean": float(v.mean()) if v.size else np.nan}


def accuracy_table(profile: xr.Dataset) -> list[dict]:
    """Table 1 for this profile: per (cell, seed) with a run, the test accuracy (%) at the seed's selected lr at the
    TPT start epoch exactly and at the last epoch, and the improvement in percentage points (None if no TPT)."""
    rows = []
    for col, row, c, seed, run in runs(profile):
        acc = run["test_acc"].dropna("epoch")
        if acc.size == 0:
            continue
        tpt = float(run["tpt_epoch"])
        at_tpt = float(acc.sel(epoch=int(tpt))) * 100 if np.isfinite(tpt) and int(tpt) in acc["epoch"] else None
        last = float(acc[-1]) * 100
        rows.append({**_names(col, row, c, seed), "tpt_epoch": int(tpt) if np.isfinite(tpt) else None,
                     "last_epoch": int(acc["epoch"][-1]), "at_tpt": at_tpt, "at_last": last,
                     "improvement": None if at_tpt is None else last - at_tpt})
    return rows


def paper_table1(paper: dict) -> list[dict]:
    """The paper's Table 1 as rows {dataset, family, at_zero_error, at_last, improvement} (21 rows), from the
    paper's values (book/paper_values.yaml, read by the page and passed in)."""
    acc = paper["table1"]["accuracy"]
    return [{"dataset": col, "family": row, "at_zero_error": acc[col][row][0], "at_last": acc[col][row][1],
             "improvement": acc[col][row][1] - acc[col][row][0]} for col in DATASETS for row in models.FAMILIES]


def _changes(claim, c: xr.Dataset) -> tuple[dict, dict, str | None]:
    """tpt_change of each of the claim's variables, the numbers a claim reports, and why it is not checkable (None
    when it is)."""
    changes = {n: tpt_change(c, n) for n in claim.variables}
    ch = changes[claim.variables[0]]
    numbers = {"tpt_epoch": None if not np.isfinite(ch["tpt_epoch"]) else int(ch["tpt_epoch"]),
               "tpt_snapshot": ch["tpt_snapshot"], "last_epoch": ch["last_epoch"],
               **{f"{n}_{k}": changes[n][k] for n in claim.variables for k in ("first", "at_tpt", "last")}}
    why = ("not measured" if ch["last_epoch"] is None else "TPT not reached" if ch["tpt_snapshot"] is None
           else "TPT at the last epoch" if ch["tpt_snapshot"] >= ch["last_epoch"] else None)
    return changes, numbers, why


def _all_lower(claim, c):
    changes, numbers, why = _changes(claim, c)
    if why:
        return None, why, numbers
    held = all(changes[n]["last"] < changes[n]["at_tpt"] for n in claim.variables)
    return bool(held), "\n".join(f"{changes[n]['at_tpt']:.3g}→{changes[n]['last']:.3g}" for n in claim.variables), \
        numbers


def _nc1_falls(claim, c):
    changes, numbers, why = _changes(claim, c)
    if why:
        return None, why, numbers
    ch = changes["nc1"]
    drop = ch["first"] / ch["last"] if ch["last"] > 0 else np.inf
    held = drop >= claim.thresholds["factor"] and ch["last"] < ch["at_tpt"]
    return bool(held), f"{ch['at_tpt']:.3g}→{ch['last']:.3g}\n÷{drop:.3g} from 1st", numbers


def _ncc_small(claim, c):
    changes, numbers, why = _changes(claim, c)
    if why:
        return None, why, numbers
    ch = changes["ncc_mismatch"]
    held = ch["last"] < claim.thresholds["mismatch"] and ch["last"] <= ch["at_tpt"]
    return bool(held), f"{ch['at_tpt']:.3f}→{ch['last']:.3f}", numbers


def _robustness_rises(claim, c):
    changes, numbers, why = _changes(claim, c)
    if why:
        return None, why, numbers
    ch = changes["robustness"]
    return bool(ch["last"] > ch["at_tpt"]), f"{ch['at_tpt']:.3g}→{ch['last']:.3g}", numbers


def _table1(claim, c: xr.Dataset) -> tuple[bool | None, str, dict]:
    acc = c["test_acc"].dropna("epoch")
    tpt = float(c["tpt_epoch"])
    if acc.size == 0 or not np.isfinite(tpt) or int(tpt) not in acc["epoch"]:
        return None, "TPT not reached", {"tpt_epoch": None}
    a, b, last = float(acc.sel(epoch=int(tpt))), float(acc[-1]), int(acc["epoch"][-1])
    numbers = {"tpt_epoch": int(tpt), "last_epoch": last, "test_acc_tpt": a, "test_acc_last": b}
    if int(tpt) >= last:
        return None, "TPT at the last epoch", numbers
    return bool(b >= a), f"{a * 100:.1f}→{b * 100:.1f}%", numbers


_PAPYAN = "Papyan, Han & Donoho, PNAS 2020"
_BOTH = "both lower at the last epoch than at the TPT start"
# The paper's claims, one per page (the page's title is in nc.report.catalog), checked per run (a cell, one seed).
CLAIMS = {c.name: c for c in (
    Claim("fig2", "fig2", ("equinorm_means", "equinorm_classifiers"), _PAPYAN,
          "the class means and the classifiers become equinorm",
          "the coefficients of variation of the centred class-mean norms and of the classifier norms are " + _BOTH,
          _all_lower),
    Claim("fig3", "fig3", ("equiangular_means", "equiangular_classifiers"), _PAPYAN,
          "the class means and the classifiers become equiangular",
          "the SDs of the pairwise cosines of the class means and of the classifiers are " + _BOTH, _all_lower),
    Claim("fig4", "fig4", ("maxangle_means", "maxangle_classifiers"), _PAPYAN,
          "the class means and the classifiers approach the maximal angle",
          "Avg |cos + 1/(C−1)| of the class means and of the classifiers are " + _BOTH, _all_lower),
    Claim("fig5", "fig5", ("self_duality",), _PAPYAN, "the classifier converges to the class means",
          "‖W/‖W‖ − M/‖M‖‖² is lower at the last epoch than at the TPT start", _all_lower),
    Claim("fig6", "fig6", ("nc1",), _PAPYAN, "the within-class variation collapses",
          "Tr(Σ_W Σ_B†)/C falls by at least {factor:g}× from the first snapshot to the last epoch and is lower at "
          "the last epoch than at the TPT start", _nc1_falls, {"factor": 10.0}),
    Claim("fig7", "fig7", ("ncc_mismatch",), _PAPYAN, "the classifier approaches the nearest class centre",
          "the test NCC mismatch at the last epoch is below {mismatch:g} and not higher than at the TPT start (both "
          "can be exactly 0 on a small test set)", _ncc_small, {"mismatch": 0.05}),
    Claim("fig8", "fig8", ("robustness",), _PAPYAN, "training beyond zero error improves adversarial robustness",
          "the DeepFool robustness Ave ‖r(x)‖/‖x‖ is higher at the last epoch than at the TPT start",
          _robustness_rises),
    Claim("table1", "table1", ("test_acc",), _PAPYAN, "training beyond zero error improves test performance",
          "the test accuracy at the last epoch is at least that at the TPT start epoch", _table1),
)}
ORDER_OF_MAGNITUDE = CLAIMS["fig6"].thresholds["factor"]
NCC_THRESHOLD = CLAIMS["fig7"].thresholds["mismatch"]


def claim(figure: str, c: xr.Dataset) -> tuple[bool | None, str, dict]:
    """(held, cell text, numbers) for one figure's claim in one run (a cell, one seed); held None when it cannot be
    checked (CLAIMS[figure].rule_text says what is checked)."""
    return CLAIMS[figure](c)


VERDICTS = ("held", "some", "not held", "not checkable")  # in all checkable seeds, in some, in none; none checkable


def verdict(k: int, n: int) -> str:
    """The cell's verdict from k seeds that held out of n checkable ones."""
    return "not checkable" if n == 0 else "held" if k == n else "not held" if k == 0 else "some"


def claims(profile: xr.Dataset) -> list[dict]:
    """Did each figure's claim hold in each cell with a run, seed by seed? One dict per (figure, cell): figure,
    dataset (column), family (row), network, k (seeds where it held), n (seeds where it could be checked),
    n_seeds, verdict (VERDICTS), held (True: in every checkable seed, False: not in every one, None: not
    checkable, e.g. TPT never reached), text (the numbers of a one-seed cell; the per-seed verdicts otherwise) and
    per_seed [{seed, held, text, numbers}]. The rules are CLAIMS[figure].rule_text."""
    out = []
    for figure in CLAIMS:
        for col, row, c in cells(profile):
            per_seed = [dict(zip(("seed", "held", "text", "numbers"), (seed, *claim(figure, run))))
                        for seed, run in seed_runs(c)]
            held = [r["held"] for r in per_seed]
            k, n = held.count(True), len(held) - held.count(None)
            if len(per_seed) == 1:
                text = per_seed[0]["text"]
            else:
                marks = " ".join(f"{r['seed']}{HELD_MARK[r['held']]}" for r in per_seed)
                text = f"in {k} of {n} seeds\n{marks}"
            out.append({"figure": figure, **_names(col, row, c), "k": k, "n": n, "n_seeds": len(per_seed),
                        "verdict": verdict(k, n), "held": None if n == 0 else k == n, "text": text,
                        "per_seed": per_seed, "numbers": per_seed[0]["numbers"]})
    return out
