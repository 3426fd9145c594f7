"""The one interface every few-shot method in the course implements, and its evaluation.

Like easyfsl's classifiers, a method works in two steps::

    method.process_support_set(support_images, support_labels)  # learn the episode's classes
    scores = method.scores(query_images)                          # (n_query_total, n_way)

Higher scores mean "more likely this class". Because every method (pixel nearest neighbour,
pretrained embeddings, Siamese twins, Matching and Prototypical Networks, MAML after
adaptation) speaks this interface, one :func:`evaluate`, one widget and one comparison table
serve them all.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sized
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .episodes import Episode


class FewShotMethod(abc.ABC):
    """Base class: subclasses implement :meth:`process_support_set` and :meth:`scores`.

    ``device`` is where :func:`evaluate` puts each episode's tensors before calling the method.
    """

    device: torch.device = torch.device("cpu")

    @abc.abstractmethod
    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Take the support set: images ``(n_way * k_shot, 1, H, W)``, labels ``(n_way * k_shot,)``."""

    @abc.abstractmethod
    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        """Class scores ``(n_query_total, n_way)`` for query images ``(n_query_total, 1, H, W)``."""

    def predict(self, query_images: torch.Tensor) -> torch.Tensor:
        """The most likely label in ``0 .. n_way - 1`` for each query image."""
        return self.scores(query_images).argmax(dim=-1)

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step of an episodic method: ``(loss, accuracy)`` on one training episode.

        ``loss`` is differentiable with respect to the method's weights (what
        :func:`helpers.training.train_episodic` minimises), ``accuracy`` the fraction of the
        episode's queries labelled correctly. The episode is already on the method's device.
        """
        raise NotImplementedError(f"{type(self).__name__} is not trained episodically: it has no episode_loss.")


class PixelNearestNeighbour(FewShotMethod):
    """Nearest neighbour in raw pixel space: the baseline every learned method must beat.

    A query takes the label of the single most similar support image (1-NN), by cosine
    similarity of the flattened pixels (``metric="cosine"``, as in Vinyals et al.) or by
    negative Euclidean distance (``metric="euclidean"``). A class's score is the best
    similarity among its support images.
    """

    def __init__(self, metric: str = "cosine") -> None:
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}.")
        self.metric = metric

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        self.support = support_images.flatten(start_dim=1)
        self.support_labels = support_labels
        self.n_way = int(support_labels.max()) + 1

    def similarity(self, query_images: torch.Tensor) -> torch.Tensor:
        """``(n_query, n_support)`` similarity of every query to every support image."""
        queries = query_images.flatten(start_dim=1)
        if self.metric == "cosine":
            return F.normalize(queries, dim=1) @ F.normalize(self.support, dim=1).T
        return -torch.cdist(queries, self.support)

    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        similarity = self.similarity(query_images)
        best = torch.full((len(similarity), self.n_way), -math.inf, device=similarity.device)
        index = self.support_labels.to(similarity.device).expand_as(similarity)
        return best.scatter_reduce(1, index, similarity, reduce="amax")


@dataclass
class EvalResult:
    """Mean accuracy over episodes with the half-width of its 95 % confidence interval."""

    mean: float
    ci95: float
    accuracies: np.ndarray

    @property
    def n_episodes(self) -> int:
        return len(self.accuracies)

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.ci95:.1f} % ({self.n_episodes} episodes)"


def confidence_interval(values: Iterable[float]) -> tuple[float, float]:
    """Mean and 95 % half-width, ``1.96 * std / sqrt(n)`` (normal approximation, n-1 in std)."""
    values = np.asarray(list(values), dtype=float)
    if len(values) == 0:
        raise ValueError("confidence_interval needs at least one value.")
    if len(values) == 1:
        return float(values[0]), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def episode_accuracy(method: FewShotMethod, episode: Episode) -> float:
    """Fraction of one episode's queries that ``method`` labels correctly."""
    episode = episode.to(method.device)
    method.process_support_set(episode.support_images, episode.support_labels)
    with torch.no_grad():
        predictions = method.predict(episode.query_images)
    return float((predictions == episode.query_labels).float().mean())


def evaluate(method: FewShotMethod, episodes: Iterable[Episode], progress: bool = True, desc: str = "evaluating") -> EvalResult:
    """Accuracy of ``method`` on each episode, averaged, with a 95 % confidence interval."""
    from tqdm.auto import tqdm

    # Iterated, never copied into a list: an EpisodeList reads each episode's pixels as it comes.
    total = len(episodes) if isinstance(episodes, Sized) else None
    accuracies = np.array([episode_accuracy(method, e) for e in tqdm(episodes, total=total, desc=desc, disable=not progress, leave=False)])
    if not len(accuracies):
        raise ValueError("evaluate needs at least one episode.")
    mean, ci95 = confidence_interval(accuracies)
    return EvalResult(mean, ci95, accuracies)
