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
    def process_support_set(
        self, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> None:
        """Take the support set: images ``(n_way * k_shot, 1, H, W)``, labels ``(n_way * k_shot,)``."""

    @abc.abstractmethod
    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        """Class scores ``(n_query_total, n_way)`` for query images ``(n_query_total, 1, H, W)``."""

    def predict(self, query_images: torch.Tensor) -> torch.Tensor:
        """The most likely label in ``0 .. n_way - 1`` for each query image."""
        return self.scores(query_images).argmax(dim=-1)

    def check_support(
        self, support_images, support_labels
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(images, labels, n_way)`` after checking a support set (one read of its values)."""
        images = validation.images(
            "support_images",
            support_images,
            self.image_shape,
            device=self.device,
            check_values=False,
        )
        labels = validation.labels(
            "support_labels",
            support_labels,
            len(images),
            images_name="support_images",
            device=images.device,
            check_values=False,
        )
        n_way = validation.check_pixel_values("support_images", images, "support_labels", labels)
        return images, labels, n_way

    def check_queries(self, query_images) -> torch.Tensor:
        """The query images after checking them; they must have the support images' shape."""
        shape, source = (
            (self.image_shape, "this method takes")
            if self.image_shape is not None
            else (self.__dict__.get("_support_shape"), "the support set has")
        )
        return validation.images(
            "query_images", query_images, shape, device=self.device, shape_source=source
        )

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step of an episodic method: ``(loss, accuracy)`` on one training episode.

        ``loss`` is differentiable with respect to the method's weights (what
        :func:`helpers.training.train_episodic` minimises), ``accuracy`` the fraction of the
        episode's queries labelled correctly. The episode is already on the method's device.
        """
        raise NotImplementedError(
            f"{type(self).__name__} is not trained episodically: it has no episode_loss."
        )


def _checking_support(process):
    """``process_support_set`` that checks its inputs first (once, even when it calls its parent's)."""

    @functools.wraps(process)
    def process_support_set(self, support_images, support_labels):
        if self.__dict__.get(
            "_inside_checked_call"
        ):  # a subclass's method calling its parent's: checked already
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
            raise NoSupportSet(
                f"{type(self).__name__}.scores was called before process_support_set; give the method "
                "an episode's support set first: method.process_support_set(support_images, support_labels)."
            )
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

    def process_support_set(
        self, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> None:
        self.support = support_images.flatten(start_dim=1)
        self.support_labels = support_labels
        self.n_way = int(support_labels.max()) + 1

    def similarity(self, query_images: torch.Tensor) -> torch.Tensor:
        """``(n_query, n_support)`` similarity of every query to every support image."""
        queries = query_images.flatten(start_dim=1)
        if self.metric == "cosine":
            return cosine_similarity(queries, self.support)
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


def evaluate(
    method: FewShotMethod,
    episodes: Iterable[Episode],
    progress: bool = True,
    desc: str = "evaluating",
) -> EvalResult:
    """Accuracy of ``method`` on each episode, averaged, with a 95 % confidence interval.

    ``episodes`` is a finite collection (a list, ``sampler.take(n)``, ``sample_episodes(...)``,
    a generator); an endless sampler is refused with one sentence instead of running forever.
    """
    from tqdm.auto import tqdm

    episodes = validation.episodes(episodes)
    # Iterated, never copied into a list: an EpisodeList reads each episode's pixels as it comes.
    total = len(episodes) if isinstance(episodes, Sized) else None
    accuracies = np.array(
        [
            episode_accuracy(method, e)
            for e in tqdm(episodes, total=total, desc=desc, disable=not progress, leave=False)
        ]
    )
    if not len(accuracies):
        raise ValueError("evaluate needs at least one episode.")
    mean, ci95 = confidence_interval(accuracies)
    return EvalResult(mean, ci95, accuracies)


# ----------------------------------------------------------------------------- shared by the methods
# Three ideas that several methods need, written once, here below all of them: the cosine matrix
# (Matching Networks, cosine ProtoNets, the embedding database, zero-shot scores, the pixel
# baseline), class means (prototypes) and a whole image set run through an encoder in batches.


def cosine_similarity(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``s[i, j] = cos(a_i, b_j) = a_i . b_j / (|a_i| |b_j|)``: rows ``(n, d)`` and ``(m, d)`` -> ``(n, m)``.

    Every row is scaled to unit length first, so the cosines of a row that is all zeros are 0.
    Without ``b`` the rows of ``a`` are compared with each other: ``(n, n)``, symmetric, with 1 on
    the diagonal for every row that is not all zeros.
    """
    _check_rows(a, b)
    a_unit = F.normalize(a, dim=-1)
    b_unit = a_unit if b is None else F.normalize(b, dim=-1)
    return a_unit @ b_unit.T


def _check_rows(a: torch.Tensor, b: torch.Tensor | None) -> None:
    for name, rows in (("a", a), ("b", a if b is None else b)):
        if rows.dim() != 2:
            raise ValueError(
                f"{name} must be a matrix with one vector per row, got shape {tuple(rows.shape)}; reshape it to (n, d)."
            )
    if b is not None and a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have rows of one length, got shapes {tuple(a.shape)} and {tuple(b.shape)}; compare vectors of the same dimension."
        )


def prototypes(
    embeddings: torch.Tensor, labels: torch.Tensor, n_way: int | None = None
) -> torch.Tensor:
    """Class means ``(n_way, dim)`` of ``embeddings (n, dim)`` labelled ``0 .. n_way - 1``.

    Row k is the prototype of class k, ``c_k = 1/|S_k| * sum_{i: y_i = k} f(x_i)`` (Snell et
    al.), computed for all classes at once as one-hot labels times embeddings over the counts.
    ``n_way`` defaults to the largest label + 1; a class with no embedding is refused.
    """
    labels = torch.as_tensor(labels).to(embeddings.device)
    n_way = _check_labels(embeddings, labels, n_way)
    one_hot = F.one_hot(labels, n_way).to(embeddings.dtype)  # (n, n_way)
    counts = one_hot.sum(dim=0)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"every class needs at least one support example; classes {missing} have none."
        )
    return (one_hot.T @ embeddings) / counts[:, None]


def _check_labels(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int | None) -> int:
    """``n_way`` (the largest label + 1 when ``None``), once the labels fit the embeddings."""
    if len(labels) != len(embeddings) or not len(labels):
        raise ValueError(
            f"labels must give one label to each of the {len(embeddings)} embeddings, got {len(labels)} labels."
        )
    n_way = int(labels.max()) + 1 if n_way is None else int(n_way)
    if int(labels.min()) < 0 or int(labels.max()) >= n_way:
        raise ValueError(
            f"labels must lie in 0 .. n_way - 1 = {n_way - 1}, got labels from {int(labels.min())} to {int(labels.max())}."
        )
    return n_way


@torch.no_grad()
def embed_in_batches(
    encoder: torch.nn.Module,
    images,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "embedding",
) -> torch.Tensor:
    """``encoder(images)`` ``(n, dim)``, ``batch_size`` images at a time, in eval mode, without gradients.

    ``images`` are uint8 ``(n, H, W)`` (a dataset's ``.images``, NumPy or torch), turned into
    floats ``(n, 1, H, W)`` one batch at a time by :func:`helpers.episodes.float_images` (the
    pixels of an episode, exactly), or floats ``(n, 1, H, W)``, used as they are. Batches go to
    ``device`` (default: where the encoder's weights are), and the embeddings stay there.

    In eval mode batch norm uses its stored statistics, so an image's embedding does not depend
    on the other images of its batch: a test split embedded once, with each episode's rows read
    off it, scores as running every episode would. Every module of the encoder is left in the
    mode it was in.
    """
    from tqdm.auto import tqdm

    from .episodes import float_images
    from .validation import whole_number

    whole_number("batch_size", batch_size, 1)
    images = (
        images if isinstance(images, torch.Tensor) else np.asarray(images)
    )  # NumPy stays NumPy: no read-only tensors
    pixels = images.dtype in (torch.uint8, np.uint8)
    if not (
        pixels
        or images.dtype
        in (torch.float16, torch.bfloat16, torch.float32, torch.float64, np.float32, np.float64)
    ):
        raise ValueError(
            f"images must be uint8 pixels (n, H, W) or floats (n, 1, H, W), got dtype {images.dtype}; convert them to one of these."
        )
    if not len(images):
        raise ValueError("images must hold at least one image, got none.")
    device = (
        torch.device(device)
        if device is not None
        else next(encoder.parameters(), torch.empty(0)).device
    )
    modes = [
        (module, module.training) for module in encoder.modules()
    ]  # each part's own, e.g. a frozen inner encoder
    encoder.eval()
    chunks = []
    try:
        for start in tqdm(
            range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False
        ):
            batch = images[start : start + batch_size]
            batch = (
                float_images(batch)
                if pixels
                else torch.as_tensor(np.array(batch) if isinstance(batch, np.ndarray) else batch)
            )
            chunks.append(encoder(batch.to(device)))
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(chunks)
