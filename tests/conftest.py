"""Fixtures shared by the test modules: `tiny_cubes`, one tiny real run's cube (about 7 s of training on 2 CPU cores),
trained once per test session for every module that executes the book's pages on it."""
import pytest

TINY_RUN = {"dataset": "demo", "network": "vgg11", "width": 0.25, "n_per_class": 50, "test_n_per_class": 10,
            "image_size": 16, "epochs": 16, "lrs": [0.05], "lr_milestones": [0.6, 0.8], "snapshot_epochs": 8,
            "robustness_images": 5, "fig1_samples": 5, "device": "cpu"}


@pytest.fixture(scope="session")
def tiny_cubes(tmp_path_factory):
    """A folder holding demo-vgg11.nc: VGG11 x1/4 on 50 digits per class, 16 epochs, 8 snapshots, one lr."""
    import torch

    from nc import runs
    from nc.runs import params

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cubes")
    p = params.validate(dict(TINY_RUN), "tiny")
    p["profile"] = "tiny"
    runs.run(p, out, progress=False)
    return out
