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
import functools
import math
from collections.abc import Iterable, Sized
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import validation
from .episodes import Episode


class NoSupportSet(RuntimeError):
    """``scores`` (or ``predict``) was called before ``process_support_set``."""


class FewShotMethod(abc.ABC):
    """Base class: subclasses implement :meth:`process_support_set` and :meth:`scores`.

    Every method's inputs are checked here, once, before the subclass sees them (the subclass's
    two methods are wrapped when the class is defined; :meth:`check_support` and
    :meth:`check_queries` say what is checked). Images must be float tensors (or NumPy arrays,
    converted) of shape ``(n, C, H, W)`` with finite pixels in [0, 1], and the ``(C, H, W)``
    of :attr:`image_shape` when the method declares one; support labels must number the classes
    ``0 .. n_way - 1``, every class present, one label per image; queries must look like the
    support images; and ``scores`` needs a support set first. Each failure is one sentence.

    ``device`` is where :func:`evaluate` puts each episode's tensors before calling the method.
    """

    device: torch.device = torch.device("cpu")
    #: ``(C, H, W)`` of the images the method takes, or ``None`` for any (the queries must still
    #: match the support set). Methods built on a network take the network's
    #: (:func:`declared_image_shape`: Conv-4 declares ``(1, 28, 28)``).
    image_shape: tuple[int, int, int] | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "process_support_set" in own:
            cls.process_support_set = _checking_support(own["process_support_set"])
        if "scores" in own:
            cls.scores = _checking_queries(own["scores"])

    @abc.abstractmethod
    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Take the support set: images ``(n_way * k_shot, 1, H, W)``, labels ``(n_way * k_shot,)``."""

    @abc.abstractmethod
    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        """Class scores ``(n_query_total, n_way)`` for query images ``(n_query_total, 1, H, W)``."""

    def predict(self, query_images: torch.Tensor) -> torch.Tensor:
        """The most likely label in ``0 .. n_way - 1`` for each query image."""
        return self.scores(query_images).argmax(dim=-1)

    def check_support(self, support_images, support_labels) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(images, labels, n_way)`` after checking a support set (one read of its values)."""
        images = validation.images("support_images", support_images, self.image_shape, device=self.device, check_values=False)
        labels = validation.labels("support_labels", support_labels, len(images), images_name="support_images",
                                   device=images.device, check_values=False)
        n_way = validation.check_pixel_values("support_images", images, "support_labels", labels)
        return images, labels, n_way

    def check_queries(self, query_images) -> torch.Tensor:
        """The query images after checking them; they must have the support images' shape."""
        shape, source = (self.image_shape, "this method takes") if self.image_shape is not None else (
            self.__dict__.get("_support_shape"), "the support set has")
        return validation.images("query_images", query_images, shape, device=self.device, shape_source=source)


def _checking_support(process):
    """``process_support_set`` that checks its inputs first (once, even when it calls its parent's)."""

    @functools.wraps(process)
    def process_support_set(self, support_images, support_labels):
        if self.__dict__.get("_inside_checked_call"):  # a subclass's method calling its parent's: checked already
            return process(self, support_images, support_labels)
        self.__dict__["_support_shape"] = None
        images, labels, _ = self.check_support(support_images, support_labels)
        self.__dict__["_inside_checked_call"] = True
        try:
            result = process(self, images, labels)
        finally:
            self.__dict__["_inside_checked_call"] = False
        self.__dict__["_support_shape"] = tuple(images.shape[1:])
        return result

    return process_support_set


def _checking_queries(scores):
    """``scores`` that refuses to run without a support set and checks the query images first."""

    @functools.wraps(scores)
    def checked_scores(self, query_images):
        if self.__dict__.get("_inside_checked_call"):
            return scores(self, query_images)
        if self.__dict__.get("_support_shape") is None:
            raise NoSupportSet(f"{type(self).__name__}.scores was called before process_support_set; give the method "
                               "an episode's support set first: method.process_support_set(support_images, support_labels).")
        images = self.check_queries(query_images)
        self.__dict__["_inside_checked_call"] = True
        try:
            return scores(self, images)
        finally:
            self.__dict__["_inside_checked_call"] = False

    return checked_scores


def declared_image_shape(network) -> tuple[int, int, int] | None:
    """The ``(C, H, W)`` that the first part of ``network`` declaring one takes, or ``None``.

    :class:`helpers.nets.Conv4` declares ``(in_channels, 28, 28)``: the size it shrinks to one
    embedding per image. Any ``nn.Module`` (or object with ``modules()``) is searched.
    """
    parts = network.modules() if hasattr(network, "modules") else [network]
    for part in parts:
        shape = getattr(part, "image_shape", None)
        if shape is not None:
            return tuple(int(s) for s in shape)
    return None


class PixelNearestNeighbour(FewShotMethod):
    """Nearest neighbour in raw pixel space: the baseline every learned method must beat.

    A query takes the label of the single most similar support image (1-NN), by cosine
    similarity of the flattened pixels (``metric="cosine"``, as in Vinyals et al.) or by
    negative Euclidean distance (``metric="euclidean"``). A class's score is the best
    similarity among its support images.
    """

    def __init__(self, metric: str = "cosine") -> None:
        self.metric = validation.one_of("metric", metric, ("cosine", "euclidean"))

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
    """Accuracy of ``method`` on each episode, averaged, with a 95 % confidence interval.

    ``episodes`` is a finite collection (a list, ``sampler.take(n)``, ``sample_episodes(...)``,
    a generator); an endless sampler is refused with one sentence instead of running forever.
    """
    from tqdm.auto import tqdm

    episodes = validation.episodes(episodes)
    # Iterated, never copied into a list: an EpisodeList reads each episode's pixels as it comes.
    total = len(episodes) if isinstance(episodes, Sized) else None
    accuracies = np.array([episode_accuracy(method, e) for e in tqdm(episodes, total=total, desc=desc, disable=not progress, leave=False)])
    if not len(accuracies):
        raise ValueError("evaluate needs at least one episode.")
    mean, ci95 = confidence_interval(accuracies)
    return EvalResult(mean, ci95, accuracies)
