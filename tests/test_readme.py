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
