"""The book's pages, one list: each notebook's name (book/figures/<name>.md), title and part; and the grid figures as
data (FIGURES: the page, the variables, the axis), to which `figure` adds one. nc.report.book executes the pages in
this order and titles them from here (`book_pages`: the "More measures" page only when a figure was added to it), the
intro links them from here, and the claims page heads its rows from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

PAPER, AFTER, OWN = "The paper's figures", "After the paper", "Your own network and measures"
PARTS = (PAPER, AFTER, OWN)  # the book's parts of figure pages, in order
MORE = "more"  # the page that draws every figure added with `figure` without a page of its own


@dataclass(frozen=True)
class Page:
    name: str
    title: str
    part: str = PAPER


PAGES = (
    Page("fig1", "Fig. 1 — Neural collapse in three dimensions, from real snapshots"),
    Page("fig2", "Fig. 2 — Train class means become equinorm"),
    Page("fig3", "Fig. 3 — Classifiers and train class means approach equiangularity"),
    Page("fig4", "Fig. 4 — Classifiers and train class means approach maximal-angle equiangularity"),
    Page("fig5", "Fig. 5 — Classifier converges to train class means"),
    Page("fig6", "Fig. 6 — Training within-class variation collapses"),
    Page("fig7", "Fig. 7 — Classifier behaviour approaches that of the nearest class centre"),
    Page("fig8", "Fig. 8 — Training beyond zero error improves adversarial robustness"),
    Page("table1", "Table 1 — Training beyond zero error improves test performance"),
    Page("claims", "Claims — where this replication agrees with the paper"),
    Page("cdnv", "CDNV and test-set collapse", AFTER),
    Page("etf", "Distance to a simplex ETF", AFTER),
    Page("depth", "Collapse by depth", AFTER),
    Page("mse", "The MSE loss and its central path", AFTER),
    Page("fixed_etf", "A fixed simplex-ETF classifier", AFTER),
    Page("weight_decay", "Weight decay on and off", AFTER),
    Page("imbalance", "Minority collapse under class imbalance", AFTER),
    Page("measure", "Measure your own network", OWN),
    Page(MORE, "More measures", OWN),
)
TITLES = {p.name: p.title for p in PAGES}

class Figure(NamedTuple):
    """A grid figure as data: the page that draws it, its curves (variable, colour, legend label), the y label, a log
    y axis or not, and how the page's summary sentence names the measure. Colours: "means" (the paper's blue, class
    means), "classifiers" (its orange) or any matplotlib colour."""
    page: str
    curves: tuple
    ylabel: str
    log: bool = False
    label: str = "the measure"


def _fig(page, curves, ylabel, log, label):
    return Figure(page, tuple(curves), ylabel, log, label)


FIGURES = {
    "fig2": _fig("fig2", (("equinorm_means", "means", "class means"), ("equinorm_classifiers", "classifiers",
                                                                           "classifiers")),
                 "Std/Avg of norms", False, "the variation of the norms"),
    "fig3": _fig("fig3", (("equiangular_means", "means", "class means"),
                          ("equiangular_classifiers", "classifiers", "classifiers")), "Std of cosines", False,
                 "the spread of the cosines"),
    "fig4": _fig("fig4", (("maxangle_means", "means", "class means"),
                          ("maxangle_classifiers", "classifiers", "classifiers")), "Avg |cos + 1/(C-1)|", False,
                 "the distance from the maximal angle"),
    "fig5": _fig("fig5", (("self_duality", "classifiers", "‖W̃ᵀ − M̃‖²_F"),), "‖W̃ᵀ − M̃‖²_F", False,
                 "the distance to self-duality"),
    "fig6": _fig("fig6", (("nc1", "means", "Tr(Σ_W Σ_B†)/C"),), "Tr(Σ_W Σ_B†)/C", True, "NC1"),
    "fig7": _fig("fig7", (("ncc_mismatch", "classifiers", "network ≠ NCC (test)"),), "fraction mismatched", False,
                 "the NCC mismatch"),
    "fig8": _fig("fig8", (("robustness", "means", "Ave ‖r(x)‖/‖x‖ (DeepFool)"),), "Ave ‖r(x)‖₂/‖x‖₂", False,
                 "the robustness measure"),
    "table1": _fig("table1", (("test_acc_percent", "means", "test accuracy (%)"),), "test accuracy (%)", False,
                   "the test accuracy"),
    "cdnv": _fig("cdnv", (("cdnv_train", "means", "train"), ("cdnv_test", "classifiers", "test")), "CDNV", True,
                 "the CDNV"),
    "test_collapse": _fig("cdnv", (("nc1", "means", "train"),
                                   ("nc1_test", "classifiers", "test, about the train means"),
                                   ("nc1_test_means", "#2ca02c", "test, about the test means")), "NC1", True, "NC1"),
    "test_ncc": _fig("cdnv", (("test_acc", "means", "network"), ("ncc_test_means_acc", "classifiers",
                                                                  "nearest test class mean")),
                     "test accuracy", False, "the test accuracy"),
    "variability": _fig("cdnv", (("trace_quotient", "means", "Tr Σ_W / Tr Σ_B"), ("vci", "classifiers", "VCI")),
                        "Tr Σ_W/Tr Σ_B and VCI", True, "the within-class variability"),
    "etf": _fig("etf", (("etf_error_means", "means", "class means"), ("etf_error_classifiers", "classifiers",
                                                                      "classifiers"),
                        ("classifier_mean_alignment", "#2ca02c", "W M alignment")), "distance to the ETF Gram", False,
                "the distance to the simplex ETF"),
}
GRID_PAGES = FIGURES  # the name the pages call them by


def figure(name: str, curves, ylabel: str, log: bool = False, label: str | None = None, page: str = MORE) -> Figure:
    """Add a grid figure (README, "Adding a metric"): `curves` is [(variable, colour, legend label), ...] of cube
    variables; it is drawn on `page` (default the "More measures" page, which draws every figure added here)."""
    if name in FIGURES:
        raise ValueError(f"figure: a figure named {name!r} exists already")
    curves = tuple(tuple(c) for c in curves)
    if not curves or any(len(c) != 3 for c in curves):
        raise ValueError(f"figure({name!r}): curves={curves!r} must be a non-empty list of (variable, colour, label)")
    FIGURES[name] = Figure(page, curves, ylabel, log, label or f"the {curves[0][0].replace('_', ' ')}")
    return FIGURES[name]


def figures_on(page: str) -> list[str]:
    """The names of the figures a page draws, in the order they were declared."""
    return [name for name, f in FIGURES.items() if f.page == page]


def book_pages() -> tuple:
    """The pages the book executes: PAGES, less the "More measures" page while no figure is added to it."""
    return tuple(p for p in PAGES if p.name != MORE or figures_on(MORE))


def index_html(present=None) -> str:
    """The list of pages, linked, grouped by part (for the intro); `present`: the page names that exist."""
    out = []
    for part in PARTS:
        items = [p for p in PAGES if p.part == part and (present is None or p.name in present)]
        if items:
            out.append(f"<p><b>{part}</b></p><ul>" + "".join(
                f'<li><a href="figures/{p.name}.html">{p.title}</a></li>' for p in items) + "</ul>")
    return "".join(out)
