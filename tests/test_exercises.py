"""helpers.exercises: a right answer prints one tick, a wrong one raises with the hint only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import exercises
from helpers.exercises import ExerciseCheckError


def _message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


def test_a_right_answer_prints_one_tick_and_returns_true(capsys):
    assert (
        exercises.check_close(torch.tensor([1.0, 2.0]), np.array([1.0, 2.0]), "the vector", "hint")
        is True
    )
    assert exercises.check_equal(3, 3, "the count", "hint") is True
    assert exercises.check_true(1 < 2, "the order", "hint") is True
    assert exercises.check_shape(np.zeros((2, 3)), (2, 3), "the shape", "hint") is True
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "✅ Correct: the vector",
        "✅ Correct: the count",
        "✅ Correct: the order",
        "✅ Correct: the shape",
    ]


def test_a_wrong_answer_raises_an_assertion_error_with_the_hint_and_not_the_answer(capsys):
    with pytest.raises(AssertionError) as excinfo:
        exercises.check_close(0.25, 0.7316, "p(same)", "apply the sigmoid last")
    message = _message(excinfo)
    assert isinstance(excinfo.value, ExerciseCheckError)
    assert "p(same)" in message and "apply the sigmoid last" in message
    assert "0.7316" not in message and "0.73" not in message and "0.25" not in message
    assert "\n" not in message and message.endswith(".")
    assert capsys.readouterr().out == ""  # nothing is printed on failure, the error says it all


def test_check_equal_does_not_reveal_the_expected_labels_or_string():
    with pytest.raises(ExerciseCheckError) as excinfo:
        exercises.check_equal(
            torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0]), "the labels", "argmin, not argmax"
        )
    assert "argmin, not argmax" in _message(excinfo) and "2, 1, 0" not in _message(excinfo)
    with pytest.raises(ExerciseCheckError) as excinfo:
        exercises.check_equal("5-shot", "1-shot", "which checkpoint wins", "compare the two means")
    assert "1-shot" not in _message(excinfo)
    with pytest.raises(ExerciseCheckError) as excinfo:
        exercises.check_equal(True, False, "can they differ?", "what is the mean of one image?")
    assert "False" not in _message(excinfo)


@pytest.mark.parametrize("empty", [..., None])
@pytest.mark.parametrize(
    "check",
    [
        lambda a: exercises.check_close(a, 1.0, "x", "think"),
        lambda a: exercises.check_equal(a, 1, "x", "think"),
        lambda a: exercises.check_shape(a, (2,), "x", "think"),
        lambda a: exercises.check_true(a is not None, "x", "think", answer=a),
    ],
)
def test_an_empty_answer_asks_to_replace_the_dots(check, empty):
    with pytest.raises(ExerciseCheckError, match=r"replace the \.\.\. with your code") as excinfo:
        check(empty)
    assert "think" in _message(excinfo)


def test_tolerance_is_absolute_plus_relative():
    assert exercises.check_close(1.0 + 5e-7, 1.0, "x", "h")  # within atol = 1e-6
    with pytest.raises(ExerciseCheckError):
        exercises.check_close(1.0 + 1e-4, 1.0, "x", "h")
    assert exercises.check_close(1.0 + 1e-4, 1.0, "x", "h", atol=1e-3)
    assert exercises.check_close(1000.001, 1000.0, "x", "h")  # rtol 1e-5 of 1000 = 0.01
    with pytest.raises(ExerciseCheckError):
        exercises.check_close(1000.001, 1000.0, "x", "h", atol=0, rtol=0)
    with pytest.raises(ExerciseCheckError):
        exercises.check_close(float("nan"), 1.0, "x", "h")


def test_shapes_must_match_and_the_message_gives_only_the_answers_shape():
    with pytest.raises(ExerciseCheckError) as excinfo:
        exercises.check_close(
            np.zeros(3), np.zeros((3, 1)), "the prototypes", "keep one row per class"
        )
    assert "(3,)" in _message(excinfo) and "(3, 1)" not in _message(excinfo)
    with pytest.raises(ExerciseCheckError):
        exercises.check_equal(np.array([1, 1]), np.array([1]), "x", "h")  # no broadcasting
    with pytest.raises(ExerciseCheckError, match="has no shape"):
        exercises.check_shape([1.0, 2.0], (2,), "x", "h")
    with pytest.raises(ExerciseCheckError, match=r"shape \(2, 2\)"):
        exercises.check_shape(torch.zeros(2, 2), (2,), "x", "h")
    assert exercises.check_shape(torch.tensor(3.0), (), "a scalar", "h")


def test_tensors_arrays_and_python_numbers_compare_across_types():
    assert exercises.check_close(
        torch.tensor([[1.0, 2.0]], dtype=torch.float64), [[1.0, 2.0]], "x", "h"
    )
    assert exercises.check_close(np.float32(0.5), torch.tensor(0.5), "x", "h")
    assert exercises.check_close([torch.tensor(1.0), 2.0], np.array([1.0, 2.0]), "x", "h")
    assert exercises.check_equal(torch.tensor([3, 1]), np.array([3, 1]), "x", "h")
    assert exercises.check_equal(torch.tensor([True, False]), [True, False], "x", "h")
    assert exercises.check_equal({"w": torch.ones(2)}, {"w": np.ones(2)}, "x", "h")
    if torch.cuda.is_available():
        assert exercises.check_close(torch.ones(2, device="cuda"), torch.ones(2), "x", "h")


def test_strings_and_lists_of_strings_compare_exactly():
    assert exercises.check_equal("1-shot", "1-shot", "x", "h")
    assert exercises.check_equal(["sole", "heel"], ["sole", "heel"], "x", "h")
    for wrong in ["1-Shot", 1, ["heel", "sole"], ["sole"], "sole heel"]:
        with pytest.raises(ExerciseCheckError):
            exercises.check_equal(
                wrong, ["sole", "heel"] if not isinstance(wrong, str) else "1-shot", "x", "h"
            )
    with pytest.raises(ExerciseCheckError):
        exercises.check_equal("1", 1, "x", "h")
    with pytest.raises(ExerciseCheckError, match="cannot be read as numbers"):
        exercises.check_close("0.5", 0.5, "x", "h")
    with pytest.raises(ExerciseCheckError, match="cannot be read as numbers"):
        exercises.check_close({"a": 1.0}, 1.0, "x", "h")


def test_check_true_needs_one_truth_value():
    assert exercises.check_true(torch.tensor(True), "x", "h")
    assert exercises.check_true(np.bool_(True), "x", "h")
    for wrong in [False, 0, torch.tensor(False), np.array([True, True])]:
        with pytest.raises(ExerciseCheckError):
            exercises.check_true(wrong, "x", "h")
    assert exercises.check_true(True, "x", "h", answer=0.5)


def test_the_usual_notebook_patterns_still_work(capsys):
    _ = exercises.check_equal(2, 2, "x", "h")
    ok = exercises.check_true(True, "y", "h")
    assert ok and capsys.readouterr().out.count("✅") == 2
