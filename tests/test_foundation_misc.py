"""helpers.device, helpers.nets, helpers.widgets (helpers.exercises: tests/test_exercises.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import nets, widgets
from helpers.device import pick_device, seed_everything


def test_device_choice_is_automatic_and_refuses_missing_hardware(monkeypatch):
    monkeypatch.delenv("METALEARN_DEVICE", raising=False)
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert pick_device().type == expected
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            pick_device("cuda")


def test_seeding_repeats_random_draws():
    seed_everything(5)
    a = (np.random.rand(), torch.rand(1).item())
    seed_everything(5)
    assert (np.random.rand(), torch.rand(1).item()) == a


def test_conv4_turns_28px_images_into_64d_embeddings():
    model = nets.Conv4()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 64)
    assert (
        sum(p.numel() for p in model.parameters())
        == 4 * 64 * 2 + (1 * 9 * 64 + 64) + 3 * (64 * 9 * 64 + 64) + 0
    )


def test_mlp_layers():
    model = nets.mlp([1, 40, 40, 1])
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="at least an input and an output"):
        nets.mlp([3])


def test_check_positive_names_the_parameter():
    with pytest.raises(ValueError, match=r"^inner_lr=-0\.1 must be a positive finite number\.$"):
        widgets.check_positive("inner_lr", -0.1)


def test_training_device_sets_threads_and_picks_the_device(capsys):
    from helpers.device import training_device
    from helpers.training import History, report_validation

    before = torch.get_num_threads()
    try:
        assert training_device("cpu", 1).type == "cpu" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    history = History(
        episode=[1, 2],
        loss=[1.0, 0.5],
        accuracy=[0.5, 0.6],
        val_episode=[2],
        val_accuracy=[0.875],
        val_ci95=[0.0125],
        seconds=1.0,
    )
    report_validation(history, "scale 10.00")
    assert (
        capsys.readouterr().out
        == "episode 2: validation 87.50 ± 1.25 %, scale 10.00, 2.0 episodes/s\n"
    )


def test_quiet_tensorflow_keeps_the_block_off_stderr_and_sets_the_levels_first(monkeypatch, capfd):
    import os

    from absl import logging as absl_logging

    from helpers.device import quiet_tensorflow

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    verbosity = absl_logging.get_verbosity()
    try:
        with quiet_tensorflow():
            assert (
                os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
            )  # set before anything in the block runs
            assert absl_logging.get_verbosity() == absl_logging.ERROR
            os.write(
                2, b"I0000 00:00:17.0 port.cc:153] oneDNN custom operations are on.\n"
            )  # as C++ writes it
        os.write(2, b"stderr works again\n")
        with pytest.raises(ImportError), quiet_tensorflow():
            raise ImportError("an import that fails still says so")
        os.write(2, b"and after an error too\n")
        err = capfd.readouterr().err
        assert (
            "oneDNN" not in err and "stderr works again" in err and "and after an error too" in err
        )
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # a level chosen by the user is kept
        with quiet_tensorflow():
            assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    finally:
        absl_logging.set_verbosity(verbosity)
