"""The measures' names, long names, units and definitions: one list, read by the training run's record schema
(nc.train.variables, hence the cube) and by the any-network API (nc.measure.api), so that both say the same thing.

The definitions are the owners' (nc.measure.paper.DEFINITIONS, nc.measure.followups.DEFINITIONS): a measure added
there appears here, in the cube and in the API's Dataset. Every measure here is a number per snapshot.
"""
from __future__ import annotations

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
