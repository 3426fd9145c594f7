"""Execute every notebook end to end with QUICK=True, as a student would run it (papermill).

New notebooks in notebooks/ are picked up automatically. Each run's wall time is printed so
the README's timings can be checked; speed itself is not asserted here (see benchmarks/).
The runs are the session's ``quick_runs`` (tests/conftest.py): tests/test_assignments.py
grades the same executed notebooks instead of running them again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_quick(path: Path, quick_runs, needs_data: None) -> None:
    # A failed exercise check raises, so this also proves every reference solution right.
    quick_runs(path)
