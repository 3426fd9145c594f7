"""Training loops, shared by every learned method of the course.

:class:`Loop` is the schedule around any training loop. A trainer gives it a step function
(one optimiser step; it returns the step's loss and accuracy) and, if it validates, a validate
function; the loop then keeps a :class:`History`, validates every ``val_every`` steps, at the
end and when a time budget runs out, keeps the best weights (:class:`KeepBest`, written through
a :class:`helpers.checkpoints.Saver` on every improvement), stops with one line when the loss is
not a finite number, and stops cleanly between two steps when asked (the commands' Ctrl-C and
SIGTERM), handing the trainer the moment to save a resumable state. :func:`train_episodic`
below, MAML's (:mod:`helpers.maml`), the one-shot pretraining (:mod:`helpers.one_shot`),
MAML-RL's (:mod:`helpers.maml_rl`) and the Siamese twin's (:mod:`helpers.siamese`) all run on it.

Episodic training imitates testing: every step draws one N-way K-shot episode from the training
classes, asks the method for its loss on that episode's queries (the method's own
:meth:`~helpers.fewshot.FewShotMethod.episode_loss`), and takes one optimiser step.
:func:`train_episodic` runs that loop for any method that has an ``episode_loss`` and weights,
with a progress bar, a :class:`History` the notebooks plot, periodic validation on held-out
classes, and the best weights kept in a checkpoint.

:class:`DeviceEpisodeSampler` keeps all the images on the training device and assembles each
episode there, so on a GPU drawing an episode costs one small index copy and one gather.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoints, runs, validation
from .device import seed_everything
from .episodes import Episode, EpisodeSampler, FewShotDataset, float_images
from .fewshot import FewShotMethod, evaluate

#: What a step function returns: ``(loss, accuracy)`` (tensors or numbers; ``accuracy`` may be
#: ``None`` when the step measures none), or ``None`` when a stop request cut the step short.
StepResult = tuple[Any, Any] | None


@dataclass
class History:
    """Everything a notebook plots about one training run.

    ``loss`` and ``accuracy`` hold one value per training step (numbered in ``episode``: the
    episodes of episodic training; the meta-steps, batches, iterations or rounds of the other
    loops; ``accuracy`` is NaN where a step measures none); ``val_accuracy`` and ``val_ci95``
    hold one value per validation (numbered in ``val_episode``), ``seconds`` the training time.
    """

    episode: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_episode: list[int] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_ci95: list[float] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def n_episodes(self) -> int:
        return self.episode[-1] if self.episode else 0

    @property
    def episodes_per_second(self) -> float:
        return len(self.episode) / self.seconds if self.seconds > 0 else float("nan")

    def best_validation(self) -> tuple[int, float, float] | None:
        """``(episode, accuracy, ci95)`` of the best validation so far, or ``None``."""
        if not self.val_accuracy:
            return None
        i = int(np.argmax(self.val_accuracy))
        return self.val_episode[i], self.val_accuracy[i], self.val_ci95[i]

    def smoothed(self, key: str = "loss", window: int = 50) -> np.ndarray:
        """Running mean of ``loss`` or ``accuracy`` over ``window`` episodes (same length)."""
        values = np.asarray(getattr(self, key), dtype=float)
        if len(values) == 0:
            return values
        window = max(1, min(window, len(values)))
        cumulative = np.concatenate([[0.0], np.cumsum(values)])
        counts = np.minimum(np.arange(1, len(values) + 1), window)
        return (cumulative[1:] - cumulative[np.arange(1, len(values) + 1) - counts]) / counts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def blocks(self, block: int = 10) -> dict[str, Any]:
        """The curves for a checkpoint record, small: training loss and accuracy as means over
        blocks of ``block`` episodes (``episode`` is each block's last), validations in full."""
        starts = range(0, len(self.episode), block)

        def means(values: list[float]) -> list[float | None]:
            out = []
            for i in starts:
                part = [v for v in values[i : i + block] if math.isfinite(v)]
                out.append(round(sum(part) / len(part), 4) if part else None)
            return out

        return {
            "block": block,
            "episode": [self.episode[min(i + block, len(self.episode)) - 1] for i in starts],
            "loss": means(self.loss),
            "accuracy": means(self.accuracy),
            "val_episode": list(self.val_episode),
            "val_accuracy": list(self.val_accuracy),
            "val_ci95": list(self.val_ci95),
        }


def save_checkpoint(path: str | Path, model: torch.nn.Module, metadata: dict) -> dict:
    """Save ``model``'s weights to ``path`` and ``metadata`` beside it (``.json``), atomically.

    Both files are written to staging names and renamed together (:func:`helpers.checkpoints.write_pair`),
    so a reader never sees new weights with an old record; the record written (with the
    weights' SHA-256 added) is returned.
    """
    return checkpoints.write_pair(path, checkpoints.torch_writer(model.state_dict()), metadata)


def load_checkpoint(path: str | Path, model: torch.nn.Module, map_location: Any = None) -> dict:
    """Load weights saved by :func:`save_checkpoint` into ``model``; return the metadata.

    A missing file raises :class:`helpers.checkpoints.MissingCheckpoint` (a ``FileNotFoundError``);
    a truncated file, weights of another architecture or weights that do not match their
    record raise :class:`helpers.checkpoints.CheckpointError`; each message is one sentence.
    """
    reader = checkpoints.torch_reader(model, map_location)
    _, record = checkpoints.load(path, reader, f"the weights of a {type(model).__name__}")
    return record


# ----------------------------------------------------------------------------- the shared loop


def finite_weights(state: Any) -> bool:
    """True when every floating-point number of ``state`` is finite: a state dict, a list of
    arrays (Keras weights), or any nesting of them; torch tensors and NumPy arrays alike."""
    if isinstance(state, Mapping):
        return all(finite_weights(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(finite_weights(v) for v in state)
    if isinstance(state, torch.Tensor):
        return not torch.is_floating_point(state) or bool(torch.isfinite(state).all())
    if isinstance(state, (np.ndarray, np.generic)):
        return not np.issubdtype(state.dtype, np.floating) or bool(np.isfinite(state).all())
    if isinstance(state, float):
        return math.isfinite(state)
    return True


def save_weights(
    saver: checkpoints.Saver,
    state: Any,
    record: Mapping[str, Any],
    writer: Callable[[Any], Callable[[Path], None]] = checkpoints.torch_writer,
    step: int = 0,
) -> dict:
    """Write ``state`` (``writer(state)`` writes the weights file) and ``record`` through ``saver``,
    atomically; returns the record as written. Weights that are not all finite are never saved:
    :class:`helpers.runs.NonFiniteLoss` (naming ``step``) is raised instead."""
    if not finite_weights(state):
        raise runs.NonFiniteLoss(step, float("nan"), "weights")
    return saver.save(writer(state), record)


class KeepBest:
    """The best validation so far, the weights behind it, and their checkpoint.

    :meth:`offer` takes every validation. One that beats the best so far (strictly: a tie keeps
    the earlier weights) becomes the best: ``snapshot()`` is kept as :attr:`state` (a copy of
    the weights, when they are needed after training; the state dict itself, when they are
    only saved) and, with a ``saver``, written through it at once with ``record()`` as its
    record (:func:`save_weights`: atomic, never non-finite), so that a killed run keeps its best
    weights. ``writer(state)`` writes the weights file (``torch.save`` by default; the Keras
    twin saves a model). A resumed run passes its best so far as ``step``, ``value``, ``ci95``
    and ``state``.
    """

    def __init__(
        self,
        snapshot: Callable[[], Any],
        saver: checkpoints.Saver | None = None,
        record: Callable[[], Mapping[str, Any]] | None = None,
        writer: Callable[[Any], Callable[[Path], None]] = checkpoints.torch_writer,
        step: int = 0,
        value: float = -math.inf,
        ci95: float = math.nan,
        state: Any = None,
    ) -> None:
        self.snapshot, self.saver, self.record, self.writer = snapshot, saver, record, writer
        self.step, self.value, self.ci95, self.state = int(step), float(value), float(ci95), state
        self.saved = False

    def offer(self, step: int, value: float, ci95: float = math.nan) -> bool:
        """Take the validation ``value`` (and its ``ci95``) measured at ``step``; True if it is the new best."""
        if not value > self.value:
            return False
        self.step, self.value, self.ci95 = int(step), float(value), float(ci95)
        self.state = self.snapshot()
        if self.saver is not None:
            save_weights(
                self.saver,
                self.state,
                dict(self.record() if self.record is not None else {}),
                self.writer,
                step,
            )
            self.saved = True
        return True


def _whole(name: str, value: Any, low: int) -> int:
    from .validation import whole_number

    return whole_number(name, value, low)


def _seconds(name: str, value: Any) -> float:
    from .validation import is_number, show

    if not (is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={show(value)} must be a finite number of seconds >= 0.")
    return float(value)


def _mean_and_ci95(result: Any) -> tuple[float, float]:
    """A validation's ``(mean, ci95)`` from an EvalResult, a ``(mean, ci95)`` pair or one number."""
    if hasattr(result, "mean") and hasattr(result, "ci95"):
        return float(result.mean), float(result.ci95)
    if isinstance(result, tuple):
        mean, ci95 = result
        return float(mean), (math.nan if ci95 is None else float(ci95))
    return float(result), math.nan


def _as_floats(pairs: list[tuple[Any, Any]]) -> list[tuple[float, float]]:
    """The ``(loss, accuracy)`` of some steps as Python floats, read from the device in one go
    when they are tensors (one synchronisation for many steps, not one each)."""
    if all(isinstance(v, torch.Tensor) for pair in pairs for v in pair):
        values = torch.stack(
            [torch.stack([lo.detach().float(), ac.detach().float()]) for lo, ac in pairs]
        ).cpu()
        return [(lo, ac) for lo, ac in values.tolist()]
    return [(float(lo), math.nan if ac is None else float(ac)) for lo, ac in pairs]


class Loop:
    """The schedule around a training loop, whatever the method and the framework.

    ``Loop(steps, ...).run(step)`` calls ``step(number)`` for the step numbers that follow
    ``history`` (or from ``first_step``), ``steps`` times (``None``: until the time budget or a
    stop). ``step`` takes one optimiser step and returns ``(loss, accuracy)`` (tensors or
    numbers; ``accuracy`` may be ``None``), or ``None`` when a stop request cut it short (the
    step is then not counted). Around it the loop

    * records every step in :attr:`history` (a :class:`History`; a given one is continued:
      step numbers, validations, best so far and seconds go on);
    * stops with :class:`helpers.runs.NonFiniteLoss` ("the {loss_name} became nan at step N")
      when a loss is not a finite number; losses are read every ``sync_every`` steps (tensors
      on a GPU in one go), and always before a validation;
    * calls ``validate(number)`` (returning an :class:`~helpers.fewshot.EvalResult`, a
      ``(mean, ci95)`` pair or one number) every ``val_every`` steps (counted over the whole
      run), after the last step, and when the time budget runs out, then ``keep.offer`` (a
      :class:`KeepBest`) and ``on_validation(history)``;
    * stops once ``history.seconds`` (earlier sessions included) passes ``max_seconds``,
      looked at after every ``budget_every``-th step (an epoch's last batch, a chunk's last
      iteration) and again after a validation, which it may have used up; the stopping step is
      always validated;
    * before every step asks ``should_stop()`` (default :func:`helpers.runs.stop_requested`,
      the commands' Ctrl-C and SIGTERM): if true it ends with ``history.interrupted`` set and
      calls ``save_resumable(history)``, at a step boundary where weights, optimiser and random
      state agree;
    * with ``interruptible``, ends on a ``KeyboardInterrupt`` (a notebook's stop button) with
      ``history.interrupted`` set, but saves no resumable state (a step may be half done);
      a ``KeyboardInterrupt`` after a stop request (a second Ctrl-C) always propagates;
    * calls ``on_step(number, history)`` at the end of every step (the step's own loss is in
      the history when ``sync_every`` is 1), and shows a progress bar (``progress``;
      ``postfix(history)`` gives its numbers).
    """

    def __init__(
        self,
        steps: int | None,
        *,
        history: History | None = None,
        first_step: int | None = None,
        validate: Callable[[int], Any] | None = None,
        val_every: int | None = None,
        keep: KeepBest | None = None,
        max_seconds: float | None = None,
        budget_every: int = 1,
        should_stop: Callable[[], bool] | None = runs.stop_requested,
        save_resumable: Callable[[History], None] | None = None,
        interruptible: bool = False,
        sync_every: int = 1,
        loss_name: str = "loss",
        on_validation: Callable[[History], None] | None = None,
        on_step: Callable[[int, History], None] | None = None,
        progress: bool = False,
        desc: str = "training",
        leave: bool = False,
        postfix: Callable[[History], dict] | None = None,
    ) -> None:
        if steps is not None:
            steps = _whole("steps", steps, 0)
        elif max_seconds is None:
            raise ValueError(
                "steps=None trains until the time budget runs out: give max_seconds too."
            )
        if val_every is not None:
            val_every = _whole("val_every", val_every, 1)
        if max_seconds is not None:
            max_seconds = _seconds("max_seconds", max_seconds)
        self.steps, self.val_every, self.max_seconds = steps, val_every, max_seconds
        self.budget_every, self.sync_every = (
            _whole("budget_every", budget_every, 1),
            _whole("sync_every", sync_every, 1),
        )
        self.history = history if history is not None else History()
        self.last_step = (
            self.history.n_episodes
            if first_step is None
            else _whole("first_step", first_step, 1) - 1
        )
        self.validate, self.keep, self.should_stop, self.save_resumable = (
            validate,
            keep,
            should_stop,
            save_resumable,
        )
        self.interruptible, self.loss_name = interruptible, loss_name
        self.on_validation, self.on_step = on_validation, on_step
        self.progress, self.desc, self.leave, self.postfix = progress, desc, leave, postfix
        self._clock: float | None = None
        self._seconds_before = self.history.seconds

    def elapsed(self) -> float:
        """Training seconds so far, earlier sessions of the history included."""
        if self._clock is None:
            return self.history.seconds
        return self._seconds_before + time.perf_counter() - self._clock

    def out_of_time(self) -> bool:
        return self.max_seconds is not None and self.elapsed() > self.max_seconds

    def validation(self, number: int) -> None:
        """Validate now, as step ``number``: record it, offer it to ``keep``, tell ``on_validation``."""
        history = self.history
        history.seconds = self.elapsed()
        mean, ci95 = _mean_and_ci95(self.validate(number))
        history.val_episode.append(int(number))
        history.val_accuracy.append(mean)
        history.val_ci95.append(ci95)
        if self.keep is not None:
            self.keep.offer(number, mean, ci95)
        if self.on_validation is not None:
            self.on_validation(history)

    def _flush(self, pending: list) -> None:
        if not pending:
            return
        numbers = [number for number, _, _ in pending]
        values = _as_floats([(loss, accuracy) for _, loss, accuracy in pending])
        pending.clear()
        history = self.history
        history.episode.extend(numbers)
        history.loss.extend(loss for loss, _ in values)
        history.accuracy.extend(accuracy for _, accuracy in values)
        for number, (loss, _) in zip(numbers, values):
            if not math.isfinite(loss):
                raise runs.NonFiniteLoss(number, loss, self.loss_name)

    def _show(self, bar, done: int) -> None:
        if not self.progress:
            return
        bar.update(done - bar.n)
        if not self.history.loss:
            return
        if self.postfix is not None:
            bar.set_postfix(self.postfix(self.history))
        else:
            shown = {"loss": f"{np.mean(self.history.loss[-50:]):.3f}"}
            accuracy = [a for a in self.history.accuracy[-50:] if math.isfinite(a)]
            if accuracy:
                shown["acc"] = f"{np.mean(accuracy):.3f}"
            bar.set_postfix(shown)

    def run(self, step: Callable[[int], StepResult]) -> History:
        """Train: ``step(number)`` once per step, with everything the class doc lists; returns :attr:`history`."""
        from tqdm.auto import tqdm

        history, pending = self.history, []
        if self.max_seconds is not None and history.seconds > self.max_seconds:
            return history  # resumed with its time already spent: the budget is the run's total
        self._seconds_before, self._clock = history.seconds, time.perf_counter()
        bar = tqdm(total=self.steps, desc=self.desc, disable=not self.progress, leave=self.leave)
        done, asked = 0, False
        try:
            while self.steps is None or done < self.steps:
                if self.should_stop is not None and self.should_stop():
                    asked = True
                    break
                number = self.last_step + 1
                result = step(number)
                if result is None:  # a stop request cut the step short: it does not count
                    asked = True
                    break
                done, self.last_step = done + 1, number
                pending.append((number, *result))
                last = done == self.steps
                if done % self.sync_every == 0 or last:
                    self._flush(pending)
                    self._show(bar, done)
                history.seconds = self.elapsed()
                budget_due = self.max_seconds is not None and number % self.budget_every == 0
                out_of_time = budget_due and self.out_of_time()
                due = self.val_every is not None and number % self.val_every == 0
                if self.validate is not None and (due or last or out_of_time):
                    self._flush(
                        pending
                    )  # the history is complete (and finite) when it is validated
                    self.validation(number)
                    out_of_time = out_of_time or (budget_due and self.out_of_time())
                if self.on_step is not None:
                    self.on_step(number, history)
                if out_of_time:
                    break
        except KeyboardInterrupt:
            if not self.interruptible or runs.stop_requested():
                raise
            history.interrupted = True
        finally:
            try:
                self._flush(pending)
            finally:
                self._show(bar, done)
                bar.close()
                history.seconds = self.elapsed()
                self._clock = None
        if asked:
            history.interrupted = True
            if self.save_resumable is not None:
                self.save_resumable(history)
        return history


# ----------------------------------------------------------------------------- episodic training


def trainable_module(method: Any) -> torch.nn.Module:
    """The module whose weights training changes: the method itself when it is an ``nn.Module``
    (:class:`~helpers.matching.MatchingNetwork`), else its ``encoder`` (:class:`~helpers.protonet.ProtoNet`)."""
    if isinstance(method, torch.nn.Module):
        return method
    encoder = getattr(method, "encoder", None)
    if isinstance(encoder, torch.nn.Module):
        return encoder
    raise ValueError(
        f"method={type(method).__name__} has no weights to train: give a method that is an nn.Module "
        "or keeps its network as .encoder."
    )


def train_episodic(
    method: FewShotMethod,
    sampler,
    n_episodes: int,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    val_episodes: list[Episode] | None = None,
    val_every: int = 500,
    checkpoint: str | Path | checkpoints.Saver | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    seed: int | None = 0,
    history: History | None = None,
    metadata: dict | None = None,
    keep: str = "best",
    on_validation: Callable[[History], None] | None = None,
    max_seconds: float | None = None,
    should_stop: Callable[[], bool] = runs.stop_requested,
    save_resumable: Callable[[History], None] | None = None,
) -> History:
    """Train an episodic ``method`` for ``n_episodes`` episodes, one optimiser step per episode.

    ``method`` is any few-shot method with an ``episode_loss(episode) -> (loss, accuracy)``
    (:class:`~helpers.protonet.ProtoNet`, :class:`~helpers.matching.MatchingNetwork`) whose
    weights are the method itself (an ``nn.Module``) or its ``.encoder``
    (:func:`trainable_module`); ``optimizer`` holds those weights. Each episode of
    ``sampler.sample()`` is moved to ``device`` and scored with the module in train mode. Every
    ``val_every`` episodes (counted over the whole run, so a continued ``history`` keeps the
    schedule) and at the end the method is evaluated on ``val_episodes`` in eval mode. With a
    ``checkpoint`` (a path, or a :class:`helpers.checkpoints.Saver` that decides where this run
    may save), ``keep="best"`` saves the weights of the best validation (or the last weights
    when there is no validation) and ``keep="last"`` saves the final weights; ``metadata``
    (e.g. the command and hardware) is stored in the ``.json`` beside them. Every save is atomic.
    ``on_validation(history)`` is called after each validation (live plots). ``max_seconds`` is
    a time budget for the history's training time: training stops (validating once more) when
    it runs out.

    The loop is a :class:`Loop`: a loss that is not a finite number stops training with
    :class:`helpers.runs.NonFiniteLoss` (checked every 50 episodes and before every validation),
    and weights that are not finite are never saved. ``should_stop()`` turning true (the
    commands' Ctrl-C and SIGTERM, between two episodes) or Ctrl-C in a notebook stops the loop
    cleanly: the history so far is returned with ``interrupted=True``. After a stop request
    ``save_resumable(history)`` is called (the commands save what ``--resume`` needs); without
    it, the last weights are saved when they would have been at the end.
    """
    n_episodes = validation.whole_number("n_episodes", n_episodes, 0)
    val_every = validation.whole_number("val_every", val_every, 1)
    validation.one_of("keep", keep, ("best", "last"))
    validation.seed(seed, allow_none=True)
    module = trainable_module(method)
    if (
        not callable(getattr(method, "episode_loss", None))
        or getattr(type(method), "episode_loss", None) is FewShotMethod.episode_loss
    ):
        raise ValueError(
            f"method={type(method).__name__} is not trained episodically (it has no episode_loss); "
            "train a ProtoNet or a MatchingNetwork."
        )
    if seed is not None:
        seed_everything(seed)
    device = torch.device(device) if device is not None else next(module.parameters()).device
    module.to(device)
    method.device = device
    history = history if history is not None else History()
    metadata = dict(metadata or {})
    saver = (
        checkpoint
        if isinstance(checkpoint, checkpoints.Saver) or checkpoint is None
        else (checkpoints.Saver(checkpoint, metadata.get("run_id") or checkpoints.new_run_id()))
    )

    def record(tag: str) -> dict:
        best = history.best_validation() if tag == "best" else None
        val_accuracy = (
            best[1] if best else (history.val_accuracy[-1] if history.val_accuracy else None)
        )
        val_ci95 = best[2] if best else (history.val_ci95[-1] if history.val_ci95 else None)
        episode = best[0] if best else history.n_episodes
        return {
            **metadata,
            "saved": tag,
            "episode": episode,
            "val_accuracy": val_accuracy,
            "val_ci95": val_ci95,
            "val_episodes": len(val_episodes or []),
            "val_score": checkpoints.score(val_accuracy, val_ci95, episode),
            "train_seconds": round(history.seconds, 1),
            "episodes_trained": history.n_episodes,
            "status": "interrupted",  # until the run ends (a killed run's record stays so)
        }

    keep_best = None
    if keep == "best" and val_episodes:
        best = history.best_validation()
        keep_best = KeepBest(
            module.state_dict,
            saver,
            lambda: record("best"),
            **({"step": best[0], "value": best[1], "ci95": best[2]} if best else {}),
        )

    def validate(number: int) -> tuple[float, float]:
        module.eval()
        result = evaluate(method, val_episodes, progress=False)
        module.train()
        return result.mean, 0.0 if math.isnan(result.ci95) else result.ci95

    def step(number: int) -> tuple[torch.Tensor, torch.Tensor]:
        episode = sampler.sample().to(device)
        loss, accuracy = method.episode_loss(episode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return loss, accuracy

    loop = Loop(
        n_episodes,
        history=history,
        validate=validate if val_episodes else None,
        val_every=val_every,
        keep=keep_best,
        max_seconds=max_seconds,
        should_stop=should_stop,
        save_resumable=save_resumable,
        interruptible=True,
        sync_every=50,
        on_validation=on_validation,
        progress=progress,
        desc="training",
    )
    module.train()
    try:
        loop.run(step)
    finally:
        module.train()
    saved = keep_best is not None and keep_best.saved
    resumable = (
        history.interrupted and save_resumable is not None
    )  # a stopped command saves its resume state instead
    if saver is not None and (keep == "last" or not history.val_accuracy) and not resumable:
        save_weights(saver, module.state_dict(), record("last"), step=history.n_episodes)
        saved = True
    if saved and not history.interrupted:
        checkpoints.update_record(saver.path, status="complete", episodes_total=history.n_episodes)
    return history


def report_validation(history: History, extra: str = "") -> None:
    """Print one line about the latest validation (the training commands' ``on_validation``)."""
    print(
        f"episode {history.val_episode[-1]}: validation {100 * history.val_accuracy[-1]:.2f} ± {100 * history.val_ci95[-1]:.2f} %, "
        + (f"{extra}, " if extra else "")
        + f"{history.episodes_per_second:.1f} episodes/s",
        flush=True,
    )


class DeviceEpisodeSampler(EpisodeSampler):
    """Like :class:`helpers.episodes.EpisodeSampler`, but the images live on ``device``.

    All images are copied to ``device`` once, as uint8. Each :meth:`sample` draws its classes
    and images with the sampler's own :meth:`~helpers.episodes.EpisodeSampler.draw` (NumPy,
    a few hundred integers: for a given ``seed`` the episodes are those of ``EpisodeSampler``
    on every device), sends the indices over, and gathers and scales the images on the device
    (:func:`helpers.episodes.float_images`, the same floats as on the CPU): sampling never
    waits on a host-to-device copy of pixels.
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        n_way: int,
        k_shot: int,
        n_query: int,
        device: torch.device | str | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(dataset, n_way, k_shot, n_query, seed=seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.images)).to(self.device)
        self.support_labels = torch.arange(self.n_way, device=self.device).repeat_interleave(
            self.k_shot
        )
        self.query_labels = torch.arange(self.n_way, device=self.device).repeat_interleave(
            self.n_query
        )

    def sample(self) -> Episode:
        classes, support, query = self.draw()
        rows = torch.from_numpy(np.concatenate([support, query])).to(self.device, non_blocking=True)
        pixels = float_images(self.images.index_select(0, rows))
        n_support = len(support)
        return Episode(
            pixels[:n_support],
            self.support_labels,
            pixels[n_support:],
            self.query_labels,
            classes,
            tuple(self.dataset.class_names[c] for c in classes),
            support,
            query,
        )
