"""What a figure page calls: `setup` opens it, `show_grid` and `show_summary` draw it (the list of pages is
nc.report.catalog). `setup` is the one call that opens a figure page: it reads the profile's cubes
(only the variables the page needs) and prints the line that says what the page is drawn from.
"""
from __future__ import annotations

from nc.report.catalog import AFTER, GRID_PAGES, PAGES, PAPER, TITLES, Page, index_html  # noqa: F401


def show_grid(prof, name: str, full: bool | None = None) -> None:
    """Draw a grid page's figure (GRID_PAGES[name]) and show it."""
    import matplotlib.pyplot as plt

    from nc.report import grid

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

    from nc.report import grid

    ranges = grid.tpt_ranges(prof)
    if ranges:
        display(Markdown("Lines: the median over the run seeds (each at its own selected lr); shaded: their min–max "
                         "range. Red line: the median TPT start; TPT start epochs: " + "; ".join(ranges) + "."))


def show_summary(prof, name: str) -> None:
    """The grid page's computed summary: each curve at the first snapshot, the TPT start and the last epoch."""
    from IPython.display import Markdown, display

    from nc.report import reports

    curves, _, _, label = GRID_PAGES[name]
    display(Markdown(reports.summary_markdown(prof, [v for v, _, _ in curves], label)))


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
                "run in this profile or their data is missing (see the intro).")
    else:
        text = profile_mod.no_cube_text(profile, cube_dir)
    stale = profile_mod.stale_cubes(prof)
    if stale:
        text += "\n\n**Not shown (stale):** " + "; ".join(
            f"`{s['file']}` {s['reason']}: rebuild with `{s['command']}`" for s in stale)
    display(Markdown(text))
    return prof
