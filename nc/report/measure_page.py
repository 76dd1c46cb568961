"""The book's page "Measure your own network": the demo's VGG11 retrained from its cube's parameters (the run is
deterministic: batch order and initialisation follow the run seed), its weights saved at the cube's snapshot
epochs, then measured from outside the training loop, by `nc.measure.collapse` (the Python form) and by
`python -m nc.collapse --checkpoints` (the command-line form), and compared with the cube.

The comparison is a test of the API: the retrained run's own snapshots and the API run the same registry of measures
on the same weights, data and batches in the same process, so they agree to rounding (the API takes the eval
batches the training run's snapshot takes; DeepFool is left out: the cube's images are its own sample). The
retrained run is compared with the stored cube apart: float32 training reproduces it exactly only with the same
number of CPU threads (a reduction split differently rounds differently, and the rounding grows over the epochs).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
import yaml

from nc import measure, models, train
from nc.measure import registry
from nc.runs import cell, cube
from nc.runs import params as params_mod

COMPARED = tuple(k for k in registry.MEASURES if k != "robustness") + ("eval_train_acc", "test_acc")


def run_of(cube_path) -> tuple[dict, float, int, xr.Dataset]:
    """(parameters, selected lr, first seed, that run's curves) of a cube."""
    ds = cube.open_cube(cube_path)
    params = params_mod.validate(yaml.safe_load(ds.attrs["parameters"]), str(cube_path))
    run = cube.selected(ds).load()
    seed = int(ds["seed"].values[0])
    return params, float(ds["selected_lr_by_seed"].sel(seed=seed)), seed, run


def snapshot_epochs(run: xr.Dataset) -> list[int]:
    return [int(e) for e in run["epoch"].values[np.isfinite(run["nc1"].values)]]


def retrain(cube_path, workdir, progress: bool = False) -> tuple[list[Path], dict, xr.Dataset]:
    """Retrain the cube's first seed at its selected lr on the CPU, saving the weights at each snapshot epoch as
    workdir/epoch-<e>.pt (a checkpoint of our own runs: the weights under "model"); returns the files, the
    parameters and the retrained run's curves (the cube's variables, lr and seed dropped). The training is resumed
    from its checkpoint between snapshots, which equals an uninterrupted run. This process's torch threads are set
    to the count the cube was trained on (its attribute torch_threads, where recorded), so that the retrain repeats
    the cube bitwise on the same kind of machine; the API and the command then run on that count too."""
    params, lr, seed, run = run_of(cube_path)
    if run.attrs.get("torch_threads"):
        torch.set_num_threads(int(run.attrs["torch_threads"]))
    params = {**params, "device": "cpu"}
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = cell.load_data(params, torch.device("cpu"))
    ckpt, done, files, record = workdir / "run.ckpt", 0, [], None
    for epoch in snapshot_epochs(run):
        record = train.train_one_lr(params, lr, data, checkpoint=ckpt, progress=progress, stop_after=epoch - done,
                                    seed=seed)
        done = epoch
        files.append(workdir / f"epoch-{epoch}.pt")
        shutil.copy(ckpt, files[-1])
    return files, params, cube.part(record, params).isel(lr=0, seed=0)


def model_of(params: dict, data, checkpoint) -> torch.nn.Module:
    """The run's network with the weights of `checkpoint`, read as data (nc.measure.checkpoints)."""
    from nc.measure import checkpoints

    model = models.build(params["network"], data.num_classes, data.in_channels, data.image_size, params["width"])
    return checkpoints.load_into(model, checkpoint)


def api_result(params: dict, checkpoint) -> xr.Dataset:
    """nc.measure.collapse on the run's data (its standardised train and test splits, its eval batches)."""
    data = cell.load_data(params, torch.device("cpu"))
    model = model_of(params, data, checkpoint)
    bs = params["eval_batch_size"]
    return measure.collapse(model, list(data.train.batches(bs)), list(data.test.batches(bs)), progress=False)


def command(params: dict, pattern, out) -> list[str]:
    """The `python -m nc.collapse` call that measures the checkpoints `pattern` of this run into `out`."""
    return [sys.executable, "-m", "nc.collapse", "--model", f"nc:{params['network']}", "--width", str(params["width"]),
            "--data", params["dataset"], "--n-per-class", str(params["n_per_class"]), "--test-n-per-class",
            str(params["test_n_per_class"]), "--image-size", str(params["image_size"]), "--seed", str(params["seed"]),
            "--batch-size", str(params["eval_batch_size"]), "--device", "cpu", "--checkpoints", str(pattern),
            "--out", str(out), "--no-progress"]


def run_command(argv: list[str]) -> str:
    """Run the command with this process's number of CPU threads (its float32 forward passes then round as ours);
    its printed table (raises with its error output if it fails)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def shown(argv: list[str]) -> str:
    """The command as a user types it."""
    return shlex.join(["python", *argv[1:]])


def compare(api: xr.Dataset, run: xr.Dataset, epoch: int) -> pd.DataFrame:
    """API vs the cube at one epoch: one row per measure, with |difference| and relative difference."""
    rows = {}
    for k in COMPARED:
        a, c = float(api[k].values), float(run[k].sel(epoch=epoch).values)
        rows[k] = {"API": a, "cube": c, "|difference|": abs(a - c), "relative": abs(a - c) / max(abs(c), 1e-300)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = f"measure (epoch {epoch})"
    return out


def series_difference(series: xr.Dataset, run: xr.Dataset) -> pd.Series:
    """Per measure, the largest relative difference between the command's series and the cube over the epochs."""
    epochs = series["epoch"].values
    out = {}
    for k in COMPARED:
        a, c = series[k].values, run[k].sel(epoch=epochs).values
        out[k] = float(np.nanmax(np.abs(a - c) / np.maximum(np.abs(c), 1e-300)))
    return pd.Series(out, name="max relative difference over the epochs")
