"""The runs the "After the paper" pages read: per cube of a folder its collapse by depth (the `layer` variables),
and the follow-up profile's runs (cubes/followups/), each run seed at its selected lr, found by their parameters.
Only current cubes are read; a stale or unreadable one is left out (the intro lists it)."""
from __future__ import annotations

import numpy as np
import xarray as xr
import yaml

from nc import paths
from nc.measure import depth, head
from nc.runs import cube

FOLLOWUPS = "followups"  # the profile whose runs the follow-up pages read
FILL_COMMAND = "nox -s reproduce -- followups"
# the control every follow-up run varies one parameter of
BASELINE = {"loss": "cross_entropy", "classifier": "learned", "weight_decay": 5e-4, "imbalance_ratio": None,
            "held_out_classes": None}


def depth_cells(cube_dir, every_seed: bool = False) -> list[dict]:
    """Per current cube of a folder, the collapse by depth of its first run seed at its selected lr (every_seed:
    one entry per run seed, each at its own selected lr): {name, seed, seeds (how many the cube has), layer_names,
    layer_widths, stages, epochs, nc1, trace_ratio, ncc_acc_train, ncc_acc_test, flat_nc1, flat_trace_ratio
    (stage x layer; flat_: the flattened block outputs), rho, r2, flat_rho, flat_r2 (stage), classes}."""
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


def head_cells(cube_dir) -> list[dict]:
    """Per current cube of a folder whose network has a linear head (a finite dnc2_classifier somewhere), deep neural
    collapse at the head (nc.measure.head) of its first run seed at its selected lr, on the snapshot epochs:
    {name, dataset, network, epochs, tpt, dnc2, dnc3 ({layer: values}, layers in nc.measure.head.HEAD_LAYERS)}."""
    out = []
    for path in sorted(paths.resolve(cube_dir).glob("*.nc")):
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                if cube.stale_reason(ds) or any(k not in ds for k in head.HEAD_METRICS):
                    continue
                sel = cube.selected(ds)
                keep = np.isfinite(sel["dnc2_classifier"].values)
                if not keep.any():
                    continue
                out.append({"name": path.stem, "dataset": ds.attrs["dataset"], "network": ds.attrs["network"],
                            "epochs": sel["epoch"].values[keep], "tpt": float(sel["tpt_epoch"]),
                            **{f"dnc{k}": {layer: sel[f"dnc{k}_{layer}"].values[keep] for layer in head.HEAD_LAYERS}
                               for k in (2, 3)}})
        except (OSError, ValueError, KeyError):
            continue
    return out


def ood_cells(cube_dir) -> list[dict]:
    """Per current cube of a folder whose run measured NC5 on another dataset (`ood_dataset`; the cube's global
    attribute `ood_set` names the split), NC5 of its first run seed at its selected lr at the first snapshot, the TPT
    start and the last snapshot (nc.report.analysis.tpt_change): {name, dataset, network, ood_dataset, ood_set,
    nc5, nc5_centred}."""
    from nc.report.analysis import tpt_change

    out = []
    for path in sorted(paths.resolve(cube_dir).glob("*.nc")):
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                if cube.stale_reason(ds) or "ood_set" not in ds.attrs or "nc5" not in ds:
                    continue
                ood = (yaml.safe_load(ds.attrs["parameters"]) or {}).get("ood_dataset")
                if not ood:
                    continue
                sel = cube.selected(ds)
                change = {k: tpt_change(sel, k) for k in ("nc5", "nc5_centred")}
                if change["nc5"]["last_epoch"] is None:
                    continue
                out.append({"name": path.stem, "dataset": ds.attrs["dataset"], "network": ds.attrs["network"],
                            "ood_dataset": ood, "ood_set": str(ds.attrs["ood_set"]), **change})
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
                                                     "r2", "flat_nc1", "flat_trace_ratio")},
            **_flat_fit(sel["depth_flat_nc1"].values, int(ds.sizes["class"]))}


def _flat_fit(flat_nc1, classes: int) -> dict:
    """The depth law's fit (rho, r2 per stage) on the flattened block outputs (the pooled fit is in the cube)."""
    fits = [depth.fit_depth_decay(row, classes) for row in np.atleast_2d(flat_nc1)]
    return {"flat_rho": np.array([f[1] for f in fits]), "flat_r2": np.array([f[2] for f in fits])}


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


def run_names(*runs) -> str:
    """The parameter-file names of the runs a verdict reads, for its table's run column."""
    return " vs ".join(ds.attrs.get("run_name", "?") for ds in runs if ds is not None)


def series(ds: xr.Dataset, name: str) -> xr.DataArray:
    """A variable of one run over the epochs where it was measured."""
    return ds[name].dropna("epoch")


def nc1_drop(ds) -> float:
    """NC1 at the first snapshot / NC1 at the last (NaN without two snapshots or with a zero last NC1)."""
    s = series(ds, "nc1")
    return float(s[0] / s[-1]) if s.size > 1 and float(s[-1]) > 0 else np.nan


def find_run(runs: dict, **match) -> xr.Dataset | None:
    """The follow-up run whose parameters have the given values (e.g. loss="mse"), None when not trained."""
    for ds in runs.values():
        p = ds.attrs["params"]
        if all(p.get(k) == v for k, v in match.items()):
            return ds
    return None


def transfer_run(runs: dict) -> xr.Dataset | None:
    """The follow-up run trained with held-out classes (the transfer and NC5 run), None when not trained."""
    return next((ds for ds in runs.values() if ds.attrs["params"].get("held_out_classes")), None)


def runs_by_ratio(runs: dict) -> list[tuple[float, xr.Dataset]]:
    """The baseline recipe's runs by imbalance ratio R (R = 1: the balanced baseline), sorted by R."""
    out = []
    for ds in runs.values():
        p = ds.attrs["params"]
        if all(p.get(k) == BASELINE[k] for k in ("loss", "classifier", "weight_decay", "held_out_classes")):
            out.append((1.0 if p.get("imbalance_ratio") is None else float(p["imbalance_ratio"]), ds))
    return sorted(out, key=lambda t: t[0])


def minority_by_ratio(runs: dict) -> dict[float, float]:
    """minority_collapse at the last epoch per imbalance ratio R."""
    return {r: float(series(ds, "minority_collapse")[-1]) for r, ds in runs_by_ratio(runs)
            if series(ds, "minority_collapse").size}
