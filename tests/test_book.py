"""The book end to end on small real runs: papermill executes every notebook, Jupyter Book renders them,
every figure page holds its images, and headless Chromium can open the index page."""
import re
import shutil
import subprocess

import pytest

from nc.report import book

FOLLOWUP_PAGES = {"mse", "fixed_etf", "weight_decay", "imbalance"}

TINY = """dataset: demo
n_per_class: 12
test_n_per_class: 5
image_size: 16
width: 0.125
epochs: 5
lrs: [0.05]
snapshot_epochs: [1, 3, 5]
robustness_images: 4
fig1_samples: 4
device: cpu
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    params = root / "parameters"
    params.mkdir()
    (params / "_defaults.yaml").write_text(TINY)
    for net in ("vgg11", "resnet18", "densenet40"):
        (params / f"demo-{net}.yaml").write_text(f"network: {net}\n" + ("seeds: [0, 1]\n" if net == "vgg11" else ""))
    (params / "cifar100-vgg13.yaml").write_text("dataset: cifar100\nnetwork: vgg13\nnpz_dir: " + str(root) + "\n")
    (params / "demo-vgg13.yaml").write_text("network: vgg13\n")  # left out with --only: listed as not run
    cubes, out = root / "cubes", root / "book"
    book.train_all(params, cubes, out, only=["demo-vgg11", "demo-resnet18", "demo-densenet40", "cifar100"])
    book.figures("test", cubes, out, params)
    return cubes, out, book.render(out)


def test_every_run_has_a_cube_and_missing_data_is_marked(built):
    cubes, out, _ = built
    assert sorted(p.name for p in cubes.glob("*.nc")) == ["demo-densenet40.nc", "demo-resnet18.nc", "demo-vgg11.nc"]
    assert (cubes / "cifar100-vgg13.missing.json").is_file()
    assert sorted(p.stem for p in (out / "runs").glob("*.ipynb")) == [
        "cifar100-vgg13", "demo-densenet40", "demo-resnet18", "demo-vgg11"]


def test_every_page_is_rendered_with_its_images(built):
    _, out, index = built
    html = index.parent
    assert index.is_file()
    pages = {p.stem for p in (html / "figures").glob("*.html")}
    assert {f"fig{i}" for i in range(2, 8)} <= pages
    for page in sorted((html / "figures").glob("*.html")) + sorted((html / "runs").glob("demo-*.html")):
        text = page.read_text()
        images = re.findall(r'<img[^>]+src="([^"]+\.(?:png|svg))"', text)
        if page.stem in FOLLOWUP_PAGES:  # the follow-up runs are not trained here: the page says how to fill it
            assert images or "nox -s reproduce -- followups" in " ".join(visible_text(text).split()), page.name
            continue
        assert images, f"{page.name} has no figure"
        for src in images:
            assert (page.parent / src).resolve().is_file(), f"{page.name}: {src} missing"
        assert "injected-parameters" not in text and "Traceback" not in text
    intro = (html / "intro.html").read_text()
    assert '_static/nc.css' in intro and (html / "_static" / "nc.css").is_file()  # wide tables fit the page
    for name in ("demo-vgg11", "demo-resnet18", "demo-densenet40"):
        assert f"runs/{name}.html" in intro
    assert "figures/fig6.html" in intro and "missing" in intro
    assert "| vgg13 | | | | | | | not run | | |" in (out / "intro.ipynb").read_text() and "not run" in intro


def test_a_cell_with_two_seeds_is_drawn_with_its_spread_and_counted_k_of_n(built):
    cubes, out, index = built
    from nc.runs import cube

    ds = cube.open_cube(cubes / "demo-vgg11.nc")
    assert list(ds["seed"].values) == [0, 1] and ds["nc1"].dims == ("lr", "seed", "epoch")
    html = index.parent
    fig6 = " ".join(visible_text((html / "figures" / "fig6.html").read_text()).split())
    assert "the median over the run seeds" in fig6 and "vgg11 (demo): " in fig6
    claims = " ".join(visible_text((html / "figures" / "claims.html").read_text()).split())
    assert "held in some seeds" in claims and "| seed |" not in claims and " seed verdict numbers " in claims
    run = " ".join(visible_text((html / "runs" / "demo-vgg11.html").read_text()).split())
    assert "seed 0: " in run and "seed 1: " in run


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def visible_text(dom: str) -> str:
    """The text a reader sees: tags, scripts and styles removed, entities decoded."""
    import html

    body = dom[dom.find("<body"):]
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


@pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed (Debian package 'chromium')")
def test_formulas_render_offline_from_the_build(built, tmp_path):
    """MathJax is served from the book's own _static folder: with no network, every formula of the intro is
    typeset (MathJax's output elements are in the DOM) and no raw TeX is left in the page text."""
    _, _, index = built
    html_dir = index.parent
    intro = (html_dir / "intro.html").read_text()
    scripts = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', intro, flags=re.I)
    assert scripts and all(not s.startswith(("http:", "https:", "//")) for s in scripts), scripts
    assert all((html_dir / s).is_file() for s in scripts)
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
           "--dump-dom", (html_dir / "intro.html").resolve().as_uri()]
    dom = subprocess.run(cmd, check=True, timeout=240, capture_output=True, text=True).stdout
    assert dom.count("<mjx-container") >= 5  # the Conventions paragraph's formulas, typeset
    text = visible_text(dom)
    assert "Conventions" in text and "\\mathrm" not in text and "$$" not in text and "\\Sigma" not in text


@pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed (Debian package 'chromium')")
def test_index_page_renders_in_headless_chromium(built, tmp_path):
    _, _, index = built
    assert "intro.html" in index.read_text()  # index.html redirects to the intro page, which we load
    shot = tmp_path / "index.png"
    cmd = [chromium(), *CHROMIUM_FLAGS, "--timeout=20000", f"--user-data-dir={tmp_path / 'profile'}",
           "--window-size=1280,1600",
           f"--screenshot={shot}", (index.parent / "intro.html").resolve().as_uri()]
    for attempt in range(2):  # a freshly installed Chromium's first start can stall (font cache)
        try:
            subprocess.run(cmd, check=True, timeout=240, capture_output=True)
            break
        except subprocess.TimeoutExpired:
            if attempt:
                raise
    assert shot.is_file()
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1200
    # a themed page: not blank, and the sidebar/theme colours are there (many distinct colours)
    flat = (img[..., :3] * 255).astype(int).reshape(-1, 3)
    assert img[..., :3].std() > 0.05
    assert len({tuple(c) for c in flat[:: 97]}) > 20


def test_command_line_rejects_slurm_options_without_an_executor_and_unknown_cells(capsys):
    with pytest.raises(SystemExit):
        book.main(["reproduce", "demo", "--seeds", "0"])
    assert "--seeds: must be a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        book.main(["reproduce", "quick", "--gpus", "2"])
    assert "go with --executor" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--only 'svhn-vgg99' matches no parameter file"):
        book.main(["reproduce", "quick", "--executor", "local", "--only", "svhn-vgg99"])
