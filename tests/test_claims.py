"""Claims as data: every claim of Part I and Part II is one nc.report.claims.Claim whose rule text is formatted from
its thresholds, and the three verdicts (held / did not hold / inconclusive) follow from the stated noise."""
import math

import numpy as np
import pytest

from nc.report import after, analysis, catalog
from nc.report import claims as K

ALL = [*analysis.CLAIMS.values(), *after.REGISTRY]


@pytest.mark.parametrize("claim", ALL, ids=lambda c: c.name)
def test_a_claims_text_contains_each_of_its_thresholds(claim):
    assert claim.template_fields() == set(claim.thresholds)  # every threshold is in the text, and nothing else
    for key, value in claim.thresholds.items():
        spec = next(s for _, f, s, _ in __import__("string").Formatter().parse(claim.rule) if f == key)
        assert format(value, spec) in claim.rule_text
    assert claim.page in catalog.TITLES and claim.variables and claim.source and claim.statement


def test_changing_a_threshold_changes_the_rule_text_and_the_check():
    fig6 = analysis.CLAIMS["fig6"]
    stricter = K.Claim(**{**fig6.__dict__, "thresholds": {"factor": 1000.0}})
    assert "1000×" in stricter.rule_text and "10×" in fig6.rule_text


def test_pages_are_derived_from_the_claims():
    assert list(after.CLAIMS) == ["cdnv", "etf", "depth", "mse", "fixed_etf", "weight_decay", "imbalance"]
    after_pages = [p.name for p in catalog.PAGES if p.part == catalog.AFTER]
    assert list(after.CLAIMS) == after_pages  # every "After the paper" page has its claims, in the book's order


def test_binomial_standard_error_of_a_difference():
    # 96% on 1,000 images twice: sqrt(2 * 0.96 * 0.04 / 1000) = 0.876 points (the "about 0.9")
    assert 100 * K.binomial_se(0.96, 1000, 0.96, 1000) == pytest.approx(100 * math.sqrt(2 * 0.96 * 0.04 / 1000))
    assert K.binomial_se(1.0, 10, 0.0, 10) == 0.0


@pytest.mark.parametrize("diff,se,want", [(3.0, 1.0, True), (-3.0, 1.0, False), (1.0, 1.0, K.INCONCLUSIVE),
                                          (1.97, 1.0, True), (1.95, 1.0, K.INCONCLUSIVE)])
def test_a_claim_of_a_difference_holds_only_where_its_interval_excludes_zero(diff, se, want):
    assert K.difference_verdict(diff, se) == want


@pytest.mark.parametrize("diff,se,want", [(0.0, 0.5, True), (1.2, 0.5, K.INCONCLUSIVE), (4.0, 0.5, False),
                                          (-4.0, 0.5, False), (0.0, 0.88, True), (0.5, 0.88, K.INCONCLUSIVE)])
def test_a_claim_of_no_difference_holds_only_where_its_interval_lies_inside_the_tolerance(diff, se, want):
    assert K.equivalence_verdict(diff, se, tolerance=2.0) == want


def test_ratio_verdicts_and_their_counts():
    assert [K.ratio_verdict(r, 2.0) for r in (2.5, 1.1, 0.4)] == [True, K.INCONCLUSIVE, False]
    held = [True, K.INCONCLUSIVE, False, None]
    assert K.count(held) == {"held": 1, "not": 1, "inconclusive": 1, "n": 3}
    assert K.summary(held) == "held in **1 of 3** checkable run(s) (1 inconclusive, 1 did not hold)"
    assert K.summary([None]) == "**not checkable** here"
    assert K.HELD_WORD[K.INCONCLUSIVE] == "inconclusive"


def test_depth_trend_on_planted_sequences():
    falling = 10.0 ** -np.arange(8)
    rho, share, n = after.depth_trend(falling)
    assert rho == pytest.approx(-1.0) and share == 1.0 and n == 8
    rho, share, _ = after.depth_trend([1.0, 2.0, 0.5, 3.0, np.nan, 0.25])  # the NaN block is left out
    assert share == pytest.approx(2 / 4) and -1 < rho < 1
    assert after.spearman_bound(10) == pytest.approx(-1.645 / 3)


def test_depth_residuals_vanish_on_an_exact_geometric_decay_and_show_a_bend():
    C, rho = 10, 0.7
    nc1 = np.exp(1.5 - rho * np.arange(1, 9)) / C
    np.testing.assert_allclose(after.depth_residuals(nc1, C), 0.0, atol=1e-12)
    bent = nc1.copy()
    bent[4:] = bent[4]  # the decay stops half way
    res = after.depth_residuals(bent, C)
    assert res[0] > 0 > res[4] and res[-1] > 0 and res.sum() == pytest.approx(0.0, abs=1e-12)  # a bend: + - +


def _depth_entry(first, last, classes=10):
    nc1 = np.array([first, first, last], dtype=np.float64)  # stages first, tpt, last
    return {"nc1": nc1, "rho": np.array([np.nan, np.nan, 0.5]), "r2": np.array([np.nan, np.nan, 0.99]),
            "classes": classes, "dataset": "demo", "network": "vgg11", "seed": 0, "seeds": 1}


def test_depth_progressive_needs_a_falling_rank_trend_and_more_than_at_the_first_snapshot():
    flat, falling = np.ones(8) + np.arange(8) % 2 * 0.1, 10.0 ** -np.arange(8)
    held, text, numbers = after.BY_NAME["depth_progressive"](_depth_entry(flat, falling))
    assert held is True and numbers["spearman_last"] == pytest.approx(-1.0) and "bound" in text
    held, *_ = after.BY_NAME["depth_progressive"](_depth_entry(falling, falling))  # no more than at the start
    assert held is False
    held, *_ = after.BY_NAME["depth_progressive"](_depth_entry(falling, falling[::-1]))  # rising with depth
    assert held is False


def test_the_depth_law_is_checked_on_each_feature_map():
    """The pooled fit (rho, r2 from the cube) and the flattened one (flat_rho, flat_r2) give their own verdicts; an
    entry without flattened values is not checkable for the flattened law."""
    C = 10
    line = np.exp(1.5 - 0.7 * np.arange(1, 9)) / C
    bent = line.copy()
    bent[4:] = bent[4]
    d = _depth_entry(line, line) | {"flat_nc1": np.array([bent, bent, bent]), "flat_rho": np.array([0.1, 0.1, 0.3]),
                                    "flat_r2": np.array([0.5, 0.5, 0.7])}
    assert after.BY_NAME["depth_law"](d)[0] is True
    held, text, numbers = after.BY_NAME["depth_law_flat"](d)
    assert held is False and numbers["r2"] == 0.7 and "residual" in text
    assert after.BY_NAME["depth_law_flat"](_depth_entry(line, line))[0] is None
    assert [r["claim"] for r in after.depth_claims([d])] == ["depth_law", "depth_law_flat", "depth_progressive"]
