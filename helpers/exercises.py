"""Self-checking exercises: a right answer prints one tick, a wrong one stops with a hint.

Every exercise in the notebooks is an answer cell followed by a check cell. A check that
passes prints one line (``✅ Correct: <what was checked>``) and returns ``True``; a check that
fails raises :class:`ExerciseCheckError` (an ``AssertionError``) whose message names what was
checked and gives the hint, but never the expected answer. Raising is what lets an
autograder (nbgrader scores a test cell zero when it raises) and the test suite (a notebook
whose reference solution is wrong fails to run) tell a wrong answer from a right one.

References are computed by ``helpers`` or by the check cell, never typed into the
notebook. ``tools/assignments.py`` makes the student edition of the notebooks from the
instructor edition and grades submissions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PASS = "✅ Correct"
FAIL = "❌ Not yet right"
EMPTY = "the answer is still empty: replace the ... with your code"

_NOT_GIVEN = object()


class ExerciseCheckError(AssertionError):
    """A check of an exercise failed; the message says what was checked and gives a hint."""


def check_true(condition: Any, what: str, hint: str, *, answer: Any = _NOT_GIVEN) -> bool:
    """Pass when ``condition`` holds.

    ``answer``, when given, is the variable the condition is about: if it is still ``...`` or
    ``None`` the message says to fill it in instead of giving the hint alone.
    """
    __tracebackhide__ = True  # IPython and pytest show the notebook line, not this frame
    if answer is not _NOT_GIVEN and _is_empty(answer):
        _fail(what, hint, EMPTY)
    if not _truth(condition):
        _fail(what, hint)
    return _pass(what)


def check_close(
    answer: Any, expected: Any, what: str, hint: str, atol: float = 1e-6, rtol: float = 1e-5
) -> bool:
    """Pass when ``answer`` equals ``expected`` within ``atol + rtol * |expected|``, element by element.

    Numbers, sequences, NumPy arrays and torch tensors (on any device) are compared as float
    arrays of the same shape.
    """
    __tracebackhide__ = True
    if _is_empty(answer):
        _fail(what, hint, EMPTY)
    expected_array = _as_float_array(expected)
    if expected_array is None:
        raise TypeError(f"check_close: the reference for {what!r} is not numeric")
    answer_array = _as_float_array(answer)
    if answer_array is None:
        _fail(what, hint, f"a {type(answer).__name__} cannot be read as numbers")
    if answer_array.shape != expected_array.shape:
        _fail(what, hint, f"your answer has shape {answer_array.shape}, not the shape expected")
    if not np.allclose(answer_array, expected_array, atol=atol, rtol=rtol):
        _fail(what, hint)
    return _pass(what)


def check_equal(answer: Any, expected: Any, what: str, hint: str) -> bool:
    """Pass when ``answer`` equals ``expected`` exactly (labels, counts, booleans, strings).

    Arrays and tensors must have the same shape and the same entries; strings must be equal
    strings (``"1"`` is not ``1``).
    """
    __tracebackhide__ = True
    if _is_empty(answer):
        _fail(what, hint, EMPTY)
    if not _equal(answer, expected):
        _fail(what, hint)
    return _pass(what)


def check_shape(answer: Any, shape: tuple[int, ...], what: str, hint: str) -> bool:
    """Pass when ``answer`` is an array or tensor of the given shape (``()`` for a scalar).

    A check of the shape of an answer, for a visible check that says nothing about its values.
    """
    __tracebackhide__ = True
    if _is_empty(answer):
        _fail(what, hint, EMPTY)
    if not hasattr(answer, "shape"):
        _fail(what, hint, f"a {type(answer).__name__} has no shape: return an array or tensor")
    if tuple(answer.shape) != tuple(shape):
        _fail(what, hint, f"your answer has shape {tuple(answer.shape)}, not the shape expected")
    return _pass(what)


def _pass(what: str) -> bool:
    print(f"{PASS}: {what}")
    return True


def _fail(what: str, hint: str, problem: str | None = None) -> None:
    __tracebackhide__ = True
    detail = f"{problem}; hint: {hint}" if problem else f"hint: {hint}"
    raise ExerciseCheckError(f"{FAIL}: {what} ({detail.rstrip('. ')}).")


def _is_empty(answer: Any) -> bool:
    return answer is None or answer is ...


def _truth(condition: Any) -> bool:
    try:
        return bool(_to_numpy(condition))
    except (TypeError, ValueError):  # an array of several truth values is not one verdict
        return False


def _to_numpy(value: Any) -> Any:
    """Tensors (torch, or anything with ``.detach()``/``.numpy()``) to NumPy; the rest unchanged."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    return value


def _as_float_array(value: Any) -> np.ndarray | None:
    try:
        value = _to_numpy(value)
        if isinstance(value, (list, tuple)):
            value = [_to_numpy(v) for v in value]
        if isinstance(value, (str, bytes, dict)):
            return None
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError, RuntimeError):  # e.g. a dict, None inside a list, bfloat16
        return None


def _equal(answer: Any, expected: Any) -> bool:
    if isinstance(expected, str) or isinstance(answer, str):
        return isinstance(answer, str) and isinstance(expected, str) and answer == expected
    try:
        answer, expected = _to_numpy(answer), _to_numpy(expected)
    except (TypeError, RuntimeError):  # a tensor NumPy cannot hold (e.g. bfloat16)
        return _python_equal(answer, expected)
    if isinstance(expected, dict) or isinstance(answer, dict):
        return (
            isinstance(answer, dict)
            and isinstance(expected, dict)
            and answer.keys() == expected.keys()
            and all(_equal(answer[k], expected[k]) for k in expected)
        )
    try:
        answer_array, expected_array = np.asarray(answer), np.asarray(expected)
    except (TypeError, ValueError):  # ragged sequences: compare as Python objects
        return _python_equal(answer, expected)
    if answer_array.dtype == object or expected_array.dtype == object:
        return _python_equal(answer, expected)
    if answer_array.dtype.kind in "US" or expected_array.dtype.kind in "US":
        # lists of strings: both must be strings, same shape, same entries
        return answer_array.dtype.kind == expected_array.dtype.kind and np.array_equal(
            answer_array, expected_array
        )
    return bool(np.array_equal(answer_array, expected_array))


def _python_equal(answer: Any, expected: Any) -> bool:
    try:
        return bool(answer == expected)
    except (TypeError, ValueError):
        return False
