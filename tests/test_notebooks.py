"""Execute every notebook end to end with QUICK=True, as a student would run it (papermill).

New notebooks in notebooks/ are picked up automatically. Each run's wall time is printed so
the README's timings can be checked; speed itself is not asserted here (see benchmarks/).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_quick(path: Path, tmp_path: Path, needs_data: None) -> None:
    import papermill

    start = time.perf_counter()
    papermill.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters={"QUICK": True},
        cwd=str(path.parent),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=600,
    )
    print(f"{path.name}: {time.perf_counter() - start:.1f} s with QUICK=True")
