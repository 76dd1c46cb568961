"""Drive a profile end to end: papermill executes book/train.md once per parameter file, then the intro and
the figure notebooks, then Jupyter Book renders the executed notebooks (execution off) to HTML.

    python -m nc.book reproduce [profile] [--executor local|slurm] [--only CELL ...] [--force]
                                [--partition P] [--gpus N] [--time MIN] [--parallel N]   (with --executor)
    python -m nc.book build [profile]          # figures + HTML from the cubes already there

The `followups` profile's runs (cubes/followups/) appear in the demo's book: its "After the paper" pages read
them, and their run pages get a part of their own; `reproduce followups` trains them and rebuilds that book.

Everything a profile produces lives in cubes/<profile>/ (the NetCDF cubes) and book/_build/<profile>/
(the executed notebooks and, under _build/html, the site). A run whose cube is complete and whose
parameters are unchanged is not re-trained. (This module is the noxfile's worker, so that the same
commands run without nox, e.g. inside a Slurm allocation.)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nc import data, paths
from nc.report import pages
from nc.runs import cli
from nc.runs import params as params_mod
from nc.runs.executors import usable_cores
from nc.train.progress import fmt

ROOT = paths.ROOT
BOOK = ROOT / "book"
EXTRA = ("theory",)  # notebooks at the top of book/ executed without a profile
STATIC = ("methods.md",)  # plain pages copied as they are
FOLLOWUPS = "followups"  # its runs are shown in the demo's book ("After the paper"), not in a book of their own
SHOWN_IN = {FOLLOWUPS: "demo"}
RUN_FOLDERS = {FOLLOWUPS: "runs-followups"}  # where a profile's run pages go inside the book it is shown in


def profile_dir(profile: str) -> Path:
    d = ROOT / "parameters" / profile
    if not d.is_dir():
        known = sorted(p.name for p in (ROOT / "parameters").iterdir() if p.is_dir())
        raise SystemExit(f"no profile {profile!r}: parameters/{profile}/ does not exist (profiles: {', '.join(known)})")
    return d


def build_dir(profile: str) -> Path:
    """Where a profile's executed notebooks (and, under _build/html, its site) go."""
    return BOOK / "_build" / profile


def cube_dir(profile: str) -> Path:
    return ROOT / "cubes" / profile


def _finish(path: Path, title: str | None) -> None:
    """Hide papermill's parameter cells in the rendered book (they stay in the .ipynb); set the page title."""
    nb = json.loads(path.read_text())
    for c in nb["cells"]:
        tags = c.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "parameters" in tags:
            c["metadata"]["tags"] = sorted(set(tags) | {"remove-cell"})
    if title:
        first = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
        text = "".join(first["source"]).split("\n", 1)
        first["source"] = f"# {title}\n" + (text[1] if len(text) > 1 else "")
    path.write_text(json.dumps(nb, indent=1))


def _ipc_kernel_manager():
    """A kernel manager on local IPC sockets: no TCP ports, and no unencrypted-TCP warning per notebook. Each kernel
    gets sockets of its own name, so that kernels started at the same time (execute_all) never share one."""
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            return os.path.join(tempfile.gettempdir(), f"nc-kernel-{uuid.uuid4().hex[:12]}")

    return IPCKernelManager


def execute(source: Path, out: Path, parameters: dict, log: bool = False, title: str | None = None) -> Path:
    """papermill over a Jupytext MyST notebook (converted in memory), run from the repository root."""
    import jupytext
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(jupytext.read(source), str(out), parameters=parameters, cwd=str(ROOT),
                               kernel_name="python3", log_output=log, progress_bar=False,
                               kernel_manager_class=_ipc_kernel_manager())
    _finish(out, title)
    return out




def execute_all(jobs: list[dict], parallel: int, report=None) -> None:
    """Execute notebooks `jobs` ({source, out, parameters, title, log}) `parallel` at a time (kernels are separate
    processes); report(job, seconds, done) after each. The first failure is raised once the others have ended."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    def one(job):
        t0 = time.perf_counter()
        execute(job["source"], job["out"], job["parameters"], log=job.get("log", False), title=job.get("title"))
        return job, time.perf_counter() - t0

    errors = []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(one, job) for job in jobs]
        for done, future in enumerate(as_completed(futures), 1):
            try:
                job, seconds = future.result()
            except Exception as err:
                errors.append(err)
                continue
            if report:
                report(job, seconds, done)
    if errors:
        raise errors[0]


def train_all(parameters: Path, cubes: Path, out: Path, force: bool = False, only=None,
              runs_folder: str = "runs", parallel: int | None = None, keep_checkpoints: bool = False,
              seeds: int | None = None) -> list[dict]:
    """Execute book/train.md for every parameter file in `parameters` (cubes into `cubes`, executed pages
    into `out`/<runs_folder>), or for those `only` selects (params.select), `parallel` at a time (default: the
    usable cores), each kernel with cores // parallel torch threads; prints progress with an ETA. seeds: run
    seeds 0..seeds-1 instead of each file's `seeds`."""
    from nc import runs

    files = params_mod.profile_files(parameters)
    if not files:
        raise SystemExit(f"{parameters} has no parameter files")
    files = params_mod.select(files, only)
    pages, jobs = [], []
    for i, f in enumerate(files, 1):
        p = params_mod.with_seeds(params_mod.load(f), seeds)  # a bad file stops here, with its name and key
        cube_path, _ = runs.paths(p, cubes)
        page = out / runs_folder / f"{p['name']}.ipynb"
        cube_current = runs.is_current(cube_path, p) and not force
        current = cube_current and page.is_file() and page.stat().st_mtime >= cube_path.stat().st_mtime
        print(f"[{i}/{len(files)}] {p['name']}: " + (
            "cube is current, not re-trained" if current else
            "cube is current; executing its run page" if cube_current else "training and measuring"), flush=True)
        if not current:
            jobs.append({"source": BOOK / "train.md", "out": page, "log": True, "name": p["name"],
                         "title": f"Run: {p['name']}", "trains": not cube_current,
                         "parameters": {"param_file": _rel(f), "cube_dir": _rel(cubes),
                                        "keep_checkpoints": keep_checkpoints, "seeds": seeds or 0}})
        pages.append({"name": p["name"], "page": page})
    parallel = max(1, min(parallel or usable_cores(), len(jobs) or 1))
    for job in jobs:
        job["parameters"]["threads"] = max(1, usable_cores() // parallel)
    job_seconds = []

    def report(job, seconds, done):
        # ETA: the mean time of a finished page times the pages left, shared by the parallel slots
        job_seconds.append(seconds)
        left = len(jobs) - done
        eta = (f"; at the pace so far about {fmt(sum(job_seconds) / len(job_seconds) * left / min(parallel, left))} "
               "left" if left else "")
        print(f"  {job['name']}: {'trained and measured' if job['trains'] else 'page executed'} in "
              f"{fmt(seconds)} ({done}/{len(jobs)}){eta}", flush=True)

    if jobs:
        print(f"{len(jobs)} run page(s), {parallel} at a time", flush=True)
        execute_all(jobs, parallel, report)
    return pages


def _rel(path: Path) -> str:
    """A path as the notebooks see it (they run from the repository root)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def figures(profile: str, cubes: Path, out: Path, parameters: Path | None = None,
            followups: Path | None = None, parallel: int | None = None) -> list[Path]:
    """Execute the intro, every page of nc.report.pages and the theory notebook against the profile's cubes, `parallel`
    at a time (default: the usable cores); the intro also lists the cells of `parameters` (default
    parameters/<profile>) that have no cube, and the follow-up pages read `followups` (default cubes/followups)."""
    args = {"profile": profile, "cube_dir": _rel(cubes)}
    after = args | {"followups_dir": _rel(followups or cube_dir(FOLLOWUPS))}
    jobs = [{"source": BOOK / "intro.md", "out": out / "intro.ipynb", "name": "intro",
             "parameters": args | {"parameters_dir": _rel(parameters or ROOT / "parameters" / profile)}}]
    jobs += [{"source": BOOK / "figures" / f"{page.name}.md", "out": out / "figures" / f"{page.name}.ipynb",
              "name": f"figures/{page.name}", "title": page.title,
              "parameters": after if page.part == pages.AFTER else args} for page in pages.book_pages()]
    jobs += [{"source": BOOK / f"{name}.md", "out": out / f"{name}.ipynb", "name": name, "parameters": {}}
             for name in EXTRA if (BOOK / f"{name}.md").is_file()]
    print(f"executing {len(jobs)} pages, {parallel or usable_cores()} at a time", flush=True)
    execute_all(jobs, parallel or usable_cores(), lambda job, s, done: print(f"  {job['name']} ({fmt(s)})",
                                                                          flush=True))
    return [job["out"] for job in jobs[1:]]


def write_toc(d: Path) -> None:
    """_config.yml, _static/ and the static pages from book/, and a _toc.yml listing the pages executed into `d`."""
    shutil.copy(BOOK / "_config.yml", d / "_config.yml")
    if (BOOK / "_static").is_dir():  # the book's CSS (Jupyter Book includes every _static/*.css)
        shutil.copytree(BOOK / "_static", d / "_static", dirs_exist_ok=True)
    for extra in ("references.bib", *STATIC):
        if (BOOK / extra).is_file():
            shutil.copy(BOOK / extra, d / extra)
    built = {p.name for p in pages.book_pages() if (d / "figures" / f"{p.name}.ipynb").is_file()}
    parts = [(part, [f"figures/{p.name}" for p in pages.book_pages() if p.part == part and p.name in built])
             for part in pages.PARTS]
    runs = sorted(f"runs/{p.stem}" for p in (d / "runs").glob("*.ipynb"))
    followup_runs = sorted(f"{RUN_FOLDERS[FOLLOWUPS]}/{p.stem}" for p in (d / RUN_FOLDERS[FOLLOWUPS]).glob("*.ipynb"))
    methods = [Path(n).stem for n in STATIC if (d / n).is_file()]
    parts += [("Methods and theory", methods + [n for n in EXTRA if (d / f"{n}.ipynb").is_file()]),
              ("Runs of this profile", runs), ("Runs of the follow-ups", followup_runs)]
    lines = ["format: jb-book", "root: intro", "parts:"]
    for caption, files in parts:
        if files:
            lines += [f"  - caption: {caption}", "    chapters:"] + [f"      - file: {f}" for f in files]
    (d / "_toc.yml").write_text("\n".join(lines) + "\n")


def render(d: Path) -> Path:
    """Jupyter Book 1.x over the notebooks executed into `d` (execution off, warnings are errors)."""
    write_toc(d)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.is_file() else "jupyter-book", "build", str(d), "--warningiserror", "--keep-going",
           "--quiet"]
    subprocess.run(cmd, check=True)
    index = d / "_build" / "html" / "index.html"
    if not index.is_file():
        raise SystemExit(f"the book did not build: {index} is missing")
    return index


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m nc.book", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("reproduce", "build"))
    ap.add_argument("profile", nargs="?", default="demo")
    ap.add_argument("--force", action="store_true",
                    help="re-execute every run page even when its cube is current (delete cubes/<profile> to re-train)")
    cli.add_run_options(ap, "run the sweep through nc.runs.sweep first (one job per parameter file and lr)")
    args = ap.parse_args(argv)
    if not args.executor and any(v is not None for v in (args.partition, args.gpus, args.time, args.parallel)):
        ap.error("--partition, --gpus, --time and --parallel go with --executor local|slurm")
    t0 = time.perf_counter()
    shown = SHOWN_IN.get(args.profile, args.profile)  # the book this profile's runs appear in
    parameters, cubes, out = profile_dir(args.profile), cube_dir(args.profile), build_dir(shown)
    try:
        params_mod.select(params_mod.profile_files(parameters), args.only)
        data.npz_dir_from_env()  # a mistyped NC_NPZ_DIR stops here, not in every run
    except ValueError as err:
        raise SystemExit(f"nc.report.book: {err}") from None
    if args.command == "reproduce":
        if args.executor:
            from nc.runs import jobs, sweep

            with jobs.sigterm_exits():  # a killed driver stops its jobs too (they resume on the next run)
                sweep.run_profile(parameters, cubes, **cli.sweep_options(args))
        train_all(parameters, cubes, out, force=args.force, only=args.only,
                  runs_folder=RUN_FOLDERS.get(args.profile, "runs"), keep_checkpoints=args.keep_checkpoints,
                  seeds=args.seeds)
    if shown != args.profile:
        print(f"the {args.profile} runs are shown in the {shown} book's pages", flush=True)
    figures(shown, cube_dir(shown), out, profile_dir(shown))
    index = render(out)
    print(f"done in {fmt(time.perf_counter() - t0)}; open {index}", flush=True)


if __name__ == "__main__":
    main()
