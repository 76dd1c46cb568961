"""A profile's cubes as one grid for the figure pages: each run seed's curves at its selected lr, per (dataset,
network family).

`open_profile(cube_dir, variables)` reads, from every current cube of a folder, only the per-epoch and snapshot
variables a page asks for (the geometry stays on disk), each run seed at the lr selected for it. Dims (dataset,
network, seed, epoch): `network` is the family (the paper's rows, nc.models.FAMILIES), `network_name` the exact
net; `seed` the union of the cells' run seeds (NaN where a cell lacks one; `seed_runs` gives those a cell has);
`epoch` is the union of the cells' epochs (NaN past a cell's end). Cells that did not run are absent from the
coordinates. Two cubes in one grid cell (two ResNets on one dataset) are an error naming both files. Cubes of an
older format are left out and listed in `attrs["stale"]` with the reason and the command that rebuilds them, never
half-read; a folder with no current cube gives an empty grid, which every page draws as "no run" (and
`no_cube_text` says where it looked and what fills it). A relative folder is read against the repository root
(nc.paths.resolve), whatever the working directory: JupyterLab starts a notebook's kernel in the notebook's folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from nc import data, models, paths
from nc.data import column_of
from nc.runs import cube

PER_SEED = ("tpt_epoch", "status", "wall_time", "selected_lr")  # besides the curves, dims (seed,)
CELL_SCALARS = ("wall_time_total", "network_name", "n_lrs")


def _read_cell(path: Path, variables) -> tuple[xr.Dataset | None, str | None]:
    """(each seed's variables at its selected lr, None) or (None, why the cube is stale or unreadable)."""
    variables = list(dict.fromkeys([*variables, "train_loss"]))  # train_loss tells a cell that ran
    try:
        with cube.opened(path) as ds:
            reason = cube.stale_reason(ds)
            if reason is None:
                missing = [v for v in variables if v not in ds]
                reason = f"lacks the variables {missing}" if missing else None
            if reason is not None:
                return None, reason
            chosen = ds["selected_lr_by_seed"].values
            cell = cube.seeds_at_selected_lr(ds, [*variables, "tpt_epoch", "wall_time", "status"]).load()
            cell["status"] = cell["status"].astype(str)
            cell.attrs = {"dataset": ds.attrs["dataset"], "network": ds.attrs["network"], "path": str(path)}
            cell["selected_lr"] = xr.DataArray(chosen, dims="seed")
            cell["wall_time_total"] = xr.DataArray(float(ds.attrs.get("wall_time_total", np.nan)))
            cell["network_name"] = xr.DataArray(ds.attrs["network"])
            cell["n_lrs"] = xr.DataArray(ds.sizes["lr"])
            cell["tpt_threshold"] = xr.DataArray(float(ds.attrs.get("tpt_threshold", np.nan)))
            return cell, None
    except cube.CubeError as err:
        return None, str(err).removeprefix(f"{path}: ")
    except cube.READ_ERRORS as err:  # a cube that opens but lacks what the format promises
        return None, f"cannot be read ({type(err).__name__}: {err})"


def empty_profile(variables) -> xr.Dataset:
    """A grid with no cell, for a folder without current cubes (pages then say 'no run' everywhere)."""
    data = {v: (("dataset", "network", "seed", "epoch"), np.zeros((0, 0, 0, 0))) for v in {*variables, "train_loss"}}
    data.update({"tpt_epoch": (("dataset", "network", "seed"), np.zeros((0, 0, 0))),
                 "status": (("dataset", "network", "seed"), np.zeros((0, 0, 0), dtype=object))})
    return xr.Dataset(data, coords={"dataset": [], "network": [], "seed": np.zeros(0, dtype=int),
                                    "epoch": np.zeros(0, dtype=int)})


def open_profile(directory, variables=cube.EPOCH_VARS + cube.SNAPSHOT_VARS) -> xr.Dataset:
    """Every current cube of a profile's folder as one grid Dataset (see the module docstring); attrs["directory"]
    is the absolute folder read."""
    directory = paths.resolve(directory)
    cells, where, stale = {}, {}, []
    for path in sorted(directory.glob("*.nc")):
        cell, reason = _read_cell(path, variables)
        if cell is None:
            stale.append({"file": str(path), "reason": reason, "command": cube.rebuild_command(path)})
            continue
        key = (cell.attrs["dataset"], models.family(cell.attrs["network"]))
        if key in cells:
            raise cube.CubeError(f"{where[key]} and {path} are both the {key[1]} cell of {key[0]}: a grid has one "
                                 "network per family and dataset; move one of them to another profile folder")
        cells[key], where[key] = cell, path
    if not cells:
        out = empty_profile(variables)
    else:
        order = list(data.names())
        datasets = sorted({d for d, _ in cells}, key=order.index)
        nets = [f for f in models.FAMILIES if any(n == f for _, n in cells)]
        rows = []
        for d in datasets:
            row = [cells.get((d, n)) for n in nets]
            template = next(c for c in row if c is not None)
            row = [c if c is not None else xr.full_like(template, np.nan).assign(
                status=xr.full_like(template["status"], "missing"), network_name=xr.DataArray("")) for c in row]
            rows.append(xr.concat(row, dim="network", join="outer", coords="minimal", compat="override"))
        out = xr.concat(rows, dim="dataset", join="outer", coords="minimal", compat="override")
        out = out.assign_coords(dataset=datasets, network=nets)
    out.attrs = {"stale": json.dumps(stale), "directory": str(directory)}
    return out


def stale_cubes(profile: xr.Dataset) -> list[dict]:
    """The cubes open_profile left out: [{file, reason, command}]."""
    return json.loads(profile.attrs.get("stale", "[]"))


def cell(profile: xr.Dataset, column: str, row: str) -> xr.Dataset | None:
    """One grid cell (a paper column, a family): each seed's curves at its selected lr (dims seed, epoch), or None
    when the profile has no run there."""
    for d in profile["dataset"].values:
        if column_of(str(d)) == column and row in profile["network"].values:
            c = profile.sel(dataset=d, network=row)
            if str(c["network_name"].values) != "" and np.isfinite(c["train_loss"].values).any():
                return c
    return None


def seed_runs(c: xr.Dataset) -> list[tuple[int, xr.Dataset]]:
    """(seed, that seed's run: curves over epoch, scalars) for every run seed the cell has, in seed order. A seed
    none of whose lrs completed (it has no selected lr) is left out, unless no seed of the cell has one: then
    every seed is kept, each at its first lr, as a one-seed cell is."""
    ran = np.isfinite(c["train_loss"].transpose("seed", "epoch").values).any(axis=-1)
    chosen = ran & np.isfinite(c["selected_lr"].values)
    keep = chosen if chosen.any() else ran
    return [(int(s), c.sel(seed=s)) for s, k in zip(c["seed"].values, keep) if k]


def cells(profile: xr.Dataset) -> list[tuple[str, str, xr.Dataset]]:
    """(column, row, cell) for every grid cell with a run, in the paper's order (columns, then rows; a registered
    dataset of its own column after the paper's)."""
    out = []
    for col in data.columns():
        for row in models.FAMILIES:
            c = cell(profile, col, row)
            if c is not None:
                out.append((col, row, c))
    return out


def snapshot_series(c: xr.Dataset, name: str) -> xr.DataArray:
    """A snapshot variable without the NaNs between snapshot epochs."""
    return c[name].dropna("epoch")


def missing_cells(directory) -> list[dict]:
    """The `.missing.json` markers of a folder: cells whose data was not available."""
    return [json.loads(m.read_text()) for m in sorted(paths.resolve(directory).glob("*.missing.json"))]


def fill_command(profile: str, directory) -> str:
    """The command that writes profile `profile`'s cubes into `directory`: `nox -s reproduce` for its own folder
    cubes/<profile>/, else nc.sweep with --cube-dir (both run in the repository root)."""
    directory = paths.resolve(directory)
    if directory == paths.cube_dir(profile):
        return f"nox -s reproduce -- {profile}"
    return f"python -m nc.sweep parameters/{profile} --cube-dir {directory}"


def no_cube_text(profile: str, directory) -> str:
    """What a page says when `directory` holds no current cube: the absolute folder and the command that fills it."""
    return (f"Profile **{profile}** has no current cube in `{paths.resolve(directory)}`: "
            f"`{fill_command(profile, directory)}` (run in `{paths.ROOT}`) fills this page.")
