"""Transfer to held-out classes and the orthogonality of out-of-distribution features (the book's Part II), float64.

A run with `held_out_classes` trains on the other classes only; at each snapshot the network's features h (the
classifier's input, eval mode) of the held-out classes' own train and test images are measured:

- transfer_cdnv (Galanti, Gyorgy & Hutter, ICLR 2022, their headline claim: the collapse carries over to new
  classes): the CDNV of nc.measure.followups.cdnv, Avg_{c<c'} (Var_c + Var_c')/(2 ||mu_c - mu_c'||^2), among the
  held-out classes, on their TRAIN images (means and variances from the Chan-merged accumulator).
- transfer_ncc_acc (the same paper's few-shot test): nearest-class-centre accuracy on the held-out classes' TEST
  images with the class centres the means of SHOTS train images per held-out class, averaged over DRAWS draws of
  the shots. The draws are made once per run from the data seed (numpy default_rng(seed), classes in order, without
  replacement within a class): the same shots at every snapshot.
- nc5, nc5_centred (Ammar et al., "NECO", ICLR 2024, NC5 "ID/OOD orthogonality", their OrthoDev): the run's
  out-of-distribution (OOD) set, named by the cube's global attribute `ood_set`, is either the held-out classes
  (`held_out_classes`) or the TEST split of another registered dataset (`ood_dataset`, e.g. FashionMNIST beside
  MNIST: nc.data.with_ood, standardised with the run's train statistics; nc.train.snapshot.measure_ood).
  nc5 = Avg_c |cos(mu_c, mu_G^OOD)| with mu_c the TRAINED classes' train class means and mu_G^OOD the mean of the OOD
  TEST features, both uncentred as NECO writes it; nc5_centred takes both about the trained classes' global mean
  mu_G: Avg_c |cos(mu_c - mu_G, mu_G^OOD - mu_G)|. 0 = orthogonal, 1 = parallel. The OOD mean is Ave over the OOD
  set's classes of their test class means (= Ave_i h_i on a balanced test set), the repository's class-weighted
  convention.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from nc.measure.moments import _f64, _labels

SHOTS = 5   # k: train images per held-out class that make its class centre (Galanti et al.'s 5-shot)
DRAWS = 20  # seeded draws of the shots the accuracy is averaged over
TRANSFER_METRICS = ("transfer_cdnv", "transfer_ncc_acc", "nc5", "nc5_centred")

_HELD = ("NaN for runs without held_out_classes and off snapshot epochs; the held-out classes' own train and test "
         "images of the same data subset, features of the network trained on the other classes")
_OOD = ("NaN for runs with neither held_out_classes nor ood_dataset and off snapshot epochs; the OOD set is the run's "
        "own (global attribute ood_set): the held-out classes' test images, or the TEST split of the dataset "
        "ood_dataset names (the run's image size, test_n_per_class and data seed, standardised with the run's train "
        "statistics)")
DEFINITIONS = {
    "transfer_cdnv": "Avg_{c<c'} (Var_c + Var_c')/(2 ||mu_c - mu_c'||^2) over pairs of HELD-OUT classes, Var_c = "
                     "Ave_{i in c} ||h_i - mu_c||^2, on the held-out classes' TRAIN images; unitless; Galanti, "
                     "Gyorgy & Hutter, ICLR 2022 (CDNV on classes not trained on); " + _HELD,
    "transfer_ncc_acc": f"nearest-class-centre accuracy on the held-out classes' TEST images, centres the means of "
                        f"k = {SHOTS} TRAIN images per held-out class ({SHOTS}-shot, K-way for the K held-out "
                        f"classes), "
                        f"averaged over {DRAWS} draws of the shots made once per run (numpy default_rng(data seed), "
                        f"without replacement within a class; the same shots at every snapshot), Euclidean, ties to "
                        f"the lowest class; unitless, in [0, 1], chance 1/K; Galanti, Gyorgy & "
                        f"Hutter, ICLR 2022 (few-shot transfer); " + _HELD,
    "nc5": "Avg_c |<mu_c, mu_G^OOD>| / (||mu_c|| ||mu_G^OOD||), mu_c the trained classes' train class means "
           "(uncentred), mu_G^OOD = Ave over the classes of the run's OOD set (global attribute ood_set) of their "
           "TEST class means (the OOD set's mean; = Ave_i h_i when balanced); unitless, in [0, 1], 0 = OOD mean "
           "orthogonal to every class mean; Ammar et al., ICLR 2024 (NECO), NC5 ID/OOD orthogonality (OrthoDev); "
           + _OOD,
    "nc5_centred": "Avg_c |cos(mu_c - mu_G, mu_G^OOD - mu_G)|, as nc5 but both about the trained classes' global "
                   "mean mu_G = Ave_c mu_c; unitless, in [0, 1]; NC5 of Ammar et al., ICLR 2024, on centred means "
                   "(the paper's Fig. 2-7 geometry); " + _OOD,
}


def shot_indices(labels, num_classes: int, shots: int = SHOTS, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """Row indices (draws, num_classes, shots) of the few-shot train images: for each draw and each class in order,
    `shots` rows of that class without replacement, numpy.random.default_rng(seed). ValueError naming the class
    when it has fewer rows than `shots`."""
    y = np.asarray(labels)
    rows = [np.flatnonzero(y == c) for c in range(num_classes)]
    short = {c: len(r) for c, r in enumerate(rows) if len(r) < shots}
    if short:
        raise ValueError(f"{shots}-shot transfer needs {shots} train images per held-out class; these have fewer "
                         f"(class: images): {short}")
    rng = np.random.default_rng(seed)
    return np.stack([np.stack([rng.choice(r, size=shots, replace=False) for r in rows]) for _ in range(draws)])


def shot_centres(shot_features) -> torch.Tensor:
    """Class centres (draws, K, p), float64, from the shots' features (draws, K, shots, p): the mean of each class's
    shots."""
    return _f64(shot_features).mean(dim=2)


def fewshot_hits(features, labels, centres) -> torch.Tensor:
    """How many (draw, image) pairs have their nearest centre (float64 Euclidean, ties to the lowest class) equal to
    their label: an int64 device tensor, summed over the draws (no host sync). centres: (draws, K, p)."""
    c = _f64(centres)
    h = _f64(features, c.device)
    offset = c.mean(dim=(0, 1))  # cdist expands ||a||^2 + ||b||^2 - 2ab: remove a common offset first
    d = torch.cdist((h - offset).expand(c.shape[0], -1, -1), c - offset, compute_mode="donot_use_mm_for_euclid_dist")
    return (d.argmin(dim=2) == _labels(labels, c.device)[None]).sum()


def fewshot_accuracy(shot_features, features, labels) -> float:
    """The nearest-class-centre accuracy of `features` (N, p) with the centres of `shot_features` (draws, K, shots,
    p), averaged over the draws."""
    centres = shot_centres(shot_features)
    n = len(labels)
    return fewshot_hits(features, labels, centres).item() / (centres.shape[0] * n) if n else math.nan


def ood_orthogonality(class_means, ood_mean, centre=None) -> float:
    """Avg_c |cos(mu_c - centre, mu_OOD - centre)| (centre None: 0, NECO's NC5). NaN where a vector is zero."""
    mu = _f64(class_means)
    o = _f64(ood_mean, mu.device)
    if centre is not None:
        g = _f64(centre, mu.device)
        mu, o = mu - g, o - g
    norms = mu.norm(dim=1) * o.norm()
    if not bool((norms > 0).all()):
        return math.nan
    return ((mu @ o).abs() / norms).mean().item()


def nan_metrics() -> dict:
    """Every transfer metric NaN: a run without held-out classes (and, for nc5, without an OOD set)."""
    return {k: math.nan for k in TRANSFER_METRICS}
