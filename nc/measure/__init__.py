"""Everything computed from features: streaming float64 moments (nc.measure.moments), the paper's metrics
(nc.measure.paper), the follow-ups' (followups, depth, central_path, imbalance), DeepFool (robustness), the theory
checks (theory) and the collectives that merge them across processes (distributed).

The paper's measurement is re-exported here, so `nc.measure.collapse_metrics(...)` reads as before.
"""
from nc.measure.api import CollapseWarning, collapse, from_stats, test_stats, train_stats  # noqa: F401
from nc.measure.moments import ClassStats, CollapseAccumulator, Moments, mean_span_basis, moments  # noqa: F401
from nc.measure.paper import (  # noqa: F401
    DEFINITIONS,
    METRICS,
    collapse_metrics,
    geometry_metrics,
    metrics_from_moments,
    nc1_from_within_cov,
    ncc_disagreement_count,
    ncc_disagreements,
)
from nc.measure.registry import MEASURES  # noqa: F401
from nc.measure.stats import TestStats, TrainStats, load_test, load_train, merge  # noqa: F401
