"""Colab's first Run All, rehearsed here: a fresh kernel that cannot import ``helpers``, a stand-in
``google.colab`` module, and the clone source pointed at this checkout.

The notebook's own Colab cell must then fetch the course and make ``helpers`` importable in the
*same* kernel (an editable install would only be seen after a restart), and its setup cell must
run. Data and checkpoints must be found from the package, not from the working directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
sys.path.insert(0, str(ROOT / "tools"))

from nbbuild import COLAB_CELL  # noqa: E402

# Run in the kernel before the notebook's cells: hide the course as a pip-installed package
# (as on Colab, where nothing of it is installed), and pretend to be Colab.
_PRETEND_COLAB = """
import importlib, sys, types
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in str(getattr(f, "__module__", type(f).__module__)).lower()]
sys.path[:] = [p for p in sys.path if not (p and __import__("os").path.isdir(__import__("os").path.join(p, "helpers")))]
for name in [m for m in sys.modules if m == "helpers" or m.startswith("helpers.")]:
    del sys.modules[name]
importlib.invalidate_caches()
try:
    import helpers
    raise AssertionError(f"helpers is importable before the Colab cell ran: {helpers.__file__}")
except ModuleNotFoundError:
    pass
try:  # "google" is a namespace package (protobuf lives in it, and TensorFlow needs that)
    import google
except ImportError:
    google = types.ModuleType("google")
    google.__path__ = []
    sys.modules["google"] = google
colab = types.ModuleType("google.colab")
google.colab = colab
sys.modules["google.colab"] = colab
"""

_REPORT = """
import json, os, helpers
from helpers import datasets
print(json.dumps({"helpers": helpers.__file__, "checkpoints": str(helpers.CHECKPOINT_DIR),
                  "data": str(datasets.data_dir()), "cwd": os.getcwd(),
                  "has_checkpoints": any(helpers.CHECKPOINT_DIR.glob("*.pt"))}))
"""


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_colab_cell_is_the_common_one(path: Path) -> None:
    """Every notebook carries exactly the cell that ``tools/nbbuild.py`` writes (and this file tests)."""
    cell = json.loads(path.read_text())["cells"][1]
    assert _source(cell) == COLAB_CELL, (
        f"{path.name}: its Colab cell differs from tools/nbbuild.py's COLAB_CELL"
    )


def test_colab_cell_does_nothing_outside_colab() -> None:
    """Outside Colab the cell must not clone, install or change directory."""
    from IPython.core.inputtransformer2 import TransformerManager

    python = TransformerManager().transform_cell(COLAB_CELL)
    namespace: dict = {}
    before = Path.cwd()
    exec(compile(python, "colab-cell", "exec"), namespace)  # noqa: S102
    assert Path.cwd() == before and "COURSE_DIR" not in namespace


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_run_all_on_colab(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    if (
        subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("the checkout is not a git repository, so the Colab cell has nothing to clone")
    course = tmp_path / "content" / "course"
    monkeypatch.setenv("METALEARN_COURSE_SOURCE", ROOT.as_uri())
    monkeypatch.setenv("METALEARN_COLAB_DIR", str(course))
    monkeypatch.delenv("METALEARN_DATA_DIR", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)

    cells = json.loads(path.read_text())["cells"]
    colab_cell, setup_cell = _source(cells[1]), _source(cells[2])
    nb = new_notebook(
        cells=[
            new_code_cell(_PRETEND_COLAB),
            new_code_cell(colab_cell),
            new_code_cell(setup_cell),
            new_code_cell(_REPORT),
        ]
    )
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    report = json.loads(next(o["text"] for o in nb.cells[-1].outputs if o.get("name") == "stdout"))
    assert Path(report["helpers"]).is_relative_to(course), (
        f"helpers came from {report['helpers']}, not the clone"
    )
    assert (
        Path(report["checkpoints"]) == course / "data" / "checkpoints" and report["has_checkpoints"]
    )
    assert Path(report["data"]) == course / "data"
    assert Path(report["cwd"]) == course / "notebooks"
