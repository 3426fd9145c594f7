"""tools/nbexec.py: the kernel client's sliced wait, and a notebook run through it."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from queue import Empty

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import nbexec  # noqa: E402


class _Channel:
    """Stands in for the channel whose ``get_msg`` the slices wrap: it records the timeouts it
    is called with, and the message is 'found' only by a call that starts after ``ready_at``,
    as a message whose wake-up was lost is found only by a fresh look at the socket."""

    def __init__(self, ready_at: float | None) -> None:
        self.ready_at, self.calls = ready_at, []

    async def get_msg(self, timeout=None):
        self.calls.append(timeout)
        if self.ready_at is not None and time.monotonic() >= self.ready_at:
            return {"msg_type": "execute_reply"}
        await asyncio.sleep(
            timeout if timeout is not None else 3600
        )  # the lost wake-up: sleeps to its end
        raise Empty


def _sliced(channel_class, slice_seconds: float):
    """Apply install_poll_slices' wrapping to a stand-in class (the real one is patched by conftest)."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    saved = AsyncZMQSocketChannel.get_msg
    AsyncZMQSocketChannel.get_msg = channel_class.get_msg
    try:
        nbexec.install_poll_slices(slice_seconds)
        channel_class.get_msg = AsyncZMQSocketChannel.get_msg
    finally:
        AsyncZMQSocketChannel.get_msg = saved


def test_a_message_whose_wake_up_was_lost_is_found_within_a_slice() -> None:
    class Channel(_Channel):
        pass

    _sliced(Channel, 0.2)
    channel = Channel(ready_at=time.monotonic() + 0.5)
    start = time.monotonic()
    message = asyncio.run(channel.get_msg(timeout=None))  # unsliced, this would sleep an hour
    assert message["msg_type"] == "execute_reply"
    assert time.monotonic() - start < 1.5
    assert all(t == pytest.approx(0.2) for t in channel.calls) and len(channel.calls) >= 3


def test_the_callers_timeout_still_raises_empty_on_time() -> None:
    class Channel(_Channel):
        pass

    _sliced(Channel, 0.2)
    channel = Channel(ready_at=None)
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=0.5))
    assert 0.45 < time.monotonic() - start < 1.2
    assert max(channel.calls) <= 0.2 + 1e-9 and sum(channel.calls) == pytest.approx(0.5, abs=0.05)


def test_installing_twice_wraps_once() -> None:
    from jupyter_client.channels import AsyncZMQSocketChannel

    nbexec.install_poll_slices()
    first = AsyncZMQSocketChannel.get_msg
    nbexec.install_poll_slices()
    assert AsyncZMQSocketChannel.get_msg is first and first._metalearn_sliced


def test_a_widget_notebook_runs_through_execute_notebook(tmp_path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [
        new_code_cell("QUICK = False", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "import ipywidgets as w\nfrom IPython.display import display, clear_output\n"
            "out = w.Output(); display(out)\n"
            "for i in range(200):\n    with out:\n        clear_output(wait=True)\n        print(i)\n"
            "print('done', QUICK)"
        ),
    ]
    source, executed = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(
        new_notebook(
            cells=cells,
            metadata={
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
            },
        ),
        source,
    )
    nbexec.execute_notebook(
        str(source),
        str(executed),
        parameters={"QUICK": True},
        cwd=str(tmp_path),
        cell_timeout=120,
        kernel_name="python3",
        progress_bar=False,
    )
    nb = nbformat.read(executed, as_version=4)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "done True" in text
