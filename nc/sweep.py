"""Run a profile's sweep: one job per (parameter file, learning rate), then one cube per parameter file.

DESIGN.md section 7. Every job calls `nc.runs.run_part`, which trains one lr into its own part file,
checkpoints after every epoch, resumes from its checkpoint and skips a finished part; a job killed at
any point therefore resumes from its last checkpoint when the sweep is run again, and parts that are
already finished are not submitted at all. When the jobs are done, each cell's cube is
`nc.cube.merge` of its parts (a pure function of them), validated and written atomically to the path
`nc.runs.paths` gives. A cell whose cube is current (same parameter hash, complete) is left alone.

Executors (submitit):
- `local`: every job is a separate process on this machine (submitit.LocalExecutor), at most
  `parallel` at once. On CPUs `parallel` defaults to the usable cores and each job gets
  max(1, cores // parallel) torch threads, so concurrent jobs share the cores; with GPUs the jobs
  are packed `jobs_per_gpu` to a GPU, each pinned to one by CUDA_VISIBLE_DEVICES.
- `slurm`: one Slurm job array per distinct resource request (submitit.AutoExecutor). A job that
  reaches its time limit gets USR2 `signal_delay_s` before it, is requeued (up to `max_requeues`
  times) and resumes from its checkpoint. The driver waits for the jobs, so keep it alive (tmux, or a
  small CPU job of its own); a driver that died (SIGKILL, a lost node) and is started again does not
  submit the jobs a second time: it finds them by their records (below) and waits for them.

Every submitted job is recorded, atomically and at submit time, beside its part:
`<cube_dir>/parts/<cell>/lr-<lr>.job.json` holds the job id, the executor, the submit time, the
parameter hash and the submitit folder. On start, a Slurm record of these parameters whose job
squeue still lists as live (pending, running, requeued, ...) is waited for; a job that ended without
finishing its part is submitted again (it resumes from its checkpoint); a record of other parameters
is ignored (its job, if still live, is cancelled: it would write into the same part). Local jobs die
with their driver, even a SIGKILLed one (their controllers are started with PR_SET_PDEATHSIG).

Stopping the driver (Ctrl-C, SIGINT, SIGTERM) stops its jobs before it exits, by construction: it
cancels them, waits until they are gone (at most STOP_WAIT_S), SIGKILLs what is left (local: each
job's process group; Slurm: scancel --signal=KILL) and waits again; its exit status is non-zero.
Running the same command again resumes the jobs from their checkpoints. A job cancelled from outside
(scancel) is reported as cancelled; re-running the sweep resumes it.

Executor settings live in `parameters/<profile>/_executor.yaml`, read by this module only (nc.params
rejects unknown keys, so they cannot sit in `_defaults.yaml`); every key is optional:

    executor: slurm          # the profile's default executor (local when absent)
    local:
      parallel: null         # jobs at once; null: the usable cores (CPU) or jobs_per_gpu x GPUs
      jobs_per_gpu: 4
      threads: null          # torch threads per job; null: max(1, cores // parallel)
    slurm:
      partition: null        # sbatch --partition; null: the cluster's default partition
      gpus_per_job: 1
      cpus_per_job: 8        # also the job's torch threads
      mem_gb: null           # null: the cluster's default
      time_min: 2880         # per job (sbatch --time, minutes)
      signal_delay_s: 90     # USR2 this long before the time limit: checkpoint and requeue
      array_parallelism: 64  # jobs of an array running at once
      max_requeues: 10       # requeues after a time-out
      datasets:              # per-dataset overrides of the keys above
        imagenet: {gpus_per_job: 8, time_min: 4320}

Options given to `run_profile` / the command line win over the file, per-dataset overrides included.

A cell whose dataset is unavailable (nc.data.DatasetUnavailable) is reported in one line and skipped,
never replaced; `<cube_dir>/<dataset>-<network>.missing.json` holds the message for the book. Job logs
go to `<cube_dir>/logs/`.

    python -m nc.sweep parameters/quick [--executor local|slurm] [--cube-dir DIR] [--partition P]
                                        [--gpus N] [--time MIN] [--parallel N] [--only CELL ...]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path

import submitit
import yaml

from nc import cube, runs
from nc import params as params_mod

ROOT = Path(__file__).resolve().parent.parent
EXECUTOR_FILE = "_executor.yaml"
EXECUTORS = ("local", "slurm")
LOCAL_DEFAULTS = {"parallel": None, "jobs_per_gpu": 4, "threads": None}
SLURM_DEFAULTS = {"partition": None, "gpus_per_job": 1, "cpus_per_job": 8, "mem_gb": None, "time_min": 2880,
                  "signal_delay_s": 90, "array_parallelism": 64, "max_requeues": 10}
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local jobs have a time limit (2 min by default): make it moot
STOP_WAIT_S = 30.0  # a stopped driver waits this long for its cancelled jobs to go before it SIGKILLs them
RECORD_SUFFIX = ".job.json"


@dataclass
class Job:
    """One (parameter file, lr): the merged parameters, the lr and the folder of the cell's parts."""
    params: dict
    lr: float
    parts_dir: Path

    @property
    def label(self) -> str:
        return f"{self.params['name']} lr={self.lr:g}"


def _section(value, known, where: str) -> dict:
    """A mapping whose keys are all in `known` (None reads as empty); ValueError naming `where` otherwise."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping of key: value, got {value!r}")
    if set(value) - set(known):
        raise ValueError(f"{where}: unknown key {min(set(value) - set(known))!r} (known: {', '.join(known)})")
    return value


def read_executor(profile_dir) -> dict:
    """`_executor.yaml` of a profile merged over the defaults: {executor, local: {...}, slurm: {..., datasets}}."""
    path = Path(profile_dir) / EXECUTOR_FILE
    try:
        raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: cannot read executor settings: {err}") from err
    raw = _section(raw, ("executor", "local", "slurm"), str(path))
    local = _section(raw.get("local"), LOCAL_DEFAULTS, f"{path}: local")
    slurm = _section(raw.get("slurm"), [*SLURM_DEFAULTS, "datasets"], f"{path}: slurm")
    datasets = _section(slurm.get("datasets"), params_mod.DATASETS, f"{path}: slurm.datasets")
    datasets = {d: _section(o, SLURM_DEFAULTS, f"{path}: slurm.datasets.{d}") for d, o in datasets.items()}
    executor = raw.get("executor", "local")
    if executor not in EXECUTORS:
        raise ValueError(f"{path}: executor must be one of {EXECUTORS}, got {executor!r}")
    return {"executor": executor, "local": {**LOCAL_DEFAULTS, **local},
            "slurm": {**SLURM_DEFAULTS, **slurm, "datasets": datasets}}


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_local(n_jobs: int, cores: int, gpus: int, parallel: int | None = None, jobs_per_gpu: int = 4,
               threads: int | None = None) -> tuple[int, int]:
    """(jobs at once, torch threads per job) for the local executor.

    At once: `parallel` if given, else the cores (no GPU) or jobs_per_gpu x gpus; never more than
    n_jobs. Threads: `threads` if given, else max(1, cores // jobs at once), so the jobs share the cores."""
    at_once = parallel or (jobs_per_gpu * gpus if gpus else cores)
    at_once = max(1, min(at_once, n_jobs))
    return at_once, threads or max(1, cores // at_once)


def record_path(job: Job) -> Path:
    """`<parts_dir>/lr-<lr>.job.json`: the record of the job last submitted for this part."""
    part = runs.part_path(job.parts_dir, job.lr)
    return part.with_name(part.stem + RECORD_SUFFIX)


def write_record(job: Job, job_id: str, executor: str, folder) -> Path:
    """Record a submitted job beside its part, atomically (a temporary file, then a rename): job id, executor,
    submit time (UTC), parameter hash, cell, lr and the submitit folder (a Slurm job is rebuilt from id and folder)."""
    path = record_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"job_id": str(job_id), "executor": executor, "cell": job.params["name"], "lr": job.lr,
              "parameter_hash": params_mod.digest(job.params), "folder": str(Path(folder).resolve()),
              "submitted": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_record(job: Job) -> dict | None:
    """The record of the job last submitted for this part (see `write_record`); None if absent or unreadable."""
    try:
        record = json.loads(record_path(job).read_text())
    except (OSError, ValueError):
        return None
    keys = {"job_id", "executor", "parameter_hash", "folder"}
    return record if isinstance(record, dict) and keys <= set(record) else None


@contextlib.contextmanager
def _stop_signals(handler):
    """While inside: SIGINT and SIGTERM call `handler(signum, frame)`; the previous handlers after. Main thread
    only (elsewhere Python cannot set handlers: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


@contextlib.contextmanager
def _held_stop_signals():
    """While inside, a SIGINT / SIGTERM is held and acts only when the block is left: a job is never submitted
    without being registered (running, recorded) for the stop that follows."""
    held = []
    with _stop_signals(lambda signum, frame: held.append(signum)):
        yield
    if held:
        signal.raise_signal(held[0])


@contextlib.contextmanager
def sigterm_exits():
    """While inside: SIGTERM (kill, scancel of a driver job) raises SystemExit, like SIGINT's KeyboardInterrupt,
    so that the executors' cleanup runs and stops the jobs (submitit's jobs ignore SIGTERM). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


_LIBC = []  # the C library, loaded once in the driver (a forked child only calls it)


def _libc():
    if not _LIBC:
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def die_with_parent(sig: int, parent: int) -> None:
    """Linux: this process gets `sig` when its parent (pid `parent`) exits (prctl PR_SET_PDEATHSIG), and exits at
    once if the parent already has; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    _libc().prctl(1, int(sig), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(128 + int(sig))


@contextlib.contextmanager
def _jobs_in_own_process_groups():
    """While inside, submitit's LocalExecutor starts each job's controller as the leader of a new process group
    (its task joins it), with PR_SET_PDEATHSIG=SIGINT: it stops its task when the driver dies, even by SIGKILL.
    submitit has no option for either, so its module's `subprocess` is replaced for the duration."""
    from submitit.local import local as submitit_local

    driver = os.getpid()
    if sys.platform.startswith("linux"):
        _libc()  # loaded here, not in the forked child

    def popen(*args, **kwargs):
        return subprocess.Popen(*args, process_group=0, preexec_fn=lambda: die_with_parent(signal.SIGINT, driver),
                                **kwargs)

    original = getattr(submitit_local, "subprocess", None)
    if original is not subprocess:  # another submitit: leave it alone (the jobs are still cancelled and waited for)
        yield
        return
    submitit_local.subprocess = types.SimpleNamespace(Popen=popen)
    try:
        yield
    finally:
        submitit_local.subprocess = original


def _live_groups(groups) -> set[int]:
    """Those of the process groups `groups` that still hold a live process (zombies do not count)."""
    groups, live = set(groups), set()
    if not groups:
        return live
    if Path("/proc/self/stat").is_file():
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
                if state not in ("Z", "X") and int(pgrp) in groups:
                    live.add(int(pgrp))
        return live
    for group in groups:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        live.add(group)
    return live


def _wait_until(gone, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while not gone():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_local(handles: list, groups: set[int], wait_s: float = STOP_WAIT_S) -> bool:
    """Stop local jobs for good: submitit's cancel (SIGINT to each job's controller, which stops its task), wait
    until every controller has exited (done() reaps it) and no process of `groups` (the jobs' process groups) is
    left, at most wait_s; then SIGKILL the groups and controllers left and wait again. True if all are gone."""
    def gone():
        return all(h.done() for h in handles) and not _live_groups(groups)

    for handle in handles:
        handle.cancel(check=False)
    if _wait_until(gone, wait_s):
        return True
    for group in _live_groups(groups):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    for handle in handles:
        if not handle.done():  # not reaped yet: its pid is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(handle.job_id), signal.SIGKILL)
    return _wait_until(gone, wait_s)


SLURM_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"}


def slurm_live(job_ids) -> dict[str, str]:
    """{job id: state} of those of `job_ids` that squeue lists in a live state (pending, running, requeued,
    completing, ...: anything but an end state); RuntimeError if squeue fails."""
    ids = {str(j) for j in job_ids}
    if not ids:
        return {}
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T",
                          f"--jobs={','.join(sorted(ids))}"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise RuntimeError(f"squeue exited {out.returncode}: {out.stderr.strip()}")
    listed = dict(line.strip().split("|", 1) for line in out.stdout.splitlines() if "|" in line)
    return {j: state for j, state in listed.items() if j in ids and state not in SLURM_ENDED}


def slurm_end_states(job_ids) -> dict[str, str]:
    """{job id: sacct's state} (COMPLETED, CANCELLED by 0, TIMEOUT, ...) for reports; {} where sacct cannot say."""
    ids = sorted({str(j) for j in job_ids})
    try:
        out = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                              f"--jobs={','.join(ids)}"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if line.count("|") == 1) if ids else {}


def stop_slurm(handles: list, wait_s: float = STOP_WAIT_S) -> bool:
    """Stop Slurm jobs for good: scancel, wait until squeue no longer lists them as live (at most wait_s), then
    scancel --full --signal=KILL the ones left and wait again. True if all are gone."""
    ids = [h.job_id for h in handles]

    def live():
        try:
            return slurm_live(ids)
        except (RuntimeError, OSError, subprocess.SubprocessError):
            return dict.fromkeys(ids, "UNKNOWN")

    if not ids:
        return True
    subprocess.run(["scancel", *ids], check=False, timeout=120)
    if _wait_until(lambda: not live(), wait_s):
        return True
    subprocess.run(["scancel", "--full", "--signal=KILL", *live()], check=False, timeout=120)
    return _wait_until(lambda: not live(), wait_s)


def _stop_jobs(handles: list, stop) -> None:
    """Run `stop(handles)` deaf to further SIGINT / SIGTERM (one stop at a time), reporting before and after."""
    print(f"stopping {len(handles)} job(s) before exiting ...", flush=True)
    with _stop_signals(lambda signum, frame: print("nc.sweep: already stopping the jobs", flush=True)):
        gone = stop(handles)
    print(f"{len(handles)} job(s) stopped" if gone else "nc.sweep: some job processes could not be stopped",
          flush=True)


def dataset_missing(params: dict) -> str | None:
    """None if the cell's dataset can be loaded, else the DatasetUnavailable message.

    Loads one image per class on the CPU (a torchvision dataset is downloaded here, once, rather than by
    many jobs at the same time)."""
    from nc import data

    try:
        data.load(params["dataset"], n_per_class=1, test_n_per_class=1, image_size=params["image_size"],
                  device="cpu", seed=params["seed"], root=params["data_root"], npz_dir=params["npz_dir"],
                  npz_file=params["npz_file"], source=params["data_source"])
    except data.DatasetUnavailable as err:
        return str(err)
    return None


class TrainPart(submitit.helpers.Checkpointable):
    """One job: train one lr of one parameter file into its part file. Checkpointable, so a Slurm job that
    reaches its time limit is requeued with the same arguments and resumes from its last epoch's checkpoint."""

    def __call__(self, params: dict, lr: float, parts_dir: str, threads: int) -> dict:
        import torch

        from nc import data

        if os.environ.get("SUBMITIT_EXECUTOR") == "local" and os.environ.get("SUBMITIT_LOCAL_JOB_ID", "").isdigit():
            die_with_parent(signal.SIGKILL, int(os.environ["SUBMITIT_LOCAL_JOB_ID"]))  # dies with its controller
        torch.set_num_threads(threads)
        try:
            return {"part": str(runs.run_part(params, lr, Path(parts_dir), progress=True))}
        except data.DatasetUnavailable as err:
            return {"missing": str(err)}


def _train_part() -> TrainPart:
    """A TrainPart that cloudpickle pickles by reference, as nc.sweep.TrainPart, also when this module runs as
    __main__ (python -m nc.sweep), whose classes it would pickle by value, globals and all."""
    from nc import sweep

    return sweep.TrainPart()


def _fmt(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _outcome(job) -> dict:
    """The job's result dict, {"cancelled": ...} for a Slurm job cancelled without a result (scancel), or
    {"error": ...} naming its log."""
    if isinstance(job, submitit.SlurmJob) and not job.paths.result_pickle.exists():
        state = job.state
        if state.upper().startswith("CANCELLED"):
            return {"cancelled": f"Slurm job {job.job_id}: {state}"}
    try:
        return job.result()
    except Exception as err:
        sections = str(err).split("\n----------------------\n")  # FailedJobError: header, traceback, log paths
        lines = (sections[1] if len(sections) > 2 else str(err)).strip().splitlines() or [type(err).__name__]
        reason = lines[-1] if len(sections) > 2 else lines[0]
        return {"error": f"{reason} (log: {job.paths.stderr})"}


def _progress(total: int):
    """A reporter printing `[done/total] job: outcome; about T left` as jobs finish (ETA from the throughput)."""
    t0, done = time.perf_counter(), 0

    def report(job: Job, outcome: dict, took: float) -> None:
        nonlocal done
        done += 1
        what = (f"done in {_fmt(took)}" if "part" in outcome else "dataset missing" if "missing" in outcome else
                f"cancelled ({outcome['cancelled']}); re-running the sweep resumes it" if "cancelled" in outcome
                else f"FAILED: {outcome['error']}")
        eta = (f"; at the pace so far about {_fmt((time.perf_counter() - t0) / done * (total - done))} left"
               if done < total else "")
        print(f"[{done}/{total}] {job.label}: {what}{eta}", flush=True)

    return report


STATUS_EVERY_S = 300  # while jobs run, the driver prints their progress bars this often (seconds)


def last_progress(log) -> str | None:
    """The last progress-bar line in a job's stderr log (`cell lr=0.05:  8%|8/100 [04:12<40:53, ...]`), or None."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    bars = [line.strip() for line in text.replace("\r", "\n").split("\n") if "epoch" in line and "|" in line]
    return bars[-1] if bars else None


def _status_printer(total: int):
    """A `status(running, done, waiting)` that prints, at most every STATUS_EVERY_S, one block: jobs done /
    running / waiting, then each running job's own progress bar (its ETA)."""
    t0 = last = time.perf_counter()

    def status(running: dict, done: int, waiting: int) -> None:
        nonlocal last
        if not running or time.perf_counter() - last < STATUS_EVERY_S:
            return
        last = time.perf_counter()
        print(f"[{_fmt(last - t0)}] {done}/{total} job(s) done, {len(running)} running, {waiting} waiting", flush=True)
        for handle, (job, _, _) in running.items():
            print(f"    {last_progress(handle.paths.stderr) or job.label + ': starting (or queued)'}", flush=True)

    return status


def _poll(running: dict, outcomes: dict, report, status, waiting: int, poll_s: float) -> list:
    """One round of a driver's wait loop over `running` ({handle: (job, started, gpu)}): pops, records and
    reports the finished jobs (returned as their (job, started, gpu)), sleeps poll_s if none finished, and
    lets `status` print when due."""
    finished = []
    for handle in [h for h in running if h.done()]:
        entry = running.pop(handle)
        job, started, _ = entry
        outcomes[id(job)] = _outcome(handle)
        report(job, outcomes[id(job)], time.perf_counter() - started)
        finished.append(entry)
    if not finished:
        time.sleep(poll_s)
    status(running, len(outcomes), waiting)
    return finished


def _run_local(jobs: list[Job], folder: Path, settings: dict, report, poll_s: float) -> dict:
    import torch

    cores, gpus = usable_cores(), torch.cuda.device_count()
    at_once, threads = plan_local(len(jobs), cores, gpus, settings["parallel"], settings["jobs_per_gpu"],
                                  settings["threads"])
    on = f"{gpus} GPU(s), {cores} cores" if gpus else f"{cores} cores"
    print(f"local executor: {at_once} job(s) at once on {on}, {threads} torch thread(s) each", flush=True)
    executor = submitit.LocalExecutor(folder)
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    pending, running, outcomes, per_gpu, groups = list(jobs), {}, {}, [0] * gpus, {}
    status = _status_printer(len(jobs))
    try:
        while pending or running:
            while pending and len(running) < at_once:
                job = pending.pop(0)
                gpu = min(range(gpus), key=per_gpu.__getitem__) if gpus else None
                executor.update_parameters(gpus_per_node=int(gpus > 0), visible_gpus=() if gpu is None else (gpu,))
                with _held_stop_signals():
                    with _jobs_in_own_process_groups():
                        handle = executor.submit(_train_part(), job.params, job.lr, str(job.parts_dir), threads)
                    running[handle] = (job, time.perf_counter(), gpu)
                    groups[handle] = _own_group(int(handle.job_id))
                    write_record(job, handle.job_id, "local", folder)
                if gpu is not None:
                    per_gpu[gpu] += 1
            for _, _, gpu in _poll(running, outcomes, report, status, len(pending), poll_s):
                if gpu is not None:
                    per_gpu[gpu] -= 1
    finally:
        if running:  # interrupted: the job processes go before we do (they resume on the next run)
            _stop_jobs(list(running), lambda hs: stop_local(hs, {groups[h] for h in hs if groups.get(h)}))
    return outcomes


def _own_group(pid: int) -> int | None:
    """pid if the process leads its own process group (a job's controller), else None."""
    try:
        return pid if os.getpgid(pid) == pid else None
    except (ProcessLookupError, PermissionError):
        return None


def slurm_settings(job: Job, settings: dict) -> dict:
    """The Slurm settings of one job: the profile's, its dataset's overrides, then the caller's options."""
    out = {k: v for k, v in settings.items() if k not in ("datasets", "options")}
    out.update(settings["datasets"].get(job.params["dataset"], {}))
    out.update(settings.get("options", {}))
    return out


def slurm_executor(folder, s: dict, cluster: str = "slurm") -> submitit.AutoExecutor:
    """A submitit executor for one resource request `s` (see `slurm_settings`)."""
    executor = submitit.AutoExecutor(folder, cluster=cluster, slurm_max_num_timeout=s["max_requeues"])
    executor.update_parameters(name="nc-sweep", nodes=1, tasks_per_node=1, timeout_min=int(s["time_min"]),
                               gpus_per_node=int(s["gpus_per_job"]), cpus_per_task=int(s["cpus_per_job"]),
                               mem_gb=s["mem_gb"], slurm_partition=s["partition"],
                               slurm_signal_delay_s=int(s["signal_delay_s"]),
                               slurm_array_parallelism=int(s["array_parallelism"]))
    return executor


def _recorded_slurm_jobs(jobs: list[Job]) -> tuple[list[Job], dict]:
    """(jobs to submit, {handle: (job, started, None)} of the live Slurm jobs recorded for the others).

    A record of these parameters whose job squeue lists as live is waited for, not submitted again; a recorded
    job that ended is submitted again (it resumes from its checkpoint) unless its part has been finished since; a
    record of other parameters is ignored, and its job cancelled if still live (it writes into the same part)."""
    records = {id(j): r for j in jobs if (r := read_record(j)) is not None and r["executor"] == "slurm"}
    live = slurm_live([r["job_id"] for r in records.values()])
    todo, adopted, ended, stale = [], {}, [], []
    for job in jobs:
        r = records.get(id(job))
        same = r is not None and r["parameter_hash"] == params_mod.digest(job.params)
        if same and r["job_id"] in live:
            adopted[submitit.SlurmJob(folder=r["folder"], job_id=r["job_id"])] = (job, time.perf_counter(), None)
            continue
        if same and runs.part_finished(job.params, job.lr, job.parts_dir):
            continue
        if same:
            ended.append(r["job_id"])
        elif r is not None and r["job_id"] in live:
            stale.append(r["job_id"])
        todo.append(job)
    if adopted:
        print(f"slurm: {len(adopted)} job(s) of an earlier driver still live ("
              f"{', '.join(f'{h.job_id} {live[h.job_id]}' for h in adopted)}): waiting for them, not submitting "
              "them again", flush=True)
    if ended:
        states = slurm_end_states(ended)
        print(f"slurm: {len(ended)} recorded job(s) ended unfinished ("
              f"{', '.join(j + ' ' + states.get(j, 'gone') for j in ended)}): submitting them again", flush=True)
    if stale:
        subprocess.run(["scancel", *stale], check=False, timeout=120)
        print(f"slurm: cancelled {', '.join(stale)}: they trained other parameters into these parts", flush=True)
    return todo, adopted


def _run_slurm(jobs: list[Job], folder: Path, settings: dict, report, poll_s: float) -> dict:
    """Submit the jobs (those of a live record are waited for instead), then wait: a finished job's result file
    is seen within a second, the others' states are read from sacct every poll_s."""
    todo, running = _recorded_slurm_jobs(jobs)
    groups: dict[tuple, list[Job]] = {}
    for job in todo:
        s = slurm_settings(job, settings)
        groups.setdefault(tuple(sorted(s.items())), []).append(job)
    try:
        for key, group in groups.items():
            s = dict(key)
            executor = slurm_executor(folder, s)
            with _held_stop_signals():
                with executor.batch():
                    handles = [executor.submit(_train_part(), j.params, j.lr, str(j.parts_dir),
                                               int(s["cpus_per_job"])) for j in group]
                for h, j in zip(handles, group):
                    running[h] = (j, time.perf_counter(), None)
                    write_record(j, h.job_id, "slurm", folder)
            print(f"slurm: submitted {len(group)} job(s) (array {handles[0].job_id.split('_')[0]}): "
                  f"partition={s['partition'] or 'default'}, {s['gpus_per_job']} GPU, {s['cpus_per_job']} CPUs, "
                  f"{s['time_min']} min, {s['array_parallelism']} at once", flush=True)
        outcomes, status, checked = {}, _status_printer(len(jobs)), float("-inf")
        while running:
            if time.monotonic() - checked >= poll_s:
                submitit.SlurmJob.watcher.update()  # one sacct call for every job
                checked = time.monotonic()
            _poll(running, outcomes, report, status, 0, min(poll_s, 1.0))
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the jobs go before we do; a re-run resumes them
        if running:
            _stop_jobs(list(running), stop_slurm)
        raise
    return outcomes


def run_profile(profile_dir, cube_dir, executor: str | None = None, *, partition: str | None = None,
                gpus_per_job: int | None = None, time_min: int | None = None, parallel: int | None = None,
                poll_s: float | None = None, only=None) -> list[Path]:
    """Train every (parameter file, lr) of a profile as jobs and merge each cell's cube; returns the cube paths.

    executor: local or slurm (None: `executor` of the profile's _executor.yaml, else local). partition,
    gpus_per_job, time_min: Slurm options; parallel: jobs at once (local) or array parallelism (Slurm).
    Cells with an unavailable dataset are skipped and get a `.missing.json` marker; raises RuntimeError
    after merging what it can if any job failed or was cancelled. only: cell-name patterns (params.select);
    the other cells are left alone. Every job is recorded beside its part (`write_record`); a Slurm job of a
    live record is waited for, not submitted again. SIGINT / SIGTERM (main thread) stop the jobs before the
    exception (KeyboardInterrupt / SystemExit) leaves this function."""
    profile_dir, cube_dir = Path(profile_dir), Path(cube_dir)
    config = read_executor(profile_dir)
    executor = executor or config["executor"]
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    files = params_mod.profile_files(profile_dir)
    if not files:
        raise ValueError(f"{profile_dir} has no parameter files")
    files = params_mod.select(files, only)
    cells = [params_mod.load(f) for f in files]  # a bad file stops here, before anything runs
    seen = {}
    for p in cells:
        cube_path, _ = runs.paths(p, cube_dir)
        if cube_path in seen:
            raise ValueError(f"{seen[cube_path]}.yaml and {p['name']}.yaml both write {cube_path}")
        seen[cube_path] = p["name"]

    current, to_merge, jobs, missing, probed, finished_parts = [], [], [], {}, {}, 0
    for p in cells:
        cube_path, parts_dir = runs.paths(p, cube_dir)
        if runs.is_current(cube_path, p):
            current.append(cube_path)
            cube.missing_path(cube_dir, p).unlink(missing_ok=True)
            continue
        todo = [Job(p, lr, parts_dir) for lr in p["lrs"] if not runs.part_finished(p, lr, parts_dir)]
        finished_parts += len(p["lrs"]) - len(todo)
        if todo:
            source = (p["dataset"], p["npz_dir"], p["npz_file"], p["data_root"], p["image_size"])
            if source not in probed:
                probed[source] = dataset_missing(p)
            if probed[source] is not None:
                missing[p["name"]] = p
                cube.write_missing(cube_dir, p, probed[source])
                print(f"missing: {p['name']}: {probed[source]}", flush=True)
                continue
        to_merge.append(p)
        jobs += todo

    print(f"sweep {profile_dir.name}: {len(cells)} cells, {sum(len(p['lrs']) for p in cells)} lrs; "
          f"{len(current)} cube(s) current, {len(missing)} cell(s) missing, {finished_parts} part(s) finished, "
          f"{len(jobs)} job(s) to run ({executor})", flush=True)
    outcomes = {}
    if jobs:
        folder = cube_dir / "logs"  # submitit names each job's files <job id>_<task>_log.{out,err}, ...
        report = _progress(len(jobs))
        with sigterm_exits():
            if executor == "local":
                outcomes = _run_local(jobs, folder, config["local"] | ({"parallel": parallel} if parallel else {}),
                                      report, 0.5 if poll_s is None else poll_s)
            else:
                options = {k: v for k, v in (("partition", partition), ("gpus_per_job", gpus_per_job),
                                             ("time_min", time_min), ("array_parallelism", parallel))
                           if v is not None}
                outcomes = _run_slurm(jobs, folder, config["slurm"] | {"options": options}, report,
                                      30.0 if poll_s is None else poll_s)

    failed = []
    for job in jobs:
        outcome = outcomes.get(id(job), {})
        if "missing" in outcome and job.params["name"] not in missing:
            missing[job.params["name"]] = job.params
            cube.write_missing(cube_dir, job.params, outcome["missing"])
            print(f"missing: {job.params['name']}: {outcome['missing']}", flush=True)
        elif "part" not in outcome:
            why = f"cancelled ({outcome['cancelled']})" if "cancelled" in outcome else outcome.get("error", "no result")
            failed.append(f"{job.label}: {why}")
    written = []
    for p in to_merge:
        cube_path, parts_dir = runs.paths(p, cube_dir)
        if p["name"] in missing or not all(runs.part_finished(p, lr, parts_dir) for lr in p["lrs"]):
            continue
        ds = cube.merge([cube.open_cube(runs.part_path(parts_dir, lr)) for lr in p["lrs"]])
        cube.write(cube.validate(ds), cube_path)
        cube.missing_path(cube_dir, p).unlink(missing_ok=True)
        print(f"cube: {cube_path}", flush=True)
        written.append(cube_path)
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed or were cancelled (re-running the sweep resumes them):\n  " +
                           "\n  ".join(failed))
    return sorted(current + written)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nc.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("profile_dir", help="a folder of parameter files, e.g. parameters/quick")
    ap.add_argument("--executor", choices=EXECUTORS, default=None,
                    help="default: `executor` of the profile's _executor.yaml, else local")
    ap.add_argument("--cube-dir", default=None, help="default: cubes/<profile> in the repository")
    ap.add_argument("--partition", default=None, help="Slurm partition")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs per Slurm job")
    ap.add_argument("--time", type=int, default=None, help="Slurm time limit per job, minutes")
    ap.add_argument("--parallel", type=int, default=None, help="jobs at once (local) or Slurm array parallelism")
    ap.add_argument("--only", nargs="+", default=None, metavar="CELL",
                    help="run only these cells: names or patterns (cifar10-vgg13, 'mnist-*') or datasets (mnist)")
    args = ap.parse_args(argv)
    profile_dir = Path(args.profile_dir)
    cube_dir = Path(args.cube_dir) if args.cube_dir else ROOT / "cubes" / profile_dir.resolve().name
    try:
        with sigterm_exits():
            paths = run_profile(profile_dir, cube_dir, args.executor, partition=args.partition,
                                gpus_per_job=args.gpus, time_min=args.time, parallel=args.parallel, only=args.only)
    except (RuntimeError, ValueError) as err:  # ParameterError is a ValueError
        sys.exit(f"nc.sweep: {err}")
    except KeyboardInterrupt:
        sys.exit("nc.sweep: interrupted; its jobs were stopped (running the same command again resumes them)")
    print(f"{len(paths)} cube(s) in {cube_dir}", flush=True)


if __name__ == "__main__":
    main()
