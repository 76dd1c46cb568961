"""The executors of a sweep (submitit): their settings (`parameters/<profile>/_executor.yaml`) and their wait loops.

- `local`: every job is a separate process on this machine (submitit.LocalExecutor), at most `parallel` at once. On
  CPUs `parallel` defaults to the usable cores and each job gets max(1, cores // parallel) torch threads, so
  concurrent jobs share the cores; with GPUs the jobs are packed `jobs_per_gpu` to a GPU, each pinned to one by
  CUDA_VISIBLE_DEVICES.
- `slurm`: one Slurm job array per distinct resource request (submitit.AutoExecutor), one task per GPU (a DDP
  process each, nc.train.ddp). A job that reaches its time limit gets USR2 `signal_delay_s` before it, is requeued (up
  to
  `max_requeues` times) and resumes from its checkpoint. A driver started again finds the live jobs of an earlier
  one by their records (nc.runs.jobs) and waits for them instead of submitting them again.

While jobs run, the driver prints every STATUS_EVERY_S a block: jobs done / running / waiting, then each running
job's progress as the job itself writes it (nc.train.progress). Settings, every key optional:

    executor: slurm          # the profile's default executor (local when absent)
    local:
      parallel: null         # jobs at once; null: the usable cores (CPU) or jobs_per_gpu x GPUs
      jobs_per_gpu: 4
      threads: null          # torch threads per job; null: max(1, cores // parallel)
    slurm:
      partition: null        # sbatch --partition; null: the cluster's default partition
      gpus_per_job: 1        # one task (DDP process) per GPU
      cpus_per_job: 8        # shared among the job's tasks; also their torch threads
      mem_gb: null           # null: the cluster's default
      time_min: 2880         # per job (sbatch --time, minutes)
      signal_delay_s: 90     # USR2 this long before the time limit: checkpoint and requeue
      array_parallelism: 64  # jobs of an array running at once
      max_requeues: 10       # requeues after a time-out
      datasets:              # per-dataset overrides of the keys above
        imagenet: {gpus_per_job: 8, time_min: 4320}
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import submitit
import yaml

from nc import data, runs
from nc.runs import jobs
from nc.runs import params as params_mod
from nc.runs.cli import EXECUTORS
from nc.train import ddp, progress

EXECUTOR_FILE = "_executor.yaml"
LOCAL_DEFAULTS = {"parallel": None, "jobs_per_gpu": 4, "threads": None}
SLURM_DEFAULTS = {"partition": None, "gpus_per_job": 1, "cpus_per_job": 8, "mem_gb": None, "time_min": 2880,
                  "signal_delay_s": 90, "array_parallelism": 64, "max_requeues": 10}
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local jobs have a time limit (2 min by default): make it moot


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
    datasets = _section(slurm.get("datasets"), data.names(), f"{path}: slurm.datasets")
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


class TrainPart(submitit.helpers.Checkpointable):
    """One job: train one (lr, run seed) of one parameter file into its part file. Checkpointable, so a Slurm job
    that reaches its time limit is requeued with the same arguments and resumes from its last epoch's checkpoint."""

    def __call__(self, params: dict, lr: float, parts_dir: str, threads: int, seed: int | None = None) -> dict:
        import torch

        from nc import data

        if os.environ.get("SUBMITIT_EXECUTOR") == "local" and os.environ.get("SUBMITIT_LOCAL_JOB_ID", "").isdigit():
            jobs.die_with_parent(signal.SIGKILL, int(os.environ["SUBMITIT_LOCAL_JOB_ID"]))  # dies with its controller
        torch.set_num_threads(threads)
        ddp.setup(params["device"])  # the tasks of a job of several GPUs: one DDP process each; one task: nothing
        try:
            return {"part": str(runs.run_part(params, lr, Path(parts_dir), progress=True, seed=seed))}
        except data.DatasetUnavailable as err:
            return {"missing": str(err)}
        finally:
            ddp.teardown()


def outcome(job) -> dict:
    """The job's result dict, {"cancelled": ...} for a Slurm job cancelled without a result (scancel), or
    {"error": ...} naming its log."""
    if isinstance(job, submitit.SlurmJob) and not job.paths.result_pickle.exists():
        state = job.state
        if state.upper().startswith("CANCELLED"):
            return {"cancelled": f"Slurm job {job.job_id}: {state}"}
    try:
        return job.results()[0]  # a job of several tasks (DDP) has one result per task; rank 0's is the part
    except Exception as err:
        sections = str(err).split("\n----------------------\n")  # FailedJobError: header, traceback, log paths
        lines = (sections[1] if len(sections) > 2 else str(err)).strip().splitlines() or [type(err).__name__]
        reason = lines[-1] if len(sections) > 2 else lines[0]
        return {"error": f"{reason} (log: {job.paths.stderr})"}


STATUS_EVERY_S = 300  # while jobs run, the driver prints their progress bars this often (seconds)


def status_printer(total: int):
    """A `status(running, done, waiting)` that prints, at most every STATUS_EVERY_S, one block: jobs done /
    running / waiting, then each running job's own progress (nc.train.progress: epoch, pace, ETA)."""
    t0 = last = time.perf_counter()

    def status(running: dict, done: int, waiting: int) -> None:
        nonlocal last
        if not running or time.perf_counter() - last < STATUS_EVERY_S:
            return
        last = time.perf_counter()
        print(f"[{progress.fmt(last - t0)}] {done}/{total} job(s) done, {len(running)} running, {waiting} waiting",
              flush=True)
        for job, _, _ in running.values():
            info = progress.read(progress.path_for(runs.part_path(job.parts_dir, job.lr, job.seed)))
            print(f"    {progress.line(info) if info else job.label + ': starting (or queued)'}", flush=True)

    return status


def poll(running: dict, outcomes: dict, report, status, pending: list, poll_s: float, slots: int) -> list:
    """One round of a driver's wait loop over `running` ({handle: (job, started, gpu)}): pops, records and
    reports the finished jobs (returned as their (job, started, gpu)), sleeps poll_s if none finished, and
    lets `status` print when due. report(job, outcome, seconds, running jobs, pending jobs, slots): `slots` jobs
    run at once, `pending` start in that order (for the sweep's time left, nc.runs.eta)."""
    finished = []
    for handle in [h for h in running if h.done()]:
        entry = running.pop(handle)
        job, started, _ = entry
        outcomes[id(job)] = outcome(handle)
        report(job, outcomes[id(job)], time.perf_counter() - started, [j for j, _, _ in running.values()], pending,
               slots)
        finished.append(entry)
    if not finished:
        time.sleep(poll_s)
    status(running, len(outcomes), len(pending))
    return finished


def run_local(todo: list, folder: Path, settings: dict, report, poll_s: float, stop_at: float | None = None) -> dict:
    """Run the jobs as local processes, at most `parallel` at once; {id(job): outcome}. From `stop_at` (a POSIX
    time; None: never) it starts no job and raises nc.runs.jobs.DeadlineReached; interrupted in any way, it stops
    the running jobs before the exception leaves."""
    import torch

    cores, gpus = usable_cores(), torch.cuda.device_count()
    at_once, threads = plan_local(len(todo), cores, gpus, settings["parallel"], settings["jobs_per_gpu"],
                                  settings["threads"])
    on = f"{gpus} GPU(s), {cores} cores" if gpus else f"{cores} cores"
    print(f"local executor: {at_once} job(s) at once on {on}, {threads} torch thread(s) each", flush=True)
    executor = submitit.LocalExecutor(folder)
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    pending, running, outcomes, per_gpu, groups = list(todo), {}, {}, [0] * gpus, {}
    status = status_printer(len(todo))
    try:
        while pending or running:
            jobs.check_deadline(stop_at)
            while pending and len(running) < at_once:
                job = pending.pop(0)
                gpu = min(range(gpus), key=per_gpu.__getitem__) if gpus else None
                executor.update_parameters(gpus_per_node=int(gpus > 0), visible_gpus=() if gpu is None else (gpu,))
                with jobs.held_stop_signals():
                    with jobs.jobs_in_own_process_groups():
                        handle = executor.submit(TrainPart(), job.params, job.lr, str(job.parts_dir), threads,
                                                 job.seed)
                    running[handle] = (job, time.perf_counter(), gpu)
                    groups[handle] = jobs.own_group(int(handle.job_id))
                    jobs.write_record(job, handle.job_id, "local", folder)
                if gpu is not None:
                    per_gpu[gpu] += 1
            for _, _, gpu in poll(running, outcomes, report, status, pending, poll_s, at_once):
                if gpu is not None:
                    per_gpu[gpu] -= 1
    finally:
        if running:  # interrupted: the job processes go before we do (they resume on the next run)
            jobs.stop_jobs(list(running), lambda hs: jobs.stop_local(hs, {groups[h] for h in hs if groups.get(h)}))
    return outcomes


def slurm_settings(job, settings: dict) -> dict:
    """The Slurm settings of one job: the profile's, its dataset's overrides, then the caller's options."""
    out = {k: v for k, v in settings.items() if k not in ("datasets", "options")}
    out.update(settings["datasets"].get(job.params["dataset"], {}))
    out.update(settings.get("options", {}))
    return out


def slurm_tasks(s: dict) -> tuple[int, int]:
    """(tasks, CPUs and torch threads per task) of a job: one task per GPU (a DDP process each, nc.train.ddp), at least
    one; the job's cpus_per_job shared among them."""
    tasks = max(1, int(s["gpus_per_job"]))
    return tasks, max(1, int(s["cpus_per_job"]) // tasks)


def slurm_executor(folder, s: dict, cluster: str = "slurm") -> submitit.AutoExecutor:
    """A submitit executor for one resource request `s` (see `slurm_settings`): one node, one task per GPU."""
    tasks, cpus = slurm_tasks(s)
    executor = submitit.AutoExecutor(folder, cluster=cluster, slurm_max_num_timeout=s["max_requeues"])
    executor.update_parameters(name="nc-sweep", nodes=1, tasks_per_node=tasks, timeout_min=int(s["time_min"]),
                               gpus_per_node=int(s["gpus_per_job"]), cpus_per_task=cpus,
                               mem_gb=s["mem_gb"], slurm_partition=s["partition"],
                               slurm_signal_delay_s=int(s["signal_delay_s"]),
                               slurm_array_parallelism=int(s["array_parallelism"]))
    return executor


def recorded_slurm_jobs(todo: list) -> tuple[list, dict]:
    """(jobs to submit, {handle: (job, started, None)} of the live Slurm jobs recorded for the others).

    A record of these parameters whose job squeue lists as live is waited for, not submitted again; a recorded
    job that ended is submitted again (it resumes from its checkpoint) unless its part has been finished since; a
    record of other parameters is ignored, and its job cancelled if still live (it writes into the same part)."""
    records = {id(j): r for j in todo if (r := jobs.read_record(j)) is not None and r["executor"] == "slurm"}
    live = jobs.slurm_live([r["job_id"] for r in records.values()])
    submit, adopted, ended, stale = [], {}, [], []
    for job in todo:
        r = records.get(id(job))
        same = r is not None and r["parameter_hash"] == params_mod.run_digest(job.params)
        if same and r["job_id"] in live:
            adopted[submitit.SlurmJob(folder=r["folder"], job_id=r["job_id"])] = (job, time.perf_counter(), None)
            continue
        if same and runs.part_finished(job.params, job.lr, job.parts_dir, job.seed):
            continue
        if same:
            ended.append(r["job_id"])
        elif r is not None and r["job_id"] in live:
            stale.append(r["job_id"])
        submit.append(job)
    if adopted:
        print(f"slurm: {len(adopted)} job(s) of an earlier driver still live ("
              f"{', '.join(f'{h.job_id} {live[h.job_id]}' for h in adopted)}): waiting for them, not submitting "
              "them again", flush=True)
    if ended:
        states = jobs.slurm_end_states(ended)
        print(f"slurm: {len(ended)} recorded job(s) ended unfinished ("
              f"{', '.join(j + ' ' + states.get(j, 'gone') for j in ended)}): submitting them again", flush=True)
    if stale:
        subprocess.run(["scancel", *stale], check=False, timeout=120)
        print(f"slurm: cancelled {', '.join(stale)}: they trained other parameters into these parts", flush=True)
    return submit, adopted


def run_slurm(todo: list, folder: Path, settings: dict, report, poll_s: float, stop_at: float | None = None) -> dict:
    """Submit the jobs (those of a live record are waited for instead), then wait: a finished job's result file
    is seen within a second, the others' states are read from sacct every poll_s. From `stop_at` (a POSIX time;
    None: never) it submits nothing more and raises nc.runs.jobs.DeadlineReached; interrupted in any way, it
    stops (scancel) the jobs before the exception leaves."""
    submit, running = recorded_slurm_jobs(todo)
    groups: dict[tuple, list] = {}
    for job in submit:
        s = slurm_settings(job, settings)
        groups.setdefault(tuple(sorted(s.items())), []).append(job)
    try:
        for key, group in groups.items():
            jobs.check_deadline(stop_at)
            s = dict(key)
            executor = slurm_executor(folder, s)
            with jobs.held_stop_signals():
                with executor.batch():
                    handles = [executor.submit(TrainPart(), j.params, j.lr, str(j.parts_dir), slurm_tasks(s)[1],
                                               j.seed) for j in group]
                for h, j in zip(handles, group):
                    running[h] = (j, time.perf_counter(), None)
                    jobs.write_record(j, h.job_id, "slurm", folder)
            print(f"slurm: submitted {len(group)} job(s) (array {handles[0].job_id.split('_')[0]}): "
                  f"partition={s['partition'] or 'default'}, {s['gpus_per_job']} GPU, {s['cpus_per_job']} CPUs, "
                  f"{s['time_min']} min, {s['array_parallelism']} at once", flush=True)
        outcomes, status, checked = {}, status_printer(len(todo)), float("-inf")
        parallel = settings.get("options", {}).get("array_parallelism", settings["array_parallelism"])
        slots = max(1, min(len(todo), int(parallel)))  # at most: the cluster may run fewer
        while running:
            jobs.check_deadline(stop_at)
            if time.monotonic() - checked >= poll_s:
                submitit.SlurmJob.watcher.update()  # one sacct call for every job
                checked = time.monotonic()
            poll(running, outcomes, report, status, [], min(poll_s, 1.0), slots)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the jobs go before we do; a re-run resumes them
        if running:
            jobs.stop_jobs(list(running), jobs.stop_slurm)
        raise
    return outcomes
