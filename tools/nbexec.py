"""Run notebooks headless without the lost-wakeup hang: papermill with a poll that cannot sleep forever.

The hang. Twice under load a notebook stopped for good on a panel cell: the kernel was idle and
had run the cell to its end (a second client saw it), but papermill still waited for that
cell's ``execute_reply``. nbclient waits for it with
``await kc.shell_channel.get_msg(timeout=cell_timeout)``, which is one pyzmq asyncio
``socket.poll``. That poll sleeps until the socket's edge-triggered file descriptor wakes it; if
that wake-up is lost, it sleeps until its timeout, and with no timeout (as in ``tools/render.py``
until now), forever. When a timeout does fire, pyzmq polls the socket once more and returns what
is there (``zmq/_future.py``, ``_AsyncPoller.poll``), which is why the same stall under the
tests' 600 s cell limit ended as a slow cell, not a failure. The same wait is reported upstream
for cells with ipywidgets (jupyter/nbclient#312); the stalled cells here were widget cells too,
which send bursts of comm messages on iopub while the reply travels on shell. Which wake-up is
lost we could not pin down; the fix does not depend on it.

The fix here: :func:`install_poll_slices` makes the async kernel client's ``get_msg`` wait in
slices of at most :data:`SLICE_SECONDS`, each ending with that fresh look at the socket, so a
missed wake-up costs at most a second. It changes nothing else: a message is returned as soon
as a wake-up comes, and ``Empty`` is raised only when the caller's own timeout has passed.
:func:`execute_notebook` installs it and runs papermill with a per-cell time limit, so a cell
that really hangs fails with a message instead of blocking a test run or a render.
"""

from __future__ import annotations

import functools
import time
from queue import Empty
from typing import Any

#: The longest a kernel client waits before looking at its socket again.
SLICE_SECONDS = 1.0

#: Seconds one cell may run before papermill gives up on it (the slowest default-settings cell
#: takes about 6 minutes on a loaded 2-core CPU).
CELL_TIMEOUT = 1800


def install_poll_slices(slice_seconds: float = SLICE_SECONDS) -> None:
    """Make ``AsyncZMQSocketChannel.get_msg`` wait in slices (idempotent; this process only)."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    original = AsyncZMQSocketChannel.get_msg
    if getattr(original, "_metalearn_sliced", False):
        return

    @functools.wraps(original)
    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await original(
                    self, timeout=slice_seconds if left is None else min(slice_seconds, left)
                )
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    get_msg._metalearn_sliced = True  # type: ignore[attr-defined]
    get_msg._metalearn_original = original  # type: ignore[attr-defined]
    AsyncZMQSocketChannel.get_msg = get_msg  # type: ignore[method-assign]


def execute_notebook(
    source: str,
    output: str,
    parameters: dict | None = None,
    cwd: str | None = None,
    cell_timeout: int = CELL_TIMEOUT,
    **kwargs: Any,
) -> Any:
    """``papermill.execute_notebook`` with the sliced poll and a per-cell time limit."""
    import papermill

    install_poll_slices()
    return papermill.execute_notebook(
        source,
        output,
        parameters=parameters or {},
        cwd=cwd,
        execution_timeout=cell_timeout,
        **kwargs,
    )
