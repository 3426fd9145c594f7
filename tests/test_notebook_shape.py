"""Every notebook has the course's common shape (static checks, no execution)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import COURSE_REPO

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_*.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_common_shape(path: Path):
    cells = _cells(path)
    title = _source(cells[0])
    assert cells[0]["cell_type"] == "markdown" and title.startswith("# ")
    assert (
        "colab.research.google.com" in title
        and COURSE_REPO.removeprefix("https://github.com/") in title
    )
    assert "colab" in cells[1].get("metadata", {}).get("tags", []) and COURSE_REPO in _source(
        cells[1]
    )
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "QUICK = False" in _source(tagged[0])
    assert not [c for c in cells if c["cell_type"] == "code" and c.get("outputs")], (
        "commit notebooks without outputs"
    )
    ids = [c.get("id") for c in cells]  # nbformat 4.5 requires one, unique, on every cell
    assert None not in ids and len(set(ids)) == len(ids), "every cell needs its own id"
    text = "\n".join(_source(c) for c in cells)
    assert text.count("### BEGIN SOLUTION") >= 3 and text.count("### BEGIN SOLUTION") == text.count(
        "### END SOLUTION"
    )
    prose = "\n".join(_source(c) for c in cells if c["cell_type"] != "code")
    assert "BEGIN SOLUTION" not in prose and "HIDDEN TESTS" not in prose, (
        "nbgrader reads markers in markdown too"
    )
    assert "exercises.check" in text, "exercises need self-check cells"
    assert (
        ".cuda()" not in text and "import " + "torchvision" not in text
    )  # split so the check does not match itself
