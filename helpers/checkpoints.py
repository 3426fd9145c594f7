"""Checkpoints: one record schema and one atomic save / load pair for every training command.

A checkpoint is two files side by side: the weights (``name.pt``; ``name.keras`` for the Keras
twin) and a record, ``name.json``, saying how they were made. Every record has the keys of
:data:`SCHEMA_KEYS`:

=================  ========================================================================
``schema``         :data:`SCHEMA_VERSION`
``method``         ``"protonet"``, ``"matching"``, ``"one_shot"``, ``"maml"``, ``"maml_rl"``,
                   ``"siamese"`` or ``"zero_shot"``
``run_id``         one id per training run (``--resume`` keeps it)
``weights``        ``{"file", "sha256", "bytes"}`` of the weights file this record describes
``status``         ``"complete"``; ``"interrupted"`` (the best weights of a stopped run); or
                   ``"resumable"`` (a ``name.resume.pt`` state that ``--resume`` continues)
``command``        the exact command line that made the checkpoint
``hardware``       :func:`helpers.device.hardware_description`, plus any note given
``wall_seconds``   the whole command: loading data, training, validating, saving
``train_seconds``  the training loop alone
``settings``       every setting of the run
``validation``     what the validation score measures, in words
``val_score``      ``{"metric", "value", "ci95", "step", "higher_is_better"}`` of the saved
                   weights (:func:`score`), or ``None`` when there is no validation
``history``        the curves of the run (method-specific keys)
``results``        further numbers: test accuracies, counts (method-specific keys)
``saved_at``       when the pair was written (UTC, ISO 8601)
=================  ========================================================================

A method may keep further keys of its own beside these (the notebooks read some of them).

**Saving is atomic.** :func:`write_pair` writes the weights and the record to staging files in
the same folder, flushes them to disk, then renames them over the old pair while Ctrl-C and
SIGTERM wait. The record names the SHA-256 of its weights, so a reader always knows whether
the two belong together; the previous weights stay reachable (``.name.previous.pt``) until
the new record is in place, and :func:`load` falls back to them if a save died between the two
renames. A failed save puts the previous pair back.

**Another run's checkpoint is protected.** A :class:`Saver` replaces a checkpoint written by
another run only when this run's validation is measured the same way and is at least as good,
or when asked (``overwrite=True``, the commands' ``--overwrite``); otherwise it saves beside it
(:func:`beside`) and says where. Inside one run it replaces its own saves freely (keep-best).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

SCHEMA_VERSION = 1
SCHEMA_KEYS = (
    "schema",
    "method",
    "run_id",
    "weights",
    "status",
    "command",
    "hardware",
    "wall_seconds",
    "train_seconds",
    "settings",
    "validation",
    "val_score",
    "history",
    "results",
    "saved_at",
)
STATUSES = ("complete", "interrupted", "resumable")

T = TypeVar("T")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded or saved; the message is one sentence."""


class MissingCheckpoint(CheckpointError, FileNotFoundError):
    """No checkpoint file where one was expected."""


# ----------------------------------------------------------------------------- records


def new_run_id() -> str:
    """A fresh, sortable id for one training run: ``20260101-120000-a1b2c3``."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def score(
    value: float | None,
    ci95: float | None = None,
    step: int | None = None,
    metric: str = "accuracy",
    higher_is_better: bool = True,
) -> dict | None:
    """The ``val_score`` entry of a record: a validation number, its 95 % interval and when."""
    if value is None or not math.isfinite(float(value)):
        return None
    return {
        "metric": metric,
        "value": float(value),
        "ci95": None if ci95 is None or not math.isfinite(float(ci95)) else float(ci95),
        "step": None if step is None else int(step),
        "higher_is_better": bool(higher_is_better),
    }


def make_record(
    method: str,
    *,
    command: str,
    hardware: str,
    settings: Mapping[str, Any],
    validation: str = "",
    val_score: dict | None = None,
    history: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    wall_seconds: float | None = None,
    train_seconds: float | None = None,
    status: str = "complete",
    run_id: str | None = None,
    **extra: Any,
) -> dict:
    """A record with every key of the schema (``weights`` and ``saved_at`` are set when saving).

    ``extra`` keys are kept beside the schema's (a method's own numbers that notebooks read).
    """
    if status not in STATUSES:
        raise ValueError(f"status={status!r} must be one of {', '.join(STATUSES)}.")
    record = {
        "schema": SCHEMA_VERSION,
        "method": method,
        "run_id": run_id or new_run_id(),
        "weights": None,
        "status": status,
        "command": command,
        "hardware": hardware,
        "wall_seconds": None if wall_seconds is None else round(float(wall_seconds), 1),
        "train_seconds": None if train_seconds is None else round(float(train_seconds), 1),
        "settings": dict(settings),
        "validation": validation,
        "val_score": val_score,
        "history": dict(history or {}),
        "results": dict(results or {}),
        "saved_at": None,
    }
    clash = set(extra) & set(record)
    if clash:
        raise ValueError(f"extra record keys {sorted(clash)} are schema keys; pass them by name.")
    return {**record, **extra}


def jsonable(value: Any) -> Any:
    """``value`` with NumPy and PyTorch scalars, paths and devices turned into JSON types.

    Non-finite floats become ``None`` (JSON has no NaN), so a record is always valid JSON.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # NumPy or PyTorch scalar
        return jsonable(value.item())
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, os.PathLike) or type(value).__name__ == "device":
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint record")


def record_path(path: str | Path) -> Path:
    """The record beside a weights file: ``name.pt`` -> ``name.json``."""
    return Path(path).with_suffix(".json")


def resume_path(path: str | Path) -> Path:
    """Where a run that should write ``name.pt`` keeps the state that ``--resume`` continues."""
    path = Path(path)
    return path.with_name(f"{path.stem}.resume.pt")


def beside(path: str | Path, run_id: str) -> Path:
    """The file a run saves to when ``path`` holds another run's checkpoint: ``name_<run_id>.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{run_id}{path.suffix}")


def previous_path(path: str | Path) -> Path:
    """Where :func:`write_pair` keeps the previous weights until the new record is in place."""
    path = Path(path)
    return path.with_name(
        f".{path.stem}.previous{path.suffix}"
    )  # the suffix kept: Keras insists on .keras


def read_record(path: str | Path) -> dict | None:
    """The record beside ``path`` (a weights file or the ``.json`` itself), or ``None`` if there is none."""
    json_path = record_path(path)
    if not json_path.exists():
        return None
    try:
        record = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{json_path} is not a readable checkpoint record ({_summary(exc)}); "
            "restore it from git or train the checkpoint again."
        ) from exc
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{json_path} holds a JSON {type(record).__name__}, not a checkpoint record; "
            "restore it from git or train the checkpoint again."
        )
    return record


def earlier_runs(record: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    """The runs behind a warm-started checkpoint, nearest first: its record's ``init_from``, that
    entry's own ``init_from``, and so on (a warm start of a warm start keeps its whole chain).

    A network that began as part of another checkpoint (``tower_from``: a Siamese twin whose
    tower started as notebook 03's classifier) has that checkpoint's run behind it too, listed
    where its chain ends.
    """
    current = record or {}
    while source := current.get("init_from") or current.get("tower_from"):
        yield source
        current = source


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block is done (the renames of a save).

    Python runs signal handlers in the main thread between two bytecodes, so for the length
    of the block the handlers are swapped for one that only notes the signal; afterwards the
    previous handlers are put back and each noted signal is handed to them (Ctrl-C then raises
    ``KeyboardInterrupt`` as usual). Outside the main thread nothing is changed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {
        number: signal.signal(number, lambda number, frame: noted.append(number)) for number in held
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(noted):
            handler = previous[number]
            if callable(handler):
                handler(number, None)
            elif handler == signal.SIG_DFL:
                if number == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), number)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open a folder for fsync
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _staging_name(target: Path, token: str, suffix: str) -> Path:
    return target.with_name(f".{target.stem}.{token}.staging{suffix}")


def _remove_stale_staging(target: Path) -> None:
    """Staging files a killed save left behind for this checkpoint."""
    for stale in target.parent.glob(f".{target.stem}.*.staging*"):
        _remove(stale)


def write_pair(
    target: str | Path, write_weights: Callable[[Path], None], record: Mapping[str, Any]
) -> dict:
    """Write weights and record as one pair: both replaced together, or neither.

    ``write_weights(path)`` writes the weights file at ``path`` (a staging name with the
    target's suffix). The record gets ``weights`` (file name, SHA-256, size) and ``saved_at``
    and is returned as written.
    """
    target = Path(target)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise CheckpointError(
            f"cannot save {target}: the folder {folder} is not writable; "
            "choose another path or make the folder writable."
        )
    _remove_stale_staging(target)
    token = secrets.token_hex(4)
    staged_weights = _staging_name(target, token, target.suffix)
    staged_record = _staging_name(target, token, ".json")
    backup, json_path = previous_path(target), record_path(target)
    weights_moved = committed = False
    try:
        write_weights(staged_weights)
        _fsync_file(staged_weights)
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        written = {
            **record,
            "weights": {
                "file": target.name,
                "sha256": file_sha256(staged_weights),
                "bytes": staged_weights.stat().st_size,
            },
            "saved_at": stamp,
        }
        staged_record.write_text(json.dumps(jsonable(written), indent=2, allow_nan=False) + "\n")
        _fsync_file(staged_record)
        with signals_deferred():
            _remove(backup)
            if target.exists():
                try:
                    os.link(target, backup)  # a second name for the old weights, no copy
                except OSError:
                    import shutil

                    shutil.copy2(target, backup)
            os.replace(staged_weights, target)
            weights_moved = True
            os.replace(staged_record, json_path)
            _fsync_folder(folder)
            _remove(backup)
            committed = True  # a signal held until here is delivered as the block ends
        return written
    except BaseException:
        if not committed:
            if weights_moved and backup.exists():
                os.replace(
                    backup, target
                )  # the new weights never got their record: the old pair again
            elif weights_moved:
                _remove(target)
            else:
                _remove(backup)
            _remove(staged_weights, staged_record)
        raise


def update_record(path: str | Path, **changes: Any) -> dict:
    """Change some keys of the record beside ``path``; it stays paired with the same weights.

    The record is rewritten atomically (staging file, fsync, rename); the weights are not
    touched, so their SHA-256 in the record still holds. Returns the new record.
    """
    path = Path(path)
    record = read_record(path)
    if record is None:
        raise CheckpointError(
            f"there is no record {record_path(path)} to update; save the checkpoint first."
        )
    if path.exists() and verified_weights(path, record) != path:
        raise CheckpointError(
            f"{path} is not the file its record describes (a save was interrupted); "
            "save the checkpoint again before updating its record."
        )
    updated = {**record, **changes}
    staged = _staging_name(path, secrets.token_hex(4), ".json")
    try:
        staged.write_text(json.dumps(jsonable(updated), indent=2, allow_nan=False) + "\n")
        _fsync_file(staged)
        with signals_deferred():
            os.replace(staged, record_path(path))
            _fsync_folder(path.parent)
    except BaseException:
        _remove(staged)
        raise
    return updated


def torch_writer(state: Mapping[str, Any]) -> Callable[[Path], None]:
    """``write_weights`` for :func:`write_pair`: ``torch.save`` of ``state`` (tensors moved to the CPU)."""
    import torch

    def on_cpu(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if isinstance(value, Mapping):
            return {k: on_cpu(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(on_cpu(v) for v in value)
        return value

    cpu_state = on_cpu(state)

    def write(path: Path) -> None:
        torch.save(cpu_state, path)

    return write


def protection(
    existing: Mapping[str, Any] | None, record: Mapping[str, Any], weights_exist: bool
) -> str | None:
    """Why the checkpoint described by ``existing`` must not be replaced by ``record``'s run, or ``None``."""
    if not weights_exist:
        return None
    if existing is None:
        return "it has no record to compare with"
    if existing.get("run_id") is not None and existing.get("run_id") == record.get("run_id"):
        return None
    old, new = existing.get("val_score"), record.get("val_score")
    if old is None:
        old = _legacy_score(existing)
    if old is None:
        return "its record holds no validation score to compare with"
    if new is None:
        return f"it has a validation score ({_show_score(old)}) and this run has none yet"
    same_measure = (
        old.get("metric") == new.get("metric")
        and existing.get("validation") == record.get("validation")
        and old.get("higher_is_better", True) == new.get("higher_is_better", True)
    )
    if not same_measure:
        return (
            f"its validation ({_show_score(old)} on {existing.get('validation') or 'unrecorded data'}) "
            "is not measured like this run's"
        )
    better = (
        old["value"] > new["value"]
        if new.get("higher_is_better", True)
        else old["value"] < new["value"]
    )
    if better:
        return f"its validation {_show_score(old)} is better than this run's {_show_score(new)}"
    return None


def _legacy_score(record: Mapping[str, Any]) -> dict | None:
    """The validation score of a record written before the schema (``val_accuracy`` and kin)."""
    for key in ("val_accuracy", "best_validation_20way_accuracy", "val_accuracy_964_way"):
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return score(value, record.get("val_ci95"))
    return None


def _show_score(entry: Mapping[str, Any]) -> str:
    value = entry["value"]
    text = f"{100 * value:.2f} %" if entry.get("metric") == "accuracy" else f"{value:.4g}"
    return f"{entry.get('metric', 'score')} {text}"


class Saver:
    """Where one training run keeps its checkpoint, and the rule that protects other runs'.

    The first :meth:`save` decides: ``path`` is replaced when it is free, holds this run's
    own checkpoint, holds another run's checkpoint measured the same way with a validation
    score no better than this run's, or ``overwrite`` is set. Otherwise this run saves to
    :func:`beside` (``name_<run_id>.pt``), and ``say`` is told where, once; when a later save's
    validation catches up with the protected checkpoint's (measured the same way), that save
    replaces it and the files beside it are removed (``say`` is told).
    """

    def __init__(
        self,
        path: str | Path,
        run_id: str,
        overwrite: bool = False,
        say: Callable[[str], None] = print,
    ) -> None:
        self.requested = Path(path)
        self.path = Path(path)
        self.run_id, self.overwrite, self.say = run_id, bool(overwrite), say
        self.decided = False

    def save(self, write_weights: Callable[[Path], None], record: Mapping[str, Any]) -> dict:
        record = {**record, "run_id": self.run_id}
        if not self.decided:
            reason = None
            if not self.overwrite:
                reason = protection(read_record(self.requested), record, self.requested.exists())
            if reason is not None:
                self.path = beside(self.requested, self.run_id)
                self.say(
                    f"{self.requested} holds another run's checkpoint and {reason}, so it is kept: "
                    f"this run saves to {self.path} (--overwrite replaces it instead)."
                )
            self.decided = True
        elif self.path != self.requested and not self.overwrite:
            # Saving beside a better checkpoint: once this run is at least as good, measured the
            # same way, it takes the requested name and drops its own files beside it.
            existing = read_record(self.requested)
            if (
                existing is not None
                and existing.get("run_id") != self.run_id
                and protection(existing, record, self.requested.exists()) is None
            ):
                beside_path = self.path
                written = write_pair(self.requested, write_weights, record)
                self.path = self.requested
                _remove(beside_path, record_path(beside_path))
                self.say(
                    f"this run's validation {_show_score(record['val_score'])} now beats "
                    f"{_show_score(existing.get('val_score') or _legacy_score(existing))}: it "
                    f"replaces {self.requested} and removes its earlier saves in {beside_path}."
                )
                return written
        return write_pair(self.path, write_weights, record)


# ----------------------------------------------------------------------------- reading


def _summary(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def how_to_make(record: Mapping[str, Any] | None, command: str | None) -> str:
    made_by = (record or {}).get("command") or command
    return f"make it with `{made_by}`" if made_by else "train it again with its method's command"


def verified_weights(
    path: str | Path, record: Mapping[str, Any] | None, command: str | None = None
) -> Path:
    """The file holding the weights ``record`` describes: ``path`` itself, or the previous
    weights of a save that died between its two renames. Raises :class:`CheckpointError` if
    neither matches the SHA-256 the record names. Records without one are taken as they are."""
    path = Path(path)
    expected = ((record or {}).get("weights") or {}).get("sha256")
    if not expected:
        return path
    actual = file_sha256(path)
    if actual == expected:
        return path
    backup = previous_path(path)
    if backup.exists() and file_sha256(backup) == expected:
        return backup
    raise CheckpointError(
        f"{path} does not match its record {record_path(path).name}, which describes weights with SHA-256 "
        f"{expected[:12]}... where the file has {actual[:12]}... (a save was interrupted or one file was replaced "
        f"without the other); restore both from git or {how_to_make(record, command)}."
    )


def load(
    path: str | Path, read_weights: Callable[[Path], T], expected: str, command: str | None = None
) -> tuple[T, dict]:
    """``(read_weights(file), record)`` for the checkpoint at ``path``, or one clear error.

    ``expected`` says what the file should hold ("a Conv-4 ProtoNet encoder"), ``command``
    how to make it when the record does not say. A missing file raises
    :class:`MissingCheckpoint` (a ``FileNotFoundError``); a truncated, mismatched or
    wrong-architecture file raises :class:`CheckpointError`; each message is one sentence naming
    the file, what was expected and the command that makes it. The record is ``{}`` when there
    is no ``.json``.
    """
    path = Path(path)
    if not path.exists():
        try:
            record = read_record(path)
        except CheckpointError:
            record = None
        raise MissingCheckpoint(
            f"no checkpoint at {path}: expected {expected}; {how_to_make(record, command)}."
        )
    record = read_record(path)
    source = verified_weights(path, record, command)
    try:
        value = read_weights(source)
    except CheckpointError:
        raise
    except Exception as exc:  # torch, zipfile, pickle and Keras each raise their own types
        raise CheckpointError(
            f"{path} could not be loaded as {expected} ({_summary(exc)}); {how_to_make(record, command)}."
        ) from exc
    return value, (record or {})


def state_mismatch(model_state: Mapping[str, Any], saved_state: Mapping[str, Any]) -> str | None:
    """How a saved state dict differs from a model's, in a few words, or ``None`` when it fits."""
    missing = [k for k in model_state if k not in saved_state]
    unexpected = [k for k in saved_state if k not in model_state]
    reshaped = [
        k
        for k in model_state
        if k in saved_state
        and hasattr(saved_state[k], "shape")
        and tuple(saved_state[k].shape) != tuple(model_state[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]!r}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}")
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape, e.g. {k!r} is {tuple(saved_state[k].shape)} in the file "
            f"and {tuple(model_state[k].shape)} in the model"
        )
    return "; ".join(parts) if parts else None


def torch_reader(model: Any, map_location: Any = "cpu") -> Callable[[Path], Any]:
    """``read_weights`` for :func:`load`: a ``torch.save``d state dict loaded into ``model``."""
    import torch

    def read(path: Path) -> Any:
        state = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(f"it holds a {type(state).__name__}, not a state dict")
        try:
            model.load_state_dict(state)  # a model may accept older layouts (its own load hooks)
        except RuntimeError as exc:
            problem = state_mismatch(model.state_dict(), state)
            raise ValueError(
                f"it holds the weights of another network: {problem or _summary(exc)}"
            ) from exc
        return model

    return read
