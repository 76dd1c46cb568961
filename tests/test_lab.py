"""The notebooks where JupyterLab runs them: a kernel starts in the notebook's own folder (book/, book/figures/),
so every relative path of a parameters cell must be read against the repository root, not the working directory.
Each page is executed here by papermill with its working directory set to its own folder, on the tiny real run
(conftest.py's tiny_cubes) given by a path relative to the repository root that does not exist from the page's
folder: a page that read it from its working directory would find no cube."""
import base64
import json
import os
from pathlib import Path

import pytest

from nc import paths
from nc.report import pages, profiles

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "book" / "figures"
FOLLOWUP_PAGES = {"mse", "fixed_etf", "weight_decay", "imbalance"}  # need the follow-up runs' treatments to draw
NO_CUBE = ("has no current cube", "not trained yet", "No cube with collapse by depth yet")
TINY_TRAIN = """dataset: demo
network: vgg11
n_per_class: 12
test_n_per_class: 5
image_size: 16
width: 0.125
epochs: 4
lrs: [0.05]
snapshot_epochs: [1, 4]
robustness_images: 2
fig1_samples: 2
device: cpu
"""


def relative_to_root(path: Path, page_dir: Path) -> str:
    """`path` relative to the repository root; checked not to exist when read from `page_dir` instead."""
    rel = os.path.relpath(path, ROOT)
    assert not (page_dir / rel).exists(), f"{rel} exists from {page_dir} too: the test would not tell the two apart"
    return rel


def execute_in_own_folder(source: Path, parameters: dict, tmp_path: Path) -> tuple[list[bytes], str]:
    """papermill over a MyST page with the kernel's working directory set to the page's folder (as JupyterLab):
    the PNG images and the Markdown / HTML / plain text of its outputs; no cell may raise."""
    import jupytext
    import papermill

    out = tmp_path / f"{source.stem}.ipynb"
    papermill.execute_notebook(jupytext.read(source), str(out), parameters=parameters, cwd=str(source.parent),
                               kernel_name="python3", progress_bar=False)
    outputs = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    data = [o.get("data", {}) for o in outputs]
    images = [base64.b64decode(d["image/png"]) for d in data if "image/png" in d]
    assert all(i.startswith(b"\x89PNG") for i in images)
    text = "\n".join("".join(d.get(k, "")) for d in data for k in ("text/markdown", "text/html", "text/plain"))
    text += "\n".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
    return images, text


@pytest.mark.parametrize("name", [p.name for p in pages.book_pages()])
def test_each_figure_page_runs_in_its_own_folder_on_root_relative_cubes(name, tiny_cubes, tmp_path):
    rel = relative_to_root(tiny_cubes, FIGURES)
    parameters = {"profile": "tiny", "cube_dir": rel}
    if name in {p.name for p in pages.PAGES if p.part == pages.AFTER}:
        parameters["followups_dir"] = rel  # the tiny run is a baseline-like run: the follow-up pages find it
    images, text = execute_in_own_folder(FIGURES / f"{name}.md", parameters, tmp_path)
    assert not [m for m in NO_CUBE if m in text], text[:2000]
    if name not in FOLLOWUP_PAGES:  # those draw a treatment against the baseline; the tiny run has no treatment
        assert images, f"{name} drew nothing"
    if name in pages.GRID_PAGES:
        assert "1 dataset × network cell(s) with a run" in text


def test_the_intro_runs_in_its_own_folder_on_root_relative_folders(tiny_cubes, tmp_path):
    book = ROOT / "book"
    params = tmp_path / "tiny"
    params.mkdir()
    (params / "demo-vgg11.yaml").write_text("network: vgg11\n")
    (params / "demo-resnet18.yaml").write_text("network: resnet18\n")  # no cube: listed as not run
    _, text = execute_in_own_folder(book / "intro.md", {"profile": "tiny", "cube_dir": relative_to_root(
        tiny_cubes, book), "parameters_dir": relative_to_root(params, book)}, tmp_path)
    assert 'href="runs/demo-vgg11.html"' in text and "| resnet18 | | | | | | | not run | | |" in text


def test_the_run_page_trains_into_a_root_relative_folder_from_its_own_folder(tmp_path):
    book = ROOT / "book"
    params, cubes = tmp_path / "tiny", tmp_path / "cubes"
    params.mkdir()
    (params / "demo-vgg11.yaml").write_text(TINY_TRAIN)
    images, text = execute_in_own_folder(book / "train.md", {
        "param_file": relative_to_root(params / "demo-vgg11.yaml", book),
        "cube_dir": relative_to_root(cubes, book), "threads": 1}, tmp_path)
    assert (cubes / "demo-vgg11.nc").is_file() and images
    assert "Not run" not in text


def test_an_absolute_folder_is_used_as_it_is_and_a_relative_one_against_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.resolve(tmp_path / "x") == tmp_path / "x"
    assert paths.resolve("cubes/demo") == ROOT / "cubes" / "demo"
    assert paths.resolve("~/c") == Path.home() / "c"


def test_a_folder_without_cubes_is_named_absolutely_with_the_command_that_fills_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root: the folder is still the root's
    prof = profiles.open_profile("cubes/no-such-profile")
    assert prof.attrs["directory"] == str(ROOT / "cubes" / "no-such-profile") and not profiles.cells(prof)
    text = profiles.no_cube_text("no-such-profile", "cubes/no-such-profile")
    assert f"`{ROOT / 'cubes' / 'no-such-profile'}`" in text
    assert "`nox -s reproduce -- no-such-profile`" in text and str(ROOT) in text
    other = profiles.no_cube_text("demo", tmp_path / "elsewhere")
    assert f"`python -m nc.sweep parameters/demo --cube-dir {tmp_path / 'elsewhere'}`" in other
