"""Binder: ``binder/requirements.txt`` installs beside repo2docker's own Jupyter server.

repo2docker installs our requirements into the environment that runs the Jupyter server, whose
versions come from a conda lock file shipped inside the ``jupyter-repo2docker`` package. A pin that
disagrees with that lock (JupyterLab 4.6 against its Notebook 7.4, say) makes pip replace the
server's own packages and break it, while pip only warns and exits 0. Here pip's resolver must
find one set of versions for our requirements with every Python package of the lock held at
exactly its locked version.

This test needs the package registry (to read the lock's package and to resolve); without one
it is skipped with the reason.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
REPO2DOCKER = "jupyter-repo2docker==2026.4.0"  # the version mybinder.org builds with, as of writing

# Jupyter's server side: repo2docker provides these, so neither requirements file may pin them
# for Binder. Test and authoring tools of requirements.txt that a Binder user does not need.
SERVER_PACKAGES = {"jupyterlab", "notebook", "ipykernel", "ipywidgets", "jupyter-server"}
NOT_FOR_BINDER = {
    "nbclient",
    "nbformat",
    "nbconvert",
    "papermill",
    "pytest",
    "ruff",
    "nbgrader",
    "playwright",
}


def _pins(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of the ``name==version`` lines of a requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[_normalise(match[1])] = match[2]
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _python_version() -> str:
    match = re.fullmatch(r"python-(\d+\.\d+)", (BINDER / "runtime.txt").read_text().strip())
    assert match, "binder/runtime.txt must read python-X.Y"
    return match[1]


def _lock_constraints(lock: str) -> dict[str, str]:
    """The Python packages of a conda explicit lock (URLs ``name-version-build.conda``)."""
    pins = {}
    for url in re.findall(r"^https://\S+", lock, re.M):
        stem = re.sub(r"\.(conda|tar\.bz2)$", "", url.rsplit("/", 1)[1].split("#")[0])
        name, version, build = stem.rsplit("-", 2)
        if build.startswith("py") or "_cp3" in build:  # noarch Python or a compiled CPython package
            if name not in {"python", "pip", "python_abi"}:
                pins[_normalise(name)] = version
    return pins


@pytest.fixture(scope="module")
def base_lock(tmp_path_factory: pytest.TempPathFactory) -> str:
    where = tmp_path_factory.mktemp("repo2docker")
    fetched = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(where),
            REPO2DOCKER,
        ],
        capture_output=True,
        text=True,
    )
    if fetched.returncode != 0:
        pytest.skip(
            f"cannot fetch {REPO2DOCKER} from the package registry: {fetched.stderr.strip().splitlines()[-1:]}"
        )
    wheel = next(where.glob("*.whl"))
    name = f"repo2docker/buildpacks/conda/environment.py-{_python_version()}-linux-64.lock"
    with zipfile.ZipFile(wheel) as archive:
        assert name in archive.namelist(), (
            f"{REPO2DOCKER} has no base environment for binder/runtime.txt's Python"
        )
        return archive.read(name).decode()


def test_binder_leaves_the_server_packages_to_repo2docker() -> None:
    pinned = set(_pins(BINDER / "requirements.txt"))
    assert not pinned & SERVER_PACKAGES, (
        f"binder/requirements.txt pins {sorted(pinned & SERVER_PACKAGES)}"
    )


def test_binder_pins_what_the_course_pins() -> None:
    """Binder runs the notebooks with the same library versions as the tests do."""
    course, binder = _pins(ROOT / "requirements.txt"), _pins(BINDER / "requirements.txt")
    tensorflow = {"tensorflow"}  # Binder takes tensorflow-cpu, pinned at the same version
    wanted = {
        n: v for n, v in course.items() if n not in SERVER_PACKAGES | NOT_FOR_BINDER | tensorflow
    }
    assert {n: binder.get(n) for n in wanted} == wanted


def test_binder_requirements_resolve_with_the_repo2docker_base_environment(
    base_lock: str, tmp_path: Path
) -> None:
    constraints = _lock_constraints(base_lock)
    assert {"jupyterlab", "notebook", "ipykernel", "ipywidgets"} <= set(constraints), (
        "the lock lost its Jupyter packages"
    )
    (tmp_path / "constraints.txt").write_text(
        "".join(f"{n}=={v}\n" for n, v in sorted(constraints.items()))
    )
    # The PyTorch CPU index named in the file is not among this machine's registries; the
    # resolution does not depend on it (the same torch version is on PyPI).
    lines = [
        line
        for line in (BINDER / "requirements.txt").read_text().splitlines()
        if not line.startswith("--")
    ]
    lines = [f"-e {ROOT}" if line.strip() == "-e ." else line for line in lines]
    (tmp_path / "requirements.txt").write_text("\n".join(lines) + "\n")
    report = tmp_path / "report.json"
    resolved = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "-r",
            str(tmp_path / "requirements.txt"),
            "-c",
            str(tmp_path / "constraints.txt"),
        ],
        capture_output=True,
        text=True,
    )
    assert resolved.returncode == 0, (
        "pip found no versions that satisfy both:\n" + resolved.stderr[-3000:]
    )
    chosen = {
        _normalise(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    moved = {
        n: (constraints[n], v)
        for n, v in chosen.items()
        if n in constraints and constraints[n] != v
    }
    assert not moved, f"the server environment would change: {moved}"
    for name, version in _pins(BINDER / "requirements.txt").items():
        assert chosen.get(name, "").split("+")[0] == version, (
            f"{name}=={version} was not chosen ({chosen.get(name)})"
        )
