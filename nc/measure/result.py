"""The any-network measurement's result as an xarray Dataset: every measure of nc.measure.registry (the cube's
names, long_name, units and definition) as a scalar, the model's accuracies, and the geometry (class means, global
mean, classifier, Sigma_W on the class-mean span, class counts), all float64, from merged statistics.
"""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from nc.measure import registry
from nc.measure.stats import TestStats, TrainStats

CLASSIFIER_MEASURES = ("equinorm_classifiers", "equiangular_classifiers", "maxangle_classifiers", "self_duality",
                       "ncc_mismatch", "etf_error_classifiers", "classifier_mean_alignment")


def measures(train: TrainStats, moments, test: TestStats | None = None, robustness: float = math.nan) -> dict:
    """Every measure of registry.MEASURES, by name; NaN where it needs a test set, a head or DeepFool."""
    W = train.W if train.W is not None else (moments.class_means - moments.global_mean)  # a stand-in, then NaN
    n_test = int(test.seen) if test is not None else 0
    mismatch = int(test.disagree) / n_test if n_test and train.W is not None else math.nan
    out = registry.compute(moments, W, test.acc.finalize() if n_test else None, mismatch)
    out["robustness"] = robustness
    if train.W is None:
        out.update(dict.fromkeys(CLASSIFIER_MEASURES, math.nan))
    return out


def dataset(train: TrainStats, moments, test: TestStats | None = None, robustness: float = math.nan) -> xr.Dataset:
    """The Dataset: scalars (measures, accuracies), geometry on (class, feature) / (class, class_) dims."""
    values = measures(train, moments, test, robustness)
    acc = {"eval_train_acc": int(train.hits) / max(1, int(train.seen)),
           "test_acc": int(test.hits) / int(test.seen) if test is not None and int(test.seen) else math.nan}
    data = {k: ((), float(v)) for k, v in values.items()}
    data.update({k: ((), float(v)) for k, v in acc.items()})
    cpu = lambda t: t.detach().double().cpu().numpy()
    nan_cp = np.full((train.C, train.p), np.nan)
    data.update(
        class_means=(("class", "feature"), cpu(moments.class_means)),
        global_mean=(("feature",), cpu(moments.global_mean)),
        classifier_weight=(("class", "feature"), cpu(train.W) if train.W is not None else nan_cp),
        classifier_bias=(("class",), cpu(train.b) if train.b is not None else np.full(train.C, np.nan)),
        within_cov_means=(("class", "class_"), cpu(moments.within_cov_means)),
        class_counts=(("class",), cpu(moments.counts)),
    )
    ds = xr.Dataset(data, coords={"class": np.arange(train.C)})
    owners = {**registry.MEASURES, **registry.ACCURACY, **registry.GEOMETRY}
    for k in ds.data_vars:
        ds[k].attrs.update(owners[k]._asdict())
    ds.attrs.update(num_classes=train.C, feature_dim=train.p, features=train.names.get("features", ""),
                    classifier=train.names.get("classifier", ""), n_train=int(train.seen),
                    n_test=int(test.seen) if test is not None else 0, precision="float64",
                    conventions="nc.measure.paper (book/methods.md): mu_G = Ave_c mu_c, Sigma_B^+ at rank C-1")
    return ds
