"""Orchestration of one parameter file: where its cube and parts live, whether they are current, and running
its learning rates (one part file per lr, resumed from its checkpoint) into a validated cube.

`run_part` trains one lr into `<cube_dir>/parts/<cell>/lr-<lr>.nc`; `run` does every lr of a file one after
another and merges the parts into `<cube_dir>/<dataset>-<network>.nc` (nc.cube.merge, a pure function of the
parts). A part or cube made from the same parameters (nc.params.digest) is not recomputed.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from nc import cube, data, train
from nc import params as params_mod


def load_data(params: dict, device=None):
    """The dataset of `params` on its device (nc.data.load with the file's data keys)."""
    return data.load(params["dataset"], n_per_class=params["n_per_class"],
                         test_n_per_class=params["test_n_per_class"], image_size=params["image_size"],
                         device=device or train.pick_device(params["device"]), seed=params["seed"],
                         root=params["data_root"], npz_dir=params["npz_dir"], npz_file=params["npz_file"],
                         source=params["data_source"])


def data_info(data, device) -> dict:
    """What the cube records about the data and the hardware."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return {"data_source": data.source, "n_train": len(data.x_train), "n_test": len(data.x_test),
            "num_classes": data.num_classes, "image_shape": str(tuple(data.x_train.shape[1:])), "device": name}


def paths(params: dict, cube_dir) -> tuple[Path, Path]:
    """cubes/<profile>/<dataset>-<network>.nc and the folder of its per-lr parts and checkpoints."""
    cube_dir = Path(cube_dir)
    name = f"{params['dataset']}-{params['network']}"
    return cube_dir / f"{name}.nc", cube_dir / "parts" / name


def is_current(path: Path, params: dict) -> bool:
    """A finished cube made from these same parameters (by hash): nothing to re-train."""
    if not Path(path).is_file():
        return False
    try:
        ds = cube.open_cube(path)
    except (OSError, ValueError):
        return False
    return ds.attrs.get("parameter_hash") == params_mod.digest(params) and bool(ds.attrs.get("complete"))


def part_path(parts_dir: Path, lr: float) -> Path:
    return Path(parts_dir) / f"lr-{lr:.6g}.nc"


def part_finished(params: dict, lr: float, parts_dir) -> bool:
    """The part of `lr` exists, comes from these parameters (hash) and is no longer running."""
    path = part_path(parts_dir, lr)
    if not path.is_file():
        return False
    try:
        part = cube.open_cube(path)
    except (OSError, ValueError):
        return False
    return part.attrs.get("parameter_hash") == params_mod.digest(params) and part["status"].values[0] != "running"


def run_part(params: dict, lr: float, parts_dir, data=None, progress: bool = True,
             stop_after: int | None = None) -> Path:
    """Train and measure one lr into its own part file (resuming from its checkpoint); skips a finished part."""
    out = part_path(parts_dir, lr)
    if part_finished(params, lr, parts_dir):
        return out
    device = train.pick_device(params["device"]) if data is None else data.x_train.device
    data = data if data is not None else load_data(params, device)
    ckpt = Path(parts_dir) / f"lr-{lr:.6g}.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    stale = ckpt.with_suffix(".hash")
    if ckpt.is_file() and (not stale.is_file() or stale.read_text() != params_mod.digest(params)):
        ckpt.unlink()  # a checkpoint of other parameters is not resumed
    stale.write_text(params_mod.digest(params))
    record = train.train_one_lr(params, lr, data, checkpoint=ckpt, progress=progress, stop_after=stop_after)
    cube.write(cube.part(record, params, data_info(data, device)), out)
    return out


def run(params: dict, cube_dir, progress: bool = True, force: bool = False) -> Path:
    """Every lr of a parameter file, one after another, merged into its cube; returns the cube's path.

    A cube that is complete and made from the same parameters is returned as it is, unless `force`."""
    path, parts_dir = paths(params, cube_dir)
    if not force and is_current(path, params):
        return path
    device = train.pick_device(params["device"])
    data = load_data(params, device)
    parts = [run_part(params, lr, parts_dir, data, progress) for lr in params["lrs"]]
    ds = cube.merge([cube.open_cube(p) for p in parts])
    cube.write(cube.validate(ds), path)
    return path
