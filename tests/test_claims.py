"""helpers.claims: a sentence backed by its measurement, enforced at full settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import claims
from helpers.claims import ClaimContradicted


def test_a_claim_that_holds_prints_its_evidence_and_returns_true(capsys):
    assert claims.claim("more shots help", 12.5 > 5, "gain 12.5 points", enforce=True) is True
    assert capsys.readouterr().out == "✔ the run agrees: more shots help (gain 12.5 points)\n"


def test_a_contradicted_claim_raises_at_full_settings_naming_statement_and_evidence(capsys):
    with pytest.raises(ClaimContradicted) as excinfo:
        claims.claim("more shots help", 1.0 > 5, "gain 1.0 points", enforce=True)
    message = str(excinfo.value)
    assert "'more shots help'" in message and "gain 1.0 points" in message
    assert isinstance(excinfo.value, AssertionError)
    assert capsys.readouterr().out.startswith("✘ the run contradicts: more shots help")


def test_a_quick_run_reports_but_does_not_raise(capsys):
    assert claims.claim("A beats B", False, "A 50 %, B 60 %", enforce=False) is False
    assert capsys.readouterr().out == "· QUICK run, not judged: A beats B (A 50 %, B 60 %)\n"
    assert claims.claim("A beats B", True, "A 70 %, B 60 %", enforce=False) is True
    assert capsys.readouterr().out.startswith("✔ the run agrees")


def test_array_and_tensor_truth_values_are_accepted():
    assert claims.claim("x", np.bool_(True), "e", enforce=True)
    assert claims.claim("x", torch.tensor(True), "e", enforce=True)
    with pytest.raises(ClaimContradicted):
        claims.claim("x", torch.tensor(False), "e", enforce=True)


def test_enforce_must_be_said_and_the_statement_must_be_a_sentence():
    with pytest.raises(TypeError):
        claims.claim("x", True, "e")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        claims.claim("  ", True, "e", enforce=False)
