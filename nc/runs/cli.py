"""The command-line options nc.report.book and nc.runs.sweep share: which executor runs the jobs, its Slurm resources,
which
cells, and whether finished checkpoints are kept. One definition, so that the two commands never drift apart."""
from __future__ import annotations

import argparse

EXECUTORS = ("local", "slurm")


def positive_int(text: str) -> int:
    """argparse type: a positive integer, else a usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def deadline(text: str) -> float:
    """argparse type of --deadline: seconds from now or a time of day (nc.runs.jobs.parse_deadline) as a POSIX time."""
    from nc.runs import jobs

    try:
        return jobs.parse_deadline(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--deadline ")) from None


def add_run_options(ap: argparse.ArgumentParser, executor_help: str) -> None:
    ap.add_argument("--executor", choices=EXECUTORS, default=None, help=executor_help)
    ap.add_argument("--partition", default=None, help="Slurm partition (default: the profile's _executor.yaml)")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs per Slurm job (one DDP process each)")
    ap.add_argument("--time", type=int, default=None, help="Slurm time limit per job, minutes")
    ap.add_argument("--parallel", type=int, default=None, help="jobs at once (local) or Slurm array parallelism")
    ap.add_argument("--only", nargs="+", default=None, metavar="CELL",
                    help="only these cells: names or patterns (cifar10-vgg13, 'mnist-*') or datasets (mnist cifar10)")
    ap.add_argument("--seeds", type=positive_int, default=None, metavar="N",
                    help="run seeds 0..N-1 in every cell (default: each file's `seeds`); seeds already run are reused")
    ap.add_argument("--deadline", type=deadline, default=None, metavar="SECONDS|HH:MM",
                    help="be done by then (seconds from now, or a time of day): from STOP_MARGIN_S (75 s) before it, "
                         "start no job, stop the running ones, merge every complete cell and exit non-zero")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep each finished part's checkpoint (final weights and optimizer) after the merge")


def sweep_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of nc.runs.sweep.run_profile from parsed options."""
    return {"executor": args.executor, "partition": args.partition, "gpus_per_job": args.gpus,
            "time_min": args.time, "parallel": args.parallel, "only": args.only,
            "keep_checkpoints": args.keep_checkpoints, "seeds": args.seeds, "deadline": args.deadline}
