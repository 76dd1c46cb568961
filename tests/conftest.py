"""What the suite's tests share: the tiny run configurations and the trained fixtures built from them once per
session (a small real run of the demo digits, on the CPU).

TINY is the smallest run that still trains, measures and draws everything: VGG11 at width 1/8 on 20 + 10 demo
digits per class at 16 x 16, a few epochs, one lr. `tiny(**over)` validates it with overrides, as a parameter
file would be. `tiny_cubes` is a cube folder of one longer run (16 epochs, 8 snapshots, a TPT) that the notebook
tests execute the pages on.
"""
import contextlib
from pathlib import Path

import pytest
import torch

from nc import runs
from nc.runs import params

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dataset": "demo", "network": "vgg11", "width": 0.125, "n_per_class": 20, "test_n_per_class": 10,
        "image_size": 16, "epochs": 5, "lrs": [0.05], "snapshot_epochs": [1, 3, 5], "robustness_images": 0,
        "fig1_samples": 4, "device": "cpu"}
# The notebooks' run: long enough for a TPT, several snapshots and every figure (DeepFool on 5 images).
PAGES_RUN = {**TINY, "width": 0.25, "n_per_class": 50, "image_size": 16, "epochs": 16, "lr_milestones": [0.6, 0.8],
             "snapshot_epochs": 8, "robustness_images": 5, "fig1_samples": 5}


def tiny(name: str = "tiny", **over) -> dict:
    """TINY with `over`, validated as the parameter file `name` would be."""
    return params.validate({**TINY, **over}, name)


@pytest.fixture(scope="session")
def tiny_cubes(tmp_path_factory):
    """A cube folder holding demo-vgg11.nc of PAGES_RUN (profile "tiny"), trained once per session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("cubes")
        p = params.validate(PAGES_RUN, "tiny")
        p["profile"] = "tiny"
        runs.run(p, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (Linux /proc; a zombie's command line is empty)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return pids
