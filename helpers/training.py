"""Episodic training, shared by every learned few-shot method of the course.

Training imitates testing: every step draws one N-way K-shot episode from the training
classes, asks the method for a loss on that episode's queries, and takes one optimiser step.
:func:`train_episodic` runs that loop with a progress bar, records a :class:`History` the
notebooks plot, validates now and then on held-out classes, keeps the best weights in a
checkpoint, and stops cleanly (returning what it has) when interrupted.

:class:`DeviceEpisodeSampler` keeps all the images on the training device and assembles each
episode there, so on a GPU drawing an episode costs one small index copy and one gather.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoints, runs, validation
from .device import seed_everything
from .episodes import Episode, EpisodeSampler, FewShotDataset, float_images
from .fewshot import FewShotMethod, evaluate

EpisodeLoss = Callable[[torch.nn.Module, Episode], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class History:
    """Everything a notebook plots about one training run.

    ``loss`` and ``accuracy`` hold one value per training episode (numbered in ``episode``);
    ``val_accuracy`` and ``val_ci95`` one value per validation (numbered in ``val_episode``).
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


def train_episodic(
    model: torch.nn.Module,
    episode_loss: EpisodeLoss,
    sampler,
    n_episodes: int,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    val_method: FewShotMethod | None = None,
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
    save_on_interrupt: bool = True,
) -> History:
    """Train ``model`` for ``n_episodes`` episodes, one optimiser step per episode.

    ``episode_loss(model, episode)`` returns ``(loss, accuracy)`` for an episode already on
    ``device``, with the model in train mode. Every ``val_every`` episodes (counted over the
    whole run, so a continued ``history`` keeps the schedule) and at the end ``val_method`` is
    evaluated on ``val_episodes`` with the model in eval mode. With a ``checkpoint`` (a path,
    or a :class:`helpers.checkpoints.Saver` that decides where this run may save),
    ``keep="best"`` saves the weights of the best validation (or the last weights when there
    is no validation) and ``keep="last"`` saves the final weights; ``metadata`` (e.g. the
    command and hardware) is stored in the ``.json`` beside them. Every save is atomic.
    ``on_validation(history)`` is called after each validation (live plots).
    ``max_seconds`` is a time budget: training stops (validating once more) when it runs out.

    A loss that is not a finite number stops training with :class:`helpers.runs.NonFiniteLoss`
    (checked every 50 episodes and before every validation), and weights that are not finite
    are never saved. Ctrl-C (KeyboardInterrupt) or ``should_stop()`` turning true (the
    commands' Ctrl-C and SIGTERM, between two episodes) stops the loop cleanly: the history so
    far is returned with ``interrupted=True`` (and, unless ``save_on_interrupt=False``, the
    last weights are saved when they would have been at the end).
    """
    n_episodes = validation.whole_number("n_episodes", n_episodes, 0)
    val_every = validation.whole_number("val_every", val_every, 1)
    validation.one_of("keep", keep, ("best", "last"))
    validation.seed(seed, allow_none=True)
    if (val_method is None) != (not val_episodes):
        raise ValueError("give both val_method and val_episodes, or neither.")
    from tqdm.auto import tqdm

    if seed is not None:
        seed_everything(seed)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    if val_method is not None:
        val_method.device = device
    history = history if history is not None else History()
    start_episode = history.n_episodes
    best = history.best_validation()
    best_accuracy = best[1] if best else -math.inf
    metadata = dict(metadata or {})
    saver = checkpoint if isinstance(checkpoint, checkpoints.Saver) or checkpoint is None else (
        checkpoints.Saver(checkpoint, metadata.get("run_id") or checkpoints.new_run_id()))
    saved: list[str] = []
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # read back in batches: fewer GPU syncs

    def flush() -> None:
        if pending:
            values = torch.stack([torch.stack([lo.detach().float(), ac.detach().float()]) for _, lo, ac in pending]).cpu()
            history.episode.extend(e for e, _, _ in pending)
            history.loss.extend(values[:, 0].tolist())
            history.accuracy.extend(values[:, 1].tolist())
            pending.clear()
            bad = [i for i, v in enumerate(values[:, 0].tolist()) if not math.isfinite(v)]
            if bad:
                raise runs.NonFiniteLoss(history.episode[len(history.episode) - len(values) + bad[0]], values[bad[0], 0].item())

    def save(tag: str) -> None:
        if saver is None:
            return
        state = model.state_dict()
        if not runs.all_finite(state.values()):
            raise runs.NonFiniteLoss(history.n_episodes, float("nan"), "weights")
        last = history.best_validation() if tag == "best" else None
        val_accuracy = last[1] if last else (history.val_accuracy[-1] if history.val_accuracy else None)
        val_ci95 = last[2] if last else (history.val_ci95[-1] if history.val_ci95 else None)
        episode = last[0] if last else history.n_episodes
        info = {
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
        saver.save(checkpoints.torch_writer(state), info)
        saved.append(tag)

    def validate(episode_number: int) -> None:
        nonlocal best_accuracy
        model.eval()
        result = evaluate(val_method, val_episodes, progress=False)
        model.train()
        history.val_episode.append(episode_number)
        history.val_accuracy.append(result.mean)
        history.val_ci95.append(0.0 if math.isnan(result.ci95) else result.ci95)
        if keep == "best" and result.mean > best_accuracy:
            best_accuracy = result.mean
            save("best")
        if on_validation is not None:
            on_validation(history)

    clock = time.perf_counter()
    elapsed_before = history.seconds
    bar = tqdm(total=n_episodes, desc="training", disable=not progress, leave=False)
    model.train()
    try:
        for step in range(1, n_episodes + 1):
            if should_stop():
                history.interrupted = True
                break
            number = start_episode + step
            episode = sampler.sample().to(device)
            loss, accuracy = episode_loss(model, episode)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            pending.append((number, loss, accuracy))
            if step % 50 == 0 or step == n_episodes:
                flush()
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{np.mean(history.loss[-50:]):.3f}", acc=f"{np.mean(history.accuracy[-50:]):.3f}")
            out_of_time = max_seconds is not None and time.perf_counter() - clock > max_seconds
            if val_method is not None and (number % val_every == 0 or step == n_episodes or out_of_time):
                flush()  # so that the history is complete when on_validation reads it
                history.seconds = elapsed_before + time.perf_counter() - clock
                validate(number)
            if out_of_time:
                break
    except KeyboardInterrupt:
        history.interrupted = True
    finally:
        try:
            flush()
        finally:
            bar.close()
            model.train()
            history.seconds = elapsed_before + time.perf_counter() - clock
    if (keep == "last" or not history.val_accuracy) and (save_on_interrupt or not history.interrupted):
        save("last")
    if saved and not history.interrupted:
        checkpoints.update_record(saver.path, status="complete", episodes_total=history.n_episodes)
    return history


def report_validation(history: History, extra: str = "") -> None:
    """Print one line about the latest validation (the training commands' ``on_validation``)."""
    print(f"episode {history.val_episode[-1]}: validation {100 * history.val_accuracy[-1]:.2f} ± {100 * history.val_ci95[-1]:.2f} %, "
          + (f"{extra}, " if extra else "") + f"{history.episodes_per_second:.1f} episodes/s", flush=True)


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
        self.support_labels = torch.arange(self.n_way, device=self.device).repeat_interleave(self.k_shot)
        self.query_labels = torch.arange(self.n_way, device=self.device).repeat_interleave(self.n_query)

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
