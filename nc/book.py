"""Drive a profile end to end: papermill executes book/train.md once per parameter file, then the intro and
the figure notebooks, then Jupyter Book renders the executed notebooks (execution off) to HTML.

    python -m nc.book reproduce [profile] [--executor local|slurm] [--force]
    python -m nc.book build [profile]          # figures + HTML from the cubes already there

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

from nc import params as params_mod

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "table1", "claims")
EXTRA = ("theory",)


def profile_dir(profile: str) -> Path:
    d = ROOT / "parameters" / profile
    if not d.is_dir():
        known = sorted(p.name for p in (ROOT / "parameters").iterdir() if p.is_dir())
        raise SystemExit(f"no profile {profile!r}: parameters/{profile}/ does not exist (profiles: {', '.join(known)})")
    return d


def build_dir(profile: str) -> Path:
    return BOOK / "_build" / profile


def cube_dir(profile: str) -> Path:
    return ROOT / "cubes" / profile


def _hide_parameters(path: Path) -> None:
    """Hide papermill's parameter cells in the rendered book (they stay in the .ipynb)."""
    nb = json.loads(path.read_text())
    for c in nb["cells"]:
        tags = c.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "parameters" in tags:
            c["metadata"]["tags"] = sorted(set(tags) | {"remove-cell"})
    path.write_text(json.dumps(nb, indent=1))


def execute(source: Path, out: Path, parameters: dict, log: bool = False) -> Path:
    """papermill over a Jupytext MyST notebook (converted in memory), run from the repository root."""
    import jupytext
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(jupytext.read(source), str(out), parameters=parameters, cwd=str(ROOT),
                               kernel_name="python3", log_output=log, progress_bar=False)
    _hide_parameters(out)
    return out


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def train_all(profile: str, force: bool = False) -> list[dict]:
    """Execute book/train.md for every parameter file of the profile; prints progress with an ETA."""
    from nc import train

    files = params_mod.profile_files(profile_dir(profile))
    if not files:
        raise SystemExit(f"parameters/{profile}/ has no parameter files")
    runs, spent, trained = [], 0.0, 0
    for i, f in enumerate(files, 1):
        p = params_mod.load(f)  # a bad file stops here, with its name and key
        cube_path, _ = train.paths(p, cube_dir(profile))
        page = build_dir(profile) / "runs" / f"{p['name']}.ipynb"
        current = train.is_current(cube_path, p) and page.is_file() and not force
        remaining = len(files) - i + 1
        eta = f", about {_fmt(spent / trained * remaining)} left" if trained else ""
        print(f"[{i}/{len(files)}] {p['name']}: " + ("cube is current, not re-trained" if current else
                                                    f"training and measuring{eta}"), flush=True)
        if not current:
            t0 = time.perf_counter()
            execute(BOOK / "train.md", page, {"param_file": str(f.relative_to(ROOT)),
                                              "cube_dir": str(cube_dir(profile).relative_to(ROOT))}, log=True)
            spent += time.perf_counter() - t0
            trained += 1
        runs.append({"name": p["name"], "page": page})
    return runs


def figures(profile: str) -> list[Path]:
    """Execute the intro, every figure notebook and the theory notebook against the profile's cubes."""
    out = []
    args = {"profile": profile, "cube_dir": str(cube_dir(profile).relative_to(ROOT))}
    execute(BOOK / "intro.md", build_dir(profile) / "intro.ipynb", args)
    for name in FIGURES:
        src = BOOK / "figures" / f"{name}.md"
        if src.is_file():
            print(f"executing figures/{name}", flush=True)
            out.append(execute(src, build_dir(profile) / "figures" / f"{name}.ipynb", args))
    for name in EXTRA:
        src = BOOK / f"{name}.md"
        if src.is_file():
            print(f"executing {name}", flush=True)
            out.append(execute(src, build_dir(profile) / f"{name}.ipynb", {}))
    return out


def write_toc(profile: str) -> None:
    """_config.yml from book/, and a _toc.yml listing what was executed for this profile."""
    d = build_dir(profile)
    shutil.copy(BOOK / "_config.yml", d / "_config.yml")
    for extra in ("references.bib",):
        if (BOOK / extra).is_file():
            shutil.copy(BOOK / extra, d / extra)
    figs = [f"figures/{n}" for n in FIGURES if (d / "figures" / f"{n}.ipynb").is_file()]
    runs = sorted(f"runs/{p.stem}" for p in (d / "runs").glob("*.ipynb"))
    parts = [("The paper's figures", figs), ("Theory", [n for n in EXTRA if (d / f"{n}.ipynb").is_file()]),
             ("Runs of this profile", runs)]
    lines = ["format: jb-book", "root: intro", "parts:"]
    for caption, files in parts:
        if files:
            lines += [f"  - caption: {caption}", "    chapters:"] + [f"      - file: {f}" for f in files]
    (d / "_toc.yml").write_text("\n".join(lines) + "\n")


def render(profile: str) -> Path:
    """Jupyter Book 1.x over the executed notebooks (execution off, warnings are errors)."""
    d = build_dir(profile)
    write_toc(profile)
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
    ap.add_argument("--force", action="store_true", help="re-train even when a cube is current")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.command == "reproduce":
        if args.executor:
            from nc import sweep

            sweep.run_profile(profile_dir(args.profile), cube_dir(args.profile), executor=args.executor)
        train_all(args.profile, force=args.force)
    figures(args.profile)
    index = render(args.profile)
    print(f"done in {_fmt(time.perf_counter() - t0)}; open {index}", flush=True)


if __name__ == "__main__":
    main()
