"""What nc.bench.suite times, each case next to the baseline it is divided by (timings on a shared machine mean
something
only as ratios within one run). Seconds by time.perf_counter, with torch.cuda.synchronize() around CUDA work.

- NC1 from features: nc.measure's streaming float64 CollapseAccumulator against the authors' notebook's method,
  transcribed from neuralcollapse/neuralcollapse, neuralcollapse.ipynb, function `analysis` (two passes over the
  batches with a per-class Python loop: class means, then Sigma_W by per-sample outer products
  z.unsqueeze(-1) @ z.unsqueeze(1) summed, float32; then a float32 scipy.sparse.linalg.svds(Sb, k=C-1)
  pseudo-inverse and trace(Sw @ inv_Sb), which has no / C: we divide by C to compare). Both get the same float32
  array in the same batches; both NC1 values are compared with a float64 numpy two-pass reference.
- A training epoch of ours (nc.train's loop: batches indexed on the device through nc.data.loader) against a plain
  torch DataLoader loop over the same tensors as the notebook trains (TensorDataset, shuffle=True, num_workers=0,
  each batch moved to the device, a partial last batch skipped); the eval-mode train pass that marks the TPT,
  a snapshot (nc.train.snapshot.measure_snapshot: whatever metrics it computes) and the per-layer pass.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from scipy.sparse.linalg import svds

from nc import measure, train
from nc.measure import depth
from nc.train import snapshot


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(seconds, fn()) with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


# ----------------------------------------------------------------------------------------- NC1 from features

def planted_features(n: int, p: int, num_classes: int, device="cpu", seed: int = 0):
    """float32 features h = mu_y + noise, class means and noise N(0, I_p), balanced shuffled labels y (int64)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g) % num_classes
    means = torch.randn(num_classes, p, generator=g)
    h = means[y] + torch.randn(n, p, generator=g)
    return h.float().to(device), y.to(device)


def ours_nc1(h, y, num_classes: int, batch_size: int) -> float:
    """NC1 by nc.measure.CollapseAccumulator: update per batch, then finalize (float64)."""
    acc = measure.CollapseAccumulator(num_classes, h.shape[1], h.device)
    for i in range(0, len(y), batch_size):
        acc.update(h[i:i + batch_size], y[i:i + batch_size])
    return acc.finalize().nc1


def authors_nc1(h, y, num_classes: int, batch_size: int, dtype=torch.float32) -> tuple[float, float, float]:
    """(seconds of the two passes, seconds of the svds pseudo-inverse and trace, trace(Sw inv_Sb) WITHOUT / C).

    The notebook's `analysis`, NC1 part only (its loss, accuracy and NCC bookkeeping left out), as written there:
    lists of per-class sums, z.unsqueeze(-1) @ z.unsqueeze(1) per sample, Sw and Sb moved to numpy, svds at
    k = C-1, inv_Sb = U diag(s^-1) U^T. `dtype` is float32 as the notebook runs (float64 only to test the
    transcription)."""
    C, device = num_classes, h.device
    N, mean, Sw = [0 for _ in range(C)], [0 for _ in range(C)], 0
    t0 = time.perf_counter()
    for computation in ["Mean", "Cov"]:
        for i in range(0, len(y), batch_size):
            hb, target = h[i:i + batch_size].to(dtype), y[i:i + batch_size]
            for c in range(C):
                idxs = (target == c).nonzero(as_tuple=True)[0]
                if len(idxs) == 0:
                    continue
                h_c = hb[idxs, :]
                if computation == "Mean":
                    mean[c] += torch.sum(h_c, dim=0)
                    N[c] += h_c.shape[0]
                else:
                    z = h_c - mean[c].unsqueeze(0)
                    cov = torch.matmul(z.unsqueeze(-1), z.unsqueeze(1))
                    Sw += torch.sum(cov, dim=0)
        if computation == "Mean":
            for c in range(C):
                mean[c] /= N[c]
            M = torch.stack(mean).T
        else:
            Sw /= sum(N)
    sync(device)
    t1 = time.perf_counter()
    muG = torch.mean(M, dim=1, keepdim=True)
    M_ = M - muG
    Sb = torch.matmul(M_, M_.T) / C
    Sw, Sb = Sw.cpu().numpy(), Sb.cpu().numpy()
    eigvec, eigval, _ = svds(Sb, k=C - 1)
    inv_Sb = eigvec @ np.diag(eigval ** (-1)) @ eigvec.T
    value = float(np.trace(Sw @ inv_Sb))
    return t1 - t0, time.perf_counter() - t1, value


def reference_nc1(h, y, num_classes: int) -> float:
    """Float64 numpy, two passes: Tr(Sigma_W Sigma_B^+) / C, Sigma_B^+ from eigh at rank exactly C-1."""
    H, labels, C = h.detach().cpu().numpy().astype(np.float64), y.cpu().numpy(), num_classes
    mu = np.stack([H[labels == c].mean(axis=0) for c in range(C)])
    Z = H - mu[labels]
    Sw = Z.T @ Z / len(H)
    M = (mu - mu.mean(axis=0)).T
    w, V = np.linalg.eigh(M @ M.T / C)  # ascending
    V, w = V[:, -(C - 1):], w[-(C - 1):]
    return float(np.trace(Sw @ (V / w) @ V.T) / C)


def metric_time(n, p, num_classes, batch_size, probe_n, max_seconds, device, repeats, log=print) -> dict:
    """Ours vs the notebook's method on the same planted features, with each NC1's relative error.

    The notebook's method is first timed on the first `probe_n` rows; if its passes, scaled linearly in N, plus its
    svds step would exceed `max_seconds`, that scaled time is reported (authors_n < n) and its NC1 error is
    against the reference on the same rows; else it is run on all n rows."""
    h, y = planted_features(n, p, num_classes, device)
    ours_s = []
    for _ in range(repeats + (torch.device(device).type == "cuda")):  # one untimed warm-up on CUDA
        seconds, nc1 = timed(lambda: ours_nc1(h, y, num_classes, batch_size), device)
        ours_s.append(seconds)
    ours_s = min(ours_s[-repeats:])
    out = {"ours_s": ours_s, "ours_nc1": nc1, "reference_nc1": reference_nc1(h, y, num_classes), "n": n}
    m = min(probe_n, n)
    passes, final, raw = authors_nc1(h[:m], y[:m], num_classes, batch_size)
    estimate = passes * n / m + final
    log(f"    notebook method on {m} rows: passes {passes:.3g} s + svds/trace {final:.3g} s"
        f" -> {estimate:.3g} s at N={n}")
    if m < n and estimate <= max_seconds:
        passes, final, raw = authors_nc1(h, y, num_classes, batch_size)
        m, estimate = n, passes + final
    out.update(authors_s=estimate, authors_passes_s=passes, authors_svds_s=final, authors_n=m,
               authors_nc1=raw / num_classes,
               reference_nc1_authors_n=out["reference_nc1"] if m == n else reference_nc1(h[:m], y[:m], num_classes))
    return out


def relative_error(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference) if reference else math.nan


# ----------------------------------------------------------------------------------------- training and passes

def epoch_ours(model, opt, split, batch_size, autocast, order, loss="cross_entropy", limit=None) -> tuple[float, int]:
    """(seconds, images trained) of one epoch of nc.train.train_epoch (the training loop itself), in `order` (its
    first `limit` steps)."""
    n = len(order) - (len(order) % batch_size == 1)  # as nc.train: a last batch of one image is skipped
    if limit is not None:
        n = min(n, limit * batch_size)
    seconds, _ = timed(lambda: train.train_epoch(model, model, opt, split, order, batch_size, autocast, loss,
                                                 max_steps=limit), split.device)
    return seconds, n


def epoch_dataloader(model, opt, loader, batch_size, autocast, device, loss="cross_entropy",
                     limit=None) -> tuple[float, int]:
    """(seconds, images trained) of one epoch of a plain DataLoader loop: each batch .to(device), a partial batch
    skipped (the notebook's `if data.shape[0] != batch_size: continue`), the same step and on-device sums as ours."""
    model.train()

    def epoch():
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        images = 0
        for step, (x, y) in enumerate(loader):
            if limit is not None and step >= limit:
                break
            if x.shape[0] != batch_size:
                continue
            x, y = x.to(device), y.to(device)
            value, logits = train.sgd_step(model, opt, x, y, autocast, loss)
            loss_sum += value.double() * len(y)
            correct += (logits.argmax(1) == y).sum()
            images += len(y)
        loss_sum.item()
        return images

    seconds, images = timed(epoch, device)
    return seconds, images


def network_costs(params: dict, data, repeats: int, warmup_steps: int, log=print) -> dict:
    """Seconds of: a training epoch, ours and the DataLoader loop (interleaved, best of `repeats`); the eval-mode
    train pass (TPT); a snapshot as `params` asks (DeepFool included) and with robustness_images = 0; the per-layer
    pass. Passes are timed on the network after those epochs (best of `repeats` on CUDA after a warm-up, one on
    CPU)."""
    device, bs, ebs, lr = data.train.device, params["batch_size"], params["eval_batch_size"], params["lrs"][0]
    cuda = device.type == "cuda"
    autocast = train.precision_context(params["precision"], device)
    build = lambda: train.build_model(params, data.num_classes, data.in_channels, data.image_size, device)
    ours, theirs = build(), build()  # the same seeded initial weights
    opt_ours, opt_theirs = train.build_optimizer(params, ours, lr), train.build_optimizer(params, theirs, lr)
    dataset = torch.utils.data.TensorDataset(data.train.x.cpu(), data.train.y.cpu())
    loader = torch.utils.data.DataLoader(dataset, batch_size=bs, shuffle=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(params["seed"]))
    N, loss = len(data.train), params["loss"]
    order = lambda e: torch.randperm(N, generator=torch.Generator().manual_seed(params["seed"] * 1_000_003 + e))
    epoch_ours(ours, opt_ours, data.train, bs, autocast, order(0), loss, limit=warmup_steps)
    epoch_dataloader(theirs, opt_theirs, loader, bs, autocast, device, loss, limit=warmup_steps)
    runs = {"ours": [], "dataloader": []}
    for r in range(repeats):
        runs["ours"].append(epoch_ours(ours, opt_ours, data.train, bs, autocast, order(r + 1), loss))
        runs["dataloader"].append(epoch_dataloader(theirs, opt_theirs, loader, bs, autocast, device, loss))
    (t_ours, n_ours), (t_dl, n_dl) = min(runs["ours"]), min(runs["dataloader"])
    log(f"    epoch: ours {t_ours:.3g} s ({n_ours} images), DataLoader {t_dl:.3g} s ({n_dl} images)")
    passes = repeats if cuda else 1

    def best(fn):
        if cuda:
            fn()
        return min(timed(fn, device)[0] for _ in range(passes))

    out = {"epoch_s": t_ours, "epoch_images": n_ours, "dataloader_epoch_s": t_dl, "dataloader_images": n_dl,
           "eval_pass_s": best(lambda: snapshot.eval_pass(ours, data.train, ebs))}
    for key, robustness_images in (("snapshot_s", params["robustness_images"]), ("snapshot_no_deepfool_s", 0)):
        p = {**params, "robustness_images": robustness_images}
        record = train.empty_record(p, lr, [1], data.num_classes, ours.classifier.in_features)
        snapshot.choose_fixed_samples(record, data, p)

        def measure(p=p, record=record):
            out["snapshot_metrics"] = len(snapshot.measure_snapshot(ours, data, record, p)[0])

        out[key] = best(measure)
    layer_pass = per_layer_pass(ours, data, params)
    out["layer_s"] = None if layer_pass is None else best(layer_pass[1])
    out["layer_via"] = None if layer_pass is None else layer_pass[0]
    return out


def per_layer_pass(model, data, params):
    """(name, zero-argument callable) of the per-layer pass a run makes: nc.train.snapshot.measure_depth where it
    exists,
    else nc.measure.depth.layer_collapse on model.blocks(); None when neither can be called."""
    if hasattr(snapshot, "measure_depth"):
        return "nc.train.snapshot.measure_depth", lambda: snapshot.measure_depth(model, data, params)
    if hasattr(depth, "layer_collapse") and hasattr(model, "blocks"):
        bs = params["eval_batch_size"]
        return "nc.measure.depth.layer_collapse", lambda: depth.layer_collapse(
            model, model.blocks(), lambda: data.train.batches(bs), lambda: data.test.batches(bs), data.num_classes)
    return None
