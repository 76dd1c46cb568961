"""The NetCDF cube: one file per dataset x network x profile; its schema, merge, validation and atomic writes.

Dimensions `lr` (the sweep), `seed` (the run seeds: initialisation and batch order, on the same data) and `epoch`
(1..E). Per-epoch variables (EPOCH_VARS) are dense; snapshot variables (SNAPSHOT_VARS) are NaN off the snapshot
epochs. The lr is selected per seed (`selected_lr_by_seed`); the attribute `selected_lr` is the first seed's. The
geometry of the first seed at its selected lr (class means, classifier, the within-class covariance seen through
the class-mean span, Fig. 1 samples) lives on the `geometry` dimension. Every variable carries `long_name`,
`units` and `definition`. Parts (one lr and seed each) merge into a cube by `merge`, a pure function of the parts;
files are written to a temporary name and renamed, so a reader never sees a half-written cube, and a failed write
keeps the old file.

Every cube and part records FORMAT_VERSION. It is bumped whenever the meaning or the set of stored variables
changes (a new metric, a changed convention or default); `stale_reason` reports an older file with the command
that rebuilds it, and the figure pages skip it rather than half-read it.
"""
from __future__ import annotations

import contextlib
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from nc import files
from nc.measure import depth
from nc.runs import params as params_mod
from nc.train import losses
from nc.train import variables as variables_mod
from nc.train.variables import (  # noqa: F401  (the schema of what a run records)
    DEPTH_STAGES,
    DEPTH_VARIABLES,
    EPOCH_VARIABLES,
    EPOCH_VARS,
    GEOMETRY_FLOAT64_MAX_BYTES,
    LE,
    LS,
    LSL,
    SNAPSHOT_VARIABLES,
    SNAPSHOT_VARS,
    Var,
)

# 1: the first cubes. 2: per-channel standardisation, eval-mode TPT (eval_train_acc dense), exactly N snapshots,
# MultiStepLR milestones floor(f E), precision recorded, class-weighted mu_G, format_version itself; Part II:
# CDNV, test-set NC1, trace ratio, ETF errors, alignment, collapse by depth (layer dim). 3: the `seed` dimension
# (run seeds; the lr selected per seed). 4: test NC1 about the test means, the trace quotient Tr S_W / Tr S_B and
# the variability collapse index (Part II's new measures). 5: transfer to held-out classes (transfer_cdnv,
# transfer_ncc_acc) and NC5 (nc5, nc5_centred), NaN in runs without held_out_classes; deep neural collapse at the
# linear head (dnc2_fc6 .. dnc3_classifier), NaN for networks without one.
FORMAT_VERSION = 5
SELECTION_RULE = ("per run seed, the highest test accuracy at the last epoch among complete runs (paper Section 2G, "
                  "applied to each seed)")
STATUSES = ("complete", "diverged", "running")
GEOMETRY = ("class_means", "global_mean", "classifier_weight", "classifier_bias", "within_cov_means",
            "fig1_features")


VARIABLES = {
    **EPOCH_VARIABLES, **SNAPSHOT_VARIABLES, **DEPTH_VARIABLES,
    "tpt_epoch": Var(LS, "start of the terminal phase of training", "epoch",
                     "first epoch whose eval_train_acc >= tpt_threshold (99.9%; 99.6% for ImageNet); NaN if never"),
    "status": Var(LS, "run status", "", "complete, diverged (a non-finite training loss) or running"),
    "wall_time": Var(LS, "wall-clock time of training and measurement", "s", "sum over epochs"),
    "selected_lr_by_seed": Var(("seed",), "learning rate selected for each run seed", "1",
                               "the selection rule (lr_selection_rule) applied to each seed's runs; NaN when no "
                               "run of the seed completed"),
    "epochs_done": Var(LS, "epochs finished", "epoch", "last epoch whose results are recorded"),
    "snapshot_epoch": Var(("snapshot",), "epoch of the snapshot", "epoch", "epochs at which metrics are measured"),
    "geometry_epoch": Var(("geometry",), "epoch of the stored geometry", "epoch",
                          "the snapshot epochs whose geometry is kept: all of them unless that would exceed "
                          "nc.train.GEOMETRY_BUDGET_BYTES (ImageNet), then the first, the last, Fig. 1's and an even "
                          "spread of the others; float32 on disk when the float64 geometry would exceed 64 MiB"),
    "class_means": Var(("geometry", "class", "feature"), "train class means mu_c", "feature units",
                       "Ave over train images of class c of h, eval mode, the first seed at its selected lr"),
    "global_mean": Var(("geometry", "feature"), "train global mean mu_G", "feature units",
                       "Ave_c mu_c, the mean of the class means (= Ave_i h_i on balanced classes), selected lr"),
    "classifier_weight": Var(("geometry", "class", "feature"), "last-layer classifier weights W", "1",
                             "rows w_c of the final linear layer, selected lr"),
    "classifier_bias": Var(("geometry", "class"), "last-layer classifier bias b", "1", "selected lr"),
    "within_cov_means": Var(("geometry", "class", "class_b"), "within-class covariance on the class-mean span",
                            "feature units to the 4th",
                            "M^T Sigma_W M with M = [mu_c - mu_G]; with class_means gives NC1 under any convention "
                            "(nc.measure.nc1_from_within_cov)"),
    "fig1_features": Var(("geometry", "fig1_class", "fig1_sample", "feature"), "sampled train features for Fig. 1",
                         "feature units", "h of fig1_indices train images, eval mode, selected lr"),
    "fig1_indices": Var(("fig1_class", "fig1_sample"), "train indices of the Fig. 1 samples", "",
                        "drawn once without replacement, seeded"),
    "robustness_indices": Var(("robust_image",), "test indices used for DeepFool", "",
                              "drawn once without replacement, seeded; the same at every snapshot"),
}
REQUIRED_ATTRS = ("dataset", "network", "profile", "parameters", "parameter_hash", "selected_lr", "lr_selection_rule",
                  "git_commit", "versions", "device", "format_version", "precision", "standardize")


class CubeError(ValueError):
    """A cube does not follow the schema or cannot be read; the message names the file and what to do."""


def rebuild_command(path) -> str:
    """The command that rebuilds a cube of cubes/<profile>/ (its folder name is the profile)."""
    return f"nox -s reproduce -- {Path(path).parent.name}"


def _attrs(name):
    v = VARIABLES.get(name) or variables_mod.variable(name)  # a loss registered after import: its own variables
    return {"long_name": v.long_name, "units": v.units, "definition": v.definition}


def _var(name, data):
    return xr.Variable((VARIABLES.get(name) or variables_mod.variable(name)).dims, data, _attrs(name))


def _provenance() -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    # torch_threads: the CPU threads the run trained on (float32 training repeats itself bitwise only on the same
    # count: nc.report.measure_page retrains on it)
    return {"git_commit": commit or "unknown", "versions": f"python {platform.python_version()}, torch "
            f"{torch.__version__}, xarray {xr.__version__}, numpy {np.__version__}", "host": platform.node(),
            "torch_threads": torch.get_num_threads()}


def part(record: dict, params: dict, data_info: dict | None = None) -> xr.Dataset:
    """One (lr, run seed)'s results (and its geometry) as a Dataset with `lr` and `seed` dimensions of length 1."""
    E = params["epochs"]
    g = record["geometry"]
    one = lambda v: np.asarray(v)[None, None]
    variables = {k: _var(k, one(v)) for k, v in {**record["epoch"], **record["snapshot"]}.items()}
    variables["train_loss"].attrs["units"] = losses.get(params["loss"]).units  # nat, or 1 for a squared error
    variables.update({
        "tpt_epoch": _var("tpt_epoch", one(record.get("tpt_epoch", np.nan))),
        "status": _var("status", one(np.array(record["status"], dtype=object))),
        "wall_time": _var("wall_time", one(record["wall_time"])),
        "epochs_done": _var("epochs_done", one(record["epochs_done"])),
        "snapshot_epoch": _var("snapshot_epoch", np.asarray(record["snapshot_epochs"])),
        "geometry_epoch": _var("geometry_epoch", np.asarray(record["geometry_epochs"])),
        **{k: _var(k, g[k]) for k in GEOMETRY},
        "fig1_indices": _var("fig1_indices", np.asarray(record["fig1_indices"], dtype=np.int64).reshape(
            g["fig1_features"].shape[1:3])),
        "robustness_indices": _var("robustness_indices", np.asarray(record["robustness_indices"], dtype=np.int64)),
    })
    d = record["depth"]
    variables.update({f"depth_{k}": _var(f"depth_{k}", one(d[k])) for k in depth.LAYER_KEYS})
    variables.update({"depth_rho": _var("depth_rho", one(d["rho"])), "depth_r2": _var("depth_r2", one(d["r2"])),
                      "depth_epoch": _var("depth_epoch", one(d["epoch"]))})
    C = g["class_means"].shape[1]
    coords = {"lr": [record["lr"]], "seed": [int(record["seed"])], "epoch": np.arange(1, E + 1),
              "class": np.arange(C), "class_b": np.arange(C),
              "fig1_class": np.asarray(record["fig1_classes"], dtype=np.int64), "depth_stage": list(DEPTH_STAGES),
              "layer": np.arange(len(d["layer_names"])),
              "layer_name": ("layer", np.asarray(d["layer_names"], dtype=str),
                             {"definition": depth.COORD_DEFINITIONS["layer_name"]}),
              "layer_width": ("layer", np.asarray(d["layer_widths"], dtype=np.int64),
                              {"units": "features", "definition": depth.COORD_DEFINITIONS["layer_width"]})}
    attrs = {"dataset": params["dataset"], "network": params["network"], "profile": params.get("profile", ""),
             "parameters": params_mod.to_yaml(params), "parameter_hash": params_mod.run_digest(params),
             "tpt_threshold": params["tpt_threshold"], "format_version": FORMAT_VERSION,
             "precision": params["precision"], "standardize": params["standardize"],
             **(data_info or {}), **_provenance()}
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def select_lrs(ds: xr.Dataset) -> np.ndarray:
    """The selected lr of each run seed (in the order of ds.seed): its best test accuracy at the last epoch among
    its complete runs; NaN for a seed with no complete run."""
    complete = ds["status"].transpose("lr", "seed").values == "complete"
    last = np.where(complete, ds["test_acc"].isel(epoch=-1).transpose("lr", "seed").values, -np.inf)
    best = ds["lr"].values[np.argmax(last, axis=0)].astype(np.float64)
    return np.where(complete.any(axis=0), best, np.nan)


def selected(ds: xr.Dataset, seed: int | None = None) -> xr.Dataset:
    """One run seed's curves at its selected lr (default: the first seed, whose geometry the cube keeps); the lr
    and seed dimensions dropped. The first lr when the seed has no complete run."""
    seed = int(ds["seed"].values[0]) if seed is None else seed
    lr = float(ds["selected_lr_by_seed"].sel(seed=seed))
    run = ds.sel(seed=seed)
    return run.sel(lr=lr) if np.isfinite(lr) else run.isel(lr=0)


def merge(parts: list[xr.Dataset]) -> xr.Dataset:
    """The cube from its parts, one per (lr, run seed), in any order: a pure function of the parts. The lr is
    selected per seed; the geometry is the first seed's at its selected lr."""
    if not parts:
        raise CubeError("no parts to merge")
    key = lambda p: (float(p["lr"].values[0]), int(p["seed"].values[0]))
    by_key = {}
    for p in parts:
        if key(p) in by_key:
            raise CubeError(f"two parts for lr {key(p)[0]:g}, seed {key(p)[1]}")
        by_key[key(p)] = p
    lrs, seeds = sorted({k[0] for k in by_key}), sorted({k[1] for k in by_key})
    absent = [f"lr {lr:g} seed {s}" for lr in lrs for s in seeds if (lr, s) not in by_key]
    if absent:
        raise CubeError(f"the parts do not cover every lr x seed: missing {', '.join(absent)}")
    hashes = {p.attrs["parameter_hash"] for p in parts}
    if len(hashes) != 1:
        raise CubeError(f"parts come from different parameters (hashes {sorted(hashes)})")
    drop = [*GEOMETRY, "geometry_epoch", "fig1_indices", "robustness_indices", "fig1_class"]
    join = dict(data_vars="minimal", coords="minimal", compat="override", combine_attrs="override")
    rows = [xr.concat([by_key[(lr, s)].drop_vars(drop) for s in seeds], dim="seed", **join) for lr in lrs]
    ds = xr.concat(rows, dim="lr", **join)
    chosen = select_lrs(ds)
    ds["selected_lr_by_seed"] = _var("selected_lr_by_seed", chosen)
    source = by_key[(lrs[0] if np.isnan(chosen[0]) else float(chosen[0]), seeds[0])]
    for k in (*GEOMETRY, "geometry_epoch", "fig1_indices", "robustness_indices"):
        ds[k] = source[k]
    ds = ds.assign_coords(fig1_class=source["fig1_class"])
    ds.attrs.update({
        "title": f"Neural collapse: {ds.attrs['dataset']} x {ds.attrs['network']} ({ds.attrs['profile']})",
        "selected_lr": float(chosen[0]), "lr_selection_rule": SELECTION_RULE,
        "geometry_lr": float(source["lr"].values[0]), "geometry_seed": seeds[0],
        "wall_time_total": float(ds["wall_time"].sum()),
        "complete": int(all(s in ("complete", "diverged") for s in ds["status"].values.ravel())),
        "conventions": "CF-1.8 units; '1' = dimensionless; snapshot variables NaN off snapshot epochs",
    })
    return ds


def stale_reason(ds: xr.Dataset) -> str | None:
    """Why a cube or part cannot be read as this code's schema (an older format version), or None."""
    version = int(ds.attrs.get("format_version", 1))
    if version != FORMAT_VERSION:
        return (f"format version {version}, this code writes {FORMAT_VERSION} (the stored variables or their "
                "conventions changed)")
    return None


def validate(ds: xr.Dataset) -> xr.Dataset:
    """Check the version, dims, variables, attrs and the NaN pattern; raise CubeError listing every problem."""
    problems = []
    stale = stale_reason(ds)
    if stale:
        problems.append(stale)
    for name, var in VARIABLES.items():
        if name not in ds:
            problems.append(f"missing variable {name!r}")
            continue
        if ds[name].dims != var.dims:
            problems.append(f"{name!r} has dims {ds[name].dims}, expected {var.dims}")
        for key in ("long_name", "units", "definition"):
            if key not in ds[name].attrs:
                problems.append(f"{name!r} lacks the attribute {key!r}")
    problems += [f"missing global attribute {key!r}" for key in REQUIRED_ATTRS if key not in ds.attrs]
    if "epoch" in ds.coords and not np.array_equal(ds["epoch"].values, np.arange(1, ds.sizes["epoch"] + 1)):
        problems.append("epoch coordinate is not 1..E")
    if "seed" in ds.coords:
        seeds = ds["seed"].values
        if seeds.dtype.kind not in "iu" or (seeds < 0).any() or len(set(seeds.tolist())) != len(seeds):
            problems.append(f"seed coordinate {seeds.tolist()} is not a list of distinct non-negative integers")
    else:
        problems.append("missing the seed coordinate")
    if not problems:
        chosen = ds["selected_lr_by_seed"].values
        if not np.isin(chosen[np.isfinite(chosen)], ds["lr"].values).all():
            problems.append(f"selected_lr_by_seed {chosen.tolist()} is not among the lrs {ds['lr'].values.tolist()}")
        bad = set(ds["status"].values.ravel().tolist()) - set(STATUSES)
        if bad:
            problems.append(f"unknown status values {sorted(bad)}")
        off = ~ds["epoch"].isin(ds["snapshot_epoch"].values)
        for name in SNAPSHOT_VARS:
            if np.isfinite(ds[name].where(off).values).any():
                problems.append(f"{name!r} has values off the snapshot epochs")
    if problems:
        raise CubeError("invalid cube: " + "; ".join(problems))
    return ds


def write(ds: xr.Dataset, path) -> Path:
    """Write atomically (temporary file in the same directory, then rename); compressed NetCDF4. If writing
    fails (a full disk), the temporary file is removed and the old file, if any, is kept."""
    path = Path(path)
    encoding = {k: {"zlib": True, "complevel": 4} for k, v in ds.data_vars.items() if v.dtype.kind == "f"}
    if sum(ds[k].nbytes for k in GEOMETRY if k in ds) > GEOMETRY_FLOAT64_MAX_BYTES:
        for k in GEOMETRY:  # float32 on disk: 7 significant digits, half the size (an ImageNet cell stays < 1 GB)
            if k in encoding:
                encoding[k]["dtype"] = "float32"
    with files.atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    return path


READ_ERRORS = (OSError, ValueError, RuntimeError, KeyError)  # what netCDF4 / xarray raise for an unreadable file


@contextlib.contextmanager
def opened(path) -> Iterator[xr.Dataset]:
    """A cube or part opened lazily (nothing loaded until asked; closed on exit). An unreadable file raises
    CubeError naming it and the command that rebuilds it; a missing one FileNotFoundError. Every reader of a cube
    goes through here or `open_cube`."""
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except FileNotFoundError:
        raise
    except READ_ERRORS as err:
        raise CubeError(f"{path}: cannot be read ({type(err).__name__}: {err}); delete it and rebuild it with "
                        f"`{rebuild_command(path)}`") from err
    try:
        yield ds
    finally:
        ds.close()


def open_cube(path) -> xr.Dataset:
    """Load one cube or part fully into memory (the file is closed again, so it can be replaced); see `opened`."""
    with opened(path) as ds:
        return ds.load()


def read_attrs(path) -> dict | None:
    """A cube's or part's global attributes and its per-run `status` list, without loading its data; None when it
    is missing or cannot be read."""
    try:
        with opened(path) as ds:
            return dict(ds.attrs) | {"_status": ds["status"].values.tolist() if "status" in ds else []}
    except (FileNotFoundError, CubeError):
        return None


def seeds_at_selected_lr(ds: xr.Dataset, variables) -> xr.Dataset:
    """`variables` of every run seed at that seed's selected lr (dims seed, ...; no lr), lazily; a seed with no
    selected lr (none of its runs completed) at the first lr."""
    chosen = ds["selected_lr_by_seed"].values
    idx = [0 if np.isnan(lr) else int(np.flatnonzero(ds["lr"].values == lr)[0]) for lr in chosen]
    return ds[list(variables)].isel(lr=xr.DataArray(idx, dims="seed", coords={"seed": ds["seed"].values})) \
        .drop_vars("lr")


def missing_path(directory, params: dict) -> Path:
    """<directory>/<name>.missing.json: the cell was not run because its data is unavailable."""
    return Path(directory) / f"{params_mod.cell_name(params)}.missing.json"


def write_missing(directory, params: dict, message: str) -> Path:
    """Mark a cell whose data is not available here (atomically); the book lists it as missing."""
    return files.write_json(missing_path(directory, params), {
        "dataset": params["dataset"], "network": params["network"], "profile": params.get("profile", ""),
        "parameter_file": params.get("name", ""), "status": "missing", "message": message})
