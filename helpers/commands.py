"""The scaffold every training command shares (``python -m helpers.protonet``, ``.matching``,
``.one_shot``, ``.maml``, ``.maml_rl``, ``.siamese``).

:func:`main` runs a command in a fixed order:

1. parse the arguments (:class:`Parser`: a usage error is one line, not a usage block);
2. ``validate(args)``: every argument is checked *before any data is loaded*: positive
   finite learning rates, whole numbers in range, ways, shots and queries that the data can
   supply (:func:`omniglot_episodes`, from the split sizes in :mod:`helpers.episodes`);
3. the device preamble, :func:`helpers.device.training_device` (threads, device, cuDNN);
4. ``train(args, device, command)`` inside :class:`helpers.runs.StopSignals`, so that Ctrl-C
   and SIGTERM stop the loop between two steps; the command then saves a resumable state
   (:class:`RunFiles`) and raises :class:`Interrupted`.

Every error a user can cause ends the command with one line on stderr and exit status 2
(``--debug`` shows the traceback instead); an interrupted run exits with 130 (Ctrl-C) or 143
(SIGTERM) after one line saying where the run is saved and how to resume it.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import checkpoints, runs, validation

EXIT_ERROR = 2
EXIT_INTERNAL = 1


class CommandError(Exception):
    """A problem with what the command was asked to do; its message is one sentence."""


class Interrupted(Exception):
    """The run was stopped by Ctrl-C or SIGTERM after saving what ``--resume`` needs."""

    def __init__(self, message: str, signal_name: str | None = "SIGINT") -> None:
        super().__init__(message)
        self.signal_name = signal_name or "SIGINT"

    @property
    def exit_status(self) -> int:
        return 128 + (signal.SIGTERM if self.signal_name == "SIGTERM" else signal.SIGINT)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes become :class:`CommandError` (one line, exit 2)."""

    def __init__(self, prog: str, description: str | None = None, **kwargs: Any) -> None:
        super().__init__(
            prog=prog,
            description=description,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            **kwargs,
        )

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CommandError(f"{message} (see {self.prog} --help)")


def add_run_options(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """The options every training command has: seed, device, threads, resume, overwrite, debug."""
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random choice of the run (0 .. 2**32 - 1)",
    )
    if device:
        parser.add_argument(
            "--device",
            default=None,
            help="cpu, cuda, cuda:N or mps (default: the best available, or METALEARN_DEVICE)",
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=None,
            help="torch CPU threads (1 is fastest on a busy CPU)",
        )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run that Ctrl-C or SIGTERM stopped, from its .resume.pt beside the checkpoint",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the checkpoint even if another run with a better validation made it "
        "(without it, this run saves beside it), and start afresh over an interrupted run",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show Python's traceback when something fails"
    )


def command_line(prog: str, argv: Sequence[str]) -> str:
    """The command as a user would type it again."""
    return f"{prog} {shlex.join(argv)}".strip()


def resume_command(command: str) -> str:
    return command if " --resume" in f" {command}" else f"{command} --resume"


def flag(dest: str) -> str:
    """The option behind an ``args`` attribute: ``n_way`` -> ``--n-way``."""
    return "--" + dest.replace("_", "-")


# ----------------------------------------------------------------------------- validation


def positive(args: argparse.Namespace, *dests: str, example: float | None = None) -> None:
    """Each ``args.<dest>`` must be a positive finite number (``None`` is allowed: unset)."""
    for dest in dests:
        value = getattr(args, dest)
        if value is not None:
            validation.positive_number(flag(dest), value, example)


def whole(args: argparse.Namespace, dest: str, low: int = 0, high: int | None = None) -> None:
    """``args.<dest>`` must be a whole number in ``low .. high`` (``None`` is allowed: unset)."""
    value = getattr(args, dest)
    if value is not None:
        validation.whole_number(flag(dest), value, low, high)


def run_options(args: argparse.Namespace) -> None:
    """Validate the options of :func:`add_run_options`."""
    validation.seed(args.seed, "--seed")
    if getattr(args, "threads", None) is not None:
        whole(args, "threads", 1)
    if getattr(args, "device", None) is not None:
        from .device import check_device_name

        check_device_name(args.device, "--device")
    else:
        import os

        from .device import DEVICE_VARIABLE, check_device_name

        if os.environ.get(DEVICE_VARIABLE):
            check_device_name(os.environ[DEVICE_VARIABLE], DEVICE_VARIABLE)
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise ValueError(
            "--resume continues an interrupted run and --overwrite starts afresh over it; give one of them."
        )


def omniglot_episodes(
    split: str,
    n_way: int,
    k_shot: int,
    n_query: int,
    flags: Sequence[str] = ("--n-way", "--k-shot", "--n-query"),
) -> None:
    """Episodes of ``split`` with these settings can be drawn: checked without loading Omniglot."""
    from .episodes import OMNIGLOT_CLASSES, OMNIGLOT_DRAWINGS

    if split not in OMNIGLOT_CLASSES:
        raise ValueError(
            f"split {split!r} is not an Omniglot split; use one of {', '.join(OMNIGLOT_CLASSES)}."
        )
    way, shot, query = flags
    validation.whole_number(way, n_way, 2)
    if n_way > OMNIGLOT_CLASSES[split]:
        raise ValueError(
            f"{way}={n_way} is more than the {OMNIGLOT_CLASSES[split]} classes of Omniglot's {split} split; "
            f"use {way} <= {OMNIGLOT_CLASSES[split]}."
        )
    validation.whole_number(shot, k_shot, 1, OMNIGLOT_DRAWINGS - 1)
    validation.whole_number(query, n_query, 1, OMNIGLOT_DRAWINGS - 1)
    if k_shot + n_query > OMNIGLOT_DRAWINGS:
        raise ValueError(
            f"{shot} {k_shot} plus {query} {n_query} is {k_shot + n_query} images per class, but every "
            f"Omniglot class has {OMNIGLOT_DRAWINGS}; use {shot} + {query} <= {OMNIGLOT_DRAWINGS}."
        )


def writable_target(path: Path, what: str = "the checkpoint") -> None:
    """The folder of ``path`` exists or can be made, and can be written, before any training."""
    import os

    folder = path.parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(
            f"cannot write {what} {path}: {existing} is not a writable folder; choose another path."
        )


# ----------------------------------------------------------------------------- the files of one run


class RunFiles:
    """The files one run of a command writes: its checkpoint (through a
    :class:`helpers.checkpoints.Saver`) and, when stopped, its resume state.

    ``RunFiles(path, args, resume_settings)`` reads the resume state when ``args.resume`` is
    set (and checks that the settings are the ones it was made with), refuses to start a fresh
    run over an interrupted one unless ``args.overwrite``, and keeps the run's id, so that a
    resumed run keeps replacing its own checkpoint.
    """

    #: settings that may differ between a run and its resumption
    FREE = frozenset(
        {
            "device",
            "threads",
            "resume",
            "overwrite",
            "debug",
            "no_progress",
            "max_minutes",
            "minutes",
            "note",
            "hardware",
        }
    )

    def __init__(
        self,
        checkpoint: str | Path,
        args: argparse.Namespace,
        settings: dict,
        say: Callable[[str], None] = print,
    ) -> None:
        self.checkpoint = Path(checkpoint)
        self.resume_file = checkpoints.resume_path(self.checkpoint)
        self.settings = dict(settings)  # as given: a command may add derived settings to its record
        self.state: dict | None = None
        if args.resume:
            self.state = self._read_state()
            self._check_same_settings(self.state.get("settings", {}))
        elif self.resume_file.exists() and not args.overwrite:
            raise CommandError(
                f"{self.resume_file} holds an unfinished run of this checkpoint (stopped by Ctrl-C, SIGTERM or "
                "its time limit); continue it with --resume, "
                "or start afresh with --overwrite."
            )
        run_id = self.state["run_id"] if self.state else checkpoints.new_run_id()
        self.saver = checkpoints.Saver(self.checkpoint, run_id, overwrite=args.overwrite, say=say)
        if self.state:
            self.saver.path = Path(self.state["checkpoint_path"])
            self.saver.decided = bool(self.state["checkpoint_decided"])

    @property
    def run_id(self) -> str:
        return self.saver.run_id

    def _read_state(self) -> dict:
        import torch

        if not self.resume_file.exists():
            raise CommandError(
                f"--resume: there is no interrupted run at {self.resume_file}; start the run without --resume."
            )

        def read(path: Path) -> dict:
            return torch.load(path, map_location="cpu", weights_only=True)

        state, _ = checkpoints.load(self.resume_file, read, "the state of an interrupted run")
        return state

    def _check_same_settings(self, saved: dict) -> None:
        for key, value in self.settings.items():
            if key in self.FREE or key not in saved:
                continue
            if saved[key] != value:
                raise CommandError(
                    f"--resume: {self.resume_file} was made with {flag(key)} {saved[key]}, not {value}; "
                    "resume with the run's own settings, or start afresh with --overwrite."
                )

    def save_state(self, state: dict, record: dict) -> Path:
        """Write the resume state (``name.resume.pt`` and its ``.json``) atomically."""
        state = {
            **state,
            "run_id": self.run_id,
            "settings": self.settings,
            "checkpoint_path": str(self.saver.path),
            "checkpoint_decided": self.saver.decided,
        }
        checkpoints.write_pair(
            self.resume_file,
            checkpoints.torch_writer(state),
            {**record, "run_id": self.run_id, "status": "resumable"},
        )
        return self.resume_file

    def finish(self) -> None:
        """The run is complete: its resume state (if any) is no longer needed."""
        for path in (self.resume_file, checkpoints.record_path(self.resume_file)):
            if path.exists():
                path.unlink()

    def interrupted(self, where: str, command: str, saved_checkpoint: bool) -> Interrupted:
        """The exception (and its one line) for a run stopped at ``where`` ("episode 120")."""
        best = f"; its best weights so far are in {self.saver.path}" if saved_checkpoint else ""
        return Interrupted(
            f"stopped at {where}: the run is saved in {self.resume_file}{best}; "
            f"continue it with: {resume_command(command)}",
            runs.stop_reason(),
        )


def nonfinite(exc: runs.NonFiniteLoss, hint: str, saved: Path | None) -> CommandError:
    """The one line for a run whose loss (or weights) stopped being finite."""
    kept = (
        f"; {saved} keeps the last good weights saved before it"
        if saved is not None and saved.exists()
        else "; nothing was saved"
    )
    return CommandError(f"training stopped: {exc} ({hint}){kept}.")


# ----------------------------------------------------------------------------- running a command


def _known_errors() -> tuple[type[BaseException], ...]:
    from .datasets import DatasetError
    from .device import DeviceError

    return (
        CommandError,
        ValueError,
        DatasetError,
        checkpoints.CheckpointError,
        DeviceError,
        runs.NonFiniteLoss,
        OSError,
    )


def main(
    prog: str,
    parser: argparse.ArgumentParser,
    validate: Callable[[argparse.Namespace], None],
    train: Callable[[argparse.Namespace, Any, str], Any],
    argv: Sequence[str] | None = None,
    device: bool = True,
) -> Any:
    """Parse, validate, set up the device, train; every failure is one line (see the module doc).

    ``train(args, device, command)`` gets the command line as typed (for the record) and
    returns what the command returns; ``device=False`` skips the torch device preamble (Keras).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    started = time.perf_counter()
    try:
        args = parser.parse_args(argv)
        args.started = started
        validate(args)
        chosen = None
        if device:
            from .device import training_device

            chosen = training_device(getattr(args, "device", None), getattr(args, "threads", None))
        with runs.StopSignals():
            return train(args, chosen, command_line(prog, argv))
    except Interrupted as stop:
        print(f"{prog}: {stop}", file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_status) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            f"{prog}: stopped at once by a second Ctrl-C; nothing more was saved.",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + signal.SIGINT) from None
    except _known_errors() as exc:
        if debug:
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_ERROR) from None
    except Exception as exc:
        if debug:
            raise
        print(
            f"{prog}: internal error ({type(exc).__name__}: {one_line(exc)}); rerun with --debug for the traceback.",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(EXIT_INTERNAL) from None


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# ----------------------------------------------------------------------------- episodic commands


def own_checkpoint(files: RunFiles) -> bool:
    """True when the run's checkpoint file exists and was written by this run."""
    try:
        record = checkpoints.read_record(files.saver.path)
    except checkpoints.CheckpointError:
        return False
    return files.saver.path.exists() and record is not None and record.get("run_id") == files.run_id


def wall_seconds(files: RunFiles, args: argparse.Namespace) -> float:
    """The command's wall time so far, including earlier sessions of a resumed run."""
    before = float(files.state.get("wall_seconds", 0.0)) if files.state else 0.0
    return before + time.perf_counter() - args.started


def episodic_run(
    files: RunFiles,
    args: argparse.Namespace,
    command: str,
    *,
    method,
    sampler,
    optimizer,
    scheduler,
    val_episodes,
    record: dict,
    keep: str,
    device,
    on_validation=None,
):
    """Train ``method`` with :func:`helpers.training.train_episodic` as a command: resume, stop, save.

    Continues ``files.state`` when resuming (weights, optimiser, scheduler, sampler and global
    random state, history), so that the run goes on exactly as if it had never stopped; on
    Ctrl-C or SIGTERM saves that state and raises :class:`Interrupted`; a non-finite loss
    becomes one line. ``args`` needs ``episodes``, ``val_every``, ``max_minutes``, ``seed``
    and ``no_progress``. Returns the finished :class:`~helpers.training.History`.
    """
    from .training import History, train_episodic, trainable_module

    model = trainable_module(method)
    history, seed = History(), args.seed
    if files.state:
        state = files.state
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        runs.set_generator_state(sampler.rng, state["sampler"])
        history = History(**state["history"])
        history.interrupted = False
        runs.set_rng_state(state["rng"])
        seed = None  # the random state goes on from where it stopped
        print(
            f"resuming {files.resume_file} at episode {history.n_episodes} of {args.episodes}",
            flush=True,
        )
    saved: list[Path] = []

    def save_resumable(history: History) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "sampler": runs.generator_state(sampler.rng),
            "rng": runs.rng_state(),
            "history": history.as_dict(),
            "wall_seconds": wall_seconds(files, args),
        }
        saved.append(
            files.save_state(
                state,
                {
                    **record,
                    "train_seconds": round(history.seconds, 1),
                    "episodes_trained": history.n_episodes,
                },
            )
        )

    try:
        history = train_episodic(
            method,
            sampler,
            max(0, args.episodes - history.n_episodes),
            optimizer,
            scheduler,
            val_episodes=val_episodes,
            val_every=args.val_every,
            checkpoint=files.saver,
            device=device,
            progress=not args.no_progress,
            seed=seed,
            history=history,
            metadata=record,
            keep=keep,
            on_validation=on_validation,
            max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
            save_resumable=save_resumable,
        )
    except runs.NonFiniteLoss as exc:
        raise nonfinite(
            exc,
            "the learning rate --lr is probably too large",
            files.saver.path if own_checkpoint(files) else None,
        ) from None
    if history.interrupted:
        if (
            not saved
        ):  # stopped by a KeyboardInterrupt in the middle of an episode: nothing to resume from
            raise KeyboardInterrupt
        raise files.interrupted(
            f"episode {history.n_episodes} of {args.episodes}", command, own_checkpoint(files)
        )
    return history
