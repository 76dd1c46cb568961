"""ruff over the package, the tests, the noxfile and the notebooks' code (the Jupytext sources, converted to
scripts), with the repository's configuration (pyproject.toml); and no notebook code line over 120 characters."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted([*(ROOT / "book").glob("*.md"), *(ROOT / "book" / "figures").glob("*.md")])


def ruff(*args):
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (pip install ruff; it is in the [test] extra)")
    return subprocess.run([exe, "check", "--no-cache", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_is_clean_on_the_package_tests_and_noxfile():
    result = ruff("nc", "tests", "noxfile.py")
    assert result.returncode == 0, result.stdout + result.stderr


def notebook_scripts(tmp_path):
    import jupytext

    out = []
    for md in NOTEBOOKS:
        nb = jupytext.read(md)
        if not any(c.cell_type == "code" for c in nb.cells):
            continue  # a plain page (the Methods page)
        for c in nb.cells:  # IPython magics are not Python
            if c.cell_type == "code":
                c.source = "\n".join(line for line in c.source.splitlines() if not line.startswith("%"))
        nb.cells = [c for c in nb.cells if c.cell_type == "code"]
        script = tmp_path / f"{md.parent.name}_{md.stem}.py"
        jupytext.write(nb, script, fmt="py:percent")
        out.append((md, script))
    return out


def test_notebooks_code_is_ruff_clean_and_lines_fit(tmp_path):
    scripts = notebook_scripts(tmp_path)
    assert len(scripts) >= 10
    long = [f"{md.relative_to(ROOT)}: {line[:60]}..." for md, script in scripts
            for line in script.read_text().splitlines() if len(line) > 120]
    assert not long, long
    # E402: imports after the parameters cell are the notebooks' shape; line length is checked above
    files = [str(s) for _, s in scripts]
    result = ruff("--config", str(ROOT / "pyproject.toml"), "--extend-ignore", "E402,E501", *files)
    assert result.returncode == 0, result.stdout + result.stderr
