"""Every bad input gets one sentence: the helpers' API, and the training commands (exit status 2).

The commands are run in this process (``module.main(argv)``) where that is enough to see what a
user sees: their stderr, their exit status, the files they leave. Validation happens before
any data is loaded, so these tests need no dataset.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import checks
from helpers.device import DeviceError, pick_device, seed_everything

# ----------------------------------------------------------------------------- the API


@pytest.mark.parametrize("value", ["gpu", "cuda0", "tpu", "CPU2"])
def test_an_unknown_device_variable_is_named_in_one_sentence(monkeypatch, value):
    monkeypatch.setenv("METALEARN_DEVICE", value)
    with pytest.raises(DeviceError) as caught:
        pick_device()
    message = str(caught.value)
    assert message.startswith(f"METALEARN_DEVICE={value!r} is not a device name") and "unset it" in message
    assert "\n" not in message


def test_a_device_argument_is_named_as_the_argument(monkeypatch):
    monkeypatch.delenv("METALEARN_DEVICE", raising=False)
    with pytest.raises(DeviceError, match=r"^device='gpu' is not a device name"):
        pick_device("gpu")
    assert pick_device("CPU").type == "cpu"  # names are not case-sensitive


@pytest.mark.parametrize("seed", [-1, "3", 2.5, 2**32, True, None])
def test_bad_seeds_are_named(seed):
    with pytest.raises(ValueError, match=r"^seed=.* must be a whole number from 0 to 2\*\*32 - 1"):
        seed_everything(seed)


def test_numpy_numbers_are_numbers():
    seed_everything(np.int64(3))
    assert checks.positive_number("lr", np.float32(0.01)) == pytest.approx(0.01)
    assert checks.whole_number("n_way", np.int32(5), 2) == 5
    from helpers.maml import MAML, sinusoid_net

    learner = MAML(sinusoid_net(), inner_lr=np.float32(0.01), outer_lr=np.float64(1e-3), inner_steps=np.int64(1))
    assert learner.inner_lr == pytest.approx(0.01) and learner.inner_steps == 1


@pytest.mark.parametrize(("call", "message"), [
    (lambda: checks.positive_number("lr", float("inf")), "lr=inf must be a positive finite number"),
    (lambda: checks.positive_number("lr", 0), "lr=0 must be a positive finite number"),
    (lambda: checks.positive_number("lr", "0.1"), "lr='0.1' must be a positive finite number"),
    (lambda: checks.whole_number("episodes", 0, 1), "episodes=0 must be a whole number >= 1"),
    (lambda: checks.whole_number("steps", 1.5, 0), "steps=1.5 must be a whole number >= 0"),
    (lambda: checks.whole_number("n_way", 9, 2, 5), "n_way=9 must be a whole number between 2 and 5"),
])
def test_checks_name_the_parameter_its_value_and_the_range(call, message):
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value).startswith(message) and str(caught.value).endswith(".")


def test_threads_must_be_a_whole_number():
    from helpers.device import training_device

    with pytest.raises(ValueError, match=r"^threads=0 must be a whole number >= 1\."):
        training_device("cpu", 0)
    assert torch.get_num_threads() >= 1
