"""Device choice and seeding, shared by every notebook.

The course never hard-codes a device: :func:`pick_device` takes CUDA when there is a GPU,
then Apple's MPS, then the CPU, so the same notebook runs on a laptop, on Colab and in CI.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import sys
from collections.abc import Iterator

import numpy as np
import torch

DEVICE_VARIABLE = "METALEARN_DEVICE"
THREADS_VARIABLE = "METALEARN_THREADS"


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
        raise DeviceError(
            f"{source}={prefer!r} is not a device name; use cpu, cuda (or cuda:0, cuda:1, ...) or mps,{unset}."
        )
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"{source}={prefer!r} asks for a GPU but PyTorch sees no CUDA GPU; use 'cpu'{unset}."
        )
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise DeviceError(
            f"{source}={prefer!r} names GPU {name[5:]} but PyTorch sees {torch.cuda.device_count()}; "
            f"use cuda:0 up to cuda:{torch.cuda.device_count() - 1}."
        )
    if name == "mps" and not _mps_available():
        raise DeviceError(
            f"{source}={prefer!r} was asked for but Apple's MPS backend is not available; use 'cpu'{unset}."
        )
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

    ``threads=None`` chooses them for the machine (:func:`set_threads`).

    On CUDA, cuDNN may then time its convolution algorithms once and keep the fastest: every
    episode of a training run has the same shapes, so that pays off from the second step.
    """
    set_threads(threads)
    device = pick_device(prefer)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def _cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``1.5`` = one and a half), or ``None``.

    Reads cgroup v2's ``cpu.max`` ("200000 100000") or v1's ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us``; ``max`` or ``-1`` (no quota), or no such file, gives ``None``.
    """

    def read(name: str) -> str | None:
        try:
            with open(os.path.join(root, name)) as f:
                return f.read().strip()
        except OSError:
            return None

    v2 = read("cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota != "max" and quota and period:
            return int(quota) / int(period)
        return None
    quota, period = read("cpu/cpu.cfs_quota_us"), read("cpu/cpu.cfs_period_us")
    if quota and period and int(quota) > 0 and int(period) > 0:
        return int(quota) / int(period)
    return None


def available_cpus(root: str = "/sys/fs/cgroup") -> int:
    """How many CPUs this process may really use: the affinity mask, capped by a cgroup quota.

    Binder, JupyterHub and Docker often show every core of the host (``os.cpu_count()``) but
    let a container use one or two; threads beyond the quota only wait for each other.
    """
    cpus = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    quota = _cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def default_threads(cpus: int | None = None) -> int:
    """PyTorch's CPU threads for a machine with ``cpus`` usable CPUs (default: :func:`available_cpus`).

    The rule comes from ``benchmarks/bench_threads.py`` (a Conv-4 training step on 400 images)
    on this project's 2-core CPU: with one other CPU-bound process running, two threads took
    2.90 s a step against 1.51 s for one, because each step waits for the thread whose core the
    other process holds; with the machine otherwise nearly idle, two threads gained 15 %
    (0.85 s against 1.00 s). Losing 15 % when idle is the price of never running twice as slow
    when busy, so a machine of up to two CPUs gets one thread, and a bigger one leaves a CPU
    free for the kernel, the browser and whatever else runs.
    """
    cpus = available_cpus() if cpus is None else cpus
    return 1 if cpus <= 2 else cpus - 1


def set_threads(threads: int | None = None) -> int:
    """Set PyTorch's CPU threads (and NumPy's and scikit-learn's; TensorFlow's, if it is imported).

    ``threads=None`` takes ``METALEARN_THREADS`` when it is set, else :func:`default_threads`.
    Returns the number set.
    """
    from .validation import whole_number

    source = "threads"
    if threads is None and os.environ.get(THREADS_VARIABLE):
        raw, source = os.environ[THREADS_VARIABLE], THREADS_VARIABLE
        threads = int(raw) if raw.strip().isdigit() else raw
    threads = default_threads() if threads is None else whole_number(source, threads, 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)  # NumPy's BLAS and scikit-learn's OpenMP (t-SNE) too
    set_tensorflow_threads(threads)
    return threads


def set_tensorflow_threads(threads: int) -> None:
    """Set TensorFlow's thread pools (if TensorFlow is imported) and nothing else.

    TensorFlow fixes its pools when it first runs an op; a later call keeps the pools it has.
    """
    if "tensorflow" not in sys.modules:
        return
    config = sys.modules["tensorflow"].config.threading
    try:
        if config.get_intra_op_parallelism_threads() != threads:
            config.set_intra_op_parallelism_threads(threads)
        if config.get_inter_op_parallelism_threads() != threads:
            config.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised: it keeps the pools it has
        pass


def describe_device(device: torch.device) -> str:
    """A one-line, human description of ``device`` (GPU name, or CPU thread count)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'' if threads == 1 else 's'})"


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


def setup(seed: int = 0, prefer: str | None = None, threads: int | None = None) -> torch.device:
    """Seed everything, set the CPU threads, pick the device and print it: every notebook's first lines.

    ``threads=None`` chooses the CPU threads from the CPUs this process may use
    (:func:`set_threads`); a notebook's ``CPU_THREADS`` parameter overrides it.
    """
    seed_everything(seed)
    set_threads(threads)
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
