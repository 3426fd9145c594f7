"""Declared constraints on parameters, images and labels: one rule set for every method, command
and panel of the course.

As in scikit-learn, what a parameter may be is *declared* (:class:`Whole`, :class:`Positive`,
:class:`Interval`, :class:`OneOf`, :class:`Seed`, :class:`Boolean`) and checked at the door.
``constraint.check(name, value)`` returns the value in its plain Python form (NumPy scalars are
numbers like any other: ``np.float32(0.01)`` is a fine learning rate, ``np.int64(5)`` a fine
count; booleans and strings are not), or raises :class:`ParameterError` with one sentence that
names the parameter, its value and what to use instead. The functions :func:`whole_number`,
:func:`positive_number`, :func:`number_in_range`, :func:`one_of`, :func:`seed` and
:func:`boolean` are the same checks in one call; :func:`check_all` checks a mapping of values
(a panel's settings) against a mapping of constraints.

Images and labels have their own checks: :func:`images` (a torch tensor or NumPy array of
floats, shape ``(n, C, H, W)``, finite, in [0, 1]) and :func:`labels` (whole numbers
``0 .. n_way - 1``, every class present, one per image); :func:`episodes` refuses an endless
episode sampler where a finite collection of episodes is needed.

Nothing here imports another module of the course: every layer may use it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import torch

#: The largest seed every generator of the course accepts (NumPy's legacy seeding takes 32 bits).
MAX_SEED = 2**32 - 1


class ParameterError(ValueError, TypeError):
    """A parameter that breaks its declared constraint; the message is one sentence.

    Like scikit-learn's ``InvalidParameterError`` it is both a ``ValueError`` (what panels and
    commands catch) and a ``TypeError`` (a string where a number belongs is a wrong type).
    """


# ----------------------------------------------------------------------------- how values read


def show(value: object) -> str:
    """``value`` as it reads in a message: strings quoted, numbers (NumPy's too) plain."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return str(value.item() if hasattr(value, "item") else value)
    return repr(value)


def is_number(value: object) -> bool:
    """True for ints, floats and NumPy scalars; False for booleans, strings and ``None``."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_whole(value: object) -> bool:
    """True for Python and NumPy integers (not booleans)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _quoted(options: Sequence[object]) -> str:
    shown = [repr(o) for o in options]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


# ----------------------------------------------------------------------------- declared constraints


class Constraint:
    """What one parameter may be. ``check(name, value)`` returns the value or raises."""

    def check(
        self, name: str, value: object
    ) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Whole(Constraint):
    """A whole number in ``low .. high`` (``high=None``: no upper limit); returns an ``int``.

    A count (episodes, steps, ways, shots) is ``Whole(1)``; ``Whole(0)`` allows none.
    """

    def __init__(self, low: int = 0, high: int | None = None) -> None:
        self.low, self.high = low, high

    def check(self, name: str, value: object) -> int:
        if not is_whole(value) or value < self.low or (self.high is not None and value > self.high):
            allowed = (
                f">= {self.low}" if self.high is None else f"between {self.low} and {self.high}"
            )
            raise ParameterError(f"{name}={show(value)} must be a whole number {allowed}.")
        return int(value)


class Positive(Constraint):
    """A finite number > 0 (a learning rate, a scale, a time budget); returns a ``float``.

    ``example`` is suggested in the message ("such as 0.001"): give one that suits the parameter.
    """

    def __init__(self, example: float | None = None) -> None:
        self.example = example

    def check(self, name: str, value: object) -> float:
        if not (is_number(value) and math.isfinite(value) and value > 0):
            hint = f" such as {self.example}" if self.example is not None else ""
            raise ParameterError(f"{name}={show(value)} must be a positive finite number{hint}.")
        return float(value)


class Interval(Constraint):
    """A finite number from ``low`` to ``high`` (ends included; ``None``: unbounded); a ``float``."""

    def __init__(
        self, low: float | None = None, high: float | None = None, example: float | None = None
    ) -> None:
        self.low, self.high, self.example = low, high, example

    def check(self, name: str, value: object) -> float:
        inside = is_number(value) and math.isfinite(value)
        inside = (
            inside
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
        )
        if not inside:
            if self.low is not None and self.high is not None:
                allowed = f"a number from {self.low} to {self.high}"
            elif self.low is not None:
                allowed = f"a finite number >= {self.low}"
            elif self.high is not None:
                allowed = f"a finite number <= {self.high}"
            else:
                allowed = "a finite number"
            hint = f" such as {self.example}" if self.example is not None else ""
            raise ParameterError(f"{name}={show(value)} must be {allowed}{hint}.")
        return float(value)


class OneOf(Constraint):
    """One of a fixed set of values (a metric, a distance, a mode); returns the value."""

    def __init__(self, *options: object) -> None:
        self.options = tuple(options)

    def check(self, name: str, value: object) -> Any:
        def same(option: object) -> bool:
            try:  # True is not 1 here, and an array or other incomparable value matches nothing
                return isinstance(option, bool) == isinstance(value, bool) and bool(option == value)
            except (TypeError, ValueError):
                return False

        if not any(same(option) for option in self.options):
            raise ParameterError(
                f"{name}={show(value)} must be {'' if len(self.options) < 3 else 'one of '}{_quoted(self.options)}."
            )
        return value


class Seed(Constraint):
    """A seed every generator accepts: a whole number from 0 to 2**32 - 1; with ``allow_none``,
    ``None`` too (fresh randomness)."""

    def __init__(self, allow_none: bool = False) -> None:
        self.allow_none = allow_none

    def check(self, name: str, value: object) -> int | None:
        if value is None and self.allow_none:
            return None
        if not is_whole(value) or not 0 <= value <= MAX_SEED:
            also = " (or None for fresh randomness)" if self.allow_none else ""
            raise ParameterError(
                f"{name}={show(value)} must be a whole number from 0 to 2**32 - 1 ({MAX_SEED}){also}."
            )
        return int(value)


class Boolean(Constraint):
    """``True`` or ``False`` (NumPy's booleans too); returns a ``bool``."""

    def check(self, name: str, value: object) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ParameterError(f"{name}={show(value)} must be True or False.")
        return bool(value)


class Optional(Constraint):
    """``None`` (unset) or a value that ``constraint`` accepts."""

    def __init__(self, constraint: Constraint) -> None:
        self.constraint = constraint

    def check(self, name: str, value: object) -> Any:
        return None if value is None else self.constraint.check(name, value)


def check_all(
    values: Mapping[str, object],
    constraints: Mapping[str, Constraint],
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``values`` with every entry that has a constraint checked (and made plain), in order.

    ``names`` spells a key in the message (a panel's control label, a command's option);
    entries without a constraint are passed through unchanged.
    """
    names = names or {}
    checked = dict(values)
    for key, constraint in constraints.items():
        checked[key] = constraint.check(names.get(key, key), values[key])
    return checked


# ----------------------------------------------------------------------------- the same checks as calls


def whole_number(name: str, value: object, low: int = 0, high: int | None = None) -> int:
    """``value`` as an int if it is a whole number in ``low .. high`` (``high=None``: no upper limit)."""
    return Whole(low, high).check(name, value)


def positive_number(name: str, value: object, example: float | None = None) -> float:
    """``value`` as a float if it is a finite number > 0 (a learning rate, a time budget)."""
    return Positive(example).check(name, value)


def number_in_range(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    example: float | None = None,
) -> float:
    """``value`` as a float if it is a finite number from ``low`` to ``high`` (ends included)."""
    return Interval(low, high, example).check(name, value)


def one_of(name: str, value: object, options: Iterable[object]) -> Any:
    """``value`` if it is one of ``options``."""
    return OneOf(*options).check(name, value)


def seed(value: object, name: str = "seed", allow_none: bool = False) -> int | None:
    """A seed every generator accepts: a whole number from 0 to 2**32 - 1 (``None`` if allowed)."""
    return Seed(allow_none).check(name, value)


def boolean(name: str, value: object) -> bool:
    """``value`` as a bool if it is ``True`` or ``False``."""
    return Boolean().check(name, value)


def numpy_rng(value: object, name: str = "seed") -> np.random.Generator:
    """``np.random.default_rng`` of a checked seed (``None``: fresh randomness)."""
    return np.random.default_rng(seed(value, name, allow_none=True))


def torch_generator(value: object, name: str = "seed") -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with a checked seed."""
    return torch.Generator().manual_seed(seed(value, name))


# ----------------------------------------------------------------------------- images and labels


def _as_tensor(
    name: str, value: object, what: str, device: torch.device | str | None
) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if tensor.is_floating_point():  # NumPy's float64 becomes the float type of torch's weights
            tensor = tensor.to(torch.get_default_dtype())
        return tensor.to(device) if device is not None else tensor
    raise ParameterError(
        f"{name} must be a torch tensor or a NumPy array of {what}, not a {type(value).__name__}."
    )


def images(
    name: str,
    value: object,
    shape: Sequence[int] | None = None,
    *,
    device: torch.device | str | None = None,
    shape_source: str = "this method takes",
    check_values: bool = True,
) -> torch.Tensor:
    """``value`` as a float tensor of images ``(n, C, H, W)``, after checking it.

    NumPy arrays are turned into tensors (floats of torch's default type, on ``device``).
    ``shape`` is the ``(C, H, W)`` that is needed (``None``: any); ``shape_source`` says in the
    message who needs it. With ``check_values`` the pixels must be finite and in [0, 1]: one
    reduction and one read of two numbers (see :func:`check_pixel_values`).
    """
    tensor = _as_tensor(name, value, "images (n, C, H, W)", device)
    if not tensor.is_floating_point():
        raise ParameterError(
            f"{name} holds {str(tensor.dtype).removeprefix('torch.')} pixels, but the methods take floats in [0, 1]: "
            "divide by 255 (images.float() / 255), or draw episodes with FewShotDataset.episode or an EpisodeSampler."
        )
    expected = None if shape is None else tuple(int(s) for s in shape)
    wanted = (
        "(n, C, H, W)" if expected is None else f"(n, {expected[0]}, {expected[1]}, {expected[2]})"
    )
    found = tuple(tensor.shape)
    if tensor.ndim == 3 and (expected is None or found[1:] == expected[1:]):
        raise ParameterError(
            f"{name} has shape {found}, without a channel axis; add one with images.unsqueeze(1) to get {wanted}."
        )
    if tensor.ndim == 5 and 1 in found[1:3]:
        axis = found.index(1, 1)
        raise ParameterError(
            f"{name} has shape {found}, an extra axis of size 1; drop it with images.squeeze({axis}) to get {wanted}."
        )
    if tensor.ndim != 4:
        raise ParameterError(f"{name} has shape {found}, but images must have 4 axes {wanted}.")
    if found[0] == 0:
        raise ParameterError(f"{name} holds no images; give at least one.")
    if expected is not None and found[1] != expected[0]:
        channels = f"{found[1]} channel{'s' if found[1] != 1 else ''}"
        raise ParameterError(
            f"{name} has {channels} (shape {found}) but {shape_source} {expected[0]}-channel images {wanted}."
        )
    if expected is not None and found[2:] != expected[1:]:
        raise ParameterError(
            f"{name} holds {found[2]}x{found[3]} images but {shape_source} {expected[1]}x{expected[2]}; "
            f"resize them (e.g. torch.nn.functional.interpolate(images, size=({expected[1]}, {expected[2]}))) to get {wanted}."
        )
    if check_values:
        check_pixel_values(name, tensor)
    return tensor


def vectors(name: str, value: object, *, device: torch.device | str | None = None) -> torch.Tensor:
    """``value`` as a float tensor ``(n, ...)`` of finite numbers: inputs that are not images
    (metadata vectors, features), checked in one read. NumPy arrays are turned into tensors."""
    tensor = _as_tensor(name, value, "float vectors (n, dim)", device)
    if not tensor.is_floating_point():
        raise ParameterError(
            f"{name} has dtype {str(tensor.dtype).removeprefix('torch.')}; give floats (tensor.float())."
        )
    if tensor.ndim < 2 or len(tensor) == 0:
        raise ParameterError(
            f"{name} has shape {tuple(tensor.shape)}, but it must hold at least one row, shape (n, dim)."
        )
    if not all(
        math.isfinite(v) for v in torch.stack(torch.aminmax(tensor)).float().tolist()
    ):  # NaN wins both
        raise ParameterError(
            f"{name} holds values that are not finite (NaN or infinity); give finite numbers."
        )
    return tensor


def labels(
    name: str,
    value: object,
    n_images: int | None = None,
    *,
    images_name: str = "the batch",
    device: torch.device | str | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """``value`` as an integer tensor of labels ``(n,)``, one per image, after checking it.

    NumPy arrays and lists of whole numbers are turned into tensors (on ``device``). With
    ``n_images`` there must be one label per image. With ``check_values`` the labels must be
    ``0 .. n_way - 1`` with every class present (see :func:`check_label_values`).
    """
    if isinstance(value, (list, tuple)) and all(is_whole(v) for v in value):
        value = np.asarray(value, dtype=np.int64)
    tensor = _as_tensor(name, value, "whole-number labels (n,)", device)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ParameterError(
            f"{name} has dtype {str(tensor.dtype).removeprefix('torch.')}, but labels are whole numbers "
            "0 .. n_way - 1; convert them with labels.long()."
        )
    if tensor.ndim != 1:
        raise ParameterError(
            f"{name} has shape {tuple(tensor.shape)}, but labels must be one number per image, shape (n,)."
        )
    if n_images is not None and len(tensor) != n_images:
        raise ParameterError(
            f"{name} has {len(tensor)} labels but {images_name} holds {n_images} images; give one label per image."
        )
    if check_values:
        check_label_values(name, tensor)
    return tensor


def check_pixel_values(
    name: str,
    images: torch.Tensor,
    labels_name: str | None = None,
    labels: torch.Tensor | None = None,
) -> int | None:
    """Pixels finite and in [0, 1] (and, with ``labels``, :func:`check_label_values`) in one read.

    The smallest and largest pixel (NaN wins both) and the labels' summary are gathered into one
    small tensor and read once, so on a GPU the whole check costs a single synchronisation.
    Returns the number of classes when ``labels`` are given.
    """
    parts = [p.float() for p in torch.aminmax(images)]  # one pass over the pixels
    if labels is not None:
        parts += [p.float().to(images.device) for p in _label_summary(labels)]
    summary = torch.stack(parts).tolist()
    low, high = summary[0], summary[1]
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int((~torch.isfinite(images)).sum())
        raise ParameterError(
            f"{name} holds {bad} {'pixel that is' if bad == 1 else 'pixels that are'} not finite (NaN or infinity); "
            "give images with every pixel a number in [0, 1]."
        )
    if low < 0 or high > 1:
        raise ParameterError(
            f"{name} has pixels from {low:.4g} to {high:.4g}, outside [0, 1]; scale the images to [0, 1] "
            "(uint8 images: divide by 255)."
        )
    if labels is not None:
        return _label_verdict(labels_name or "labels", labels, summary[2:])
    return None


def check_label_values(name: str, labels: torch.Tensor) -> int:
    """Labels ``0 .. n_way - 1`` with every class present; returns ``n_way`` (one read)."""
    return _label_verdict(
        name, labels, torch.stack([p.float() for p in _label_summary(labels)]).tolist()
    )


def _label_summary(labels: torch.Tensor) -> list[torch.Tensor]:
    """Smallest label, largest label and how many of ``0 .. n - 1`` occur, still on the device."""
    if len(labels) == 0:
        zero = torch.zeros((), device=labels.device)
        return [zero, zero - 1, zero]
    present = torch.zeros(len(labels), device=labels.device).index_fill_(
        0, labels.long().clamp(0, len(labels) - 1), 1.0
    )
    return [*torch.aminmax(labels), present.sum()]


def _label_verdict(name: str, labels: torch.Tensor, summary: Sequence[float]) -> int:
    low, high, present = (int(v) for v in summary)
    if len(labels) == 0:
        raise ParameterError(f"{name} holds no labels; give one label per image.")
    if low < 0 or high >= len(labels):
        raise ParameterError(
            f"{name} run from {low} to {high}, but the {len(labels)} labels of an episode must number its "
            f"classes 0 .. n_way - 1 (so at most {len(labels) - 1})."
        )
    if present != high + 1:
        missing = sorted(set(range(high + 1)) - set(labels.tolist()))
        raise ParameterError(
            f"{name} has no example of class{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))}; "
            f"number the classes 0 .. n_way - 1 with every class present (here n_way = {high + 1})."
        )
    return high + 1


# ----------------------------------------------------------------------------- collections of episodes


def episodes(value: object, name: str = "episodes") -> Iterable:
    """``value`` if it is a finite collection of episodes: a list, an ``EpisodeList``, or an
    iterator (a generator) that ends; a sampler, which draws episodes forever, is refused."""
    if isinstance(value, Sized):
        return value
    kind = type(value).__name__
    if hasattr(value, "sample") and hasattr(value, "take"):
        raise ParameterError(
            f"{name}={kind}(...) draws episodes forever, so this would never end; pass a fixed set "
            f"instead: {name}=sampler.take(n) or sample_episodes(dataset, n_way, k_shot, n_query, count)."
        )
    if isinstance(value, Iterator):
        return value
    if isinstance(value, Iterable):
        raise ParameterError(
            f"{name} is a {kind} with no length, which may never end; pass a list of episodes "
            "(sampler.take(n), sample_episodes(...) or list(...))."
        )
    raise ParameterError(
        f"{name} must be a list of episodes (sampler.take(n), sample_episodes(...)), not a {kind}; "
        "for one episode pass [episode]."
    )
