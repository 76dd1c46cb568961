"""The book's page "Measure your own network" (book/figures/measure.md, nc.report.measure_page) on a tiny demo
VGG11 run: retrained from its cube's parameters, its snapshot checkpoints measured by nc.measure.collapse and by
`python -m nc.collapse --checkpoints` reproduce the retrained run's own snapshot values (the same weights, batches
and thread count: to 1e-9 relative; the measures themselves are the same float64 code), and papermill executes the
page, also when the cube was trained on another number of threads than the page retrains on."""
import json
import re

import numpy as np
import pytest
import torch
from test_book import TINY

from nc.report import book, measure_page
from nc.runs import cell
from nc.runs import params as params_mod


@pytest.fixture(scope="module")
def tiny_cube(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure-page")
    (root / "demo-vgg11.yaml").write_text("network: vgg11\n" + TINY)  # the book test's tiny run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the page's kernel retrains on its own default: the cube need not be repeated bitwise
    try:
        return cell.run(params_mod.load(root / "demo-vgg11.yaml"), root / "cubes", progress=False)
    finally:
        torch.set_num_threads(threads)


def test_the_page_reproduces_the_cube_by_the_api_and_by_the_command(tiny_cube, tmp_path):
    """One execution of the page (it retrains the run once): the API's table and the command's series agree with
    the run's snapshots, the command printed its table, and the series is drawn."""
    out = book.execute(book.BOOK / "figures" / "measure.md", tmp_path / "measure.ipynb",
                       {"cube_dir": str(tiny_cube.parent)})
    text = json.dumps(json.loads(out.read_text())["cells"])
    assert "image/png" in text and "Traceback" not in text and "epoch 5" in text
    api = float(re.search(r"difference from the run's own snapshot: \*\*([0-9.e+-]+)\*\*", text).group(1))
    command = float(re.search(r"snapshots by at most \*\*([0-9.e+-]+)\*\* relative", text).group(1))
    assert api < 1e-9 and command < 1e-9, (api, command)
    assert "retrained run's measures differ from the stored cube's" in text
    assert "on 1 CPU thread(s) (the cube's: 1)" in text  # the retrain takes the cube's thread count


def test_the_comparison_reads_every_compared_measure_from_the_cube(tiny_cube):
    _, _, _, run = measure_page.run_of(tiny_cube)
    epochs = measure_page.snapshot_epochs(run)
    assert epochs == [1, 3, 5]
    fake = run.sel(epoch=5)  # the cube against itself: every difference 0, every value finite
    table = measure_page.compare(fake, run, 5)
    assert list(table.index) == list(measure_page.COMPARED) and (table["|difference|"] == 0).all()
    assert np.isfinite(table["cube"]).all()
