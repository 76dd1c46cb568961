"""A claim as data: one declarative kind for the paper's claims (Part I, nc.report.analysis) and the follow-ups'
(Part II, nc.report.after). Each entry names its page, the variables it reads, its source and the source's words,
its thresholds, the rule's text (formatted from the thresholds, so the text and the check cannot drift apart) and
the check itself. A check returns (held, text, numbers) with held one of True (held), False (did not hold),
INCONCLUSIVE (the difference lies inside its stated noise) or None (not checkable here).

The noise of an accuracy comparison is binomial: two accuracies a, b measured on n_a, n_b test images differ by
a - b with standard error sqrt(a(1-a)/n_a + b(1-b)/n_b) (unpaired: conservative for the same test images), and the
interval is the difference +- Z standard errors (Z = 1.96, about 95%).
"""
from __future__ import annotations

import math
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

INCONCLUSIVE = "inconclusive"
HELD_MARK = {True: "✓", False: "✗", INCONCLUSIVE: "?", None: "–"}  # one run's verdict
HELD_WORD = {True: "held", False: "did not hold", INCONCLUSIVE: "inconclusive", None: "not checkable"}
Z = 1.96  # the interval of a difference: +- Z standard errors (two-sided, about 95%)


@dataclass(frozen=True)
class Claim:
    """One claim: `rule` is a str.format template over `thresholds` (every threshold must appear in it);
    `check(claim, subject)` -> (held, text, numbers), where the subject is what the claim reads (a run, a depth
    entry, the follow-up runs: see the module that registers it)."""
    name: str
    page: str
    variables: tuple[str, ...]
    source: str
    statement: str
    rule: str
    check: Callable[..., tuple[Any, str, dict]]
    thresholds: dict = field(default_factory=dict)

    @property
    def rule_text(self) -> str:
        """The rule with its thresholds written in (format spec from the template, e.g. {factor:g})."""
        return self.rule.format(**self.thresholds)

    def template_fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.rule) if f}

    def __call__(self, subject) -> tuple[Any, str, dict]:
        return self.check(self, subject)


def by_page(registry) -> dict[str, list[Claim]]:
    """The claims of a registry grouped by page, in registry order (the claims pages are derived from this)."""
    out: dict[str, list[Claim]] = {}
    for c in registry:
        out.setdefault(c.page, []).append(c)
    return out


def binomial_se(a: float, n_a: int, b: float, n_b: int) -> float:
    """Standard error of a - b for two accuracies (fractions) on n_a and n_b images (unpaired binomial)."""
    return math.sqrt(a * (1 - a) / n_a + b * (1 - b) / n_b)


def difference_verdict(diff: float, se: float, z: float = Z):
    """A claim that diff > 0: held when diff - z se > 0, did not hold when diff + z se < 0, else inconclusive."""
    lo, hi = diff - z * se, diff + z * se
    return True if lo > 0 else False if hi < 0 else INCONCLUSIVE


def equivalence_verdict(diff: float, se: float, tolerance: float, z: float = Z):
    """A claim of no difference (|diff| <= tolerance): held when the interval diff +- z se lies inside
    [-tolerance, tolerance], did not hold when it lies wholly outside, else inconclusive."""
    lo, hi = diff - z * se, diff + z * se
    if -tolerance <= lo and hi <= tolerance:
        return True
    if lo > tolerance or hi < -tolerance:
        return False
    return INCONCLUSIVE


def ratio_verdict(ratio: float, factor: float):
    """A claim that a ratio of two positive measures exceeds 1, with run-to-run noise of a factor `factor`: held when
    ratio >= factor, did not hold when ratio <= 1/factor, else inconclusive."""
    return True if ratio >= factor else False if ratio <= 1 / factor else INCONCLUSIVE


def count(held: list) -> dict:
    """How many runs held, did not hold, were inconclusive, were checkable (all but None)."""
    return {"held": sum(h is True for h in held), "not": sum(h is False for h in held),
            "inconclusive": sum(h == INCONCLUSIVE for h in held), "n": sum(h is not None for h in held)}


def summary(held: list) -> str:
    """'held in k of n checkable run(s)' plus the inconclusive and failed counts where there are any."""
    c = count(held)
    if not c["n"]:
        return "**not checkable** here"
    extra = [f"{c['inconclusive']} inconclusive" if c["inconclusive"] else "",
             f"{c['not']} did not hold" if c["not"] else ""]
    extra = [e for e in extra if e]
    return f"held in **{c['held']} of {c['n']}** checkable run(s)" + (f" ({', '.join(extra)})" if extra else "")
