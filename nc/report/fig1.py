"""Fig. 1: neural collapse in three dimensions, from real snapshots (the paper's footnote to Fig. 1).

For three classes chosen once, the class means, classifiers and sampled train features of a cube's selected lr at
the snapshots nearest to the paper's epochs 2, 16, 65 and 350 (scaled to the run), rotated and rescaled by SVDs
onto three vertices of the C-class simplex ETF (`fig1_project`), drawn statically (matplotlib) and interactively
(plotly, embedded offline). Units: the means (and features, by the same factor) and the classifiers are rescaled
to unit average norm.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from nc import data, models, paths
from nc.data import TITLES, column_of
from nc.runs import cube
from nc.train.loop import FIG1_PAPER_EPOCHS, fig1_epochs

FIG1_SHADES = {"means": ("#9ecae1", "#3182bd", "#08306b"), "classifiers": ("#fc9272", "#de2d26", "#67000d"),
               "vertices": ("#a1d99b", "#31a354", "#00441b")}


def open_page(profile: str, cube_dir, run: str | None = None):
    """Open the Fig. 1 page: (the cube, its panels) after displaying the caption line; (None, []) after displaying
    where the page looked and the command that fills it, when `cube_dir` holds no cube yet (as the other pages do)."""
    from IPython.display import Markdown, display

    from nc.report import profiles

    try:
        path = fig1_cube(cube_dir, run)
    except FileNotFoundError:
        if run is not None:
            raise  # a named run that is not there is the reader's error, said as such
        display(Markdown(profiles.no_cube_text(profile, cube_dir)))
        return None, []
    ds = cube.open_cube(path)
    panels = fig1_panels(ds)
    display(Markdown(f"Profile **{profile}**: " + caption(ds, path, panels)))
    return ds, panels


def fig1_cube(cube_dir, run: str | None = None) -> Path:
    """The cube Fig. 1 is drawn from: `run` (a file stem such as 'cifar10-vgg13') if given, else the VGG run of
    the first dataset column present (the paper used VGG13), else the first run of that column. A relative
    `cube_dir` is read against the repository root (nc.paths.resolve)."""
    cube_dir = paths.resolve(cube_dir)
    files = sorted(cube_dir.glob("*.nc"))
    if run is not None:
        path = cube_dir / (run if run.endswith(".nc") else f"{run}.nc")
        if not path.is_file():
            raise FileNotFoundError(f"no cube {path}; runs here: {', '.join(p.stem for p in files)}")
        return path
    if not files:
        raise FileNotFoundError(f"no cubes (*.nc) in {cube_dir}")
    keys = []
    for p in files:
        with cube.opened(p) as ds:
            d, n = ds.attrs["dataset"], ds.attrs["network"]
        col = column_of(d)
        order = data.columns()
        vgg = models.known(n) and models.family(n) == "vgg"
        keys.append((order.index(col) if col in order else len(order), not vgg, p.name, p))
    return min(keys)[-1]


def simplex_vertices(num_classes: int) -> np.ndarray:
    """Three unit vectors in R^3 (rows) with pairwise cosine -1/(C-1): three vertices of the C-class simplex
    ETF, seen in their own span; for C = 3 the planar 120-degree triangle."""
    k = 3
    gram = (1 + 1 / (num_classes - 1)) * np.eye(k) - np.ones((k, k)) / (num_classes - 1)
    vals, vecs = np.linalg.eigh(gram)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


# rotates the simplex's axis of symmetry (1,1,1)/sqrt(3) onto the vertical axis, for the view
_UPRIGHT = np.stack([np.array([1, -1, 0]) / np.sqrt(2), np.array([1, 1, -2]) / np.sqrt(6), np.ones(3) / np.sqrt(3)], 1)


def fig1_project(means, global_mean, classifiers, features, num_classes: int) -> dict:
    """Three classes' class means (3, p), classifiers (3, p) and features (3, n, p) in three dimensions.

    Centre at the global mean mu_G (of all classes); project onto the 3 left singular vectors of the three
    centred class means [mu_c - mu_G]; rescale the means (and, by the same factor, the features) to unit average
    norm, and the classifiers to unit average norm; rotate (orthogonal Procrustes, another SVD) so the means
    best match three simplex-ETF vertices (pairwise cosine -1/(C-1)), then stand the simplex upright. At exact
    collapse the means and classifiers sit on the vertices and every feature on its mean."""
    means, mu_g = np.asarray(means, np.float64), np.asarray(global_mean, np.float64)
    centred = means - mu_g
    u = np.linalg.svd(centred.T, full_matrices=False)[0]  # (p, 3)
    m3, w3 = centred @ u, np.asarray(classifiers, np.float64) @ u
    f3 = (np.asarray(features, np.float64) - mu_g) @ u
    scale = np.linalg.norm(m3, axis=1).mean()
    m3, f3 = m3 / scale, f3 / scale
    w3 = w3 / np.linalg.norm(w3, axis=1).mean()
    vertices = simplex_vertices(num_classes)
    p, _, qt = np.linalg.svd(m3.T @ vertices)
    rot = (p @ qt) @ _UPRIGHT
    return {"means": m3 @ rot, "classifiers": w3 @ rot, "features": f3 @ rot, "vertices": vertices @ _UPRIGHT}


def fig1_panels(ds: xr.Dataset) -> list[tuple[int, dict]]:
    """(epoch, fig1_project(...)) at the fig1_epochs snapshots of one cube, for its fig1_class classes."""
    classes = ds["fig1_class"].values
    snaps = ds["geometry_epoch"].values
    out = []
    for e in fig1_epochs(snaps, int(snaps.max())):
        k = int(np.flatnonzero(snaps == e)[0])
        out.append((e, fig1_project(ds["class_means"].isel(geometry=k).sel({"class": classes}).values,
                                    ds["global_mean"].isel(geometry=k).values,
                                    ds["classifier_weight"].isel(geometry=k).sel({"class": classes}).values,
                                    ds["fig1_features"].isel(geometry=k).values, ds.sizes["class"])))
    return out


def fig1_matplotlib(panels, title: str = ""):
    """The Fig. 1 panels as static 3-D axes: green simplex vertices, red classifiers and blue class means as
    ball-and-stick from the origin, small blue features; the shade tells the class."""
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = plt.figure(figsize=(5.2 * ncols, 4.8 * nrows + 0.6))
    for i, (epoch, g) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="3d")
        for c in range(3):
            v, m, w = g["vertices"][c], g["means"][c], g["classifiers"][c]
            ax.scatter(*v, s=110, color=FIG1_SHADES["vertices"][c], depthshade=False)
            for vec, fam in ((m, "means"), (w, "classifiers")):
                ax.plot(*np.stack([np.zeros(3), vec], 1), color=FIG1_SHADES[fam][c], lw=2)
                ax.scatter(*vec, s=45, color=FIG1_SHADES[fam][c], depthshade=False)
            ax.scatter(*g["features"][c].T, s=6, color=FIG1_SHADES["means"][c], alpha=0.7, depthshade=False)
        lim = 1.3
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), zlim=(-lim, lim), xticklabels=[], yticklabels=[], zticklabels=[])
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=25, azim=-60)
        ax.set_title(f"epoch {epoch}", fontsize=11)
    handles = [plt.Line2D([], [], marker="o", ls="", color=FIG1_SHADES["vertices"][1], ms=9),
               plt.Line2D([], [], marker="o", color=FIG1_SHADES["classifiers"][1], ms=6),
               plt.Line2D([], [], marker="o", color=FIG1_SHADES["means"][1], ms=6),
               plt.Line2D([], [], marker="o", ls="", color=FIG1_SHADES["means"][1], ms=3)]
    fig.legend(handles, ["simplex ETF vertices", "classifiers", "class means", "last-layer features"],
               loc="lower center", ncol=4, frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    return fig


def fig1_plotly(panels, title: str = ""):
    """The same panels as an interactive plotly figure (rotate and zoom each 3-D scene)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, specs=[[{"type": "scene"}] * ncols] * nrows,
                        subplot_titles=[f"epoch {e}" for e, _ in panels], horizontal_spacing=0.01,
                        vertical_spacing=0.04)
    names = ("class means", "classifiers", "features", "simplex ETF vertices")
    for i, (_, g) in enumerate(panels):
        at = (i // ncols + 1, i % ncols + 1)
        for c in range(3):
            first = i == 0 and c == 1
            for fam, label in (("means", names[0]), ("classifiers", names[1])):
                v = g[fam][c]
                fig.add_trace(go.Scatter3d(x=[0, v[0]], y=[0, v[1]], z=[0, v[2]], mode="lines+markers",
                                           line={"color": FIG1_SHADES[fam][c], "width": 5},
                                           marker={"size": [0, 6], "color": FIG1_SHADES[fam][c]},
                                           name=label, legendgroup=label, showlegend=first), *at)
            f = g["features"][c]
            fig.add_trace(go.Scatter3d(x=f[:, 0], y=f[:, 1], z=f[:, 2], mode="markers",
                                       marker={"size": 2.5, "color": FIG1_SHADES["means"][c]}, name=names[2],
                                       legendgroup=names[2], showlegend=first), *at)
            v = g["vertices"][c]
            fig.add_trace(go.Scatter3d(x=[v[0]], y=[v[1]], z=[v[2]], mode="markers",
                                       marker={"size": 9, "color": FIG1_SHADES["vertices"][c]}, name=names[3],
                                       legendgroup=names[3], showlegend=first), *at)
    axis = {"range": [-1.3, 1.3], "showticklabels": False, "title": ""}
    fig.update_scenes(xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="cube",
                      camera={"eye": {"x": 1.3, "y": -1.3, "z": 0.9}})
    fig.update_layout(height=380 * nrows + 60, margin={"l": 0, "r": 0, "t": 60, "b": 0}, title=title or None,
                      legend={"orientation": "h", "y": -0.02})
    return fig


def title(ds: xr.Dataset) -> str:
    return f"{TITLES.get(ds.attrs['dataset'], ds.attrs['dataset'])} × {ds.attrs['network']}"


def caption(ds: xr.Dataset, path, panels) -> str:
    """Which run, classes, samples and epochs the panels show, and where the TPT starts."""
    epochs = [e for e, _ in panels]
    last = int(ds["geometry_epoch"].max())
    lr, seed = ds.attrs["selected_lr"], int(ds.attrs.get("geometry_seed", ds["seed"].values[0]))
    tpt = float(cube.selected(ds)["tpt_epoch"])
    return (f"run **{Path(path).stem}** (run seed {seed}, its selected lr {lr:g}): classes "
            f"{', '.join(str(c) for c in ds['fig1_class'].values)} of {ds.sizes['class']}, "
            f"{ds.sizes['fig1_sample']} train features each, at epochs **{', '.join(map(str, epochs))}** of {last} "
            f"(the snapshots nearest to {', '.join(f'{e / 350 * last:.3g}' for e in FIG1_PAPER_EPOCHS)}, i.e. the "
            "paper's 2, 16, 65, 350 of 350). "
            + (f"The TPT starts at epoch {tpt:.0f}." if np.isfinite(tpt) else "This run never reached the TPT."))


def distances_markdown(panels) -> str:
    """Per panel: mean distance of the class means and the classifiers to their simplex vertices, of the
    classifiers to the means, and of the features to their class means (rescaled units)."""
    lines = ["| epoch | means to vertices | classifiers to vertices | classifiers to means | features to their means |",
             "|---|---|---|---|---|"]
    d = lambda a, b: np.linalg.norm(a - b, axis=-1).mean()
    for e, g in panels:
        lines.append(f"| {e} | {d(g['means'], g['vertices']):.3f} | {d(g['classifiers'], g['vertices']):.3f} | "
                     f"{d(g['classifiers'], g['means']):.3f} | {d(g['features'], g['means'][:, None]):.3f} |")
    return "\n".join(lines)
