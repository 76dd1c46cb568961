"""nc.train.ddp on the CPU, gloo backend, 2 processes (this file run as a script, with torchrun's variables): a DDP run
of a float64 network without BatchNorm equals the single-process run with the same global batch (every epoch
value, snapshot metric, depth value and the geometry, as records and as cubes); a DDP run stopped and resumed
equals an uninterrupted one bitwise; the checkpoint is the bare model's; BatchNorm is per rank and rank 0's
statistics reach every rank. Without processes: the Chan merges of the accumulators equal one accumulator over all
the data (and numpy's two-pass moments) to 1e-12, the epoch sharding's union is the single-process batch, and the
launchers' variables are read as they are set. Nothing waits on the clock: the workers are waited for with a
generous deadline."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nc import measure, models, train  # noqa: E402
from nc.data.loader import TensorSplit  # noqa: E402
from nc.measure import depth, distributed, followups  # noqa: E402
from nc.runs import cube, params  # noqa: E402
from nc.train import ddp, loop  # noqa: E402

LR, STOP_AFTER, C = 0.1, 3, 5
# 101 train rows, global batch 16: 6 full batches (8 rows per rank) and a last one of 5 (3 + 2 rows, loss-scaled)
RUN = dict(dataset="demo", network="vgg11", epochs=6, lrs=[LR], snapshot_epochs=[1, 2, 4, 6], batch_size=16,
           eval_batch_size=7, robustness_images=5, fig1_classes=3, fig1_samples=4, device="cpu", seed=3, seeds=[3],
           depth=True, lr_milestones=[0.5, 0.75])
# float64 everywhere, so that the two runs differ only by float64 rounding (the order of the gradient sums over
# the ranks, the merges' order): ~1e-16 per step, amplified by 42 SGD steps to ~1e-13 (7.5e-14 observed)
RTOL = 1e-9


def run_params() -> dict:
    return params.validate(dict(RUN), "test_ddp")


def planted_data():
    """5 Gaussian classes in 1 x 4 x 4 'images', float64: 101 train rows (one class has 21), 41 test rows."""
    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(C, 1, 4, 4, generator=g, dtype=torch.float64)

    def split(n):
        y = torch.arange(n) % C
        return TensorSplit(centres[y] + 0.7 * torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), y)

    return SimpleNamespace(train=split(101), test=split(41), num_classes=C, in_channels=1, image_size=4)


def build_mlp(params, num_classes, in_channels, image_size, device, seed=None):
    """In place of train.build_model: a float64 MLP without BatchNorm, seeded; its blocks include one narrower
    than C - 1 (depth's ClassMeansTrace) and two wider (CollapseAccumulator)."""
    torch.manual_seed(params["seed"] if seed is None else seed)
    features = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 32), nn.ReLU(), nn.Linear(32, 3),
                             nn.LeakyReLU(0.2), nn.Linear(3, 16), nn.ReLU())
    return models.Network(features, 16, num_classes, {"fc1": "2", "narrow": "4", "fc3": "6"}).double().to(device)


# ----------------------------------------------------------------------------------------- the 2-process runs

def _worker(cfg: dict) -> None:
    """One rank: the jobs of cfg (train_one_lr runs), then (optionally) the BatchNorm check."""
    torch.set_num_threads(1)
    ctx = ddp.setup("cpu")
    assert ctx.world_size == 2 and ctx.distributed
    loop.build_model = build_mlp
    try:
        for job in cfg["jobs"]:
            record = train.train_one_lr(run_params(), LR, planted_data(), checkpoint=Path(job["checkpoint"]),
                                        progress=False, stop_after=job["stop_after"])
            torch.save(record, f"{job['out']}-rank{ctx.rank}.pt")
        if cfg.get("batchnorm"):
            torch.save(_batchnorm_check(ctx), f"{cfg['batchnorm']}-rank{ctx.rank}.pt")
    finally:
        ddp.teardown()


def _batchnorm_check(ctx) -> dict:
    """One DDP step of a BatchNorm net on different rows per rank: the running means before and after sync."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).double()
    net = ddp.wrap(model)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(10 + ctx.rank), dtype=torch.float64)
    net(x).sum().backward()
    before = model[1].running_mean.clone()
    ddp.sync_buffers(model)
    return {"before": before, "after": model[1].running_mean.clone(), "grad": model[0].weight.grad.clone()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp: Path, cfg: dict, world: int = 2, timeout_s: float = 600) -> None:
    """This file as `world` worker processes with torchrun's variables; waits (generously) and checks they exit 0."""
    port, procs, logs = _free_port(), [], []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        logs.append(open(tmp / f"worker-{port}-{rank}.log", "w"))  # noqa: SIM115 (closed below)
        procs.append(subprocess.Popen([sys.executable, __file__, json.dumps(cfg)], env=env, cwd=ROOT,
                                      stdout=logs[-1], stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    try:  # until all exit, one fails (the others would wait for it in a collective) or the deadline passes
        while time.monotonic() < deadline and any(p.poll() is None for p in procs) and \
                not any(p.returncode for p in procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                next(p for p in procs if p.poll() is None).wait(timeout=1)
        codes = [p.poll() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    out = "\n".join(Path(f.name).read_text()[-3000:] for f in logs)
    assert codes == [0] * world, out


@pytest.fixture(scope="module")
def runs_(tmp_path_factory):
    """The single-process reference, then one launch of 2 processes running: whole; stopped after STOP_AFTER
    epochs; resumed from the stopped run's checkpoint (a new train_one_lr call: the model, optimizer and DDP
    wrapper are built again and every rank reads rank 0's file, as after a requeue)."""
    tmp = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "build_model", build_mlp)
        single = train.train_one_lr(run_params(), LR, planted_data(), checkpoint=tmp / "single.ckpt", progress=False)
    job = lambda name, stop=None: {"checkpoint": str(tmp / f"{name}.ckpt"), "stop_after": stop, "out": str(tmp / name)}
    launch(tmp, {"jobs": [job("whole"), job("stopped", STOP_AFTER), dict(job("stopped"), out=str(tmp / "resumed"))],
                 "batchnorm": str(tmp / "bn")})
    load = lambda name: {r: torch.load(tmp / f"{name}-rank{r}.pt", weights_only=False) for r in (0, 1)}
    return SimpleNamespace(single=single, whole=load("whole"), stopped=load("stopped"), resumed=load("resumed"),
                           bn=load("bn"), tmp=tmp)


def _numeric(record: dict) -> dict:
    """Every array of a record, flattened to {name: float64 array} (wall_time left out: it is a clock)."""
    out = {f"epoch/{k}": v for k, v in record["epoch"].items()}
    out |= {f"snapshot/{k}": v for k, v in record["snapshot"].items()}
    out |= {f"geometry/{k}": v for k, v in record["geometry"].items()}
    out |= {f"depth/{k}": v for k, v in record["depth"].items() if k != "layer_names"}
    out["epochs_done"], out["tpt_epoch"] = record["epochs_done"], record["tpt_epoch"]
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def test_two_process_run_equals_the_one_process_run_with_the_same_global_batch(runs_):
    one, two = runs_.single, runs_.whole[0]
    assert one["status"] == two["status"] == "complete"
    a, b = _numeric(one), _numeric(two)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(np.isnan(a[key]), np.isnan(b[key])), key
        np.testing.assert_allclose(b[key], a[key], rtol=RTOL, atol=1e-12, err_msg=key)
    worst = max(np.nanmax(np.abs(b[k] - a[k]) / np.maximum(np.abs(a[k]), 1e-3), initial=0) for k in a)
    print(f"largest relative difference, 2 processes vs 1: {worst:.1e}")
    # the comparison is not vacuous: the run learned, was measured at every snapshot, DeepFool and depth ran
    assert one["epoch"]["train_acc"][-1] == 1.0 and np.isfinite(one["snapshot"]["nc1"][[0, 1, 3, 5]]).all()
    assert np.isfinite(one["snapshot"]["robustness"][[0, 1, 3, 5]]).all() and np.isfinite(one["depth"]["nc1"][0, 0])
    assert np.isnan(one["depth"]["nc1"][0, 1]) and np.isfinite(one["depth"]["trace_ratio"][0]).all()  # narrow block
    for key in ("fig1_classes", "fig1_indices", "robustness_indices", "snapshot_epochs", "geometry_epochs"):
        assert one[key] == two[key], key
    p = run_params()
    part = lambda r: cube.part(r, p).drop_vars("wall_time")
    xr.testing.assert_allclose(part(two), part(one), rtol=RTOL, atol=1e-12)  # the same cube


def test_every_rank_finalizes_the_same_numbers(runs_):
    a, b = _numeric(runs_.whole[0]), _numeric(runs_.whole[1])
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_a_resumed_ddp_run_equals_an_uninterrupted_one_bitwise(runs_):
    stopped, resumed, whole = runs_.stopped[0], runs_.resumed[0], runs_.whole[0]
    assert stopped["status"] == "running" and stopped["epochs_done"] == STOP_AFTER
    assert resumed["status"] == "complete" and resumed["epochs_done"] == RUN["epochs"]
    a, b = _numeric(whole), _numeric(resumed)
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    final = {name: torch.load(runs_.tmp / f"{name}.ckpt", weights_only=False) for name in ("whole", "stopped")}
    for key, value in final["whole"]["model"].items():
        assert torch.equal(final["stopped"]["model"][key], value), key


def test_the_checkpoint_is_the_bare_model_whatever_the_world_size(runs_):
    one = torch.load(runs_.tmp / "single.ckpt", weights_only=False)["model"]
    two = torch.load(runs_.tmp / "whole.ckpt", weights_only=False)["model"]
    assert list(two) == list(one) and not any(k.startswith("module.") for k in two)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=RTOL, atol=1e-12)


def test_batchnorm_is_per_rank_and_rank_0s_statistics_reach_every_rank(runs_):
    r0, r1 = runs_.bn[0], runs_.bn[1]
    assert not torch.allclose(r0["before"], r1["before"])  # each rank normalised with its own rows (no SyncBN)
    assert torch.equal(r1["after"], r0["before"]) and torch.equal(r0["after"], r0["before"])
    assert torch.equal(r0["grad"], r1["grad"])  # the gradient is DDP's average on both


# ------------------------------------------------------------------------------------------- no processes

def _planted_features(n=600, p=6, seed=1):
    """Features with a 1e6 offset and a unit spread, 4 classes (class 3 only in the last rows)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.arange(n - 50) % 3, torch.full((50,), 3)])
    h = 1e6 + torch.randn(4, p, generator=g, dtype=torch.float64)[y] * 3 + torch.randn(n, p, generator=g,
                                                                                       dtype=torch.float64)
    return h, y


def _parts(n):  # uneven pieces; the first has no sample of class 3, the last only class 3
    return [slice(0, 97), slice(97, 311), slice(311, n - 50), slice(n - 50, n)]


def _rel(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max() / torch.as_tensor(b).abs().max())


def test_merged_collapse_accumulators_equal_one_over_all_the_data():
    h, y = _planted_features()
    whole = measure.CollapseAccumulator(4, h.shape[1])
    for i in range(0, len(y), 64):
        whole.update(h[i:i + 64], y[i:i + 64])
    pieces = []
    for part in _parts(len(y)):
        acc = measure.CollapseAccumulator(4, h.shape[1])
        for i in range(part.start, part.stop, 33):
            acc.update(h[i:min(i + 33, part.stop)], y[i:min(i + 33, part.stop)])
        pieces.append(acc)
    merged = pieces[0]
    for acc in pieces[1:]:
        merged.merge(acc)
    # ref: the all-at-once two-pass moments of the same features less the offset (h - 1e6 is exact: Sterbenz)
    m, w, ref = merged.finalize(), whole.finalize(), measure.moments(h - 1e6, y, 4)
    for name in ("counts", "class_means", "sigma_w", "class_var", "within_cov_means"):
        assert _rel(getattr(m, name), getattr(w, name)) < 1e-12, name
    for name in ("nc1", "within_trace", "between_trace"):
        assert getattr(m, name) == pytest.approx(getattr(w, name), rel=1e-12), name
    assert _rel(m.class_means, ref.class_means + 1e6) < 1e-15
    for name in ("counts", "sigma_w", "class_var"):  # within-class: exact whatever the offset
        assert _rel(getattr(m, name), getattr(ref, name)) < 1e-12, name
    assert m.within_trace == pytest.approx(ref.within_trace, rel=1e-12)
    # M = mu_c - mu_G from means stored at 1e6 (ulp 1.2e-10) is good to ~1e-11 relative, merged or not
    assert _rel(m.within_cov_means, ref.within_cov_means) < 1e-9
    assert m.nc1 == pytest.approx(ref.nc1, rel=1e-9) and m.between_trace == pytest.approx(ref.between_trace, rel=1e-9)
    centred = (h - h.mean(0)).numpy()  # an independent reference for the scatter: numpy's within-class sums
    scatter = sum(np.cov(centred[(y == c).numpy()].T, bias=True) * int((y == c).sum()) for c in range(4))
    assert _rel(merged.stats.scatter, torch.as_tensor(scatter)) < 1e-12


def test_merged_test_and_narrow_block_accumulators_equal_one_over_all_the_data():
    h, y = _planted_features()
    train_moments = measure.moments(h, y, 4)
    whole, tests = followups.TestAccumulator(train_moments, 4, h.shape[1]), []
    narrow_whole, narrows = depth.ClassMeansTrace(4, h.shape[1], "cpu"), []
    whole.update(h, y)
    narrow_whole.update(h - 1e6, y)  # ClassMeansTrace has no shift: its features near 0, as pooled block outputs
    for part in _parts(len(y)):
        tests.append(followups.TestAccumulator(train_moments, 4, h.shape[1]))
        narrows.append(depth.ClassMeansTrace(4, h.shape[1], "cpu"))
        tests[-1].update(h[part], y[part])
        narrows[-1].update(h[part] - 1e6, y[part])
    for acc in tests[1:]:
        tests[0].merge(acc)
    for acc in narrows[1:]:
        narrows[0].merge(acc)
    a, b = tests[0].finalize(), whole.finalize()
    assert a.nc1_test == pytest.approx(b.nc1_test, rel=1e-12) and a.cdnv_test == pytest.approx(b.cdnv_test, rel=1e-12)
    assert _rel(a.class_means, b.class_means) < 1e-12 and _rel(a.class_var, b.class_var) < 1e-12
    assert torch.equal(a.counts, b.counts)
    n, w = narrows[0].finalize(), narrow_whole.finalize()
    assert _rel(n.class_means, w.class_means) < 1e-12 and _rel(n.class_means + 1e6, train_moments.class_means) < 1e-12
    assert n.within_trace == pytest.approx(w.within_trace, rel=1e-12)
    assert n.within_trace == pytest.approx(train_moments.within_trace, rel=1e-12)  # Tr Sigma_W, two-pass


def test_merge_accumulator_is_a_no_op_for_one_process():
    acc = measure.CollapseAccumulator(3, 2)
    acc.update(torch.randn(9, 2, dtype=torch.float64), torch.arange(9) % 3)
    counts = acc.stats.counts
    assert ddp.merge_accumulator(acc) is acc and acc.stats.counts is counts
    assert ddp.shard(10) is None and ddp.local_batch(128) == 128 and ddp.tail_skipped(129, 128) == 1


@pytest.mark.parametrize("world", [2, 3, 8])
@pytest.mark.parametrize("n", [101, 96, 256 * 3 + 40, 256 * 3 + 9])
def test_the_ranks_batches_are_the_single_process_batches(monkeypatch, world, n):
    B = 96 if world == 3 else 16 * world  # global batch
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    monkeypatch.setattr(distributed, "_CURRENT", [ddp.Context()])
    seen_one = n - ddp.tail_skipped(n, B)
    one, steps_one = ddp.shard_epoch(order[:seen_one], B)
    monkeypatch.setattr(distributed, "_CURRENT", [ddp.Context(0, world)])
    m = n % B
    seen = n - ddp.tail_skipped(n, B)
    assert seen == (n - m if 0 < m < 2 * world else n)  # a tail that cannot give every rank 2 images is skipped
    ranks = []
    for r in range(world):
        monkeypatch.setattr(distributed, "_CURRENT", [ddp.Context(r, world)])
        rows, steps = ddp.shard_epoch(order[:seen], B)
        ranks.append(list(rows.split(B // world)))
        assert steps == [min(B, seen - i) for i in range(0, seen, B)]
    if seen == seen_one:
        assert steps == steps_one
    for s, size in enumerate(steps):
        pieces = [ranks[r][s] for r in range(world)]
        assert torch.equal(torch.cat(pieces), order[s * B:s * B + size])  # the union is the global batch, in order
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1 and min(map(len, pieces)) >= 2
    with pytest.raises(ValueError, match="not divisible"):
        ddp.local_batch(B + 1)


def test_launch_env_reads_torchrun_and_slurm_variables(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    assert ddp.launch_env() is None
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert ddp.launch_env() is None  # one Slurm task: one process
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[012-013,020],cpu7")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    env = ddp.launch_env()
    assert {k: env[k] for k in ("rank", "world_size", "local_rank", "master_addr")} == \
        {"rank": 5, "world_size": 8, "local_rank": 1, "master_addr": "gpu012"}
    assert 20000 <= env["master_port"] <= 60000 and ddp.launch_env()["master_port"] == env["master_port"]
    assert env["init_method"] == f"tcp://gpu012:{env['master_port']}"
    for key, value in dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="3", MASTER_ADDR="node1", MASTER_PORT="2345").items():
        monkeypatch.setenv(key, value)
    assert ddp.launch_env() == {"rank": 3, "world_size": 4, "local_rank": 3, "master_addr": "node1",
                                "master_port": 2345, "init_method": "env://"}  # torchrun's variables win
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert ddp.launch_env() is None


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
