"""The book's pages, one list: each notebook's name (book/figures/<name>.md), title and part, and what a grid page
draws. nc.report.book executes them in this order and titles them from here, the intro links them from here, and
the claims page heads its rows from here.
"""
from __future__ import annotations

from dataclasses import dataclass

PAPER, AFTER = "The paper's figures", "After the paper"


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
    Page("measure", "Measure your own network", AFTER),
)
TITLES = {p.name: p.title for p in PAGES}

# The grid pages: the curves (variable, colour, legend label), the y label, log scale, and how the summary
# sentence names the measure. Colours: blue for class means, orange for classifiers (the paper's).
GRID_PAGES = {
    "fig2": ((("equinorm_means", "means", "class means"), ("equinorm_classifiers", "classifiers", "classifiers")),
             "Std/Avg of norms", False, "the variation of the norms"),
    "fig3": ((("equiangular_means", "means", "class means"),
              ("equiangular_classifiers", "classifiers", "classifiers")), "Std of cosines", False,
             "the spread of the cosines"),
    "fig4": ((("maxangle_means", "means", "class means"), ("maxangle_classifiers", "classifiers", "classifiers")),
             "Avg |cos + 1/(C-1)|", False, "the distance from the maximal angle"),
    "fig5": ((("self_duality", "classifiers", "‖W̃ᵀ − M̃‖²_F"),), "‖W̃ᵀ − M̃‖²_F", False,
             "the distance to self-duality"),
    "fig6": ((("nc1", "means", "Tr(Σ_W Σ_B†)/C"),), "Tr(Σ_W Σ_B†)/C", True, "NC1"),
    "fig7": ((("ncc_mismatch", "classifiers", "network ≠ NCC (test)"),), "fraction mismatched", False,
             "the NCC mismatch"),
    "fig8": ((("robustness", "means", "Ave ‖r(x)‖/‖x‖ (DeepFool)"),), "Ave ‖r(x)‖₂/‖x‖₂", False,
             "the robustness measure"),
    "table1": ((("test_acc_percent", "means", "test accuracy (%)"),), "test accuracy (%)", False,
               "the test accuracy"),
    "cdnv": ((("cdnv_train", "means", "train"), ("cdnv_test", "classifiers", "test")), "CDNV", True, "the CDNV"),
    "test_collapse": ((("nc1", "means", "train"), ("nc1_test", "classifiers", "test")), "NC1", True, "NC1"),
    "etf": ((("etf_error_means", "means", "class means"), ("etf_error_classifiers", "classifiers", "classifiers"),
             ("classifier_mean_alignment", "#2ca02c", "W M alignment")), "distance to the ETF Gram", False,
            "the distance to the simplex ETF"),
}


def index_html(present=None) -> str:
    """The list of pages, linked, grouped by part (for the intro); `present`: the page names that exist."""
    out = []
    for part in (PAPER, AFTER):
        items = [p for p in PAGES if p.part == part and (present is None or p.name in present)]
        if items:
            out.append(f"<p><b>{part}</b></p><ul>" + "".join(
                f'<li><a href="figures/{p.name}.html">{p.title}</a></li>' for p in items) + "</ul>")
    return "".join(out)
