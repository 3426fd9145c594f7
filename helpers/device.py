"""Device choice and seeding, shared by every notebook.

The course never hard-codes a device: :func:`pick_device` takes CUDA when there is a GPU,
then Apple's MPS, then the CPU, so the same notebook runs on a laptop, on Colab and in CI.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
from collections.abc import Iterator

import numpy as np
import torch

DEVICE_VARIABLE = "METALEARN_DEVICE"


class DeviceError(RuntimeError):
    """A device was asked for (by argument or by ``METALEARN_DEVICE``) that cannot be used."""


def pick_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then MPS, then CPU.

    ``prefer`` (or the environment variable ``METALEARN_DEVICE``) forces one, e.g. ``"cpu"``
    to compare timings; a name that is not a device, or a device that is not there, raises
    :class:`DeviceError` with one sentence naming the argument or the variable.
    """
    source, prefer = "device", prefer or None
    if prefer is None and os.environ.get(DEVICE_VARIABLE):
        prefer, source = os.environ[DEVICE_VARIABLE], DEVICE_VARIABLE
    if prefer is not None:
        name = check_device_name(prefer, source)
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device_name(prefer: str, source: str = "device") -> str:
    """``prefer`` as a device name, if it is one that is there; else :class:`DeviceError`
    with one sentence naming ``source`` (the argument, the option or the variable)."""
    name = str(prefer).strip().lower()
    unset = " or unset it" if source == DEVICE_VARIABLE else " or leave it unset"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise DeviceError(f"{source}={prefer!r} is not a device name; use cpu, cuda (or cuda:0, cuda:1, ...) or mps,{unset}.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"{source}={prefer!r} asks for a GPU but PyTorch sees no CUDA GPU; use 'cpu'{unset}.")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise DeviceError(f"{source}={prefer!r} names GPU {name[5:]} but PyTorch sees {torch.cuda.device_count()}; "
                          f"use cuda:0 up to cuda:{torch.cuda.device_count() - 1}.")
    if name == "mps" and not _mps_available():
        raise DeviceError(f"{source}={prefer!r} was asked for but Apple's MPS backend is not available; use 'cpu'{unset}.")
    return name


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def hardware_description(device: torch.device) -> str:
    """The machine a training command ran on, for the ``.json`` beside its checkpoint."""
    import platform

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{describe_device(device)}; {cores} CPU cores visible; {platform.processor() or platform.machine()}; {platform.system()}"
    return machine + ("; no GPU" if device.type == "cpu" else "")


def training_device(prefer: str | None = None, threads: int | None = None) -> torch.device:
    """The device of a training command: set the CPU threads, pick the device, tune cuDNN.

    On CUDA, cuDNN may then time its convolution algorithms once and keep the fastest: every
    episode of a training run has the same shapes, so that pays off from the second step.
    """
    if threads is not None:
        from .validation import whole_number

        torch.set_num_threads(whole_number("threads", threads, 1))
    device = pick_device(prefer)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def describe_device(device: torch.device) -> str:
    """A one-line, human description of ``device`` (GPU name, or CPU thread count)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (and Keras, if the notebook already imported it).

    ``seed`` is a whole number from 0 to 2**32 - 1; anything else raises ``ValueError`` naming it.
    """
    from .validation import seed as check_seed

    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if "keras" in sys.modules:  # never import TensorFlow just to seed it
        sys.modules["keras"].utils.set_random_seed(seed)


def setup(seed: int = 0, prefer: str | None = None) -> torch.device:
    """Seed everything, pick the device and print it: the first lines of every notebook."""
    seed_everything(seed)
    device = pick_device(prefer)
    print(f"device: {describe_device(device)} | seed: {seed} | torch {torch.__version__}")
    return device


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Import TensorFlow (or Keras on it) inside this block to keep its start-up log out of sight.

    In a notebook that log lands in pink stderr boxes that look like errors. Before TensorFlow is
    imported this sets ``TF_CPP_MIN_LOG_LEVEL=2`` (its C++ info and warnings off, unless the
    environment chose a level) and absl's Python logger to errors only. TensorFlow 2.21 still
    writes its oneDNN notice through absl before absl's logging is set up, where no setting
    reaches it, so the block also sends file descriptor 2 (the kernel's stderr) to /dev/null
    while it runs; Python exceptions raised inside it are not affected.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from absl import logging as absl_logging  # comes with TensorFlow

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
