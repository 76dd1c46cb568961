"""The book's pages, one list: each figure notebook's name (book/figures/<name>.md), title and part.

nc.book executes them in this order and titles them from here, the intro links them from here, and the claims
page heads its rows from here. `setup` is the one call that opens a figure page: it reads the profile's cubes
(only the variables the page needs) and prints the line that says what the page is drawn from.
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


def show_grid(prof, name: str, full: bool | None = None) -> None:
    """Draw a grid page's figure (GRID_PAGES[name]) and show it."""
    import matplotlib.pyplot as plt

    from nc import grid

    curves, ylabel, logy, _ = GRID_PAGES[name]
    colours = {"means": grid.BLUE, "classifiers": grid.ORANGE}
    if "test_acc_percent" in (v for v, _, _ in curves):
        prof = prof.assign(test_acc_percent=prof["test_acc"] * 100)
    grid.grid(prof, [(v, colours.get(c, c), label) for v, c, label in curves], ylabel=ylabel, logy=logy, full=full)
    plt.show()
    show_seed_caption(prof)


def show_seed_caption(prof) -> None:
    """For cells with several run seeds: what the lines and bands are, and each cell's TPT range."""
    from IPython.display import Markdown, display

    from nc import grid

    ranges = grid.tpt_ranges(prof)
    if ranges:
        display(Markdown("Lines: the median over the run seeds (each at its own selected lr); shaded: their min–max "
                         "range. Red line: the median TPT start; TPT start epochs: " + "; ".join(ranges) + "."))


def show_summary(prof, name: str) -> None:
    """The grid page's computed summary: each curve at the first snapshot, the TPT start and the last epoch."""
    from IPython.display import Markdown, display

    from nc import reports

    curves, _, _, label = GRID_PAGES[name]
    display(Markdown(reports.summary_markdown(prof, [v for v, _, _ in curves], label)))


def setup(profile: str, cube_dir, variables=None):
    """Open a figure page: the profile's grid (nc.profile.open_profile with `variables`, default every per-epoch
    and snapshot variable), after displaying one line on what it holds and a note on any stale cube."""
    from IPython.display import Markdown, display

    from nc import cube
    from nc import profile as profile_mod

    prof = profile_mod.open_profile(cube_dir, variables or cube.EPOCH_VARS + cube.SNAPSHOT_VARS)
    n = len(profile_mod.cells(prof))
    if n:
        text = (f"Profile **{profile}**: {n} dataset × network cell(s) with a run; cells without one were not "
                "run in this profile or their data is missing (see the intro).")
    else:
        text = f"Profile **{profile}** has no current cube yet: `nox -s reproduce -- {profile}` fills this page."
    stale = profile_mod.stale_cubes(prof)
    if stale:
        text += "\n\n**Not shown (stale):** " + "; ".join(
            f"`{s['file']}` {s['reason']}: rebuild with `{s['command']}`" for s in stale)
    display(Markdown(text))
    return prof
