"""The book's page "Measure your own network" (book/figures/measure.md, nc.report.measure_page) on a tiny demo
VGG11 run: retrained from its cube's parameters, its snapshot checkpoints measured by nc.measure.collapse and by
`python -m nc.collapse --checkpoints` reproduce the cube's values (float32 forward passes on both sides: to 1e-5
relative; the measures themselves are the same float64 code), and papermill executes the page."""
import json

import numpy as np
import pytest
import xarray as xr
from test_book import TINY

from nc.report import book, measure_page
from nc.runs import cell
from nc.runs import params as params_mod


@pytest.fixture(scope="module")
def tiny_cube(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure-page")
    (root / "demo-vgg11.yaml").write_text("network: vgg11\n" + TINY)  # the book test's tiny run
    return cell.run(params_mod.load(root / "demo-vgg11.yaml"), root / "cubes", progress=False)


def test_the_api_and_the_command_reproduce_the_cube(tiny_cube, tmp_path):
    files, params = measure_page.retrain(tiny_cube, tmp_path)
    _, _, _, run = measure_page.run_of(tiny_cube)
    assert [f.name for f in files] == ["epoch-1.pt", "epoch-3.pt", "epoch-5.pt"]
    table = measure_page.compare(measure_page.api_result(params, files[-1]), run, 5)
    assert np.isfinite(table["cube"]).all() and table["relative"].max() < 1e-5, table
    out = tmp_path / "series.nc"
    printed = measure_page.run_command(measure_page.command(params, tmp_path / "epoch-*.pt", out))
    assert "epoch 5" in printed and "nc1" in printed
    series = xr.open_dataset(out, engine="netcdf4")
    assert list(series["epoch"].values) == [1, 3, 5]
    assert measure_page.series_difference(series, run).max() < 1e-5


def test_the_page_executes(tiny_cube, tmp_path):
    out = book.execute(book.BOOK / "figures" / "measure.md", tmp_path / "measure.ipynb",
                       {"cube_dir": str(tiny_cube.parent)})
    text = json.dumps(json.loads(out.read_text())["cells"])
    assert "Largest relative difference from the cube" in text and "image/png" in text and "Traceback" not in text
