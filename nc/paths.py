"""Where the project's files live: the repository root, its parameter and cube folders, and the data root.

One owner for each path. Relative paths a user gives (a notebook's `cube_dir`, a command's `--cube-dir`) are read
against the repository root by `resolve`, whatever the process's working directory (JupyterLab starts a kernel in
the notebook's own folder); an absolute path is used as it is.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository (an editable install's checkout)
PARAMETERS = ROOT / "parameters"
BOOK = ROOT / "book"
CUBES = ROOT / "cubes"
DATA_ROOT_ENV, DATA_ROOT_DEFAULT = "NC_DATA_ROOT", "~/.cache/nc-data"


def resolve(path) -> Path:
    """`path` as given when absolute, else against the repository root (not the working directory)."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else ROOT / p


def profile_dir(profile: str) -> Path:
    """parameters/<profile>/ in the repository."""
    return PARAMETERS / profile


def cube_dir(profile: str) -> Path:
    """cubes/<profile>/ in the repository: where a profile's cubes (and parts/) are written."""
    return CUBES / profile


def data_root(root=None) -> str:
    """torchvision's download folder: `root` if given, else $NC_DATA_ROOT, else ~/.cache/nc-data."""
    return os.path.expanduser(root or os.environ.get(DATA_ROOT_ENV) or DATA_ROOT_DEFAULT)
