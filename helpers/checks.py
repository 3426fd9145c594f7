"""Parameter checks shared by the helpers and the training commands.

Every check raises ``ValueError`` with one sentence naming the parameter, its value and the
allowed range (CONTRIBUTING.md: "Bad settings raise ValueError with one sentence ..."), and
returns the value as a plain Python number. NumPy scalars are numbers like any other
(``np.float32(0.01)`` is a fine learning rate, ``np.int64(5)`` a fine count); booleans and
strings are not.
"""

from __future__ import annotations

import math
import numbers

#: The largest seed every generator of the course accepts (NumPy's legacy seeding takes 32 bits).
MAX_SEED = 2**32 - 1


def show(value: object) -> str:
    """``value`` as it reads in a message: strings quoted, numbers (NumPy's too) plain."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return str(value.item() if hasattr(value, "item") else value)
    return repr(value)


def is_number(value: object) -> bool:
    """True for ints, floats and NumPy scalars; False for booleans, strings and ``None``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value: object) -> bool:
    """True for Python and NumPy integers (not booleans)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_number(name: str, value: object, example: float | None = None) -> float:
    """``value`` as a float if it is a finite number > 0 (a learning rate, a time budget)."""
    if not (is_number(value) and math.isfinite(value) and value > 0):
        hint = f" such as {example}" if example is not None else ""
        raise ValueError(f"{name}={show(value)} must be a positive finite number{hint}.")
    return float(value)


def whole_number(name: str, value: object, low: int = 0, high: int | None = None) -> int:
    """``value`` as an int if it is a whole number in ``low .. high`` (``high=None``: no upper limit)."""
    if not is_whole(value) or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name}={show(value)} must be a whole number {allowed}.")
    return int(value)


def seed(value: object, name: str = "seed") -> int:
    """A seed every generator accepts: a whole number from 0 to 2**32 - 1."""
    if not is_whole(value) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name}={show(value)} must be a whole number from 0 to 2**32 - 1 ({MAX_SEED}).")
    return int(value)
