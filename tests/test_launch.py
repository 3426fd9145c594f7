"""The README's launch command: JupyterLab with the repository as its root, on notebook 01.

The command is read from the README itself (its "Open the course in JupyterLab" block), started
without a browser on a free local port, and the URL it prints is followed.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_command(title: str) -> str:
    """The shell command in the README's code block that follows the bold line ``title``."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"\*\*{re.escape(title)}\*\*\s*```bash\n(.+?)\n```", text, re.S)
    assert match, f"README.md has no command block under **{title}**"
    return match[1].strip()


def _get(url: str, until: float = 0.0) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                return reply.read().decode()
        except ConnectionRefusedError:
            if time.monotonic() > until:
                raise
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > until:
                raise
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_launch_command_opens_notebook_01_at_the_repository_root(tmp_path: Path) -> None:
    command = readme_command("Open the course in JupyterLab")
    launch = command.split("&&")[-1].strip()
    assert launch.startswith(".venv/bin/python -m jupyter lab"), launch
    args = [sys.executable, *shlex.split(launch)[1:]]
    args += [
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={_free_port()}",
        "--ServerApp.port_retries=0",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    env = dict(os.environ)
    for variable in (
        "JUPYTER_CONFIG_DIR",
        "JUPYTER_RUNTIME_DIR",
        "JUPYTERLAB_WORKSPACES_DIR",
        "JUPYTERLAB_SETTINGS_DIR",
    ):
        env[variable] = str(tmp_path / variable.lower())
    server = subprocess.Popen(
        args, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        url, deadline = None, time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            if not line and server.poll() is not None:
                pytest.fail(
                    f"JupyterLab exited with status {server.returncode} before printing a URL"
                )
            found = re.search(r"http://127\.0\.0\.1:\d+/\S+", line)
            url = found[0] if found else None
        assert url, "JupyterLab printed no URL within 90 s"
        parts = urlsplit(url)
        assert parts.path == "/lab/tree/notebooks/01_meta_learning_and_episodes.ipynb", url
        assert (ROOT / parts.path.removeprefix("/lab/tree/")).is_file()
        base = f"{parts.scheme}://{parts.netloc}"
        page = _get(url, until=time.monotonic() + 60)  # the URL is printed just before it serves
        assert "JupyterLab" in page
        token = parts.query
        for path in (
            "README.md",
            "helpers/__init__.py",
            "notebooks/01_meta_learning_and_episodes.ipynb",
        ):
            with urllib.request.urlopen(
                f"{base}/api/contents/{path}?content=0&{token}", timeout=30
            ) as reply:
                assert reply.status == 200, f"{path} is not visible from the server's root"
    finally:
        server.terminate()
        server.wait(timeout=30)
