"""Run a profile's sweep: one job per (parameter file, learning rate, run seed), then one cube per parameter file.

Every job calls `nc.runs.run_part`, which trains one (lr, seed) into its own part file, checkpoints after every
epoch, resumes from its checkpoint and skips a finished part: a job killed at any point resumes from its last
checkpoint when the sweep is run again, and parts already finished are not submitted at all. When the jobs are
done, each cell's cube is `nc.runs.merge_and_write` of its parts (nc.runs.cube.merge, a pure function of them,
validated and written atomically; then the finished parts' checkpoints are deleted unless --keep-checkpoints). A
cell whose cube is current (same parameters and cube format, complete) is left alone.

The executors (local processes, or Slurm through submitit) and their settings in `parameters/<profile>/
_executor.yaml` are nc.runs.executors'; the job records beside the parts and stopping the jobs are nc.runs.jobs'.
Stopping the
driver (Ctrl-C, SIGINT, SIGTERM, or `--deadline`) stops its jobs, merges every cell whose parts are all finished
into its cube, says which cells are complete and which will resume, and only then exits, non-zero; running the
same command again resumes the others. `--deadline SECONDS|HH:MM[:SS]` (seconds from now or a time of day) starts
no job after, and stops, nc.runs.jobs.STOP_MARGIN_S before it, so that the driver is gone by then. A
cell whose dataset is unavailable (nc.data.DatasetUnavailable) is reported in one line and skipped, never replaced;
`<cube_dir>/<cell>.missing.json` holds the message for the book. Job logs go to `<cube_dir>/logs/`.

    python -m nc.sweep parameters/quick [--executor local|slurm] [--cube-dir DIR] [--partition P] [--gpus N]
                       [--time MIN] [--parallel N] [--only CELL ...] [--seeds N] [--deadline SECONDS|HH:MM]
                       [--keep-checkpoints]
    python -m nc.sweep parameters/paper --plan [--gpu A100|H100|...]    # what it would cost; trains nothing
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nc import paths, runs
from nc.runs import cli, cube, eta, executors, jobs, plan
from nc.runs import params as params_mod
from nc.train import progress
from nc.train.progress import fmt

ROOT = paths.ROOT


@dataclass
class Job:
    """One (parameter file, lr, run seed): the merged parameters, the lr, the seed and the folder of its parts."""
    params: dict
    lr: float
    parts_dir: Path
    seed: int = 0

    @property
    def label(self) -> str:
        return params_mod.run_label(self.params, self.lr, self.seed)


def dataset_missing(params: dict) -> str | None:
    """None if the cell's dataset (and its OOD dataset, `ood_dataset`) can be loaded, else the DatasetUnavailable
    message.

    Loads one image per class on the CPU (a torchvision dataset is downloaded here, once, rather than by many jobs at
    the same time); a prepared store is only opened."""
    from nc import data

    arguments = params_mod.data_arguments(params)
    if params["data_source"] != "store":
        arguments |= {"n_per_class": 1, "test_n_per_class": 1}
    try:
        data.load(**arguments, device="cpu")
    except data.DatasetUnavailable as err:
        return str(err)
    ood = params_mod.ood_data_arguments(params)  # the OOD set the file asks for (`ood_dataset`) is data it needs
    if ood is not None:
        try:
            data.load(**ood | {"n_per_class": 1, "test_n_per_class": 1}, device="cpu")
        except data.DatasetUnavailable as err:
            return f"{params.get('file', params_mod.cell_name(params))}: key 'ood_dataset': {err}"
    return None


def _progress(total: int):
    """A reporter printing `[done/total] job: outcome; about T left` as jobs finish. T is nc.runs.eta.time_left:
    from the epoch pace each job reports (nc.train.progress; a finished job's too) and the jobs that run at once."""
    done, reported = 0, {}  # {job label: (cell, seconds per epoch)}: the last pace each job reported

    def info_of(job: Job) -> dict | None:
        info = progress.read(progress.path_for(runs.part_path(job.parts_dir, job.lr, job.seed)))
        if info and info.get("seconds_per_epoch"):
            reported[job.label] = (job.params["name"], info["seconds_per_epoch"])
        return info

    def report(job: Job, outcome: dict, took: float, running: list, waiting: list, slots: int) -> None:
        nonlocal done
        done += 1
        what = (f"done in {fmt(took)}" if "part" in outcome else "dataset missing" if "missing" in outcome else
                f"cancelled ({outcome['cancelled']}); re-running the sweep resumes it" if "cancelled" in outcome
                else f"FAILED: {outcome['error']}")
        if info_of(job) is None and "part" in outcome:  # finished before its first progress file: its wall time
            reported[job.label] = (job.params["name"], took / job.params["epochs"])
        left = eta.time_left([(j.params["name"], j.params["epochs"], info_of(j)) for j in running],
                             [(j.params["name"], j.params["epochs"]) for j in waiting], slots,
                             eta.paces(reported.values())) if done < total else None
        tail = (f"; about {fmt(left)} left ({len(running)} running, {len(waiting)} waiting, {slots} at once, "
                f"at each cell's epoch pace)" if left is not None else "")
        print(f"[{done}/{total}] {job.label}: {what}{tail}", flush=True)

    return report


@dataclass
class Plan:
    """What a sweep found before it ran anything: cubes already current, cells to merge (in file order), jobs to
    run, cells without data, parts already finished."""
    current: list
    to_merge: list
    todo: list
    missing: dict
    finished_parts: int


def _read_cells(profile_dir: Path, cube_dir: Path, only, seeds) -> list[dict]:
    """The selected parameter files, loaded (a bad file stops here); ValueError if two of them write one cube."""
    files = params_mod.profile_files(profile_dir)
    if not files:
        raise ValueError(f"{profile_dir} has no parameter files")
    cells = [params_mod.with_seeds(params_mod.load(f), seeds) for f in params_mod.select(files, only)]
    seen = {}
    for p in cells:
        cube_path, _ = runs.paths(p, cube_dir)
        if cube_path in seen:
            raise ValueError(f"{seen[cube_path]}.yaml and {p['name']}.yaml both write {cube_path}")
        seen[cube_path] = p["name"]
    return cells


def _plan(cells: list[dict], cube_dir: Path, plan: Plan) -> Plan:
    """Fill `plan` cell by cell (so that a stop halfway leaves what was found): current cubes are left alone, a
    cell whose dataset is unavailable gets its marker, the others' unfinished (lr, seed) parts become jobs."""
    probed = {}
    for p in cells:
        cube_path, parts_dir = runs.paths(p, cube_dir)
        if runs.is_current(cube_path, p):
            plan.current.append(cube_path)
            cube.missing_path(cube_dir, p).unlink(missing_ok=True)
            continue
        every = [Job(p, lr, parts_dir, seed) for lr, seed in params_mod.jobs(p)]
        todo = [j for j in every if not runs.part_finished(p, j.lr, parts_dir, j.seed)]
        plan.finished_parts += len(every) - len(todo)
        if todo:
            source = (p["dataset"], p["npz_dir"], p["npz_file"], p["data_root"], p["image_size"])
            if source not in probed:
                probed[source] = dataset_missing(p)
            if probed[source] is not None:
                plan.missing[p["name"]] = p
                cube.write_missing(cube_dir, p, probed[source])
                print(f"missing: {p['name']}: {probed[source]}", flush=True)
                continue
        plan.to_merge.append(p)
        plan.todo += todo
    return plan


def _run_jobs(todo: list, executor: str, config: dict, cube_dir: Path, options: dict, parallel, poll_s,
              stop_at) -> dict:
    """The jobs through the executor: {id(job): outcome}."""
    if not todo:
        return {}
    folder = cube_dir / "logs"  # submitit names each job's files <job id>_<task>_log.{out,err}, ...
    report = _progress(len(todo))
    if executor == "local":
        return executors.run_local(todo, folder, config["local"] | ({"parallel": parallel} if parallel else {}),
                                   report, 0.5 if poll_s is None else poll_s, stop_at)
    if parallel:
        options = options | {"array_parallelism": parallel}
    return executors.run_slurm(todo, folder, config["slurm"] | {"options": options}, report,
                               30.0 if poll_s is None else poll_s, stop_at)


def _failures(plan: Plan, outcomes: dict, cube_dir: Path) -> list[str]:
    """The jobs that did not finish their part, one line each; a job that found its dataset missing marks its cell."""
    failed = []
    for job in plan.todo:
        outcome = outcomes.get(id(job), {})
        if "missing" in outcome and job.params["name"] not in plan.missing:
            plan.missing[job.params["name"]] = job.params
            cube.write_missing(cube_dir, job.params, outcome["missing"])
            print(f"missing: {job.params['name']}: {outcome['missing']}", flush=True)
        elif "part" not in outcome:
            why = f"cancelled ({outcome['cancelled']})" if "cancelled" in outcome else outcome.get("error", "no result")
            failed.append(f"{job.label}: {why}")
    return failed


def _merge_complete(plan: Plan, cube_dir: Path, keep_checkpoints: bool) -> tuple[list[Path], dict]:
    """Merge every cell of plan.to_merge whose parts are all finished into its cube; returns (the cubes written,
    {cell: (parts finished, parts)} of the cells left to resume)."""
    written, unfinished = [], {}
    for p in plan.to_merge:
        if p["name"] in plan.missing:
            continue
        cube_path, parts_dir = runs.paths(p, cube_dir)
        every = params_mod.jobs(p)
        done = sum(runs.part_finished(p, lr, parts_dir, seed) for lr, seed in every)
        if done < len(every):
            unfinished[p["name"]] = (done, len(every))
            continue
        runs.merge_and_write(p, cube_path, parts_dir, keep_checkpoints)
        cube.missing_path(cube_dir, p).unlink(missing_ok=True)
        print(f"cube: {cube_path}", flush=True)
        written.append(cube_path)
    return written, unfinished


def _stop_reason(err: BaseException) -> str:
    if isinstance(err, jobs.DeadlineReached):
        return "at its --deadline"
    if isinstance(err, KeyboardInterrupt):
        return "by SIGINT (Ctrl-C)"
    return "by SIGTERM" if isinstance(err, SystemExit) and err.code == 128 + 15 else "by SystemExit"


def _merge_after_stop(plan: Plan, cube_dir: Path, keep_checkpoints: bool, err: BaseException) -> None:
    """After a stop (the jobs are gone): merge the complete cells, then say which cells are complete and which will
    resume; deaf to further SIGINT / SIGTERM meanwhile (the merge is short and its writes are atomic)."""
    print(f"nc.runs.sweep: stopped {_stop_reason(err)}; merging the cells whose parts are all finished", flush=True)
    with jobs.stop_signals(lambda signum, frame: print("nc.runs.sweep: already stopping: merging", flush=True)):
        written, unfinished = _merge_complete(plan, cube_dir, keep_checkpoints)
    complete = sorted(Path(c).stem for c in plan.current + written)
    print(f"complete ({len(complete)} cell(s), cube current): {', '.join(complete) or 'none'}", flush=True)
    resume = [f"{name} ({done} of {every} parts finished)" for name, (done, every) in unfinished.items()]
    print(f"will resume ({len(resume)} cell(s); run the same command again): {', '.join(resume) or 'none'}", flush=True)


def run_profile(profile_dir, cube_dir, executor: str | None = None, *, partition: str | None = None,
                gpus_per_job: int | None = None, time_min: int | None = None, parallel: int | None = None,
                poll_s: float | None = None, only=None, keep_checkpoints: bool = False,
                seeds: int | None = None, deadline: float | None = None) -> list[Path]:
    """Train every (parameter file, lr, run seed) of a profile as jobs and merge each cell's cube; returns the cube
    paths.

    executor: local or slurm (None: `executor` of the profile's _executor.yaml, else local). partition,
    gpus_per_job, time_min: Slurm options; parallel: jobs at once (local) or array parallelism (Slurm).
    Cells with an unavailable dataset are skipped and get a `.missing.json` marker; raises RuntimeError
    after merging what it can if any job failed or was cancelled. only: cell-name patterns (params.select);
    the other cells are left alone. Every job is recorded beside its part (nc.runs.jobs.write_record); a Slurm job of a
    live record is waited for, not submitted again. keep_checkpoints: keep the finished parts' checkpoints after the
    merge. seeds: run seeds 0..seeds-1 in every cell instead of each file's `seeds`.

    Stopped by SIGINT or SIGTERM (main thread), or at `deadline` (a POSIX time) less nc.runs.jobs.STOP_MARGIN_S, it
    starts no more jobs, stops the running ones, merges every cell whose parts are all finished, prints which cells
    are complete and which will resume, and only then lets the exception (KeyboardInterrupt, SystemExit,
    nc.runs.jobs.DeadlineReached) leave."""
    profile_dir, cube_dir = Path(profile_dir), Path(cube_dir)
    config = executors.read_executor(profile_dir)
    executor = executor or config["executor"]
    if executor not in cli.EXECUTORS:
        raise ValueError(f"executor must be one of {cli.EXECUTORS}, got {executor!r}")
    cells = _read_cells(profile_dir, cube_dir, only, seeds)
    stop_at = None if deadline is None else deadline - jobs.STOP_MARGIN_S
    if stop_at is not None:
        print(f"deadline {time.strftime('%H:%M:%S', time.localtime(deadline))}: from "
              f"{time.strftime('%H:%M:%S', time.localtime(stop_at))} no job starts and the running ones stop",
              flush=True)
    plan = Plan([], [], [], {}, 0)
    options = {k: v for k, v in (("partition", partition), ("gpus_per_job", gpus_per_job), ("time_min", time_min))
               if v is not None}
    try:
        with jobs.sigterm_exits():
            _plan(cells, cube_dir, plan)
            print(f"sweep {profile_dir.name}: {len(cells)} cells, {sum(len(p['lrs']) for p in cells)} lrs; "
                  f"{len(plan.current)} cube(s) current, {len(plan.missing)} cell(s) missing, {plan.finished_parts} "
                  f"part(s) finished, {len(plan.todo)} job(s) to run ({executor})", flush=True)
            outcomes = _run_jobs(plan.todo, executor, config, cube_dir, options, parallel, poll_s, stop_at)
    except (KeyboardInterrupt, SystemExit, jobs.DeadlineReached) as err:
        _merge_after_stop(plan, cube_dir, keep_checkpoints, err)
        raise
    failed = _failures(plan, outcomes, cube_dir)
    written, _ = _merge_complete(plan, cube_dir, keep_checkpoints)
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed or were cancelled (re-running the sweep resumes them):"
                           "\n  " + "\n  ".join(failed))
    return sorted(plan.current + written)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nc.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("profile_dir", help="a folder of parameter files, e.g. parameters/quick")
    ap.add_argument("--cube-dir", default=None, help="default: cubes/<profile> in the repository")
    cli.add_run_options(ap, "default: `executor` of the profile's _executor.yaml, else local")
    ap.add_argument("--plan", action="store_true",
                    help="print what every job would cost (images, GPU memory, hours) and the totals; train nothing")
    ap.add_argument("--gpu", default="A100", choices=sorted(plan.REFERENCE_GPUS),
                    help="with --plan: the GPU to plan for (its training images/s from bench/bench-<its name>.json "
                         "when `nox -s bench -- --gpu` wrote one, else estimated from its datasheet peak)")
    args = ap.parse_args(argv)
    profile_dir = Path(args.profile_dir)
    if not profile_dir.is_dir():
        sys.exit(f"nc.runs.sweep: no profile folder {profile_dir}")
    cube_dir = Path(args.cube_dir) if args.cube_dir else ROOT / "cubes" / profile_dir.resolve().name
    try:
        if args.plan:
            settings = executors.read_executor(profile_dir)["slurm"]
            gpus = {d: int(o.get("gpus_per_job", settings["gpus_per_job"])) for d, o in settings["datasets"].items()}
            print(plan.markdown(plan.plan(profile_dir, args.gpu, gpus, args.only, args.seeds)))
            return
        with jobs.sigterm_exits():
            paths = run_profile(profile_dir, cube_dir, **cli.sweep_options(args))
    except jobs.DeadlineReached as err:
        sys.exit(f"nc.runs.sweep: {err}; its jobs were stopped (running the same command again resumes them)")
    except (RuntimeError, ValueError) as err:  # ParameterError is a ValueError
        sys.exit(f"nc.runs.sweep: {err}")
    except KeyboardInterrupt:
        sys.exit("nc.runs.sweep: interrupted; its jobs were stopped (running the same command again resumes them)")
    print(f"{len(paths)} cube(s) in {cube_dir}", flush=True)


if __name__ == "__main__":
    main()
