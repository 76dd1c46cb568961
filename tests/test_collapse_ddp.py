"""nc.measure.collapse under torch.distributed: two gloo processes on 127.0.0.1 (this file run as a script), each
passing its shard of the batches (a float64 model, so the features do not depend on the batching), return on every
rank the result of one process on all the data, to 1e-12 (the Chan merges in rank order change only rounding)."""
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nc import measure  # noqa: E402
from nc.measure import registry  # noqa: E402

C, WORLD = 4, 2


def problem():
    """A float64 model with a head and (x, y) batches: train 37 rows, test 19, batches of 5."""
    g = torch.Generator().manual_seed(0)
    x, tx = torch.randn(37, 6, generator=g, dtype=torch.float64), torch.randn(19, 6, generator=g, dtype=torch.float64)
    y, ty = torch.arange(37) % C, torch.arange(19) % C
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, C)).double()
    split = lambda a, b: [(a[i:i + 5], b[i:i + 5]) for i in range(0, len(b), 5)]
    return model, split(x, y), split(tx, ty)


def values(ds) -> dict:
    out = {k: float(ds[k].values) for k in (*registry.MEASURES, *registry.ACCURACY)}
    out.update(class_means=ds["class_means"].values, within_cov_means=ds["within_cov_means"].values)
    return out


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model, train, test = problem()
        ds = measure.collapse(model, train[rank::WORLD], test[rank::WORLD], progress=False)
        torch.save({k: torch.tensor(v, dtype=torch.float64) for k, v in values(ds).items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(tmp_path)]) for rank in range(WORLD)]
    assert all(p.wait(timeout=600) == 0 for p in procs)
    model, train, test = problem()
    one = values(measure.collapse(model, train, test, progress=False))
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for k, v in one.items():
            np.testing.assert_allclose(got[k].numpy(), v, rtol=1e-12, atol=1e-12, err_msg=f"rank {rank}: {k}")


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
