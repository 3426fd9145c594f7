"""Test-wide settings: offline data from the mirror, deterministic threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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
