"""Every method of the course on the same Omniglot test episodes (notebook 09).

A fair comparison gives every method exactly the same tasks: the same classes, the same support
images and the same queries. :func:`light_episodes` draws them once, as indices only (no pixels),
so that thousands of episodes cost almost no memory. Methods that work on embeddings (Prototypical
and Matching Networks, the pretrained classifier) embed the test images once and read the indices;
methods that need the pixels of each episode (raw-pixel nearest neighbour, MAML, Siamese twins)
get them a chunk at a time from :func:`evaluate_on_pixels`. Because the episodes are shared,
two methods can be compared episode by episode (:func:`paired_difference`), which is much more
precise than comparing two separate confidence intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import validation
from .episodes import Episode, FewShotDataset, sampled_episodes
from .fewshot import EvalResult, FewShotMethod, confidence_interval, evaluate

#: Published Omniglot accuracies (%), 5-way 1-shot, 5-way 5-shot, 20-way 1-shot, 20-way 5-shot.
#: Pixels, the classifier baseline, Siamese nets and Matching Networks: Vinyals et al. (2016),
#: Table 1; Prototypical Networks: Snell et al. (2017), Table 1; MAML and first-order MAML: Finn et
#: al. (2017), Table 1. Snell et al. train one model per shot, so a checkpoint trained with 1 shot
#: has a paper number only at 1 shot ("..., 1-shot training") and likewise for 5 shots.
PAPER: dict[str, dict[tuple[int, int], float]] = {
    "pixels (cosine)": {(5, 1): 41.7, (5, 5): 63.2, (20, 1): 26.7, (20, 5): 42.6},
    "classifier + cosine": {(5, 1): 80.0, (5, 5): 95.0, (20, 1): 69.5, (20, 5): 89.1},
    "Siamese net (Koch)": {(5, 1): 96.7, (5, 5): 98.4, (20, 1): 88.0, (20, 5): 96.5},
    "Matching Networks": {(5, 1): 98.1, (5, 5): 98.9, (20, 1): 93.8, (20, 5): 98.5},
    "Prototypical Networks": {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9},
    "Prototypical Networks, 1-shot training": {(5, 1): 98.8, (20, 1): 96.0},
    "Prototypical Networks, 5-shot training": {(5, 5): 99.7, (20, 5): 98.9},
    "MAML": {(5, 1): 98.7, (5, 5): 99.9, (20, 1): 95.8, (20, 5): 98.9},
    "first-order MAML": {(5, 1): 98.3, (5, 5): 99.2, (20, 1): 89.4, (20, 5): 97.9},
}


def light_episodes(
    dataset: FewShotDataset, n_way: int, k_shot: int, n_query: int, count: int, seed: int = 0
) -> list[Episode]:
    """``count`` seeded episodes without pixels: the classes, labels and image indices of each.

    They are the episodes :func:`helpers.episodes.sample_episodes` draws with the same seed;
    :func:`with_pixels` fills in the images of one when a method needs them.
    """
    validation.whole_number("count", count, 1)
    return list(
        sampled_episodes(dataset, n_way, k_shot, n_query, count, seed=seed)
    )  # refuses impossible settings


def with_pixels(dataset: FewShotDataset, episode: Episode) -> Episode:
    """The same episode with its support and query images read from ``dataset`` (floats in [0, 1])."""
    return dataset.episode(episode.class_ids, episode.support_indices, episode.query_indices)


def evaluate_on_pixels(
    method: FewShotMethod,
    dataset: FewShotDataset,
    episodes: Sequence[Episode],
    chunk: int = 100,
    progress: bool = True,
    desc: str = "evaluating",
) -> EvalResult:
    """:func:`helpers.fewshot.evaluate` on light episodes, giving them pixels ``chunk`` at a time.

    The numbers are those of ``evaluate`` on the full episodes; only the memory differs (1,000
    20-way 5-shot episodes with their pixels would take over 600 MB).
    """
    from tqdm.auto import tqdm

    validation.whole_number("chunk", chunk, 1)
    episodes = validation.episodes(episodes)
    accuracies: list[np.ndarray] = []
    for start in tqdm(range(0, len(episodes), chunk), desc=desc, disable=not progress, leave=False):
        part = [with_pixels(dataset, e) for e in episodes[start : start + chunk]]
        accuracies.append(evaluate(method, part, progress=False).accuracies)
    if not accuracies:
        raise ValueError("evaluate_on_pixels needs at least one episode.")
    values = np.concatenate(accuracies)
    mean, ci95 = confidence_interval(values)
    return EvalResult(mean, ci95, values)


def paired_difference(a: EvalResult, b: EvalResult) -> tuple[float, float]:
    """Mean of ``a - b`` over the same episodes and the half-width of its 95 % confidence interval.

    Both results must come from the same episodes in the same order. Episodes that are hard for
    one method are usually hard for the other, so the per-episode differences vary much less
    than the accuracies themselves, and the interval is much narrower than ``a.ci95 + b.ci95``.
    """
    if len(a.accuracies) != len(b.accuracies):
        raise ValueError(
            f"the results cover {len(a.accuracies)} and {len(b.accuracies)} episodes; compare them on the same episodes."
        )
    return confidence_interval(np.asarray(a.accuracies) - np.asarray(b.accuracies))


@dataclass
class TrainingRecord:
    """How a committed checkpoint was trained, read from the ``.json`` beside it."""

    minutes: float
    hardware: str
    command: str
    #: of ``minutes``, those of the run a warm start (``--init``) began from: the checkpoint's
    #: training time is its own run's plus that one's
    warm_start_minutes: float = 0.0

    @property
    def on_gpu(self) -> bool:
        """Whether the run trained on a GPU (the recorded hardware names CUDA or a GPU model)."""
        text = self.hardware.lower()
        if "no gpu" in text:
            return False
        return any(word in text for word in ("cuda", "nvidia", "h100", "h200", "a100", "mps"))

    @property
    def processes_sharing(self) -> int | None:
        """How many training processes shared the device, as the hardware note says; None if unsaid.

        Read from notes such as "shared with 6 other training processes" (7) or "shared by 4
        concurrent training processes" (4). A minute of a device shared by n runs is not a minute of
        the same device alone, so a plot of accuracy against time must say so.
        """
        import re

        text = self.hardware.lower()
        match = re.search(r"shared (?:the gpu )?with (\d+) other", text)
        if match:
            return int(match.group(1)) + 1
        match = re.search(r"shared by (\d+) concurrent", text)
        if match:
            return int(match.group(1))
        return None

    @property
    def device(self) -> str:
        """A short name of the hardware: "GPU shared by 7 runs", "GPU" or "2-core CPU"."""
        if not self.on_gpu:
            return (
                "2-core CPU"
                if "2-core" in self.hardware or "2 cpu cores" in self.hardware.lower()
                else "CPU"
            )
        shared = self.processes_sharing
        return f"GPU shared by {shared} runs" if shared else "GPU"


def training_record(path: str | Path) -> TrainingRecord:
    """The wall time, hardware and command stored beside a checkpoint.

    The record schema (:mod:`helpers.checkpoints`) keeps the wall time in ``wall_seconds``;
    records written before it used ``wall_time_s`` or ``wall_minutes``, which are read too. A
    run that began from another checkpoint's weights (its record's ``init_from``) adds that
    run's training time, so the minutes are those behind the weights, not of the last sitting.
    """
    from .checkpoints import MissingCheckpoint, earlier_runs, read_record, record_path

    meta = read_record(path)
    if meta is None:
        raise MissingCheckpoint(
            f"no record {record_path(path)}: every committed checkpoint has a .json beside it "
            "saying how it was trained; restore it from git."
        )
    for key, per_minute in (
        ("wall_seconds", 60.0),
        ("wall_time_s", 60.0),
        ("wall_minutes", 1.0),
        ("train_seconds", 60.0),
    ):
        if meta.get(key) is not None:
            minutes = float(meta[key]) / per_minute
            break
    else:
        raise KeyError(
            f"{record_path(path)} records no wall time (wall_seconds, or wall_time_s / wall_minutes)."
        )
    before = sum(float(run.get("train_seconds") or 0.0) for run in earlier_runs(meta)) / 60.0
    return TrainingRecord(
        minutes + before,
        str(meta.get("hardware", "not recorded")),
        str(meta.get("command", "not recorded")),
        before,
    )


@dataclass
class Gap:
    """One setting of one method against its paper: measured mean, its 95 % half-width, the paper."""

    setting: tuple[int, int]
    measured: float  # %
    ci95: float  # %
    paper: float  # %

    @property
    def points(self) -> float:
        """Measured minus published, in points (negative: below the paper)."""
        return self.measured - self.paper

    @property
    def reaches_paper(self) -> bool:
        """The paper's number lies inside or below this run's 95 % interval."""
        return self.measured + self.ci95 >= self.paper


def paper_gaps(by_setting: dict[tuple[int, int], EvalResult | None], paper_name: str) -> list[Gap]:
    """Each setting where the method was evaluated and its paper reports a number, as a :class:`Gap`."""
    published = PAPER[paper_name]
    return [
        Gap(setting, 100 * result.mean, 100 * result.ci95, published[setting])
        for setting, result in by_setting.items()
        if result is not None and setting in published
    ]


def results_table(
    results: dict[str, dict[tuple[int, int], EvalResult | None]],
    settings: Iterable[tuple[int, int]],
    paper_names: dict[str, str] | None = None,
) -> str:
    """A Markdown table: one row per method, ``mean ± CI`` per setting, the paper's number beside it."""
    settings = list(settings)
    paper_names = paper_names or {}
    header = "| method | " + " | ".join(f"{n}-way {k}-shot" for n, k in settings) + " |"
    rows = [header, "|---" * (len(settings) + 1) + "|"]
    for name, by_setting in results.items():
        cells = []
        for setting in settings:
            result = by_setting.get(setting)
            measured = (
                "not trained"
                if result is None
                else f"{100 * result.mean:.1f} ± {100 * result.ci95:.1f}"
            )
            paper = PAPER.get(paper_names.get(name, ""), {}).get(setting)
            cells.append(measured + (f" ({paper:.1f})" if paper is not None else ""))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
