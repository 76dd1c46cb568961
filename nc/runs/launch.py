"""One parameter file's runs as one multi-process job: the entry point torchrun (or a Slurm job's tasks) starts.

`torchrun --nproc_per_node=8 -m nc.runs.launch parameters/paper/imagenet-resnet152.yaml [--lr 0.1] [--cube-dir D]`
trains that file's lrs (all of them without --lr) and run seeds into their parts (nc.train.ddp shards each run over
the processes) and, when all are finished, rank 0 merges the cube.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nc import paths, runs
from nc.runs import params as params_mod
from nc.train import ddp


def main(argv=None) -> None:
    """Entry point for torchrun: the lrs of one parameter file, then its cube (rank 0)."""
    ap = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m nc.runs.launch", description=main.__doc__)
    ap.add_argument("parameter_file")
    ap.add_argument("--lr", type=float, action="append", help="an lr of the file (repeatable; default: all)")
    ap.add_argument("--cube-dir", default=None, help="default: cubes/<profile> in the repository")
    args = ap.parse_args(argv)
    p = params_mod.load(args.parameter_file)
    if set(args.lr or ()) - set(p["lrs"]):
        ap.error(f"--lr {min(set(args.lr) - set(p['lrs'])):g} is not an lr of {args.parameter_file} ({p['lrs']})")
    cube_dir = Path(args.cube_dir) if args.cube_dir else paths.cube_dir(p["profile"])
    ddp.setup(p["device"])
    try:
        cube_path, parts_dir = runs.paths(p, cube_dir)
        dataset = runs.load_data(p) if ddp.is_main() else None  # rank 0 first: a download happens once
        ddp.barrier()
        dataset = runs.load_data(p) if dataset is None else dataset
        jobs = params_mod.jobs(p)
        for lr, seed in jobs:
            if not args.lr or lr in args.lr:
                runs.run_part(p, lr, parts_dir, dataset, progress=True, seed=seed)
        if ddp.is_main() and all(runs.part_finished(p, lr, parts_dir, seed) for lr, seed in jobs):
            print(f"cube: {runs.merge_and_write(p, cube_path, parts_dir)}", flush=True)
        ddp.barrier()
    finally:
        ddp.teardown()


if __name__ == "__main__":
    main()
