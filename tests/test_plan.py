"""The plan before the spend: read-only, from the parameter files alone; FLOPs agree with torchvision's published
operation counts; the ImageNet cells are 8-GPU jobs at 224 px streaming from a prepared store."""
from pathlib import Path

import pytest

from nc import data
from nc.runs import plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def paper_plan():
    return plan.plan(ROOT / "parameters" / "paper", world_sizes={"imagenet": 8}, gpu="H100")


def test_the_plan_touches_no_data(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the plan read data")

    monkeypatch.setattr(data, "load", refuse)
    result = plan.plan(ROOT / "parameters" / "paper", only=["mnist-vgg11", "imagenet-resnet152"])
    assert [r["name"] for r in result["rows"]] == ["imagenet-resnet152", "mnist-vgg11"]


def test_the_paper_plan_covers_every_job_with_positive_costs(paper_plan):
    rows = {r["name"]: r for r in paper_plan["rows"]}
    assert len(rows) == 21 and sum(r["lrs"] for r in rows.values()) == 18 * 25 + 3 * 10
    assert all(r["hours"] > 0 and r["memory_gb"] > 0 and r["images"] > 0 for r in rows.values())
    assert abs(paper_plan["gpu_hours"] - sum(r["gpu_hours"] * r["lrs"] for r in rows.values())) < 1e-6
    r = rows["imagenet-resnet152"]
    assert r["gpus"] == 8 and r["image_size"] == 224 and r["classes"] == 1000
    assert r["train_images"] == 300 * 600 * 1000  # 300 epochs of the 600-per-class subset
    assert paper_plan["disk"]["store"] == (600 * 1000 + 50000) * 3 * 224 * 224  # one store for the three cells
    assert "estimated" in r["source"] and "H100" in r["source"]
    assert "GPU-hours" in plan.markdown(paper_plan)


def test_three_seeds_plan_three_times_the_jobs(paper_plan):
    three = plan.plan(ROOT / "parameters" / "paper", world_sizes={"imagenet": 8}, gpu="H100", seeds=3)
    assert all(r["seeds"] == 3 for r in three["rows"]) and all(r["seeds"] == 1 for r in paper_plan["rows"])
    assert three["gpu_hours"] == pytest.approx(3 * paper_plan["gpu_hours"])
    assert three["disk"]["checkpoints_kept"] == 3 * paper_plan["disk"]["checkpoints_kept"]


@pytest.mark.parametrize("network,weights", [("resnet152", "ResNet152_Weights"), ("densenet201", "DenseNet201_Weights"),
                                             ("vgg19", "VGG19_BN_Weights")])
def test_flops_agree_with_torchvisions_published_operation_counts(network, weights):
    import torchvision.models as tvm

    p = {"dataset": "imagenet", "network": network, "stem": "imagenet", "width": 1.0, "growth_rate": None,
         "feature_dim": None, "image_size": 224, "n_per_class": 600, "test_n_per_class": None, "npz_file": None,
         "memory_efficient": False}
    cost = plan.network_cost(p)
    published = getattr(tvm, weights).IMAGENET1K_V1.meta["_ops"]  # GFLOPS as torchvision counts them: multiply-adds
    assert cost["flops"] / 2 / 1e9 == pytest.approx(published, rel=0.01)


def test_the_plan_command_prints_per_job_costs_and_the_total(capsys):
    from nc.runs import sweep

    sweep.main([str(ROOT / "parameters" / "paper"), "--plan", "--only", "mnist-vgg11", "imagenet-vgg19", "--gpu",
                "H100"])
    out = capsys.readouterr().out
    # 8 GPUs from _executor.yaml
    assert "| imagenet-vgg19 | 10 | 1 | 8 |" in out and "| mnist-vgg11 | 25 | 1 | 1 |" in out
    assert "GPU-hours" in out and "H100" in out


def test_the_plan_reads_the_named_gpus_bench_file_and_says_so(tmp_path, capsys):
    import json

    from nc.runs import params

    p = params.load(ROOT / "parameters" / "paper" / "mnist-vgg11.yaml")
    size, rate = plan.network_cost(p)["image_size"], 5000.0
    record = {"what": "train", "network": "vgg11", "image_size": size, "precision": p["precision"], "value": rate,
              "unit": "images/s", "device": "NVIDIA H100 80GB HBM3"}
    (tmp_path / "bench-nvidia-h100-80gb-hbm3.json").write_text(json.dumps([record]))
    (tmp_path / "bench-nvidia-a100-sxm4-80gb.json").write_text(json.dumps([{**record, "value": 1.0,
                                                                            "device": "NVIDIA A100-SXM4-80GB"}]))
    (tmp_path / "bench-cpu.json").write_text(json.dumps([{**record, "value": 2.0, "device": "cpu x (2 cores)"}]))
    only = ["mnist-vgg11", "imagenet-vgg19"]
    got = plan.plan(ROOT / "parameters" / "paper", gpu="H100", only=only, bench_dir=tmp_path)
    rows = {r["name"]: r for r in got["rows"]}
    mnist = rows["mnist-vgg11"]
    assert got["bench_files"] == [tmp_path / "bench-nvidia-h100-80gb-hbm3.json"]
    assert mnist["source"] == "measured: training images/s in bench-nvidia-h100-80gb-hbm3.json (H100)"
    eval_images = mnist["images"] - mnist["train_images"]  # as nc.runs.plan.job_plan: an eval image is 1/3 a step
    assert mnist["hours"] == pytest.approx((mnist["train_images"] + eval_images / 3) / rate / 3600, rel=1e-12)
    assert "estimated" in rows["imagenet-vgg19"]["source"]  # another network and size: not measured
    text = plan.markdown(got)
    assert text.splitlines()[0].startswith(f"Hours from the training images/s measured in {tmp_path}")
    other = plan.plan(ROOT / "parameters" / "paper", gpu="V100", only=only, bench_dir=tmp_path)
    assert other["bench_files"] == [] and all("estimated" in r["source"] for r in other["rows"])
    assert plan.markdown(other).startswith("Hours estimated from FLOPs: no bench/bench-*.json of an V100")
    a100 = plan.plan(ROOT / "parameters" / "paper", gpu="A100", only=only, bench_dir=tmp_path)
    assert a100["rows"][1]["hours"] > mnist["hours"] * 1000  # its own file's 1 image/s, not the H100's
    (tmp_path / "bench-nvidia-h100-80gb-hbm3.json").write_text("[{")
    with pytest.raises(ValueError, match="bench-nvidia-h100-80gb-hbm3.json: cannot read"):
        plan.plan(ROOT / "parameters" / "paper", gpu="H100", only=only, bench_dir=tmp_path)


def test_an_unknown_profile_is_named():
    from nc.report import book
    from nc.runs import sweep

    with pytest.raises(SystemExit, match="no profile folder .*nowhere"):
        sweep.main([str(ROOT / "parameters" / "nowhere")])
    with pytest.raises(SystemExit, match=r"no profile 'nowhere': parameters/nowhere/ does not exist \(profiles: demo"):
        book.main(["build", "nowhere"])
