"""Claims that check themselves: a sentence about a measured effect, backed by its measurement.

A notebook that says "more shots help" or "A beats B" states it with :func:`claim`, in the cell
that computes the numbers. The claim prints one line, the statement and the evidence, with a
mark for whether this run agrees. At full settings (``enforce=True``, which notebooks pass as
``not QUICK``) a claim the run contradicts raises :class:`ClaimContradicted`, so
``tools/render.py`` fails instead of publishing a sentence that its own output refutes. In a
QUICK run the numbers are too noisy to judge; the line says so and nothing is raised.

    claims.claim("more shots help at every N", gain > 5, f"smallest gain {gain:.1f} points",
                 enforce=not QUICK)
"""

from __future__ import annotations

from typing import Any

HOLDS = "✔ the run agrees"
CONTRADICTED = "✘ the run contradicts"
UNCHECKED = "· QUICK run, not judged"


class ClaimContradicted(AssertionError):
    """A notebook's sentence about a measured effect is contradicted by its own run."""


def claim(statement: str, holds: Any, evidence: str, *, enforce: bool) -> bool:
    """Print ``statement`` with ``evidence`` and whether the run agrees; return whether it holds.

    ``holds`` is the measured condition (a bool or anything with a truth value, such as a 0-d
    NumPy or torch boolean). With ``enforce`` a false condition raises
    :class:`ClaimContradicted` naming the statement and the evidence; without it the line only
    reports. ``enforce`` is keyword-only so that every call says which it is.
    """
    __tracebackhide__ = True
    if not isinstance(statement, str) or not statement.strip():
        raise TypeError("claim: the statement must be a non-empty sentence")
    agrees = bool(holds)
    if agrees:
        mark = HOLDS
    elif enforce:
        mark = CONTRADICTED
    else:
        mark = UNCHECKED
    print(f"{mark}: {statement} ({evidence})")
    if not agrees and enforce:
        raise ClaimContradicted(
            f"the notebook says {statement!r}, but this run measured {evidence}; "
            "fix the sentence or find why the run differs"
        )
    return agrees
