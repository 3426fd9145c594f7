"""Self-checking exercises: each check prints a clear verdict and, when wrong, a hint.

Checks compare a student's answer with a reference computed by ``helpers`` (never a number
typed into the notebook), and return ``True``/``False`` so an autograder can assert on them.
Solutions in the notebooks sit between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
(the nbgrader convention), so an instructor can strip them to make the student version.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PASS, FAIL = "✅ Correct", "❌ Not yet"


def _report(passed: bool, what: str, hint: str) -> bool:
    print(f"{PASS}: {what}" if passed else f"{FAIL}: {what}\n   Hint: {hint}")
    return passed


def check_true(condition: bool, what: str, hint: str) -> bool:
    """Pass when ``condition`` holds."""
    return _report(bool(condition), what, hint)


def check_close(answer: Any, expected: Any, what: str, hint: str, atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    """Pass when ``answer`` equals ``expected`` within tolerance (numbers, arrays or tensors)."""
    if answer is None or answer is ...:
        return _report(False, what, "the answer is still empty: replace the `...` with your code. " + hint)
    try:
        a, e = _as_array(answer), _as_array(expected)
        passed = a.shape == e.shape and bool(np.allclose(a, e, atol=atol, rtol=rtol))
    except (TypeError, ValueError):
        passed = False
    return _report(passed, what, hint)


def check_equal(answer: Any, expected: Any, what: str, hint: str) -> bool:
    """Pass when ``answer == expected`` exactly (labels, shapes, strings)."""
    if answer is None or answer is ...:
        return _report(False, what, "the answer is still empty: replace the `...` with your code. " + hint)
    try:
        passed = bool(np.array_equal(_as_array(answer), _as_array(expected)))
    except (TypeError, ValueError):
        passed = answer == expected
    return _report(passed, what, hint)


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=float) if not isinstance(value, str) else np.asarray(value)
