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
driver (Ctrl-C, SIGINT, SIGTERM) stops its jobs before it exits; running the same command again resumes them. A
cell whose dataset is unavailable (nc.data.DatasetUnavailable) is reported in one line and skipped, never replaced;
`<cube_dir>/<cell>.missing.json` holds the message for the book. Job logs go to `<cube_dir>/logs/`.

    python -m nc.sweep parameters/quick [--executor local|slurm] [--cube-dir DIR] [--partition P] [--gpus N]
                       [--time MIN] [--parallel N] [--only CELL ...] [--keep-checkpoints]
    python -m nc.sweep parameters/paper --plan [--gpu A100|H100|...]    # what it would cost; trains nothing
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nc import paths, runs
from nc.runs import cli, cube, executors, jobs, plan
from nc.runs import params as params_mod
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
        several = len(params_mod.run_seeds(self.params)) > 1
        return f"{self.params['name']} lr={self.lr:g}" + (f" seed={self.seed}" if several or self.seed else "")


def dataset_missing(params: dict) -> str | None:
    """None if the cell's dataset can be loaded, else the DatasetUnavailable message.

    Loads one image per class on the CPU (a torchvision dataset is downloaded here, once, rather than by many jobs at
    the same time); a prepared store is only opened."""
    from nc import data

    store = params["data_source"] == "store"
    try:
        data.load(params["dataset"], n_per_class=params["n_per_class"] if store else 1,
                  test_n_per_class=params["test_n_per_class"] if store else 1, image_size=params["image_size"],
                  device="cpu", seed=params["seed"], root=params["data_root"], npz_dir=params["npz_dir"],
                  npz_file=params["npz_file"], source=params["data_source"], store_dir=params["store_dir"])
    except data.DatasetUnavailable as err:
        return str(err)
    return None


def _progress(total: int):
    """A reporter printing `[done/total] job: outcome; about T left` as jobs finish (ETA from the throughput)."""
    t0, done = time.perf_counter(), 0

    def report(job: Job, outcome: dict, took: float) -> None:
        nonlocal done
        done += 1
        what = (f"done in {fmt(took)}" if "part" in outcome else "dataset missing" if "missing" in outcome else
                f"cancelled ({outcome['cancelled']}); re-running the sweep resumes it" if "cancelled" in outcome
                else f"FAILED: {outcome['error']}")
        eta = (f"; at the pace so far about {fmt((time.perf_counter() - t0) / done * (total - done))} left"
               if done < total else "")
        print(f"[{done}/{total}] {job.label}: {what}{eta}", flush=True)

    return report


def run_profile(profile_dir, cube_dir, executor: str | None = None, *, partition: str | None = None,
                gpus_per_job: int | None = None, time_min: int | None = None, parallel: int | None = None,
                poll_s: float | None = None, only=None, keep_checkpoints: bool = False,
                seeds: int | None = None) -> list[Path]:
    """Train every (parameter file, lr, run seed) of a profile as jobs and merge each cell's cube; returns the cube
    paths.

    executor: local or slurm (None: `executor` of the profile's _executor.yaml, else local). partition,
    gpus_per_job, time_min: Slurm options; parallel: jobs at once (local) or array parallelism (Slurm).
    Cells with an unavailable dataset are skipped and get a `.missing.json` marker; raises RuntimeError
    after merging what it can if any job failed or was cancelled. only: cell-name patterns (params.select);
    the other cells are left alone. Every job is recorded beside its part (nc.runs.jobs.write_record); a Slurm job of a
    live record is waited for, not submitted again. SIGINT / SIGTERM (main thread) stop the jobs before the
    exception (KeyboardInterrupt / SystemExit) leaves this function. keep_checkpoints: keep the finished parts'
    checkpoints after the merge. seeds: run seeds 0..seeds-1 in every cell instead of each file's `seeds`."""
    profile_dir, cube_dir = Path(profile_dir), Path(cube_dir)
    config = executors.read_executor(profile_dir)
    executor = executor or config["executor"]
    if executor not in cli.EXECUTORS:
        raise ValueError(f"executor must be one of {cli.EXECUTORS}, got {executor!r}")
    files = params_mod.profile_files(profile_dir)
    if not files:
        raise ValueError(f"{profile_dir} has no parameter files")
    files = params_mod.select(files, only)
    cells = [params_mod.with_seeds(params_mod.load(f), seeds) for f in files]  # a bad file stops here
    seen = {}
    for p in cells:
        cube_path, _ = runs.paths(p, cube_dir)
        if cube_path in seen:
            raise ValueError(f"{seen[cube_path]}.yaml and {p['name']}.yaml both write {cube_path}")
        seen[cube_path] = p["name"]

    current, to_merge, todo_jobs, missing, probed, finished_parts = [], [], [], {}, {}, 0
    for p in cells:
        cube_path, parts_dir = runs.paths(p, cube_dir)
        if runs.is_current(cube_path, p):
            current.append(cube_path)
            cube.missing_path(cube_dir, p).unlink(missing_ok=True)
            continue
        every = [Job(p, lr, parts_dir, seed) for lr in p["lrs"] for seed in params_mod.run_seeds(p)]
        todo = [j for j in every if not runs.part_finished(p, j.lr, parts_dir, j.seed)]
        finished_parts += len(every) - len(todo)
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
        todo_jobs += todo

    print(f"sweep {profile_dir.name}: {len(cells)} cells, {sum(len(p['lrs']) for p in cells)} lrs; "
          f"{len(current)} cube(s) current, {len(missing)} cell(s) missing, {finished_parts} part(s) finished, "
          f"{len(todo_jobs)} job(s) to run ({executor})", flush=True)
    outcomes = {}
    if todo_jobs:
        folder = cube_dir / "logs"  # submitit names each job's files <job id>_<task>_log.{out,err}, ...
        report = _progress(len(todo_jobs))
        with jobs.sigterm_exits():
            if executor == "local":
                outcomes = executors.run_local(todo_jobs, folder, config["local"] | (
                    {"parallel": parallel} if parallel else {}), report, 0.5 if poll_s is None else poll_s)
            else:
                options = {k: v for k, v in (("partition", partition), ("gpus_per_job", gpus_per_job),
                                             ("time_min", time_min), ("array_parallelism", parallel))
                           if v is not None}
                outcomes = executors.run_slurm(todo_jobs, folder, config["slurm"] | {"options": options}, report,
                                               30.0 if poll_s is None else poll_s)

    failed = []
    for job in todo_jobs:
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
        if p["name"] in missing or not all(runs.part_finished(p, lr, parts_dir, seed) for lr in p["lrs"]
                                           for seed in params_mod.run_seeds(p)):
            continue
        runs.merge_and_write(p, cube_path, parts_dir, keep_checkpoints)
        cube.missing_path(cube_dir, p).unlink(missing_ok=True)
        print(f"cube: {cube_path}", flush=True)
        written.append(cube_path)
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed or were cancelled (re-running the sweep resumes them):"
                           "\n  " + "\n  ".join(failed))
    return sorted(current + written)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nc.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("profile_dir", help="a folder of parameter files, e.g. parameters/quick")
    ap.add_argument("--cube-dir", default=None, help="default: cubes/<profile> in the repository")
    cli.add_run_options(ap, "default: `executor` of the profile's _executor.yaml, else local")
    ap.add_argument("--plan", action="store_true",
                    help="print what every job would cost (images, GPU memory, hours) and the totals; train nothing")
    ap.add_argument("--gpu", default="A100", choices=sorted(plan.REFERENCE_GPUS),
                    help="with --plan and no GPU bench here: the reference GPU for the estimate")
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
    except (RuntimeError, ValueError) as err:  # ParameterError is a ValueError
        sys.exit(f"nc.runs.sweep: {err}")
    except KeyboardInterrupt:
        sys.exit("nc.runs.sweep: interrupted; its jobs were stopped (running the same command again resumes them)")
    print(f"{len(paths)} cube(s) in {cube_dir}", flush=True)


if __name__ == "__main__":
    main()
