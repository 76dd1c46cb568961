"""`python -m nc.lab [page] [jupyter lab options]` (what `nox -s lab` runs): the book's pages opened for editing in
JupyterLab.

JupyterLab from this Python's environment (the kernel `python3` is this environment's, the one that has `nc`), its
server rooted at the repository, the page named on the command line open (default the intro; `fig6`,
`figures/fig6` and `book/figures/fig6.md` name the same page). The MyST `.md` pages open as notebooks: Jupytext's
"Jupytext Notebook" is made the default viewer of Markdown files in this environment's JupyterLab settings
(`share/jupyter/lab/settings/overrides.json`; the user's own settings are left alone), and jupytext's contents
manager saves them back as MyST text without outputs, as `jupytext.toml` at the root says. Relative paths in a
page's parameters cell are read against the repository root (nc.paths.resolve), whatever folder the kernel runs in.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from nc import files, paths

DEFAULT_PAGE = "book/intro.md"
VIEWER = "Jupytext Notebook"  # the document factory of jupytext's JupyterLab extension
SETTINGS = {"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"markdown": VIEWER, "myst": VIEWER}}}
NEEDS = ("jupyterlab", "jupytext")  # the [lab] extra of pyproject.toml
# The header JupyterLab writes into a page it saves (the connected kernel's spec, these keys in this order): the
# pages carry it already, so that a save changes only what the user edited.
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
CONTENTS_MANAGER = "jupytext.AsyncTextFileContentsManager"  # .md notebooks read and saved by jupytext (jupytext.toml)


def notebooks() -> list[str]:
    """The book's notebooks (MyST pages with a Jupytext header), as paths relative to the repository root."""
    pages = sorted(paths.BOOK.glob("*.md")) + sorted((paths.BOOK / "figures").glob("*.md"))
    return [p.relative_to(paths.ROOT).as_posix() for p in pages if "format_name: myst" in p.read_text()[:400]]


def page_path(name: str | None = None) -> str:
    """The page `name` names (a path from the root, or a name under book/ or book/figures/, with or without .md),
    relative to the repository root; default the intro. An unknown name is an error listing the pages."""
    if not name:
        return DEFAULT_PAGE
    stem = name if name.endswith(".md") else f"{name}.md"
    for candidate in (stem, f"book/{stem}", f"book/figures/{stem}"):
        path = paths.resolve(candidate)
        if path.is_file() and path.is_relative_to(paths.ROOT):
            return path.relative_to(paths.ROOT).as_posix()
    raise SystemExit(f"nc.lab: no page {name!r} in {paths.BOOK}; the notebooks: {', '.join(notebooks())}")


def settings_file(prefix=None) -> Path:
    """The JupyterLab settings overrides of the environment at `prefix` (default this Python's)."""
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


def write_settings(prefix=None) -> Path:
    """Merge SETTINGS into the environment's overrides.json (other plugins' and keys' settings are kept), atomically."""
    path = settings_file(prefix)
    current = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(current, dict):
        raise SystemExit(f"nc.lab: {path} is not a JSON object; move it away and run again")
    for plugin, values in SETTINGS.items():
        merged = current.setdefault(plugin, {})
        for key, value in values.items():
            merged[key] = (merged.get(key) or {}) | value if isinstance(value, dict) else value
    return files.write_json(path, current, indent=2)


def server_options(root=paths.ROOT) -> list[str]:
    """The Jupyter server's options: rooted at `root`, its files read and saved through jupytext's contents manager
    (which jupytext's server extension would also install; named here so that no other configuration replaces it)."""
    return [f"--ServerApp.root_dir={root}", f"--ServerApp.contents_manager_class={CONTENTS_MANAGER}"]


def command(page: str, extra=()) -> list[str]:
    """The JupyterLab command line: the server rooted at the repository, `page` open, `extra` passed on."""
    return [sys.executable, "-m", "jupyterlab", *server_options(), page, *extra]


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    page = page_path(argv.pop(0) if argv and not argv[0].startswith("-") else None)
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"nc.lab: {', '.join(missing)} not installed in {sys.prefix}: `nox -s lab` installs them "
                         f"(or pip install -e '{paths.ROOT}[lab]')")
    print(f"nc.lab: JupyterLab on {paths.ROOT}, opening {page} as a notebook ({write_settings()})", flush=True)
    raise SystemExit(subprocess.run(command(page, argv), cwd=paths.ROOT).returncode)


if __name__ == "__main__":
    main()
