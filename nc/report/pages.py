"""What a figure page calls: `setup` opens it, `show_grid` and `show_summary` draw it (the list of pages is
nc.report.catalog). `setup` is the one call that opens a figure page: it reads the profile's cubes
(only the variables the page needs) and prints the line that says what the page is drawn from.
"""
from __future__ import annotations

import numpy as np

from nc.report.catalog import (  # noqa: F401
    AFTER,
    FIGURES,
    GRID_PAGES,
    MORE,
    OWN,
    PAGES,
    PAPER,
    PARTS,
    TITLES,
    Page,
    book_pages,
    figures_on,
    index_html,
)


def show_grid(prof, name: str, full: bool | None = None) -> None:
    """Draw a grid figure (FIGURES[name]: its curves, y label and scale) and show it."""
    import matplotlib.pyplot as plt

    from nc.report import grid

    fig = FIGURES[name]
    colours = {"means": grid.BLUE, "classifiers": grid.ORANGE}
    if "test_acc_percent" in (v for v, _, _ in fig.curves):
        prof = prof.assign(test_acc_percent=prof["test_acc"] * 100)
    grid.grid(prof, [(v, colours.get(c, c), label) for v, c, label in fig.curves], ylabel=fig.ylabel, logy=fig.log,
              full=full)
    plt.show()
    show_seed_caption(prof)


def show_seed_caption(prof) -> None:
    """For cells with several run seeds: what the lines and bands are, and each cell's TPT range."""
    from IPython.display import Markdown, display

    from nc.report import grid

    ranges = grid.tpt_ranges(prof)
    if ranges:
        display(Markdown("Lines: the median over the run seeds (each at its own selected lr); shaded: their min–max "
                         "range. Red line: the median TPT start; TPT start epochs: " + "; ".join(ranges) + "."))


def show_summary(prof, name: str) -> None:
    """The grid page's computed summary: each curve at the first snapshot, the TPT start and the last epoch."""
    from IPython.display import Markdown, display

    from nc.report import reports

    fig = FIGURES[name]
    display(Markdown(reports.summary_markdown(prof, [v for v, _, _ in fig.curves], fig.label)))


def show_page_figures(prof, page: str) -> None:
    """Every figure declared for `page` (nc.report.catalog.FIGURES), each with its summary; on the "More measures"
    page, the figures added with nc.report.catalog.figure. A variable no cube of the profile has is named, not
    drawn."""
    from IPython.display import Markdown, display

    names = figures_on(page)
    if not names:
        display(Markdown("No figure is declared for this page: `nc.report.catalog.figure(...)` adds one "
                         "(README, \"Adding a metric\")."))
    for name in names:
        display(Markdown(f"### {name.replace('_', ' ')}"))
        show_grid(prof, name)
        show_summary(prof, name)


def figure_variables(page: str) -> tuple:
    """The cube variables the figures declared for `page` draw (read by `setup` beside the built-in ones)."""
    return tuple(dict.fromkeys(v for name in figures_on(page) for v, _, _ in FIGURES[name].curves))


def tpt_sentence(prof) -> str:
    """The TPT threshold these cubes used (their `tpt_threshold` parameter), per dataset where they differ."""
    if "tpt_threshold" not in prof:
        return ""
    by = {}
    for d in prof["dataset"].values:
        values = prof["tpt_threshold"].sel(dataset=d).values
        for v in values[np.isfinite(values)]:
            by.setdefault(f"{100 * v:g}%", []).append(str(d))
    if not by:
        return ""
    if len(by) == 1:
        return f"TPT start: eval-mode train accuracy ≥ {next(iter(by))} (`tpt_threshold`)."
    return "TPT start: eval-mode train accuracy ≥ " + "; ".join(
        f"{k} ({', '.join(dict.fromkeys(v))})" for k, v in by.items()) + " (`tpt_threshold`)."


def setup(profile: str, cube_dir, variables=None):
    """Open a figure page: the profile's grid (nc.report.profiles.open_profile with `variables`, default every per-epoch
    and snapshot variable), after displaying one line on what it holds and a note on any stale cube. A relative
    `cube_dir` is read against the repository root, whatever the kernel's working directory; an absolute one as is."""
    from IPython.display import Markdown, display

    from nc.report import profiles as profile_mod
    from nc.runs import cube

    prof = profile_mod.open_profile(cube_dir, variables or cube.EPOCH_VARS + cube.SNAPSHOT_VARS)
    n = len(profile_mod.cells(prof))
    if n:
        text = (f"Profile **{profile}**: {n} dataset × network cell(s) with a run; cells without one were not "
                "run in this profile or their data is missing (see the intro). " + tpt_sentence(prof))
    else:
        text = profile_mod.no_cube_text(profile, cube_dir)
    stale = profile_mod.stale_cubes(prof)
    if stale:
        text += "\n\n**Not shown (stale):** " + "; ".join(
            f"`{s['file']}` {s['reason']}: rebuild with `{s['command']}`" for s in stale)
    display(Markdown(text))
    return prof
