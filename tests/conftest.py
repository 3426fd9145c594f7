"""Test-wide settings: offline data from the mirror, deterministic threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import nbexec  # noqa: E402

# Every kernel client of the test process (papermill, nbclient, nbgrader) waits in 1 s slices,
# so a lost zmq wake-up costs a second instead of a cell's whole time limit (tools/nbexec.py).
nbexec.install_poll_slices()
_SHARED_MIRROR = ROOT.parent / "shared" / "datasets"

# Tests are offline: read data from the mirror beside the checkout unless one is named already.
if not os.environ.get("METALEARN_DATA_MIRROR") and _SHARED_MIRROR.is_dir():
    os.environ["METALEARN_DATA_MIRROR"] = str(_SHARED_MIRROR)
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _data_available() -> bool:
    from helpers import datasets

    cached = datasets.data_dir() / "omniglot" / "images_background.zip"
    mirror = datasets.mirror_dir()
    return cached.exists() or (mirror is not None and (mirror / "omniglot").is_dir())


@pytest.fixture(scope="session")
def needs_data() -> None:
    """Skip with a clear reason when neither the cache nor a mirror holds the datasets."""
    if not _data_available():
        pytest.skip("datasets not available offline: set METALEARN_DATA_MIRROR to a mirror folder")


class QuickRuns:
    """Each notebook of notebooks/ executed at most once per test session, with QUICK=True.

    ``quick_runs(path)`` runs ``path`` through papermill the first time (as a student would
    run it, from notebooks/) and returns the executed copy; later calls return the same file,
    or raise the same error. tests/test_notebooks.py and the grading tests share these runs.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._done: dict[Path, tuple[Path | None, BaseException | None]] = {}

    def __call__(self, path: Path) -> Path:
        if path not in self._done:
            import time

            executed = self.folder / path.name
            start = time.perf_counter()
            try:
                nbexec.execute_notebook(
                    str(path),
                    str(executed),
                    parameters={"QUICK": True},
                    cwd=str(path.parent),
                    cell_timeout=600,  # QUICK cells take seconds: a stuck one fails instead of blocking
                    kernel_name="python3",
                    progress_bar=False,
                )
                self._done[path] = (executed, None)
            except Exception as error:  # kept, so every test that needs this run reports it
                self._done[path] = (None, error)
            print(f"{path.name}: {time.perf_counter() - start:.1f} s with QUICK=True")
        executed, error = self._done[path]
        if error is not None:
            raise error
        return executed


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> QuickRuns:
    return QuickRuns(tmp_path_factory.mktemp("quick-runs"))
