"""The README stays true: every test its "What survives what" table names exists, and the commands it shows exist."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_test_the_fault_table_names_exists():
    table = README[README.index("## What survives what"):README.index("## Speed")]
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", table)
    assert len(named) >= 14
    for path, name in named:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.M), f"{path}::{name} is not a test"


def test_the_readme_names_no_placeholder_and_the_profiles_it_lists_exist():
    for text in (README, (ROOT / "book" / "methods.md").read_text()):
        assert not re.search(r"\b[A-Z]+_(TIME|RESULTS|NOTE|TABLE|SECTION)\b", text)
    for profile in re.findall(r"nox -s reproduce -- (\w+)", README):
        assert (ROOT / "parameters" / profile).is_dir(), profile


def _pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"\b(torch|torchvision)==([0-9][0-9.]*\d)", text))


def test_the_torch_pin_is_stated_once_and_every_file_agrees():
    """The noxfile states the PyTorch pair (TORCH); environment.yml (conda users) and the README quote it, and
    pyproject.toml's lower bounds admit it."""
    nox_pins = _pins(re.search(r'^TORCH = .*$', (ROOT / "noxfile.py").read_text(), flags=re.M).group(0))
    assert set(nox_pins) == {"torch", "torchvision"}, nox_pins
    assert _pins((ROOT / "environment.yml").read_text()) == nox_pins
    assert _pins(README[:README.index("## What you see")]) == nox_pins
    floors = dict(re.findall(r'"(torch|torchvision)>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()))
    for name, pin in nox_pins.items():
        assert tuple(map(int, floors[name].split("."))) <= tuple(map(int, pin.split("."))), (name, floors, pin)


def test_every_nox_session_and_lab_page_the_readme_shows_exists():
    sessions = set(re.findall(r"^def (\w+)\(session\)", (ROOT / "noxfile.py").read_text(), flags=re.M))
    shown = set(re.findall(r"nox -s (\w+)", README))
    assert {"reproduce", "tests", "book", "lab"} <= shown and shown <= sessions, shown - sessions
    from nc import lab

    for page in re.findall(r"nox -s lab -- ([\w/.]+)", README):
        assert (ROOT / lab.page_path(page)).is_file(), page


def test_the_measure_your_own_network_example_runs():
    """The README's Python example of the any-network API runs as printed and measures what it says."""
    section = README[README.index("## Measure your own network"):README.index("## The cube")]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    ds = scope["ds"]
    assert ds.attrs["features"] == "input of fc" and ds.attrs["n_train"] == 200 and ds.attrs["n_test"] == 100
    assert ds["nc1"].item() > 0 and 0 <= ds["ncc_mismatch"].item() <= 1
