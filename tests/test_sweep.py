"""nc.runs.sweep runs (parameter file, lr) jobs as separate processes and merges cubes equal to serial runs; it skips
finished parts, resumes a SIGKILLed job from its checkpoint, records every submitted job beside its part and
reports missing datasets; a stopped driver (SIGTERM, Ctrl-C) exits only after its jobs are gone, and a SIGKILLed
one takes them with it. The paper and quick parameter files carry the paper's settings (Section 2E-2G) and the
scaled grid. Nothing here waits on the wall clock for a race: waits poll a state with a generous deadline."""
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import processes_mentioning

from nc import models, runs
from nc.runs import cube, executors, jobs, params, sweep

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dataset": "demo", "width": 0.125, "n_per_class": 20, "test_n_per_class": 10, "image_size": 16, "epochs": 5,
        "lrs": [0.02, 0.05], "snapshot_epochs": [1, 3, 5], "robustness_images": 5, "fig1_samples": 4, "device": "cpu",
        "seed": 0}
DEMO_CELLS = ("demo-vgg11", "demo-vgg13")
KILLED_CELL, KILLED_LR = "demo-vgg11", 0.05
TAMPERED_WALL_TIME = 1e6  # written into the killed job's checkpoint: only a resumed run carries it on

# run_part in a process of its own that stops (sleeps for good) after its first checkpoint, so that the test
# SIGKILLs it mid-run whatever the machine's speed (the checkpoint is written by nc.train.record.save_atomic, with the
# geometry files; test_train pins that seam)
KILL_SCRIPT = """
import sys, time, torch
from nc import runs
from nc.runs import params
from nc.train import record
torch.set_num_threads(1)
save = record.save_atomic
def save_then_stop(obj, path):
    save(obj, path)
    while not record.is_geometry_file(path):
        time.sleep(60)
record.save_atomic = save_then_stop
runs.run_part(params.load(sys.argv[1]), float(sys.argv[2]), sys.argv[3], progress=False)
"""
# The driver (python -m nc.sweep's main) with nc.runs.executors.TrainPart wrapped (in __main__, so cloudpickle sends
# the wrapper by value): the jobs of the cell NC_TEST_HOLD_CELL hold (sleep) after every checkpoint until killed,
# so that they are surely running, and never finish, when the test stops the driver.
HOLD_SCRIPT = """
import os, sys, time
import submitit
from nc.runs import executors, sweep

class HeldTrainPart(submitit.helpers.Checkpointable):
    def __call__(self, params, lr, parts_dir, threads, seed=None):
        from nc.runs import executors
        from nc.train import record
        if params["name"] == os.environ.get("NC_TEST_HOLD_CELL"):
            save = record.save_atomic
            def save_then_hold(obj, path):
                save(obj, path)
                while not record.is_geometry_file(path):
                    time.sleep(0.2)
            record.save_atomic = save_then_hold
        return executors.TrainPart()(params, lr, parts_dir, threads, seed)

executors.TrainPart = HeldTrainPart
sweep.main(sys.argv[1:])
"""
DEADLINE_S = 900  # generous: a busy 2-core machine; only a failing test waits this long

# Section 2E-2F: the networks of each dataset, and N per class where the paper subsampled
PAPER_NETWORKS = {
    "mnist": {"vgg11", "resnet18", "densenet40"}, "fashionmnist": {"vgg11", "resnet18", "densenet250"},
    "svhn": {"vgg11", "resnet18", "densenet40"}, "cifar10": {"vgg13", "resnet18", "densenet40"},
    "cifar100": {"vgg13", "resnet50", "densenet250"}, "stl10": {"vgg13", "resnet50", "densenet250"},
    "imagenet": {"vgg19", "resnet152", "densenet201"},
}
PAPER_N = {"mnist": 5000, "svhn": 4600, "imagenet": 600}
NUM_CLASSES = {"cifar100": 100, "imagenet": 1000}  # the others have 10


def _sweep(*args, **kw):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        paths = sweep.run_profile(*args, **kw)
    return paths, out.getvalue()


def _mtimes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.nc"))}


def _assert_same_cube(got, want):
    """Every variable and coordinate identical (NaN == NaN), wall time aside; the same parameters and selection."""
    assert set(got.data_vars) == set(want.data_vars)
    for name in got.variables:
        if name not in ("wall_time",):
            np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    for key in ("parameter_hash", "selected_lr", "complete", "geometry_lr"):
        assert got.attrs[key] == want.attrs[key], key


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tiny profile (2 demo cells x 2 lrs, and a CIFAR100 cell without data) swept by the local executor,
    after one of its jobs was SIGKILLed mid-run; then swept again twice; and the same cells run serially."""
    tmp = tmp_path_factory.mktemp("sweep")
    profile, cubes, empty = tmp / "tiny", tmp / "cubes", tmp / "no-data"
    profile.mkdir()
    empty.mkdir()
    (profile / "_defaults.yaml").write_text(yaml.safe_dump(TINY))
    (profile / "_executor.yaml").write_text(yaml.safe_dump({"executor": "local", "local": {"parallel": 2,
                                                                                          "threads": 1}}))
    for name in DEMO_CELLS:
        (profile / f"{name}.yaml").write_text(f"network: {name.split('-')[1]}\n")
    (profile / "cifar100-vgg11.yaml").write_text("dataset: cifar100\nnetwork: vgg11\n")
    run = {"profile": profile, "cubes": cubes}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NC_NPZ_DIR", str(empty))
        mp.setenv("NC_DATA_ROOT", str(empty))
        mp.setattr(executors, "STATUS_EVERY_S", 0)  # a status block in every round of the wait loop with jobs running
        # 1. a job killed with SIGKILL after its first checkpoint
        p = params.load(profile / f"{KILLED_CELL}.yaml")
        _, parts_dir = runs.paths(p, cubes)
        ckpt = runs.checkpoint_path(parts_dir, KILLED_LR)
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(profile / f"{KILLED_CELL}.yaml"),
                                 str(KILLED_LR), str(parts_dir)], cwd=ROOT)
        deadline = time.monotonic() + DEADLINE_S
        while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the job exited before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert ckpt.is_file(), "the job wrote no checkpoint before it was killed"
        state = torch.load(ckpt, weights_only=False)
        run["killed_after"] = state["record"]["epochs_done"]
        state["record"]["wall_time"] = TAMPERED_WALL_TIME
        torch.save(state, ckpt)
        # 2. the sweep; 3. again (cubes current); 4. again without the cubes (parts finished)
        run["paths"], run["out"] = _sweep(profile, cubes, "local", poll_s=0.1)
        run["cubes1"] = {n: cube.open_cube(cubes / f"{n}.nc") for n in DEMO_CELLS}
        run["mtimes1"] = _mtimes(cubes)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            sweep.main([str(profile), "--cube-dir", str(cubes)])
        run["out2"], run["mtimes2"] = out.getvalue(), _mtimes(cubes)
        for name in DEMO_CELLS:
            (cubes / f"{name}.nc").unlink()
        run["paths3"], run["out3"] = _sweep(profile, cubes, poll_s=0.1)
        run["mtimes3"] = _mtimes(cubes)
    # the same cells, serially in this process, with the jobs' thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run["serial"] = {}
        for name in DEMO_CELLS:
            p = params.load(profile / f"{name}.yaml")
            run["serial"][name] = cube.open_cube(runs.run(p, tmp / "serial", progress=False))
    finally:
        torch.set_num_threads(threads)
    return run


def test_jobs_run_as_processes_and_merge_into_the_serial_cubes(swept):
    cubes = swept["cubes"]
    assert swept["paths"] == [cubes / f"{n}.nc" for n in DEMO_CELLS]
    results = sorted((cubes / "logs").rglob("*_result.pkl"))
    assert len(results) == 4  # 2 cells x 2 lrs, each a submitit job of its own (the killed one resumed)
    assert "[4/4]" in swept["out"] and "4 job(s) to run" in swept["out"]
    for name in DEMO_CELLS:
        got = swept["cubes1"][name]
        cube.validate(got)
        assert list(got["lr"].values) == TINY["lrs"] and set(got["status"].values.ravel()) == {"complete"}
        _assert_same_cube(got, swept["serial"][name])


def test_every_submitted_job_is_recorded_beside_its_part(swept):
    """<parts>/lr-<lr>.job.json: the local job (its controller's pid, which names its logs), the parameter hash,
    the submitit folder; the last sweep found every part finished, so the records are the first sweep's."""
    for name in DEMO_CELLS:
        p = params.load(swept["profile"] / f"{name}.yaml")
        parts_dir = runs.paths(p, swept["cubes"])[1]
        for lr in TINY["lrs"]:
            job = sweep.Job(p, lr, parts_dir)
            path = jobs.record_path(job)
            assert path == runs.part_path(parts_dir, lr).with_suffix(".job.json")  # beside the part
            record = json.loads(path.read_text())
            assert jobs.read_record(job) == record
            assert record["executor"] == "local" and record["cell"] == name and record["lr"] == lr
            assert record["parameter_hash"] == params.digest(p)
            assert Path(record["folder"]) == (swept["cubes"] / "logs").resolve()
            assert (swept["cubes"] / "logs" / f"{record['job_id']}_0_result.pkl").is_file()
    assert not list(swept["cubes"].rglob("*.job.json.tmp*"))


def test_driver_prints_the_running_jobs_progress(swept):
    assert re.search(r"\] \d+/4 job\(s\) done, [12] running, \d+ waiting", swept["out"])
    bars = [line for line in swept["out"].splitlines() if line.startswith("    demo-")]
    line = r"    demo-vgg1[13] lr=0\.0[25]: (starting|epoch \d/5, [\d.]+ s/epoch, about |complete at epoch 5/5)"
    assert bars and all(re.match(line, b) for b in bars), bars
    # the time left is from the jobs' epoch paces and the jobs at once (nc.runs.eta)
    assert re.search(r"\[[123]/4\] demo-vgg1[13] lr=0\.0[25]: done in \S+; about \S+ left \(\d running, \d waiting, "
                     r"\d at once, at each cell's epoch pace\)", swept["out"]), swept["out"]


def test_a_jobs_progress_file_is_what_the_status_block_prints(tmp_path):
    from nc.train import progress

    f = progress.path_for(tmp_path / "lr-0.05-seed0.nc")
    assert f.name == "lr-0.05-seed0.progress.json" and progress.read(f) is None
    progress.write(f, "cell lr=0.05", 3, 9, 2.0)
    info = progress.read(f)
    assert (info["epoch"], info["epochs"], info["eta_s"]) == (3, 9, 12.0)
    assert progress.line(info) == "cell lr=0.05: epoch 3/9, 2 s/epoch, about 12s left"
    progress.write(f, "cell lr=0.05", 9, 9, 2.0, "complete")
    assert progress.line(progress.read(f)) == "cell lr=0.05: complete at epoch 9/9"
    f.write_text("{not json")
    assert progress.read(f) is None


def test_the_sweeps_time_left_is_the_makespan_of_the_jobs_at_their_epoch_paces():
    from nc.runs import eta

    paces = eta.paces([("slow", 10.0), ("fast", 1.0), ("fast", None), ("fast", 1.0)])
    assert paces == {"slow": 10.0, "fast": 1.0}
    slow_running = ("slow", 100, {"epoch": 10, "epochs": 100, "seconds_per_epoch": 10.0, "status": "running"})
    fast_running = ("fast", 10, {"epoch": 5, "epochs": 10, "seconds_per_epoch": 1.0, "status": "running"})
    # two slots: 900 s and 5 s left; four fast jobs of 10 s queue on the slot that frees first: 5 + 4 x 10
    assert eta.time_left([slow_running, fast_running], [("fast", 10)] * 4, 2, paces) == 900.0
    # a slow job waiting first takes the 5 s slot (5 + 1000); the fast ones then follow the running slow one
    assert eta.time_left([slow_running, fast_running], [("slow", 100)] + [("fast", 10)] * 4, 2, paces) == 1005.0
    # three slots: the free one takes the waiting slow job at once
    assert eta.time_left([slow_running, fast_running], [("slow", 100)] + [("fast", 10)] * 4, 3, paces) == 1000.0
    # a job that has reported no pace yet, and a cell that has none, take their cell's pace, else the median
    assert eta.time_left([("slow", 100, None)], [("new", 10)], 1, paces) == 1000.0 + 10 * (10.0 + 1.0) / 2
    # a job that reported complete is ending: nothing left
    done = ("fast", 10, {"epoch": 10, "epochs": 10, "seconds_per_epoch": 1.0, "status": "complete"})
    assert eta.time_left([done], [], 1, paces) == 0.0
    assert eta.time_left([slow_running], [("fast", 10)], 1, {}) is None  # no pace reported yet
    assert eta.makespan([5.0, 7.0, 9.0], [], 2) == 9.0  # more running than slots (an earlier driver's jobs)
    assert eta.makespan([], [3.0, 3.0, 3.0], 2) == 6.0
    with pytest.raises(ValueError, match="slots"):
        eta.makespan([], [1.0], 0)


def test_rerun_trains_nothing(swept):
    parts = {k: v for k, v in swept["mtimes1"].items() if k.startswith("parts/")}
    assert len(parts) == 4
    assert swept["mtimes2"] == swept["mtimes1"]  # cubes current: nothing rewritten, nothing trained
    assert "2 cube(s) current" in swept["out2"] and "0 job(s) to run" in swept["out2"]
    assert "2 cube(s) in" in swept["out2"]  # the CLI's summary
    assert "4 part(s) finished, 0 job(s) to run" in swept["out3"]  # cubes gone, parts reused
    assert {k: v for k, v in swept["mtimes3"].items() if k.startswith("parts/")} == parts
    for name in DEMO_CELLS:
        _assert_same_cube(cube.open_cube(swept["cubes"] / f"{name}.nc"), swept["cubes1"][name])


def test_killed_job_resumes_from_its_checkpoint(swept):
    assert swept["killed_after"] == 1  # killed after its first epoch
    p = params.load(swept["profile"] / f"{KILLED_CELL}.yaml")
    part = cube.open_cube(runs.part_path(runs.paths(p, swept["cubes"])[1], KILLED_LR))
    assert part["wall_time"].item() >= TAMPERED_WALL_TIME  # carried on from the checkpoint
    assert part["status"].item() == "complete" and part["epochs_done"].item() == TINY["epochs"]
    want = swept["serial"][KILLED_CELL].sel(lr=[KILLED_LR])
    for name in ("train_loss", "train_acc", "test_acc", "nc1", "robustness"):
        np.testing.assert_array_equal(part[name].values, want[name].values, err_msg=name)


def test_missing_dataset_is_reported_and_marked(swept):
    lines = [line for line in swept["out"].splitlines() if line.startswith("missing:")]
    assert len(lines) == 1 and lines[0].startswith("missing: cifar100-vgg11: dataset 'cifar100' is not available")
    marker = json.loads((swept["cubes"] / "cifar100-vgg11.missing.json").read_text())
    assert marker["dataset"] == "cifar100" and marker["network"] == "vgg11" and marker["status"] == "missing"
    assert "cifar100" in marker["message"] and "NC_NPZ_DIR" in marker["message"]
    assert not (swept["cubes"] / "cifar100-vgg11.nc").exists()
    assert "1 cell(s) missing" in swept["out"] and "missing: cifar100-vgg11" in swept["out3"]


def test_only_selects_cells_and_leaves_the_others_alone(swept):
    before = _mtimes(swept["cubes"])
    paths, out = _sweep(swept["profile"], swept["cubes"], "local", only=["demo-vgg13"])
    assert paths == [swept["cubes"] / "demo-vgg13.nc"]
    assert "sweep tiny: 1 cells, 2 lrs; 1 cube(s) current, 0 cell(s) missing" in out  # cifar100 not even probed
    assert _mtimes(swept["cubes"]) == before
    with pytest.raises(ValueError, match="'svhn' matches no parameter file"):
        sweep.run_profile(swept["profile"], swept["cubes"], only=["svhn"])


def test_more_seeds_run_one_job_per_lr_and_new_seed_and_reuse_the_rest(swept, tmp_path):
    import shutil

    cubes = tmp_path / "cubes"
    shutil.copytree(swept["cubes"], cubes)
    one = cube.open_cube(cubes / "demo-vgg13.nc")
    paths, out = _sweep(swept["profile"], cubes, "local", only=["demo-vgg13"], seeds=2)
    assert "2 part(s) finished, 2 job(s) to run" in out  # seed 0 of both lrs reused, seed 1 trained
    two = cube.validate(cube.open_cube(paths[0]))
    assert list(two["seed"].values) == [0, 1] and two.sizes["lr"] == len(TINY["lrs"])
    for name in ("train_loss", "test_acc", "nc1"):
        np.testing.assert_array_equal(two[name].sel(seed=[0]).values, one[name].values, err_msg=name)
    p = params.with_seeds(params.load(swept["profile"] / "demo-vgg13.yaml"), 2)
    _, parts_dir = runs.paths(p, cubes)
    assert all(runs.part_finished(p, lr, parts_dir, seed) for lr in TINY["lrs"] for seed in (0, 1))
    assert json.loads(runs.part_path(parts_dir, TINY["lrs"][0], 1).with_suffix(".job.json").read_text())["seed"] == 1
    _, again = _sweep(swept["profile"], cubes, "local", only=["demo-vgg13"], seeds=2)
    assert "1 cube(s) current" in again and "0 job(s) to run" in again


def test_plan_local_shares_cores_and_packs_gpus():
    assert executors.plan_local(63, cores=2, gpus=0) == (2, 1)
    assert executors.plan_local(3, cores=16, gpus=0) == (3, 5)
    assert executors.plan_local(1, cores=2, gpus=0) == (1, 2)
    assert executors.plan_local(63, cores=16, gpus=1) == (4, 4)
    assert executors.plan_local(63, cores=16, gpus=2, jobs_per_gpu=3) == (6, 2)
    assert executors.plan_local(63, cores=16, gpus=0, parallel=5, threads=1) == (5, 1)


def test_executor_file_rejects_unknown_keys(tmp_path):
    (tmp_path / "_executor.yaml").write_text("slurm:\n  partitoin: gpu\n")
    with pytest.raises(ValueError, match="partitoin"):
        executors.read_executor(tmp_path)
    assert executors.read_executor(tmp_path / "nothing-here")["executor"] == "local"


def test_slurm_settings_from_file_dataset_and_command_line(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit wants srun on PATH to build a Slurm executor
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    config = executors.read_executor(ROOT / "parameters" / "paper")
    assert config["executor"] == "slurm"
    imagenet = sweep.Job(params.load(ROOT / "parameters" / "paper" / "imagenet-vgg19.yaml"), 0.01, tmp_path)
    cifar = sweep.Job(params.load(ROOT / "parameters" / "paper" / "cifar10-vgg13.yaml"), 0.01, tmp_path)
    s = executors.slurm_settings(imagenet, config["slurm"])
    assert s["gpus_per_job"] == 8 and s["partition"] is None
    assert executors.slurm_settings(cifar, config["slurm"])["gpus_per_job"] == 1
    s = executors.slurm_settings(imagenet, config["slurm"] | {"options": {"partition": "gpu", "time_min": 60,
                                                                       "array_parallelism": 5}})
    got = executors.slurm_executor(tmp_path / "logs", s)._executor.parameters
    assert got["partition"] == "gpu" and got["time"] == 60 and got["gpus_per_node"] == 8
    assert got["ntasks_per_node"] == 8 and got["cpus_per_task"] == s["cpus_per_job"] // 8  # one DDP task per GPU
    assert got["array_parallelism"] == 5


@pytest.mark.parametrize("profile", ["paper", "quick"])
def test_profile_has_the_21_cells_and_every_file_loads(profile):
    files = params.profile_files(ROOT / "parameters" / profile)
    assert len(files) == 21
    cells = {}
    for f in files:
        p = params.load(f)
        assert f.stem == f"{p['dataset']}-{p['network']}"
        cells.setdefault(p["dataset"], set()).add(p["network"])
    assert cells == PAPER_NETWORKS
    executors.read_executor(ROOT / "parameters" / profile)


def test_paper_files_have_the_papers_settings():
    lrs = np.geomspace(1e-4, 0.25, 25)
    for f in params.profile_files(ROOT / "parameters" / "paper"):
        p = params.load(f)
        d = p["dataset"]
        assert p["n_per_class"] == PAPER_N.get(d) and p["test_n_per_class"] is None and p["width"] == 1.0
        assert p["momentum"] == 0.9 and p["lr_gamma"] == 0.1 and p["npz_dir"] is None and p["npz_file"] is None
        assert p["memory_efficient"] == (p["network"] in ("densenet201", "densenet250"))
        if d == "imagenet":
            assert p["epochs"] == 300 and p["batch_size"] == 256 and p["weight_decay"] == 1e-4
            assert p["lr_milestones"] == [0.5, 0.75] and p["tpt_threshold"] == 0.996
            want = np.geomspace(0.01, 0.25, 10)
        else:
            assert p["epochs"] == 350 and p["batch_size"] == 128 and p["weight_decay"] == 5e-4
            assert p["lr_milestones"] == [1 / 3, 2 / 3] and p["tpt_threshold"] == 0.999
            assert p["image_size"] is None
            want = lrs
        assert len(p["lrs"]) == len(want) and p["lrs"] == sorted(p["lrs"])
        assert p["lrs"][0] == want[0] and p["lrs"][-1] == want[-1]  # the endpoints exactly
        np.testing.assert_allclose(p["lrs"], want, rtol=5e-4)  # log-spaced, 4 significant digits
        assert all(float(f"{x:.4g}") == x for x in p["lrs"])


def test_quick_files_scale_the_paper_down():
    for f in params.profile_files(ROOT / "parameters" / "quick"):
        p = params.load(f)
        d = p["dataset"]
        assert p["n_per_class"] == 100 and p["test_n_per_class"] == 100
        assert p["width"] == (0.5 if p["network"] == "densenet40" else 0.25)
        assert p["image_size"] == (16 if d in ("mnist", "fashionmnist") else 32)
        assert p["epochs"] < 350 and p["npz_dir"] is None  # the npz folder comes from NC_NPZ_DIR
        assert len(p["lrs"]) == 3 and np.allclose(np.diff(np.log(p["lrs"])), np.log(2))
        assert p["memory_efficient"] == (p["network"] in ("densenet201", "densenet250"))
        assert p["ood_dataset"] == {"mnist": "fashionmnist", "fashionmnist": "mnist"}.get(d)  # NC5's OOD set and back
        if d == "imagenet":
            assert p["npz_file"] == "imagenette32.npz" and p["lr_milestones"] == [0.5, 0.75]
            assert p["batch_size"] == 256 and p["tpt_threshold"] == 0.996
        else:
            assert p["npz_file"] is None and p["lr_milestones"] == [1 / 3, 2 / 3]


def _feature_dim(network, num_classes, in_channels, image_size, width, memory_efficient):
    with torch.device("meta"):  # shapes only, no memory, no compute
        return models.build(network, num_classes, in_channels, image_size, width, memory_efficient).feature_dim


@pytest.mark.parametrize("profile", ["paper", "quick"])
def test_every_cell_has_a_feature_space_of_rank_c_minus_1(profile):
    """Sigma_B has rank C-1 only if p >= C-1 (nc.measure raises otherwise, at the first snapshot)."""
    short = []
    for f in params.profile_files(ROOT / "parameters" / profile):
        p = params.load(f)
        classes = 10 if p["npz_file"] == "imagenette32.npz" else NUM_CLASSES.get(p["dataset"], 10)
        channels = 1 if p["dataset"] in ("mnist", "fashionmnist") else 3
        dim = _feature_dim(p["network"], classes, channels, p["image_size"] or 32, p["width"], p["memory_efficient"])
        if dim < classes - 1:
            short.append(f"{f.stem}: p = {dim} < C - 1 = {classes - 1}")
    assert not short, short


@pytest.fixture
def long_sweep(tmp_path):
    """A driver (its own session, as a shell starts one) running one job of 100,000 epochs, once the job is in
    its training loop (its progress bar is in its log); killed, with every job process, at the end whatever
    happened."""
    profile, cubes = tmp_path / "long", tmp_path / "cubes"
    profile.mkdir()
    (profile / "_defaults.yaml").write_text(yaml.safe_dump(TINY | {"epochs": 100_000, "lrs": [0.05],
                                                                   "snapshot_epochs": [1]}))
    (profile / "demo-vgg11.yaml").write_text("network: vgg11\n")
    (profile / "_executor.yaml").write_text(yaml.safe_dump({"local": {"parallel": 1, "threads": 1}}))
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        # the driver with SIGINT and SIGTERM at their defaults, whatever this process inherited
        driver = subprocess.Popen([sys.executable, "-m", "nc.sweep", str(profile), "--cube-dir", str(cubes)],
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=jobs.default_stop_signals)
    logs = str(cubes / "logs")
    p = params.load(profile / "demo-vgg11.yaml")
    record = jobs.record_path(sweep.Job(p, 0.05, runs.paths(p, cubes)[1]))

    def training():  # the job has finished an epoch of its training loop (its progress file says so)
        from nc.train import progress

        return progress.read(progress.path_for(runs.part_path(runs.paths(p, cubes)[1], 0.05))) is not None

    try:
        deadline = time.monotonic() + DEADLINE_S
        while not training() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert training(), f"the job never started training:\n{log.read_text()}"
        assert processes_mentioning(logs), "no job process found"
        yield {"driver": driver, "logs": logs, "log": log, "cubes": cubes, "record": record}
    finally:
        driver.kill()
        driver.wait()
        for pid in processes_mentioning(logs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_stopped_driver_exits_only_after_its_jobs_are_gone(long_sweep, how):
    """submitit's jobs ignore SIGTERM; the driver cancels them, waits, SIGKILLs what is left and only then exits,
    so no job process is alive the moment its exit is seen (no sleep, no polling after wait())."""
    driver = long_sweep["driver"]
    if how == "SIGTERM":
        driver.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C: SIGINT to the driver's whole process group
        os.killpg(driver.pid, signal.SIGINT)
    status = driver.wait(timeout=2 * jobs.STOP_WAIT_S + DEADLINE_S)
    left = processes_mentioning(long_sweep["logs"])
    out = long_sweep["log"].read_text()
    assert left == [], f"job processes outlived the stopped driver:\n{out}"
    assert status != 0
    assert "stopping 1 job(s) before exiting" in out and "1 job(s) stopped" in out, out


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs Linux /proc")
def test_a_sigkilled_drivers_local_jobs_die_with_it(long_sweep):
    """No cleanup can run in a SIGKILLed driver: its jobs' controllers have PR_SET_PDEATHSIG, so they go too (the
    kernel signals them as the driver dies: this is the one wait that polls). The job was recorded at submit time."""
    record = json.loads(long_sweep["record"].read_text())
    assert record["executor"] == "local"
    assert int(record["job_id"]) in processes_mentioning(long_sweep["logs"])  # the job's controller, running
    long_sweep["driver"].send_signal(signal.SIGKILL)
    assert long_sweep["driver"].wait() == -signal.SIGKILL
    deadline = time.monotonic() + DEADLINE_S
    while processes_mentioning(long_sweep["logs"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(long_sweep["logs"]) == [], "job processes outlived the SIGKILLed driver"


STOP_CELLS = ("demo-vgg11", "demo-vgg13")  # one lr each; with one job at a time, vgg11's part is done before vgg13's
HELD_CELL = "demo-vgg13"


def _epochs_in_checkpoint(path: Path) -> int:
    with contextlib.suppress(OSError, RuntimeError, EOFError, KeyError):  # not there yet
        return int(torch.load(path, weights_only=False)["record"]["epochs_done"])
    return 0


def _tamper_wall_time(path: Path) -> None:
    """Set a checkpoint's wall time to TAMPERED_WALL_TIME: only a run resumed from it carries it on."""
    state = torch.load(path, weights_only=False)
    state["record"]["wall_time"] = TAMPERED_WALL_TIME
    torch.save(state, path)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A profile of two cells, one job at a time, the second cell's job holding after each checkpoint (HOLD_SCRIPT):
    1. the driver is sent SIGTERM once the first cell's part is finished and the second's job has a checkpoint;
    2. its cube deleted, the same command with --deadline (90 s: it stops 15 s in), the second cell held again;
    3. the same command with nothing held: the second cell resumes and finishes. And both cells run serially."""
    tmp = tmp_path_factory.mktemp("stopped")
    profile, cubes = tmp / "two", tmp / "cubes"
    profile.mkdir()
    (profile / "_defaults.yaml").write_text(yaml.safe_dump(TINY | {"lrs": [0.05]}))
    (profile / "_executor.yaml").write_text(yaml.safe_dump({"local": {"parallel": 1, "threads": 1}}))
    for name in STOP_CELLS:
        (profile / f"{name}.yaml").write_text(f"network: {name.split('-')[1]}\n")
    cells = {n: params.load(profile / f"{n}.yaml") for n in STOP_CELLS}
    parts = {n: runs.paths(p, cubes)[1] for n, p in cells.items()}
    held_ckpt = runs.checkpoint_path(parts[HELD_CELL], 0.05)
    run = {"cubes": cubes, "cells": cells, "parts": parts, "held_ckpt": held_ckpt}
    command = [sys.executable, "-c", HOLD_SCRIPT, str(profile), "--cube-dir", str(cubes)]
    env = {**os.environ, "NC_TEST_HOLD_CELL": HELD_CELL}

    def driver(*args, log):
        with open(log, "wb") as out:
            return subprocess.Popen([*command, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=jobs.default_stop_signals)

    # 1. SIGTERM
    log = tmp / "sigterm.log"
    proc = driver(log=log)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while _epochs_in_checkpoint(held_ckpt) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        run["first_done_before_stop"] = runs.part_finished(cells["demo-vgg11"], 0.05, parts["demo-vgg11"])
        proc.send_signal(signal.SIGTERM)
        run["sigterm_status"] = proc.wait(timeout=2 * jobs.STOP_WAIT_S + DEADLINE_S)
    finally:
        proc.kill()
    run["sigterm_out"] = log.read_text()
    run["sigterm_left"] = processes_mentioning(str(cubes / "logs"))
    run["sigterm_cube"] = cube.open_cube(cubes / "demo-vgg11.nc") if (cubes / "demo-vgg11.nc").is_file() else None
    # 2. --deadline, with the first cell's cube gone (its part is finished)
    (cubes / "demo-vgg11.nc").unlink(missing_ok=True)
    log = tmp / "deadline.log"
    given = time.time()
    proc = driver("--deadline", f"{jobs.STOP_MARGIN_S + 15:g}", log=log)
    try:
        run["deadline_status"] = proc.wait(timeout=2 * jobs.STOP_WAIT_S + DEADLINE_S)
    finally:
        proc.kill()
    run["deadline_given"], run["deadline_exited"] = given + jobs.STOP_MARGIN_S + 15, time.time()
    run["deadline_out"] = log.read_text()
    run["deadline_left"] = processes_mentioning(str(cubes / "logs"))
    run["deadline_cube"] = cube.open_cube(cubes / "demo-vgg11.nc") if (cubes / "demo-vgg11.nc").is_file() else None
    # 3. the re-run, nothing held: the held cell resumes from its checkpoint
    run["resumed_from"] = _epochs_in_checkpoint(held_ckpt)
    if run["resumed_from"]:
        _tamper_wall_time(held_ckpt)
    run["paths"], run["rerun_out"] = _sweep(profile, cubes, poll_s=0.1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run["serial"] = {n: cube.open_cube(runs.run(p, tmp / "serial", progress=False)) for n, p in cells.items()}
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs Linux /proc")
def test_a_stopped_sweep_merges_its_complete_cells_and_says_which_will_resume(stopped):
    out = stopped["sigterm_out"]
    assert stopped["first_done_before_stop"], out
    assert stopped["sigterm_status"] != 0 and stopped["sigterm_left"] == [], out
    assert "stopping 1 job(s) before exiting" in out and "1 job(s) stopped" in out, out
    assert "stopped by SIGTERM" in out, out
    assert "complete (1 cell(s), cube current): demo-vgg11" in out, out
    assert "will resume (1 cell(s); run the same command again): demo-vgg13 (0 of 1 parts finished)" in out, out
    assert out.index("1 job(s) stopped") < out.index("cube: ") < out.index("will resume")  # jobs gone, then merged
    assert stopped["sigterm_cube"] is not None, out
    _assert_same_cube(stopped["sigterm_cube"], stopped["serial"]["demo-vgg11"])


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs Linux /proc")
def test_a_sweep_at_its_deadline_stops_merges_and_exits_before_it(stopped):
    out = stopped["deadline_out"]
    assert stopped["deadline_status"] != 0 and stopped["deadline_left"] == [], out
    assert "1 part(s) finished, 1 job(s) to run" in out, out  # the first cell's part, the held cell's job
    assert "stopped at its --deadline" in out and "deadline: stopped at" in out, out
    assert "complete (1 cell(s), cube current): demo-vgg11" in out, out
    assert "will resume (1 cell(s); run the same command again): demo-vgg13 (0 of 1 parts finished)" in out, out
    assert stopped["deadline_exited"] < stopped["deadline_given"], out  # gone by its deadline (75 s of margin)
    assert stopped["deadline_cube"] is not None, out
    _assert_same_cube(stopped["deadline_cube"], stopped["serial"]["demo-vgg11"])


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs Linux /proc")
def test_a_stopped_sweeps_unfinished_cell_resumes_on_a_rerun(stopped):
    assert stopped["resumed_from"] >= 1  # the held job's checkpoint outlived both stops
    assert "1 cube(s) current, 0 cell(s) missing, 0 part(s) finished, 1 job(s) to run" in stopped["rerun_out"]
    assert stopped["paths"] == [stopped["cubes"] / f"{n}.nc" for n in STOP_CELLS]
    got = cube.open_cube(stopped["cubes"] / f"{HELD_CELL}.nc")
    assert got["wall_time"].item() >= TAMPERED_WALL_TIME  # carried on from the stopped job's checkpoint
    _assert_same_cube(got, stopped["serial"][HELD_CELL])


@pytest.mark.parametrize("text,seconds", [("90", 90.0), ("0.5", 0.5)])
def test_deadline_in_seconds_counts_from_now(text, seconds):
    assert jobs.parse_deadline(text, now=1000.0) == 1000.0 + seconds


def test_deadline_as_a_time_of_day_is_the_next_such_moment():
    import datetime

    now = datetime.datetime(2026, 3, 1, 22, 0, 0).timestamp()
    assert jobs.parse_deadline("23:30", now) == datetime.datetime(2026, 3, 1, 23, 30).timestamp()
    assert jobs.parse_deadline("06:00:05", now) == datetime.datetime(2026, 3, 2, 6, 0, 5).timestamp()  # tomorrow
    for bad in ("-5", "0", "25:00", "soon", "inf"):
        with pytest.raises(ValueError, match=f"--deadline must be .* got '{bad}'"):
            jobs.parse_deadline(bad, now)
    with pytest.raises(SystemExit):  # argparse: a usage error naming the value, before anything runs
        sweep.main([str(ROOT / "parameters" / "demo"), "--deadline", "soon"])


def test_the_parameters_module_names_a_cells_runs_and_their_data(tmp_path):
    """One owner (nc.runs.params) for the cell name, the run label, the (lr, seed) jobs and nc.data.load's
    arguments; the sweep's Job and probe, the cell's paths and the missing marker use them."""
    import inspect

    from nc import data

    p = params.validate(TINY | {"network": "vgg11", "seeds": [0, 2], "imbalance_ratio": 10, "standardize": "pixel"})
    assert params.cell_name(p) == "demo-vgg11" and params.cell_name(p | {"name": "demo-vgg11-mse"}) == "demo-vgg11-mse"
    assert params.jobs(p) == [(0.02, 0), (0.02, 2), (0.05, 0), (0.05, 2)]
    assert params.run_label(p, 0.05, 2) == "demo-vgg11 lr=0.05 seed=2"
    one = p | {"seeds": [0]}
    assert params.run_label(one, 0.05) == "demo-vgg11 lr=0.05" and params.run_label(one | {"seeds": [3]}, 0.05) == \
        "demo-vgg11 lr=0.05 seed=3"
    assert sweep.Job(p, 0.02, tmp_path, 2).label == params.run_label(p, 0.02, 2)
    arguments = params.data_arguments(p)
    load = inspect.signature(data.load).parameters
    assert set(arguments) == set(load) - {"device", "download"}  # every data argument, each from its key
    assert (arguments["standardize_by"], arguments["imbalance_ratio"]) == ("pixel", 10)
    assert runs.paths(p, tmp_path) == (tmp_path / "demo-vgg11.nc", tmp_path / "parts" / "demo-vgg11")
    assert cube.missing_path(tmp_path, p) == tmp_path / "demo-vgg11.missing.json"


def test_the_probe_loads_the_data_as_the_run_does(monkeypatch):
    """dataset_missing passes every data argument (standardisation, imbalance) but one image per class."""
    from nc import data

    seen = {}
    monkeypatch.setattr(data, "load", lambda **kw: seen.update(kw))
    p = params.validate(TINY | {"network": "vgg11", "imbalance_ratio": 4, "standardize": "pixel"})
    assert sweep.dataset_missing(p) is None
    assert seen == params.data_arguments(p) | {"n_per_class": 1, "test_n_per_class": 1, "device": "cpu"}
