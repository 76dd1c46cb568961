"""`python -m nc.sweep <tiny profile> --executor slurm` end to end, through a real one-node Slurm cluster on
localhost (tests/slurm_cluster.py: munge, MariaDB, slurmdbd, slurmctld, slurmd). The jobs go through sbatch and
their cubes equal the local executor's bitwise (wall time aside); a job that reaches its time limit is requeued
and resumes from its checkpoint; a SIGKILLed driver started again waits for its live jobs instead of submitting
them twice; a SIGTERMed driver exits only after its jobs are gone; a job cancelled with scancel is reported, and a
re-run resumes it from its checkpoint.

The cluster skips (with the reason) only where it cannot start: not Linux, not root, the Debian packages absent;
with NC_REQUIRE_SLURM=1 (what .ci/run sets) that is an error, and so is any failure to start. Jobs that must be
running when the test acts on them hold (sleep) after a checkpoint until a file appears or a signal ends them:
every wait polls a state with a generous deadline, nothing is timed."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slurm_cluster
import torch
import yaml
from conftest import processes_mentioning

from nc import runs
from nc.runs import cube, jobs, params, sweep

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dataset": "demo", "width": 0.125, "n_per_class": 20, "test_n_per_class": 10, "image_size": 16, "epochs": 5,
        "lrs": [0.02, 0.05], "snapshot_epochs": [1, 3, 5], "robustness_images": 5, "fig1_samples": 4, "device": "cpu",
        "seed": 0}
CELL = "demo-vgg11"
EXECUTOR = {"executor": "slurm", "local": {"parallel": 2, "threads": 1},  # 1 torch thread in both executors
            "slurm": {"gpus_per_job": 0, "cpus_per_job": 1, "time_min": 10, "signal_delay_s": 5,
                      "array_parallelism": 2, "max_requeues": 3}}
DEADLINE_S = 900  # generous: a busy 2-core machine; only a failing test waits this long
TAMPERED_WALL_TIME = 1e6  # written into a held job's checkpoint: only a run resumed from it carries it on

# The driver, with nc.runs.executors.TrainPart wrapped (the wrapper lives in __main__, so cloudpickle sends it by
# value):
# in a job's first run (not a requeued one), after its NC_TEST_HOLD_AFTER-th checkpoint it holds until the file
# NC_TEST_RELEASE exists (for ever without one: until Slurm's USR2 or a kill ends it). NC_TEST_HOLD_LRS: only those;
# NC_TEST_HOLD_CELLS: only those cells.
HOLD_SCRIPT = """
import os, sys, time
import submitit
from nc.runs import executors, sweep

class HeldTrainPart(submitit.helpers.Checkpointable):
    def __call__(self, params, lr, parts_dir, threads, seed=None):
        from nc.runs import executors  # in the job's process: the original TrainPart
        from nc.train import record  # checkpoints and geometry files go through record.save_atomic
        hold, lrs = os.environ.get("NC_TEST_HOLD_AFTER"), os.environ.get("NC_TEST_HOLD_LRS")
        cells = os.environ.get("NC_TEST_HOLD_CELLS")
        first_run = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
        if hold and first_run and (not lrs or f"{lr:g}" in lrs.split(",")) and (
                not cells or params["name"] in cells.split(",")):
            save, saved, release = record.save_atomic, [0], os.environ.get("NC_TEST_RELEASE")
            def save_then_hold(obj, path):
                save(obj, path)
                if record.is_geometry_file(path):
                    return
                saved[0] += 1
                while saved[0] >= int(hold) and not (release and os.path.exists(release)):
                    time.sleep(0.2)
            record.save_atomic = save_then_hold
        return executors.TrainPart()(params, lr, parts_dir, threads, seed)

executors.TrainPart = HeldTrainPart
sweep.main(sys.argv[1:])
"""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A running one-node Slurm cluster (session scope); every daemon and job stopped at the end."""
    reason = slurm_cluster.unavailable()
    if reason:
        if os.environ.get("NC_REQUIRE_SLURM") == "1":
            pytest.fail(f"NC_REQUIRE_SLURM=1, but no Slurm cluster can start here: {reason}")
        pytest.skip(reason)
    t0 = time.perf_counter()
    running = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))  # RuntimeError (a test error) if it fails
    print(f"slurm test cluster started in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """The tiny profile (one cell, two lrs) and its cube from the local executor: the reference."""
    tmp = tmp_path_factory.mktemp("slurm-profile")
    folder = tmp / "tiny"
    folder.mkdir()
    (folder / "_defaults.yaml").write_text(yaml.safe_dump(TINY))
    (folder / "_executor.yaml").write_text(yaml.safe_dump(EXECUTOR))
    (folder / f"{CELL}.yaml").write_text("network: vgg11\n")
    with contextlib.redirect_stdout(None):
        (path,) = sweep.run_profile(folder, tmp / "local", "local", poll_s=0.2)
    return {"dir": folder, "params": params.load(folder / f"{CELL}.yaml"), "local": cube.open_cube(path)}


def _driver(cluster, profile, cubes: Path, *args, log: Path, hold: dict | None = None) -> subprocess.Popen:
    """`python -m nc.sweep <profile> --executor slurm --cube-dir cubes` (with HOLD_SCRIPT when `hold` gives its
    environment), its output in `log`."""
    env = {**cluster.env, **(hold or {})}
    cmd = ["-c", HOLD_SCRIPT] if hold else ["-m", "nc.sweep"]
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *cmd, str(profile["dir"]), "--executor", "slurm", "--cube-dir",
                                 str(cubes), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _finish(driver: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        status = driver.wait(timeout=DEADLINE_S)
    finally:
        driver.kill()
    return status, log.read_text()


def _poll(condition, what: str, log: Path | None = None):
    """Poll condition() until it is truthy (returned); AssertionError naming `what` after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} after {DEADLINE_S} s" + (f":\n{log.read_text()}" if log else "")
        time.sleep(0.2)
    return value


def _parts(profile, cubes: Path) -> Path:
    return runs.paths(profile["params"], cubes)[1]


def _record(profile, cubes: Path, lr: float) -> dict | None:
    return jobs.read_record(sweep.Job(profile["params"], lr, _parts(profile, cubes)))


def _checkpoint(profile, cubes: Path, lr: float) -> Path:
    return runs.checkpoint_path(_parts(profile, cubes), lr)


def _epochs_in_checkpoint(profile, cubes: Path, lr: float) -> int:
    ckpt = _checkpoint(profile, cubes, lr)
    with contextlib.suppress(OSError, RuntimeError, EOFError):  # not there yet
        return int(torch.load(ckpt, weights_only=False)["record"]["epochs_done"])
    return 0


def _tamper_wall_time(profile, cubes: Path, lr: float) -> None:
    """Set the checkpoint's wall time to TAMPERED_WALL_TIME (atomically: tmp file, rename)."""
    ckpt = _checkpoint(profile, cubes, lr)
    state = torch.load(ckpt, weights_only=False)
    state["record"]["wall_time"] = TAMPERED_WALL_TIME
    torch.save(state, ckpt.with_suffix(".tampered"))
    os.replace(ckpt.with_suffix(".tampered"), ckpt)


def _sacct(cluster, *args) -> list[list[str]]:
    out = cluster.run("sacct", "--noheader", "--parsable2", "--starttime=2000-01-01", "--endtime=now", *args).stdout
    return [line.split("|") for line in out.splitlines() if line]


def _highest_job_id(cluster) -> int:
    return max((int(raw) for (raw,) in _sacct(cluster, "--allocations", "--format=JobIDRaw")), default=0)


def _assert_same_cube(got, want):
    """Every variable and coordinate identical (NaN == NaN), wall time aside; the same parameters and selection."""
    assert set(got.data_vars) == set(want.data_vars)
    for name in got.variables:
        if name != "wall_time":
            np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    for key in ("parameter_hash", "selected_lr", "complete", "geometry_lr"):
        assert got.attrs[key] == want.attrs[key], key


def _cube(profile, cubes: Path):
    return cube.open_cube(runs.paths(profile["params"], cubes)[0])


def test_jobs_go_through_sbatch_and_equal_the_local_executor(cluster, profile, tmp_path):
    cubes, log = tmp_path / "cubes", tmp_path / "driver.log"
    status, out = _finish(_driver(cluster, profile, cubes, log=log), log)
    assert status == 0, out
    assert "slurm: submitted 2 job(s) (array" in out and "[2/2]" in out, out
    records = [_record(profile, cubes, lr) for lr in TINY["lrs"]]
    assert all(r["executor"] == "slurm" and r["parameter_hash"] == params.digest(profile["params"]) for r in records)
    ids = [r["job_id"] for r in records]
    rows = {job_id: (state, name) for job_id, state, name in
            _sacct(cluster, "--allocations", "--format=JobID,State,JobName", f"--jobs={','.join(ids)}")}
    assert rows == {job_id: ("COMPLETED", "nc-sweep") for job_id in ids}, rows  # sbatch'ed, accounted, done
    script = (cubes / "logs" / f"{ids[0].split('_')[0]}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --cpus-per-task=1" in script
    _assert_same_cube(_cube(profile, cubes), profile["local"])


def test_a_job_at_its_time_limit_is_requeued_and_resumes(cluster, profile, tmp_path):
    """--time 3 with USR2 5 s before: the signal comes 145-175 s into the job (slurmctld checks every 30 s), after
    the job's start-up and first epoch even on a very busy machine (a shorter limit, down to Slurm's least, 1 min,
    could signal a job still importing torch: USR2 would kill it). Each job holds after its first checkpoint in
    its first run, so it is surely running, and its checkpoint is still, when the limit comes."""
    cubes, log = tmp_path / "cubes", tmp_path / "driver.log"
    driver = _driver(cluster, profile, cubes, "--time", "3", log=log, hold={"NC_TEST_HOLD_AFTER": "1"})
    for lr in TINY["lrs"]:
        _poll(lambda lr=lr: _epochs_in_checkpoint(profile, cubes, lr) == 1, f"held checkpoint of lr {lr}", log)
        _tamper_wall_time(profile, cubes, lr)  # the job holds: it writes no checkpoint until its requeued run
    status, out = _finish(driver, log)
    assert status == 0, out
    ids = [_record(profile, cubes, lr)["job_id"] for lr in TINY["lrs"]]
    states = _sacct(cluster, "--duplicates", "--allocations", "--format=JobID,State", f"--jobs={','.join(ids)}")
    for job_id in ids:
        runs_of_job = [state for jid, state in states if jid == job_id]
        assert "REQUEUED" in runs_of_job and runs_of_job[-1] == "COMPLETED", states  # requeued at least once
        assert f"Requeued job {job_id}" in (cubes / "logs" / f"{job_id}_0_log.out").read_text()  # submitit, on USR2
    got = _cube(profile, cubes)
    assert (got["wall_time"].values >= TAMPERED_WALL_TIME).all()  # both resumed from their checkpoints
    _assert_same_cube(got, profile["local"])


def test_a_killed_driver_started_again_waits_for_its_jobs(cluster, profile, tmp_path):
    cubes, log = tmp_path / "cubes", tmp_path / "driver.log"
    release = tmp_path / "release"
    hold = {"NC_TEST_HOLD_AFTER": "1", "NC_TEST_RELEASE": str(release)}
    before = _highest_job_id(cluster)
    first = _driver(cluster, profile, cubes, log=log, hold=hold)
    for lr in TINY["lrs"]:  # both jobs recorded and running (holding after their first epoch)
        _poll(lambda lr=lr: _record(profile, cubes, lr) and _epochs_in_checkpoint(profile, cubes, lr) >= 1,
              f"running job of lr {lr}", log)
    ids = [_record(profile, cubes, lr)["job_id"] for lr in TINY["lrs"]]
    first.send_signal(signal.SIGKILL)  # no cleanup at all
    assert first.wait() == -signal.SIGKILL
    assert set(_live(cluster, ids)) == set(ids)  # the jobs outlive a Slurm driver
    second = _driver(cluster, profile, cubes, log=log, hold=hold)
    _poll(lambda: "waiting for them, not submitting them again" in log.read_text(), "adoption by the new driver", log)
    release.touch()
    status, out = _finish(second, log)
    assert status == 0, out
    assert out.count("slurm: submitted") == 1, out  # the first driver's submission only
    assert re.search(r"slurm: 2 job\(s\) of an earlier driver still live \(\S+ RUNNING, \S+ RUNNING\)", out), out
    assert [_record(profile, cubes, lr)["job_id"] for lr in TINY["lrs"]] == ids
    new = sorted(int(raw) for (raw,) in _sacct(cluster, "--allocations", "--format=JobIDRaw") if int(raw) > before)
    assert len(new) == 2, new  # two jobs (the array's tasks) in Slurm's accounting: none submitted twice
    _assert_same_cube(_cube(profile, cubes), profile["local"])


def test_a_stopped_driver_exits_only_after_its_slurm_jobs_are_gone(cluster, profile, tmp_path):
    """SIGTERM: scancel, wait until squeue no longer lists them as live (submitit's jobs ignore SIGTERM: Slurm
    kills them after KillWait), scancel --signal=KILL what is left, then exit: nothing is left the moment the exit
    is seen (no sleep, no polling after wait())."""
    cubes, log = tmp_path / "cubes", tmp_path / "driver.log"
    driver = _driver(cluster, profile, cubes, log=log, hold={"NC_TEST_HOLD_AFTER": "1"})
    for lr in TINY["lrs"]:
        _poll(lambda lr=lr: _record(profile, cubes, lr) and _epochs_in_checkpoint(profile, cubes, lr) >= 1,
              f"running job of lr {lr}", log)
    ids = [_record(profile, cubes, lr)["job_id"] for lr in TINY["lrs"]]
    driver.send_signal(signal.SIGTERM)
    status, out = _finish(driver, log)
    live, left = _live(cluster, ids), processes_mentioning(str(cubes / "logs"))
    assert live == {} and left == [], (live, left, out)
    assert status != 0
    assert "stopping 2 job(s) before exiting" in out and "2 job(s) stopped" in out, out
    states = dict(_sacct(cluster, "--allocations", "--format=JobID,State", f"--jobs={','.join(ids)}"))
    assert all(states[j].startswith("CANCELLED") for j in ids), states


def test_a_stopped_slurm_sweep_merges_its_complete_cells_and_says_which_will_resume(cluster, profile, tmp_path):
    """As the local executor (tests/test_sweep.py): a second cell whose jobs hold after a checkpoint; SIGTERM once
    the first cell's parts are finished: its jobs are scancelled and gone, the first cell's cube is written (equal
    to the local executor's), the second is said to resume, and the driver exits non-zero after that."""
    two = tmp_path / "two"
    two.mkdir()
    for f in ("_defaults.yaml", "_executor.yaml", f"{CELL}.yaml"):
        (two / f).write_text((profile["dir"] / f).read_text())
    (two / "demo-vgg13.yaml").write_text("network: vgg13\n")
    held = params.load(two / "demo-vgg13.yaml")
    cubes, log = tmp_path / "cubes", tmp_path / "driver.log"
    driver = _driver(cluster, {"dir": two}, cubes, log=log, hold={"NC_TEST_HOLD_AFTER": "1",
                                                                  "NC_TEST_HOLD_CELLS": "demo-vgg13"})
    first = {"params": profile["params"]}
    _poll(lambda: all(runs.part_finished(first["params"], lr, _parts(first, cubes)) for lr in TINY["lrs"]),
          f"finished parts of {CELL}", log)
    _poll(lambda: all(_epochs_in_checkpoint({"params": held}, cubes, lr) >= 1 for lr in TINY["lrs"]),
          "held checkpoints of demo-vgg13", log)
    ids = [jobs.read_record(sweep.Job(held, lr, runs.paths(held, cubes)[1]))["job_id"] for lr in TINY["lrs"]]
    driver.send_signal(signal.SIGTERM)
    status, out = _finish(driver, log)
    assert status != 0 and _live(cluster, ids) == {}, out
    assert "stopping 2 job(s) before exiting" in out and "stopped by SIGTERM" in out, out
    assert f"complete (1 cell(s), cube current): {CELL}" in out, out
    assert "will resume (1 cell(s); run the same command again): demo-vgg13 (0 of 2 parts finished)" in out, out
    assert out.index("2 job(s) stopped") < out.index("cube: ") < out.index("will resume"), out
    _assert_same_cube(_cube(profile, cubes), profile["local"])


def test_a_scancelled_job_is_reported_and_resumed_by_a_rerun(cluster, profile, tmp_path):
    cubes, log = tmp_path / "cubes", tmp_path / "driver.log"
    held, other = TINY["lrs"][1], TINY["lrs"][0]
    hold = {"NC_TEST_HOLD_AFTER": "1", "NC_TEST_HOLD_LRS": f"{held:g}"}
    driver = _driver(cluster, profile, cubes, log=log, hold=hold)
    _poll(lambda: _record(profile, cubes, held) and _epochs_in_checkpoint(profile, cubes, held) >= 1,
          "running job", log)
    job_id = _record(profile, cubes, held)["job_id"]
    cluster.run("scancel", job_id)
    status, out = _finish(driver, log)
    assert status != 0
    assert re.search(rf"\] {CELL} lr={held:g}: cancelled \(Slurm job {job_id}: CANCELLED", out), out
    assert re.search(rf"\] {CELL} lr={other:g}: done in", out), out
    assert not runs.paths(profile["params"], cubes)[0].exists()  # the cell is incomplete: no cube
    _poll(lambda: not _live(cluster, [job_id]), "end of the cancelled job's processes")
    _tamper_wall_time(profile, cubes, held)
    rerun_log = tmp_path / "rerun.log"
    status, out = _finish(_driver(cluster, profile, cubes, log=rerun_log), rerun_log)
    assert status == 0, out
    assert "1 part(s) finished, 1 job(s) to run" in out, out
    assert re.search(rf"ended unfinished \({job_id} CANCELLED", out), out
    assert _record(profile, cubes, held)["job_id"] != job_id  # submitted again
    got = _cube(profile, cubes)
    wall = got["wall_time"].sel(seed=0)
    assert wall.sel(lr=held).item() >= TAMPERED_WALL_TIME > wall.sel(lr=other).item()
    _assert_same_cube(got, profile["local"])


def _live(cluster, ids) -> dict:
    """nc.runs.jobs.slurm_live against the test cluster (its SLURM_CONF)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
        return jobs.slurm_live(ids)
