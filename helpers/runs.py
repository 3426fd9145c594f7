"""What a long training run needs besides the maths: clean stops, finite numbers, exact resumes.

* :class:`StopSignals` turns Ctrl-C (SIGINT) and SIGTERM into a request that the training loop
  reads between two steps (:func:`stop_requested`), so a run always stops on a step boundary
  with consistent weights, optimiser state and random state. A second Ctrl-C stops at once.
* :class:`NonFiniteLoss` is what a loop raises when the loss (or a weight) stops being a
  finite number; :func:`check_finite` and :func:`all_finite` are the tests.
* :func:`rng_state` and :func:`set_rng_state` capture and restore Python's, NumPy's and
  PyTorch's global generators (CPU and CUDA), and :func:`generator_state` those of a
  ``numpy.random.Generator``, as plain types that ``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

import math
import random
import signal
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


class NonFiniteLoss(ValueError):
    """Training produced a loss or weights that are not finite numbers (NaN or infinity).

    A ``ValueError``: the cause is a setting (most often a learning rate too large), and panels
    answer a ``ValueError`` in one line.
    """

    def __init__(self, step: int, value: float, what: str = "loss") -> None:
        self.step, self.value, self.what = int(step), value, what
        super().__init__(f"the {what} became {value} at step {step}")


def check_finite(step: int, value: float, what: str = "loss") -> float:
    """``value`` if finite; otherwise raise :class:`NonFiniteLoss` naming the step."""
    if not math.isfinite(value):
        raise NonFiniteLoss(step, value, what)
    return value


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every floating-point entry of every tensor is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_floating_point(t))


# ----------------------------------------------------------------------------- stop requests

_requested: list[str] = []  # the names of the signals received while StopSignals is active


def stop_requested() -> bool:
    """True once Ctrl-C or SIGTERM has asked the current :class:`StopSignals` block to stop."""
    return bool(_requested)


def request_stop(name: str = "request") -> None:
    """Ask the running loop to stop at its next step boundary (what the signal handler does)."""
    _requested.append(name)


def stop_reason() -> str | None:
    """``"SIGINT"`` or ``"SIGTERM"`` (the first received), or ``None``."""
    return _requested[0] if _requested else None


class StopSignals:
    """Within ``with StopSignals():`` the first Ctrl-C or SIGTERM only *asks* the loop to stop.

    Loops poll :func:`stop_requested` between steps. A second Ctrl-C raises
    ``KeyboardInterrupt`` at once (for a loop that is stuck). Outside the main thread nothing
    is installed, and Ctrl-C behaves as usual.
    """

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.previous: dict[int, Any] = {}

    def _handle(self, number: int, frame) -> None:
        name = signal.Signals(number).name
        if _requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        request_stop(name)
        if self.announce:
            import sys

            print(
                f"\n{name} received: stopping after this step to save the run (Ctrl-C again stops at once).",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopSignals:
        _requested.clear()
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous.clear()
        _requested.clear()


# ----------------------------------------------------------------------------- random state


def rng_state() -> dict:
    """The state of Python's, NumPy's and PyTorch's global generators (CUDA's too, if used)."""
    kind, keys, position, gauss_next, cached = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "position": int(position),
            "has_gauss": int(gauss_next),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            np.array(n["keys"], dtype=np.uint32),
            n["position"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def generator_state(generator: np.random.Generator) -> dict:
    """A ``numpy.random.Generator``'s state as plain types (its bit generator's own dict)."""
    return _to_lists(generator.bit_generator.state)


def set_generator_state(generator: np.random.Generator, state: dict) -> None:
    generator.bit_generator.state = state


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_lists(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
