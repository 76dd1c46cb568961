"""Measurement at a snapshot epoch: one eval-mode pass over the train set and one over the test set feed every
metric of nc.measure and nc.measure.followups (float64, streamed), the eval-mode train and test accuracies, DeepFool
robustness on the fixed test images (Fig. 8), Fig. 1's sampled features and the geometry the cube stores, deep neural
collapse at a linear head's layers (nc.measure.head, from the same train pass); and, at
three epochs of a run, collapse by depth (nc.measure.depth) at every block of the network.

h is the input of the final linear layer (a forward pre-hook on `model.classifier`), network in eval mode, as the
paper's Section 2I extracts it with PyTorch hooks. Eval passes run in float32 whatever the training precision.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from nc import measure
from nc.measure import depth, followups, head, imbalance, registry, robustness, transfer
from nc.train import ddp, losses, variables


@torch.no_grad()
def eval_pass(model, split, batch_size, on_features=None) -> float:
    """Eval-mode pass over a split (nc.data.loader seam); returns the accuracy. Calls on_features(h, logits, y) per
    batch
    with the classifier's input h. DDP: over this rank's shard of the rows (nc.train.ddp.shard), the hits summed over
    the ranks; the caller merges what on_features accumulated."""
    model.eval()
    captured = {}
    hook = model.classifier.register_forward_pre_hook(lambda mod, args: captured.__setitem__("h", args[0]))
    correct = None
    try:
        for x, y in split.batches(batch_size, ddp.shard(len(split))):
            logits = model(x)
            hits = (logits.argmax(1) == y).sum()
            correct = hits if correct is None else correct + hits
            if on_features is not None:
                on_features(captured["h"], logits, y)
    finally:
        hook.remove()
    return ddp.sum_ints([correct.item() if correct is not None else 0])[0] / max(1, len(split))


def choose_fixed_samples(record: dict, data, params: dict) -> None:
    """Fig. 1's classes and their train samples, and Fig. 8's test images: drawn once, seeded, into `record`."""
    rng = np.random.default_rng(params["seed"])
    y = data.train.labels.numpy()
    k, m = record["geometry"]["fig1_features"].shape[1:3]
    counts = np.bincount(y, minlength=data.num_classes)
    eligible = np.flatnonzero(counts >= m)  # an imbalanced run's minority classes may have fewer than m images
    if len(eligible) < k:
        raise ValueError(f"Fig. 1 needs {k} classes with at least fig1_samples = {m} train images; "
                         f"only {len(eligible)} have them (lower fig1_samples)")
    classes = sorted(eligible[rng.choice(len(eligible), size=k, replace=False)].tolist()) if len(eligible) < \
        data.num_classes else sorted(rng.choice(data.num_classes, size=k, replace=False).tolist())
    record["fig1_classes"] = classes
    record["fig1_indices"] = [sorted(rng.choice(np.flatnonzero(y == c), size=params["fig1_samples"],
                                                replace=False).tolist()) for c in classes]
    if params["robustness_images"]:
        record["robustness_indices"] = robustness.fixed_test_indices(
            data.test.labels, n=params["robustness_images"], seed=params["seed"]).tolist()


def minority(num_classes: int) -> list[int]:
    """The classes an imbalanced run gives n/R images (nc.data.sampling.class_counts: all but the first ceil(C/2));
    balanced runs report the same groups, so that minority collapse can be compared across imbalance ratios."""
    return list(range(-(-num_classes // 2), num_classes))


def loss_terms(moments, W, b, params: dict) -> dict:
    """The variables the losses add (nc.train.losses): the run's own loss computes its own (the MSE loss: its
    central-path decomposition, nc.measure.central_path), the others' are NaN."""
    return losses.snapshot_terms(params["loss"], moments, W, b, params, variables.loss_variables())


def measure_snapshot(model, data, record: dict, params: dict) -> tuple[dict, dict]:
    """Every snapshot metric (keyed as the cube's variables, plus eval_train_acc and test_acc from the same passes)
    and the geometry to store. Raises FloatingPointError on non-finite features (a diverged run)."""
    C, p, bs = data.num_classes, model.classifier.in_features, params["eval_batch_size"]
    acc = measure.CollapseAccumulator(C, p, data.train.device)
    tap = head.HeadTap(model, C, data.train.device)  # deep neural collapse at the linear head: the same train pass

    def on_train(h, logits, y):
        acc.update(h, y)
        tap.update(y)

    with tap:
        eval_train_acc = eval_pass(model, data.train, bs, on_train)
    moments = ddp.merge_accumulator(acc).finalize()
    W = model.classifier.weight.detach().double()
    b = model.classifier.bias.detach().double()
    disagree, test_moments = [0], followups.TestAccumulator(moments, C, p, data.test.device)

    def on_test(h, logits, y):  # the count stays on the device: no sync per batch
        disagree[0] = disagree[0] + measure.ncc_disagreement_count(h, W, b, moments.class_means)
        test_moments.update(h, y)

    test_acc = eval_pass(model, data.test, bs, on_test)
    disagreements = int(ddp.sum_ints(disagree)[0])  # one sync, after the pass
    ddp.merge_accumulator(test_moments)
    test_result = test_moments.finalize() if len(data.test) else None
    ncc_test_means = math.nan
    if test_result is not None and bool(torch.isfinite(test_result.class_means).all()):
        hits = []  # the second test pass: the nearest TEST class mean (Hui et al.'s reading)
        eval_pass(model, data.test, bs,
                  lambda h, logits, y: hits.append(followups.ncc_hits(h, y, test_result.class_means)))
        ncc_test_means = ddp.sum_ints([int(sum(hits))])[0] / len(data.test)
    values = registry.compute(moments, W, test_result, disagreements / max(1, len(data.test)), ncc_test_means)
    values.update(loss_terms(moments, W, b, params))
    values.update(imbalance.group_metrics(moments.class_means, moments.global_mean, W, minority(C)))
    values.update(measure_transfer(model, data, moments, params))
    values.update(tap.metrics(moments.class_means, ddp.merge_accumulator))
    values.update(eval_train_acc=eval_train_acc, test_acc=test_acc)
    if record["robustness_indices"]:  # DDP: on rank 0, broadcast
        if ddp.is_main():
            x, _ = data.test.take(record["robustness_indices"])
            values["robustness"] = robustness.robustness(
                model, x, overshoot=params["deepfool_overshoot"], max_iter=params["deepfool_max_iter"])
        values["robustness"] = ddp.broadcast_float(values["robustness"])
    fig1 = np.full(record["geometry"]["fig1_features"].shape[1:], np.nan)
    if record["fig1_indices"]:  # DDP: on rank 0, broadcast
        if ddp.is_main():
            model.eval()
            x, _ = data.train.take(np.asarray(record["fig1_indices"]).ravel())
            with torch.no_grad():
                fig1 = model.features(x).double().cpu().numpy().reshape(fig1.shape)
        fig1 = ddp.broadcast_array(fig1)
    geometry = {
        "class_means": moments.class_means.cpu().numpy(), "global_mean": moments.global_mean.cpu().numpy(),
        "classifier_weight": W.cpu().numpy(), "classifier_bias": b.cpu().numpy(),
        "within_cov_means": moments.within_cov_means.cpu().numpy(), "fig1_features": fig1,
    }
    return values, geometry




@torch.no_grad()
def measure_transfer(model, data, moments, params: dict) -> dict:
    """nc.measure.transfer's metrics on the held-out classes (data.held_out, nc.data.hold_out); without them, NC5 on
    another dataset's test split when there is one (measure_ood) and every other metric NaN. With held-out classes:
    one eval pass over their train images (the CDNV among them), the shots' features (the same seeded shots at every
    snapshot), one pass over their test images (few-shot nearest-centre hits, their class means for the OOD mean).
    `moments` are the trained classes' train moments (NC5's class means and global mean)."""
    held = getattr(data, "held_out", None)
    if held is None:
        return measure_ood(model, data, moments, params)
    bs, p, K = params["eval_batch_size"], model.classifier.in_features, held.num_classes
    train_acc = measure.CollapseAccumulator(K, p, held.train.device)
    eval_pass(model, held.train, bs, lambda h, logits, y: train_acc.update(h, y))
    held_train = ddp.merge_accumulator(train_acc).finalize()
    idx = transfer.shot_indices(held.train.labels.numpy(), K, seed=params["seed"])
    model.eval()
    x, _ = held.train.take(idx.ravel())
    shots = torch.cat([model.features(x[i:i + bs]).double() for i in range(0, len(x), bs)])
    centres = transfer.shot_centres(shots.reshape(*idx.shape, p))
    hits, test_acc = [], measure.CollapseAccumulator(K, p, held.test.device)

    def on_test(h, logits, y):  # the hits stay on the device: no sync per batch
        hits.append(transfer.fewshot_hits(h, y, centres))
        test_acc.update(h, y)

    eval_pass(model, held.test, bs, on_test)
    total = ddp.sum_ints([int(sum(hits)) if hits else 0])[0]
    ood = ddp.merge_accumulator(test_acc).finalize()
    return {"transfer_cdnv": followups.cdnv(held_train.class_means, held_train.class_var),
            "transfer_ncc_acc": total / (centres.shape[0] * len(held.test)),
            "nc5": transfer.ood_orthogonality(moments.class_means, ood.global_mean),
            "nc5_centred": transfer.ood_orthogonality(moments.class_means, ood.global_mean, moments.global_mean)}


@torch.no_grad()
def measure_ood(model, data, moments, params: dict) -> dict:
    """NC5 (nc.measure.transfer.ood_orthogonality) with another dataset's test split as the OOD set (data.ood,
    nc.data.with_ood: `ood_dataset`): one eval pass over it, its class means averaged for the OOD mean; the transfer
    metrics stay NaN (there are no held-out classes of this run). Every metric NaN without an OOD set."""
    out = transfer.nan_metrics()
    ood = getattr(data, "ood", None)
    if ood is None:
        return out
    acc = measure.CollapseAccumulator(ood.num_classes, model.classifier.in_features, ood.test.device)
    eval_pass(model, ood.test, params["eval_batch_size"], lambda h, logits, y: acc.update(h, y))
    mean = ddp.merge_accumulator(acc).finalize().global_mean
    return out | {"nc5": transfer.ood_orthogonality(moments.class_means, mean),
                  "nc5_centred": transfer.ood_orthogonality(moments.class_means, mean, moments.global_mean)}


def measure_depth(model, data, params: dict) -> dict:
    """Collapse by depth at every block (model.blocks()): nc.measure.depth.layer_collapse on the train and test splits,
    plus the fit log(C NC1_l) = a - rho l. Returns the per-layer arrays, names, widths, rho and r2."""
    bs = params["eval_batch_size"]
    train_rows, test_rows = ddp.shard(len(data.train)), ddp.shard(len(data.test))  # DDP: this rank's rows
    out = depth.layer_collapse(model, model.blocks(), lambda: data.train.batches(bs, train_rows),
                               lambda: data.test.batches(bs, test_rows), data.num_classes)
    _, out["rho"], out["r2"] = depth.fit_depth_decay(out["nc1"], data.num_classes)
    return out
