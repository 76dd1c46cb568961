"""The measures' names, long names, units and definitions: one list, read by the training run's record schema
(nc.train.variables, hence the cube) and by the any-network API (nc.measure.api), so that both say the same thing.

The definitions are the owners' (nc.measure.paper.DEFINITIONS, nc.measure.followups.DEFINITIONS). A new measure is
one `register` call on a function of the float64 moments (README, "Adding a metric"): it is then computed at every
snapshot of a training run, written to the cube, drawn on the run page and returned by the API (`compute` serves
both callers). Every measure here is a number per snapshot.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from nc.measure import followups, paper


class Measure(NamedTuple):
    long_name: str
    units: str
    definition: str


ROBUSTNESS = ("Ave_i ||r(x_i)||_2 / ||x_i||_2 over fixed test images, DeepFool L2 (Fig. 8), in the network's "
              "standardised input space")
WITHIN_TRACE = "Tr(Sigma_W), Sigma_W = Ave_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, train features"

MEASURES = {
    **{k: Measure(k.replace("_", " "), "1", paper.DEFINITIONS[k]) for k in paper.METRICS},
    "robustness": Measure("DeepFool robustness", "1", ROBUSTNESS),
    "within_trace": Measure("trace of the within-class covariance", "feature units squared", WITHIN_TRACE),
    **{k: Measure(k.replace("_", " "), "1", followups.DEFINITIONS[k]) for k in followups.FOLLOWUP_METRICS},
}

# measures added by `register`: name -> fn(moments, W, test) -> float (computed after the built-in ones)
ADDED: dict[str, Callable] = {}


def register(name: str, long_name: str, units: str, definition: str):
    """Decorator: `fn(moments, W, test)` becomes the measure `name`. `moments` are the train set's float64 moments
    (nc.measure.moments.Moments: class_means (C, p), global_mean, within_cov_means, counts, ...), `W` the classifier
    (C, p) float64, `test` the test set's moments (nc.measure.followups.TestResult: about the train means and its
    own) or None without a test set. `definition` is the formula as the cube's attribute states it; `units` its unit
    ("1" for a ratio)."""
    if not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"register: name={name!r} is not a Python identifier (it becomes a cube variable)")
    for arg, value in (("long_name", long_name), ("units", units), ("definition", definition)):
        if not isinstance(value, str):
            raise TypeError(f"register({name!r}): {arg}={value!r} is not a string")
    if name in MEASURES:
        raise ValueError(f"register: a measure named {name!r} exists already")

    def decorate(fn: Callable) -> Callable:
        MEASURES[name] = Measure(long_name, units, definition)
        ADDED[name] = fn
        return fn
    return decorate


def unregister(name: str) -> None:
    """Remove a measure added by `register` (tests; a built-in measure cannot be removed)."""
    if name not in ADDED:
        raise KeyError(f"unregister: {name!r} was not added by register (added: {sorted(ADDED)})")
    del ADDED[name], MEASURES[name]


def compute(moments, W, test=None, ncc_mismatch: float = math.nan, ncc_test_means: float = math.nan) -> dict:
    """Every measure of MEASURES by name, from the float64 moments: the paper's (nc.measure.paper), the follow-ups'
    (nc.measure.followups; NaN where they need `test`; `ncc_test_means` is the nearest-TEST-mean accuracy, which
    needs a second test pass) and the registered ones. `robustness` is NaN here: DeepFool
    needs the network, its caller fills it in. One function for both callers, a training snapshot
    (nc.train.snapshot) and the any-network API (nc.measure.result)."""
    out = paper.metrics_from_moments(moments, W, ncc_mismatch)
    out.update(followups.followup_metrics(moments, W, test, ncc_test_means))
    out.update(within_trace=moments.within_trace, robustness=math.nan)
    for name, fn in ADDED.items():
        out[name] = float(fn(moments, W, test))
    return {k: out[k] for k in MEASURES}


# the geometry the API returns beside the measures (the cube stores the same arrays at its snapshots)
GEOMETRY = {
    "class_means": Measure("train class means mu_c", "feature units", "Ave_{i in c} h_i, train features"),
    "global_mean": Measure("global mean mu_G", "feature units", "Ave_c mu_c (class-weighted)"),
    "classifier_weight": Measure("classifier weight W", "logit per feature unit", "the rows w_c of the head"),
    "classifier_bias": Measure("classifier bias b", "logit", "the head's bias (0 where it has none)"),
    "within_cov_means": Measure("within-class covariance on the class-mean span", "feature units^4",
                                "M^T Sigma_W M (C x C), M = [mu_c - mu_G]: enough to recompute NC1 "
                                "(nc.measure.nc1_from_within_cov)"),
    "class_counts": Measure("train samples per class", "1", "number of train samples of each class"),
}

# the accuracies of the measured model's own logits, from the same passes
ACCURACY = {
    "eval_train_acc": Measure("training accuracy in eval mode", "1",
                              "fraction of train samples whose argmax logit is their label, eval mode"),
    "test_acc": Measure("test accuracy", "1", "fraction of test samples whose argmax logit is their label, eval mode"),
}
