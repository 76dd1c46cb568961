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
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nc import pages
from nc import params as params_mod

ROOT = Path(__file__).resolve().parent.parent
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
    """A kernel manager on local IPC sockets: no TCP ports, and no unencrypted-TCP warning per notebook."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

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


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def train_all(parameters: Path, cubes: Path, out: Path, force: bool = False, only=None,
              runs_folder: str = "runs") -> list[dict]:
    """Execute book/train.md for every parameter file in `parameters` (cubes into `cubes`, executed pages
    into `out`/runs), or for those `only` selects (params.select); prints progress with an ETA."""
    from nc import runs

    files = params_mod.profile_files(parameters)
    if not files:
        raise SystemExit(f"{parameters} has no parameter files")
    files = params_mod.select(files, only)
    pages, spent, trained = [], 0.0, 0
    for i, f in enumerate(files, 1):
        p = params_mod.load(f)  # a bad file stops here, with its name and key
        cube_path, _ = runs.paths(p, cubes)
        page = out / runs_folder / f"{p['name']}.ipynb"
        cube_current = runs.is_current(cube_path, p) and not force
        current = cube_current and page.is_file()
        remaining = len(files) - i + 1
        eta = f", about {_fmt(spent / trained * remaining)} left" if trained else ""
        cube_only = cube_current and not current
        print(f"[{i}/{len(files)}] {p['name']}: " + (
            "cube is current, not re-trained" if current else
            "cube is current; executing its run page" if cube_only else f"training and measuring{eta}"), flush=True)
        if not current:
            t0 = time.perf_counter()
            execute(BOOK / "train.md", page, {"param_file": _rel(f), "cube_dir": _rel(cubes)}, log=True,
                    title=f"Run: {p['dataset']} × {p['network']}")
            if not cube_only:  # the ETA counts training runs only
                spent += time.perf_counter() - t0
                trained += 1
        pages.append({"name": p["name"], "page": page})
    return pages


def _rel(path: Path) -> str:
    """A path as the notebooks see it (they run from the repository root)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def figures(profile: str, cubes: Path, out: Path, parameters: Path | None = None,
            followups: Path | None = None) -> list[Path]:
    """Execute the intro, every figure notebook and the theory notebook against the profile's cubes
    (the intro also lists the cells of `parameters`, default parameters/<profile>, that have no cube)."""
    done = []
    args = {"profile": profile, "cube_dir": _rel(cubes)}
    print("executing intro", flush=True)
    execute(BOOK / "intro.md", out / "intro.ipynb",
            args | {"parameters_dir": _rel(parameters or ROOT / "parameters" / profile)})
    after = args | {"followups_dir": _rel(followups or cube_dir(FOLLOWUPS))}
    for page in pages.PAGES:
        src = BOOK / "figures" / f"{page.name}.md"
        print(f"executing figures/{page.name}", flush=True)
        done.append(execute(src, out / "figures" / f"{page.name}.ipynb", after if page.part == pages.AFTER else args,
                            title=page.title))
    for name in EXTRA:
        src = BOOK / f"{name}.md"
        if src.is_file():
            print(f"executing {name}", flush=True)
            done.append(execute(src, out / f"{name}.ipynb", {}))
    return done


def write_toc(d: Path) -> None:
    """_config.yml and the static pages from book/, and a _toc.yml listing the pages executed into `d`."""
    shutil.copy(BOOK / "_config.yml", d / "_config.yml")
    for extra in ("references.bib", *STATIC):
        if (BOOK / extra).is_file():
            shutil.copy(BOOK / extra, d / extra)
    built = {p.name for p in pages.PAGES if (d / "figures" / f"{p.name}.ipynb").is_file()}
    parts = [(part, [f"figures/{p.name}" for p in pages.PAGES if p.part == part and p.name in built])
             for part in (pages.PAPER, pages.AFTER)]
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
    ap.add_argument("--executor", choices=("local", "slurm"), default=None,
                    help="run the sweep through nc.sweep (one job per parameter file and lr)")
    ap.add_argument("--force", action="store_true",
                    help="re-execute every run page even when its cube is current (delete cubes/<profile> to re-train)")
    ap.add_argument("--partition", default=None, help="Slurm partition (default: the profile's _executor.yaml)")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs per Slurm job")
    ap.add_argument("--time", type=int, default=None, help="Slurm time limit per job, minutes")
    ap.add_argument("--parallel", type=int, default=None, help="jobs at once (local) or Slurm array parallelism")
    ap.add_argument("--only", nargs="+", default=None, metavar="CELL",
                    help="train only these cells: names or patterns (cifar10-vgg13, 'mnist-*') or datasets "
                         "(mnist cifar10); the book lists the others as not run")
    args = ap.parse_args(argv)
    if not args.executor and any(v is not None for v in (args.partition, args.gpus, args.time, args.parallel)):
        ap.error("--partition, --gpus, --time and --parallel go with --executor local|slurm")
    t0 = time.perf_counter()
    shown = SHOWN_IN.get(args.profile, args.profile)  # the book this profile's runs appear in
    parameters, cubes, out = profile_dir(args.profile), cube_dir(args.profile), build_dir(shown)
    try:
        params_mod.select(params_mod.profile_files(parameters), args.only)
    except ValueError as err:
        raise SystemExit(f"nc.book: {err}") from None
    if args.command == "reproduce":
        if args.executor:
            from nc import sweep

            with sweep.sigterm_exits():  # a killed driver stops its jobs too (they resume on the next run)
                sweep.run_profile(parameters, cubes, executor=args.executor, partition=args.partition,
                                  gpus_per_job=args.gpus, time_min=args.time, parallel=args.parallel, only=args.only)
        train_all(parameters, cubes, out, force=args.force, only=args.only,
                  runs_folder=RUN_FOLDERS.get(args.profile, "runs"))
    if shown != args.profile:
        print(f"the {args.profile} runs are shown in the {shown} book's pages", flush=True)
    figures(shown, cube_dir(shown), out, profile_dir(shown))
    index = render(out)
    print(f"done in {_fmt(time.perf_counter() - t0)}; open {index}", flush=True)


if __name__ == "__main__":
    main()
