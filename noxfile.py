"""Sessions: tests, reproduce, book, lab, bench, lint.

Every session shares one virtual environment (.nox/nc-env): the heavy packages (PyTorch, Jupyter Book)
are installed once and reinstalled only when pyproject.toml changes. Set NC_TORCH to choose the
PyTorch requirement (default: the pinned pair below; e.g. NC_TORCH="torch torchvision" for the newest).

    nox -s reproduce                      # the offline demo: train, measure, render the book
    nox -s reproduce -- quick             # another profile (parameters/<profile>/)
    nox -s book -- demo                   # re-render from existing cubes
    nox -s lab -- figures/fig6            # edit and run the notebooks in JupyterLab (default: the intro)
    nox -s tests                          # the test suite (CPU)
    nox -s bench                          # images/s and measurement cost, written to bench/
"""
import hashlib
import os
import sys
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
ENV = ROOT / ".nox" / "nc-env"
TORCH = os.environ.get("NC_TORCH", "torch==2.14.1 torchvision==0.29.1")
nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def _python(session) -> str:
    """The shared environment's python, created or updated when pyproject.toml or NC_TORCH changed."""
    bindir = ENV / ("Scripts" if sys.platform == "win32" else "bin")
    stamp = ENV / "installed.sha256"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if not (stamp.is_file() and stamp.read_text() == want):
        if not bindir.is_dir():
            session.run(sys.executable, "-m", "venv", str(ENV), external=True)
        pip = [str(bindir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        session.run(*pip, *TORCH.split(), external=True)
        session.run(*pip, "-e", f"{ROOT}[book,test]", external=True)
        session.run(str(bindir / "python"), "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3",
                    external=True, silent=True)
        stamp.write_text(want)
    return str(bindir / "python")


@nox.session
def tests(session):
    """The test suite on the CPU (pass pytest arguments after --)."""
    py = _python(session)
    session.run(py, "-m", "pytest", *(session.posargs or ["-q"]), external=True)


@nox.session
def reproduce(session):
    """Train every run of a profile (default demo), execute the figure notebooks, build the book."""
    py = _python(session)
    session.run(py, "-m", "nc.book", "reproduce", *(session.posargs or ["demo"]), external=True)


@nox.session
def book(session):
    """Re-execute the figure notebooks and rebuild the HTML from a profile's existing cubes."""
    py = _python(session)
    session.run(py, "-m", "nc.book", "build", *(session.posargs or ["demo"]), external=True)


@nox.session
def lab(session):
    """JupyterLab on the book's notebooks (python -m nc.lab): `-- [page] [jupyter lab options]`, default the intro;
    installs the [lab] extra (jupyterlab, jupytext) into the shared environment first."""
    py = _python(session)
    lab_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["lab"]
    session.run(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *lab_extra, external=True)
    session.run(py, "-m", "nc.lab", *session.posargs, external=True)


@nox.session
def bench(session):
    """Costs as ratios to baselines timed in the same run (nc.bench.suite) -> bench/; `-- --gpu`: the GPU suite."""
    py = _python(session)
    session.run(py, "-m", "nc.bench", *session.posargs, external=True)


@nox.session
def lint(session):
    """ruff over the package, the tests, the noxfile and the notebooks' code (tests/test_lint.py, also part of
    `nox -s tests`)."""
    py = _python(session)
    session.run(py, "-m", "pytest", "-q", "tests/test_lint.py", external=True)
