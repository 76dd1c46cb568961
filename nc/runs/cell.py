"""Orchestration of one parameter file: where its cube and parts live, whether they are current, and running
its learning rates (one part file per lr, resumed from its checkpoint) into a validated cube.

`run_part` trains one (lr, run seed) into `<cube_dir>/parts/<cell>/lr-<lr>-seed<s>.nc`; `run` does every lr and
seed of a file one after another, and `merge_and_write` merges the parts into `<cube_dir>/<dataset>-<network>.nc`
(nc.runs.cube.merge, a pure function of the parts) and then deletes the finished parts' checkpoints unless asked to keep
them. A cube made from the same parameters (nc.runs.params.digest) by the same cube format
(nc.runs.cube.FORMAT_VERSION), or
a part made from the same run parameters (nc.runs.params.run_digest: the same but for the list of seeds), is not
recomputed; anything else is, from its checkpoint when that belongs to the same run parameters and format.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from nc import data as data_mod
from nc import train
from nc.runs import cube
from nc.runs import params as params_mod
from nc.train import ddp
from nc.train import progress as progress_mod


def run_key(params: dict) -> str:
    """What a checkpoint must carry to be resumed: the cube format and the run digest (nc.runs.params.run_digest)."""
    return f"format {cube.FORMAT_VERSION}, parameters {params_mod.run_digest(params)}"


def load_data(params: dict, device=None):
    """The dataset of `params` on its device (nc.data.load with the file's data keys: params.data_arguments); with
    `held_out_classes`, the other classes to train on and the held-out ones beside them (nc.data.hold_out); with
    `ood_dataset`, that dataset loaded with the same data keys (params.ood_data_arguments) at the run's image size
    and attached as the OOD set in the run's input units (nc.data.with_ood). A missing OOD dataset is
    DatasetUnavailable naming the parameter file, the key and the file it looked for: the file asked for it."""
    device = device or train.pick_device(params["device"])
    dataset = data_mod.load(**params_mod.data_arguments(params), device=device)
    where = params.get("file", params.get("name", "<parameters>"))
    try:
        if params.get("held_out_classes"):
            dataset = data_mod.hold_out(dataset, params["held_out_classes"])
        ood = params_mod.ood_data_arguments(params)
        if ood is not None:
            try:
                other = data_mod.load(**ood | {"image_size": dataset.image_size}, device=device)
            except data_mod.DatasetUnavailable as err:
                raise data_mod.DatasetUnavailable(f"{where}: key 'ood_dataset': {err}") from None
            dataset = data_mod.with_ood(dataset, other)
    except data_mod.DataError as err:
        raise params_mod.ParameterError(f"{where}: {err}") from None
    return dataset


def check_feature_dim(params: dict, num_classes: int, in_channels: int, image_size: int) -> int:
    """The network's feature dimension p (built on the meta device: no memory); ParameterError naming the file and
    the keys when p < C - 1, where Sigma_B could not have rank C - 1 and NC1 would be undefined."""
    with torch.device("meta"):
        p = train.build_model(params, num_classes, in_channels, image_size, torch.device("meta")).feature_dim
    if p < num_classes - 1:
        raise params_mod.ParameterError(
            f"{params.get('file', params.get('name', '<parameters>'))}: keys 'network' / 'width': "
            f"{params['network']} at width {params['width']:g} has p = {p} features, fewer than C - 1 = "
            f"{num_classes - 1} for {params['dataset']} ({num_classes} classes); raise 'width'")
    return p


def data_info(dataset, device) -> dict:
    """What the cube records about the data and the hardware."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    if ddp.current().distributed:  # one DDP process per device (nc.train.ddp)
        name = f"{ddp.current().world_size} x {name} (DDP)"
    held = getattr(dataset, "held_out", None)  # a transfer run's held-out classes (nc.data.hold_out)
    return {"data_source": dataset.source, "n_train": len(dataset.train), "n_test": len(dataset.test),
            "num_classes": dataset.num_classes, "device": name,
            "image_shape": str((dataset.in_channels, dataset.image_size, dataset.image_size)),
            **({"n_held_out_train": len(held.train), "n_held_out_test": len(held.test)} if held is not None else {}),
            **ood_info(dataset)}


def ood_info(dataset) -> dict:
    """The cube's global attributes on the run's OOD set (NC5's): `ood_set` says which it is, e.g. "held-out classes
    [5, 6, 7, 8, 9]" or "fashionmnist test split, 100 per class"; with a dataset also `ood_source` and `n_ood_test`.
    Nothing for a run without one."""
    ood = getattr(dataset, "ood", None)
    if ood is not None:
        counts = sorted(set(torch.bincount(ood.test.labels, minlength=ood.num_classes).tolist()))
        per = f"{counts[0]} per class" if len(counts) == 1 else f"{min(counts)}-{max(counts)} per class"
        return {"ood_set": f"{ood.name.removesuffix(' (OOD)')} test split, {per}", "ood_source": ood.source,
                "n_ood_test": len(ood.test)}
    if getattr(dataset, "held_out", None) is not None:
        return {"ood_set": f"held-out classes {list(dataset.held_out_classes)}"}
    return {}


def paths(params: dict, cube_dir) -> tuple[Path, Path]:
    """cubes/<profile>/<cell>.nc (the cell's name: nc.runs.params.cell_name) and the folder of its per-lr parts and
    checkpoints."""
    cube_dir = Path(cube_dir)
    name = params_mod.cell_name(params)
    return cube_dir / f"{name}.nc", cube_dir / "parts" / name


def _made_by(attrs: dict | None, digest: str) -> bool:
    return attrs is not None and attrs.get("parameter_hash") == digest and \
        int(attrs.get("format_version", 1)) == cube.FORMAT_VERSION


def is_current(path: Path, params: dict) -> bool:
    """A finished cube made from these same parameters (by hash) and this cube format: nothing to re-train."""
    attrs = cube.read_attrs(Path(path)) if Path(path).is_file() else None
    return _made_by(attrs, params_mod.digest(params)) and bool(attrs.get("complete"))


def part_path(parts_dir: Path, lr: float, seed: int = 0) -> Path:
    """The part file of one (lr, run seed)."""
    return Path(parts_dir) / f"lr-{lr:.6g}-seed{seed}.nc"


def checkpoint_path(parts_dir: Path, lr: float, seed: int = 0) -> Path:
    return Path(parts_dir) / f"lr-{lr:.6g}-seed{seed}.ckpt"


def part_finished(params: dict, lr: float, parts_dir, seed: int | None = None) -> bool:
    """The part of (lr, run seed; default the first) exists, comes from these run parameters and this format, and
    is no longer running."""
    path = part_path(parts_dir, lr, params_mod.run_seeds(params)[0] if seed is None else seed)
    attrs = cube.read_attrs(path) if path.is_file() else None
    return _made_by(attrs, params_mod.run_digest(params)) and np.ravel(attrs["_status"])[:1].tolist() != ["running"]


def run_part(params: dict, lr: float, parts_dir, dataset=None, progress: bool = True,
             stop_after: int | None = None, seed: int | None = None) -> Path:
    """Train and measure one (lr, run seed) into its own part file (resuming from its checkpoint); skips a finished
    part. `seed` defaults to the file's first run seed."""
    seed = params_mod.run_seeds(params)[0] if seed is None else seed
    out = part_path(parts_dir, lr, seed)
    if part_finished(params, lr, parts_dir, seed):
        return out
    device = train.pick_device(params["device"]) if dataset is None else dataset.train.device
    dataset = dataset if dataset is not None else load_data(params, device)
    check_feature_dim(params, dataset.num_classes, dataset.in_channels, dataset.image_size)
    ckpt = checkpoint_path(parts_dir, lr, seed)
    if ddp.is_main():  # DDP (nc.train.ddp): rank 0 vets the checkpoint, every rank then resumes from it
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        stamp = ckpt.with_suffix(".key")
        if ckpt.is_file() and (not stamp.is_file() or stamp.read_text() != run_key(params)):
            ckpt.unlink()  # a checkpoint of other parameters or of an older format is not resumed
        stamp.write_text(run_key(params))
    ddp.barrier()
    record = train.train_one_lr(params, lr, dataset, checkpoint=ckpt, progress=progress, stop_after=stop_after,
                                seed=seed, progress_file=progress_mod.path_for(out))
    if ddp.is_main():  # DDP: every rank holds the same record; rank 0 writes the part
        cube.write(cube.part(record, params, data_info(dataset, device)), out)
    ddp.barrier()  # no rank goes on (part_finished, the next lr, the merge) before the part is there
    return out


def merge_and_write(params: dict, cube_path: Path, parts_dir: Path, keep_checkpoints: bool = False) -> Path:
    """Merge the finished parts of every (lr, run seed) into the validated cube (atomically); then, unless
    keep_checkpoints, delete each part's checkpoint (final weights and optimizer state), which nothing reads any
    more. The parts' progress files (a running job's status) go in any case."""
    jobs = params_mod.jobs(params)
    ds = cube.merge([cube.open_cube(part_path(parts_dir, lr, seed)) for lr, seed in jobs])
    ds.attrs.update(parameters=params_mod.to_yaml(params), parameter_hash=params_mod.digest(params))  # with seeds
    cube.write(cube.validate(ds), cube_path)
    for lr, seed in jobs:
        progress_mod.path_for(part_path(parts_dir, lr, seed)).unlink(missing_ok=True)
        if not keep_checkpoints:
            ckpt = checkpoint_path(parts_dir, lr, seed)
            for f in (*train.checkpoint_files(ckpt), ckpt.with_suffix(".key")):  # with its geometry files
                f.unlink(missing_ok=True)
    return cube_path


def run(params: dict, cube_dir, progress: bool = True, force: bool = False, keep_checkpoints: bool = False) -> Path:
    """Every lr and run seed of a parameter file, one after another, merged into its cube; returns its path.

    A cube that is complete and made from the same parameters is returned as it is, unless `force`."""
    path, parts_dir = paths(params, cube_dir)
    if not force and is_current(path, params):
        return path
    device = train.pick_device(params["device"])
    dataset = load_data(params, device)
    for lr, seed in params_mod.jobs(params):
        run_part(params, lr, parts_dir, dataset, progress, seed=seed)
    if ddp.is_main():  # DDP: rank 0 writes the cube
        merge_and_write(params, path, parts_dir, keep_checkpoints)
    ddp.barrier()
    return path

