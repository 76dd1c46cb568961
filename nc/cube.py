"""The NetCDF cube: one file per dataset x network x profile (DESIGN.md section 4).

Dimensions `lr` (the sweep) and `epoch` (1..E). Per-epoch variables are dense; snapshot variables
are NaN off the snapshot epochs. The geometry of the selected lr (class means, classifier, the
within-class covariance seen through the class-mean span, Fig. 1 samples) lives on the `snapshot`
dimension. Every variable carries `long_name`, `units` and `definition`. Parts (one lr each) merge
into a cube by `merge`, a pure function of the parts; files are written to a temporary name and
renamed, so a reader never sees a half-written cube.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import xarray as xr

from nc import measure
from nc import params as params_mod

SELECTION_RULE = "highest test accuracy at the last epoch among complete runs (paper Section 2G)"
STATUSES = ("complete", "diverged", "running")
GEOMETRY = ("class_means", "global_mean", "classifier_weight", "classifier_bias", "within_cov_means",
            "fig1_features")

# name: (dims, long_name, units, definition)
VARIABLES = {
    "train_loss": (("lr", "epoch"), "training loss", "nat",
                   "mean cross-entropy over the epoch's training batches (train mode, as trained)"),
    "train_acc": (("lr", "epoch"), "training accuracy", "1",
                  "fraction of train images classified correctly during the epoch's training pass (train mode); "
                  "marks the TPT start"),
    "test_acc": (("lr", "epoch"), "test accuracy", "1",
                 "fraction of test images classified correctly, eval mode, end of epoch (Table 1)"),
    "lr_schedule": (("lr", "epoch"), "learning rate used in the epoch", "1",
                    "initial lr divided by 1/lr_gamma at each lr_milestones fraction of the epochs (Section 2G)"),
    **{k: (("lr", "epoch"), k.replace("_", " "), "1", measure.DEFINITIONS[k] + "; NaN off snapshot epochs")
       for k in measure.METRICS},
    "robustness": (("lr", "epoch"), "DeepFool robustness", "1",
                   "Ave_i ||r(x_i)||_2 / ||x_i||_2 over fixed test images, DeepFool L2 (Fig. 8), in the network's "
                   "standardised input space; NaN off snapshot epochs"),
    "eval_train_acc": (("lr", "epoch"), "training accuracy in eval mode", "1",
                       "fraction of train images classified correctly by the snapshot's eval-mode pass"),
    "within_trace": (("lr", "epoch"), "trace of the within-class covariance", "feature units squared",
                     "Tr(Sigma_W), Sigma_W = Ave_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, train features"),
    "tpt_epoch": (("lr",), "start of the terminal phase of training", "epoch",
                  "first epoch whose train_acc >= tpt_threshold (99.9%; 99.6% for ImageNet); NaN if never"),
    "status": (("lr",), "run status", "", "complete, diverged (a non-finite training loss) or running"),
    "wall_time": (("lr",), "wall-clock time of training and measurement", "s", "sum over epochs"),
    "epochs_done": (("lr",), "epochs finished", "epoch", "last epoch whose results are recorded"),
    "snapshot_epoch": (("snapshot",), "epoch of the snapshot", "epoch", "epochs at which metrics are measured"),
    "class_means": (("snapshot", "class", "feature"), "train class means mu_c", "feature units",
                    "Ave over train images of class c of h, eval mode, selected lr"),
    "global_mean": (("snapshot", "feature"), "train global mean mu_G", "feature units",
                    "Ave over all train images of h, eval mode, selected lr"),
    "classifier_weight": (("snapshot", "class", "feature"), "last-layer classifier weights W", "1",
                          "rows w_c of the final linear layer, selected lr"),
    "classifier_bias": (("snapshot", "class"), "last-layer classifier bias b", "1", "selected lr"),
    "within_cov_means": (("snapshot", "class", "class_b"), "within-class covariance on the class-mean span",
                         "feature units to the 4th",
                         "M^T Sigma_W M with M = [mu_c - mu_G]; with class_means gives NC1 under any convention "
                         "(nc.measure.nc1_from_within_cov)"),
    "fig1_features": (("snapshot", "fig1_class", "fig1_sample", "feature"), "sampled train features for Fig. 1",
                      "feature units", "h of fig1_indices train images, eval mode, selected lr"),
    "fig1_indices": (("fig1_class", "fig1_sample"), "train indices of the Fig. 1 samples", "",
                     "drawn once without replacement, seeded"),
    "robustness_indices": (("robust_image",), "test indices used for DeepFool", "",
                           "drawn once without replacement, seeded; the same at every snapshot"),
}


class CubeError(ValueError):
    """A cube does not follow the schema; the message lists every problem."""


def _attrs(name):
    _, long_name, units, definition = VARIABLES[name]
    return {"long_name": long_name, "units": units, "definition": definition}


def _var(name, data):
    return xr.Variable(VARIABLES[name][0], data, _attrs(name))


def _provenance() -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"git_commit": commit or "unknown", "versions": f"python {platform.python_version()}, torch "
            f"{torch.__version__}, xarray {xr.__version__}, numpy {np.__version__}", "host": platform.node()}


def part(record: dict, params: dict, data_info: dict | None = None) -> xr.Dataset:
    """One learning rate's results (and its geometry) as a Dataset with an `lr` dimension of length 1."""
    E = params["epochs"]
    g = record["geometry"]
    variables = {k: _var(k, v[None, :]) for k, v in {**record["epoch"], **record["snapshot"]}.items()}
    variables.update({
        "tpt_epoch": _var("tpt_epoch", [record.get("tpt_epoch", np.nan)]),
        "status": _var("status", np.array([record["status"]], dtype=object)),
        "wall_time": _var("wall_time", [record["wall_time"]]),
        "epochs_done": _var("epochs_done", [record["epochs_done"]]),
        "snapshot_epoch": _var("snapshot_epoch", np.asarray(record["snapshot_epochs"])),
        **{k: _var(k, g[k]) for k in GEOMETRY},
        "fig1_indices": _var("fig1_indices", np.asarray(record["fig1_indices"], dtype=np.int64).reshape(
            g["fig1_features"].shape[1:3])),
        "robustness_indices": _var("robustness_indices", np.asarray(record["robustness_indices"], dtype=np.int64)),
    })
    coords = {"lr": [record["lr"]], "epoch": np.arange(1, E + 1), "class": np.arange(g["class_means"].shape[1]),
              "class_b": np.arange(g["class_means"].shape[1]), "fig1_class": np.asarray(record["fig1_classes"],
                                                                                         dtype=np.int64)}
    attrs = {"dataset": params["dataset"], "network": params["network"], "profile": params.get("profile", ""),
             "parameters": params_mod.to_yaml(params), "parameter_hash": params_mod.digest(params),
             "tpt_threshold": params["tpt_threshold"], **(data_info or {}), **_provenance()}
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def select_lr(ds: xr.Dataset) -> float:
    """The selected lr: best test accuracy at the last epoch among complete runs; NaN if none is complete."""
    complete = ds["status"].values == "complete"
    if not complete.any():
        return float("nan")
    last = ds["test_acc"].isel(epoch=-1).values
    last = np.where(complete, last, -np.inf)
    return float(ds["lr"].values[int(np.argmax(last))])


def merge(parts: list[xr.Dataset]) -> xr.Dataset:
    """The cube from its per-lr parts (any order): a pure function of the parts."""
    if not parts:
        raise CubeError("no parts to merge")
    parts = sorted(parts, key=lambda p: float(p["lr"].values[0]))
    hashes = {p.attrs["parameter_hash"] for p in parts}
    if len(hashes) != 1:
        raise CubeError(f"parts come from different parameters (hashes {sorted(hashes)})")
    per_lr = [p.drop_vars([*GEOMETRY, "snapshot_epoch", "fig1_indices", "robustness_indices", "fig1_class"])
              for p in parts]
    ds = xr.concat(per_lr, dim="lr", data_vars="minimal", coords="minimal", compat="override",
                   combine_attrs="override")
    selected = select_lr(ds)
    source = parts[0] if np.isnan(selected) else next(p for p in parts if float(p["lr"].values[0]) == selected)
    for k in (*GEOMETRY, "snapshot_epoch", "fig1_indices", "robustness_indices"):
        ds[k] = source[k]
    ds = ds.assign_coords(fig1_class=source["fig1_class"])
    ds.attrs.update({
        "title": f"Neural collapse: {ds.attrs['dataset']} x {ds.attrs['network']} ({ds.attrs['profile']})",
        "selected_lr": selected, "lr_selection_rule": SELECTION_RULE,
        "geometry_lr": float(source["lr"].values[0]),
        "wall_time_total": float(ds["wall_time"].sum()),
        "complete": int(all(s in ("complete", "diverged") for s in ds["status"].values)),
        "conventions": "CF-1.8 units; '1' = dimensionless; snapshot variables NaN off snapshot epochs",
    })
    return ds


def validate(ds: xr.Dataset) -> xr.Dataset:
    """Check dims, variables, attrs and the NaN pattern; raise CubeError listing every problem."""
    problems = []
    for name, (dims, *_rest) in VARIABLES.items():
        if name not in ds:
            problems.append(f"missing variable {name!r}")
            continue
        if ds[name].dims != dims:
            problems.append(f"{name!r} has dims {ds[name].dims}, expected {dims}")
        for key in ("long_name", "units", "definition"):
            if key not in ds[name].attrs:
                problems.append(f"{name!r} lacks the attribute {key!r}")
    for key in ("dataset", "network", "profile", "parameters", "parameter_hash", "selected_lr",
                "lr_selection_rule", "git_commit", "versions", "device"):
        if key not in ds.attrs:
            problems.append(f"missing global attribute {key!r}")
    if "epoch" in ds.coords and not np.array_equal(ds["epoch"].values, np.arange(1, ds.sizes["epoch"] + 1)):
        problems.append("epoch coordinate is not 1..E")
    if not problems:
        bad = set(ds["status"].values.tolist()) - set(STATUSES)
        if bad:
            problems.append(f"unknown status values {sorted(bad)}")
        off = ~ds["epoch"].isin(ds["snapshot_epoch"].values)
        for name in measure.METRICS:
            if np.isfinite(ds[name].where(off).values).any():
                problems.append(f"{name!r} has values off the snapshot epochs")
    if problems:
        raise CubeError("invalid cube: " + "; ".join(problems))
    return ds


def write(ds: xr.Dataset, path) -> Path:
    """Write atomically (temporary file in the same directory, then rename); compressed NetCDF4."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    encoding = {k: {"zlib": True, "complevel": 4} for k, v in ds.data_vars.items() if v.dtype.kind == "f"}
    try:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def open_cube(path) -> xr.Dataset:
    """Load one cube fully into memory (the file is closed again, so it can be replaced)."""
    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()


def missing_path(directory, params: dict) -> Path:
    """<directory>/<dataset>-<network>.missing.json: the cell was not run because its data is unavailable."""
    return Path(directory) / f"{params['dataset']}-{params['network']}.missing.json"


def write_missing(directory, params: dict, message: str) -> Path:
    """Mark a cell whose data is not available here (atomically); the book lists it as missing."""
    import json

    path = missing_path(directory, params)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"dataset": params["dataset"], "network": params["network"],
                               "profile": params.get("profile", ""), "parameter_file": params.get("name", ""),
                               "status": "missing", "message": message}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


FAMILIES = ("vgg", "resnet", "densenet")


def family(network: str) -> str:
    """The figure row of a network: vgg, resnet or densenet."""
    return next(f for f in FAMILIES if network.startswith(f))


def open_profile(directory) -> xr.Dataset:
    """Every cube of a profile's directory as one Dataset of the selected lr's curves.

    Dims (dataset, network, epoch): `network` is the family (the paper's rows), `network_name` the exact
    net; `epoch` is the union of the cells' epochs (NaN past a cell's end). Cells that did not run are
    absent from the coordinates. Scalar attributes of the cells become variables: selected_lr,
    tpt_epoch (of the selected lr), status, wall_time_total, network_name."""
    cells = {}
    for path in sorted(Path(directory).glob("*.nc")):
        ds = open_cube(path)
        lr = ds.attrs["selected_lr"]
        lr_idx = 0 if np.isnan(lr) else int(np.flatnonzero(ds["lr"].values == lr)[0])
        cell = ds[[k for k, v in VARIABLES.items() if v[0] == ("lr", "epoch")]].isel(lr=lr_idx, drop=True)
        cell["tpt_epoch"] = ds["tpt_epoch"].isel(lr=lr_idx, drop=True)
        cell["status"] = xr.DataArray(str(ds["status"].values[lr_idx]))
        cell["selected_lr"] = xr.DataArray(lr)
        cell["wall_time_total"] = xr.DataArray(float(ds.attrs.get("wall_time_total", np.nan)))
        cell["network_name"] = xr.DataArray(ds.attrs["network"])
        cell["n_lrs"] = xr.DataArray(ds.sizes["lr"])
        cells[(ds.attrs["dataset"], family(ds.attrs["network"]))] = cell
    if not cells:
        raise FileNotFoundError(f"no cubes (*.nc) in {directory}")
    order = list(params_mod.DATASETS)
    datasets = sorted({d for d, _ in cells}, key=order.index)
    nets = [f for f in FAMILIES if any(n == f for _, n in cells)]
    rows = []
    for d in datasets:
        row = [cells.get((d, n)) for n in nets]
        template = next(c for c in row if c is not None)
        row = [c if c is not None else xr.full_like(template, np.nan).assign(
            status=xr.DataArray("missing"), network_name=xr.DataArray("")) for c in row]
        rows.append(xr.concat(row, dim="network", join="outer", coords="minimal", compat="override"))
    out = xr.concat(rows, dim="dataset", join="outer", coords="minimal", compat="override")
    return out.assign_coords(dataset=datasets, network=nets)
