"""Class splits and N-way K-shot episodes.

An *episode* imitates the test we will face: ``n_way`` classes never seen together before,
``k_shot`` labelled images of each (the support set) and ``n_query`` more of each to classify
(the query set). Labels are re-numbered ``0 .. n_way - 1`` inside every episode, so a model
cannot memorise which class is which: it has to use the support set.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import datasets, validation
from .validation import seed as _checked_seed

OMNIGLOT_SPLITS = (
    "background",
    "evaluation",
    "vinyals-train",
    "vinyals-val",
    "vinyals-trainval",
    "vinyals-test",
)
#: Classes in each Omniglot split (rotations count as classes in the Vinyals splits), and the
#: drawings of every class: what the training commands check their settings against before
#: loading any data (``tests/test_episodes.py`` checks these numbers against the data).
OMNIGLOT_CLASSES = {
    "background": 964,
    "evaluation": 659,
    "vinyals-train": 4112,
    "vinyals-val": 688,
    "vinyals-trainval": 4800,
    "vinyals-test": 1692,
}
OMNIGLOT_DRAWINGS = 20


class EpisodeError(validation.ParameterError):
    """An episode that cannot be drawn from the data (too many ways, shots or queries); a ``ValueError``."""


@dataclass
class FewShotDataset:
    """Images grouped by class, ready for episode sampling.

    ``images`` is ``(n_images, height, width)`` uint8, ``labels`` is ``(n_images,)`` with
    values in ``0 .. n_classes - 1``, and ``class_names[c]`` names class ``c``.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{self.name}: {len(self.images)} images but {len(self.labels)} labels."
            )
        order = np.argsort(self.labels, kind="stable")
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        self._members = np.split(order, np.cumsum(counts)[:-1])
        # the same indices as a padded (n_classes, largest class) table, for vectorised sampling
        self._sizes = counts
        self._table = np.zeros((len(counts), max(int(counts.max(initial=0)), 1)), dtype=np.int64)
        for c, members in enumerate(self._members):
            self._table[c, : len(members)] = members

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def class_sizes(self) -> np.ndarray:
        """Number of images of each class."""
        return np.array([len(m) for m in self._members])

    def members(self, class_id: int) -> np.ndarray:
        """Indices into :attr:`images` of every image of class ``class_id``."""
        return self._members[class_id]

    def episode(
        self,
        class_ids: np.ndarray,
        support_indices: np.ndarray,
        query_indices: np.ndarray,
        pixels: bool = True,
    ) -> Episode:
        """The :class:`Episode` of these classes and image rows (grouped by class, in label order).

        With ``pixels=False`` its images are ``(n, 1, 1, 1)`` zeros: an episode of indices and
        labels only, for methods that read embeddings by row (:func:`sampled_episodes`).
        """
        n_way = len(class_ids)
        images = float_images if pixels else _no_pixels
        return Episode(
            images(self.images[support_indices]),
            torch.arange(n_way).repeat_interleave(len(support_indices) // n_way),
            images(self.images[query_indices]),
            torch.arange(n_way).repeat_interleave(len(query_indices) // n_way),
            class_ids,
            tuple(self.class_names[c] for c in class_ids),
            support_indices,
            query_indices,
        )

    def subset(self, class_ids: Sequence[int], name: str | None = None) -> FewShotDataset:
        """A dataset holding only ``class_ids`` (renumbered in the order given)."""
        class_ids = list(class_ids)
        index = (
            np.concatenate([self._members[c] for c in class_ids])
            if class_ids
            else np.array([], dtype=int)
        )
        labels = (
            np.concatenate([np.full(len(self._members[c]), i) for i, c in enumerate(class_ids)])
            if class_ids
            else index
        )
        return FewShotDataset(
            name or f"{self.name}[{len(class_ids)} classes]",
            self.images[index],
            labels.astype(np.int64),
            tuple(self.class_names[c] for c in class_ids),
        )

    def __repr__(self) -> str:
        sizes = self.class_sizes()
        return (
            f"FewShotDataset({self.name!r}: {self.n_classes} classes, {len(self.images)} images of "
            f"{self.images.shape[1]}x{self.images.shape[2]}, {sizes.min()}-{sizes.max()} per class)"
        )


def omniglot_dataset(split: str = "vinyals-test", image_size: int = 28) -> FewShotDataset:
    """Omniglot classes of one split.

    * ``"background"`` / ``"evaluation"``: the 964 / 659 characters of the 30 background and
      20 evaluation alphabets (Lake et al.), no rotations.
    * ``"vinyals-train" | "vinyals-val" | "vinyals-trainval" | "vinyals-test"``: the split of
      Vinyals et al. used by Prototypical Networks, each character rotated by 0/90/180/270
      degrees as four classes (trainval: 1,200 characters, 4,800 classes; test: 423
      characters, 1,692 classes).
    """
    validation.one_of("split", split, OMNIGLOT_SPLITS)
    omniglot = datasets.load_omniglot(image_size)
    if split in ("background", "evaluation"):
        rows = np.flatnonzero(omniglot.background == (split == "background"))
        blocks = omniglot.images[rows]
        names = tuple(omniglot.characters[r] for r in rows)
    else:
        classes = datasets.load_vinyals_split(split.removeprefix("vinyals-"))
        where = omniglot.index()
        blocks = np.empty((len(classes), *omniglot.images.shape[1:]), dtype=np.uint8)
        for i, name in enumerate(classes):
            character, rotation = name.rsplit("/", 1)
            # rot090 turns the drawing a quarter turn counter-clockwise, like PIL's rotate(90)
            blocks[i] = np.rot90(
                omniglot.images[where[character]], k=int(rotation[3:]) // 90, axes=(1, 2)
            )
        names = tuple(classes)
    n_classes, per_class = blocks.shape[:2]
    return FewShotDataset(
        f"omniglot/{split}",
        blocks.reshape(n_classes * per_class, image_size, image_size),
        np.repeat(np.arange(n_classes), per_class),
        names,
    )


def held_out_alphabets(
    alphabets: Sequence[str], count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` of the distinct names in ``alphabets``, drawn by ``rng`` from their sorted list.

    The one place that chooses which Omniglot background alphabets a run holds out:
    ``python -m helpers.siamese`` draws its validation alphabets here with the run's first
    random draw, and :func:`helpers.one_shot.background_classes` repeats that draw for a run
    (``python -m helpers.one_shot --hold-out-alphabets``) that must leave the same ones out.
    """
    names = np.unique(np.asarray(alphabets))
    validation.whole_number("count", count, 0, len(names))
    if not count:
        return names[:0]
    return names[rng.choice(len(names), count, replace=False)]


def mnist_dataset(
    variant: str = "mnist", train: bool = True, classes: Sequence[int] | None = None
) -> FewShotDataset:
    """MNIST or Fashion-MNIST (``variant="fashion-mnist"``) as a :class:`FewShotDataset`.

    ``classes`` keeps only those digits (or garments), e.g. to hold some out of training.
    """
    data = datasets.load_mnist(variant)
    images, labels = (
        (data.train_images, data.train_labels) if train else (data.test_images, data.test_labels)
    )
    full = FewShotDataset(
        f"{variant}/{'train' if train else 'test'}", images, labels, data.class_names
    )
    if classes is None:
        return full
    return full.subset(classes, name=f"{full.name}{list(classes)}")


@dataclass
class Episode:
    """One N-way K-shot task.

    ``support_images``: ``(n_way * k_shot, 1, H, W)`` floats in [0, 1];
    ``support_labels``: ``(n_way * k_shot,)`` in ``0 .. n_way - 1``;
    ``query_images``: ``(n_way * n_query, 1, H, W)``; ``query_labels``: ``(n_way * n_query,)``;
    ``class_ids``: the dataset classes behind labels ``0 .. n_way - 1``;
    ``support_indices`` / ``query_indices``: which dataset images were drawn.
    """

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    class_ids: np.ndarray
    class_names: tuple[str, ...]
    support_indices: np.ndarray | None = None  # rows of the dataset's images, for plots and checks
    query_indices: np.ndarray | None = None

    @property
    def n_way(self) -> int:
        return len(self.class_ids)

    @property
    def k_shot(self) -> int:
        return len(self.support_labels) // self.n_way

    @property
    def n_query(self) -> int:
        return len(self.query_labels) // self.n_way

    def to(self, device: torch.device | str) -> Episode:
        """The same episode with its tensors on ``device``."""
        return replace(
            self,
            support_images=self.support_images.to(device),
            support_labels=self.support_labels.to(device),
            query_images=self.query_images.to(device),
            query_labels=self.query_labels.to(device),
        )


def check_episode_settings(dataset: FewShotDataset, n_way: int, k_shot: int, n_query: int) -> None:
    """Raise :class:`EpisodeError` naming the parameter, its value and the limit, if impossible.

    ``n_way`` must be a whole number from 2 to the dataset's classes, ``k_shot`` and ``n_query``
    whole numbers >= 1 that together fit in the smallest class (Omniglot: 20 drawings, so
    ``k_shot=6, n_query=1`` is fine and ``k_shot=6, n_query=15`` is not).
    """
    _whole("n_way", n_way, 2)
    _whole("k_shot", k_shot, 1)
    _whole("n_query", n_query, 1)
    if n_way > dataset.n_classes:
        raise EpisodeError(
            f"n_way={n_way} is more than the {dataset.n_classes} classes in {dataset.name}; use n_way <= {dataset.n_classes}."
        )
    smallest = int(dataset.class_sizes().min())
    if k_shot + n_query > smallest:
        raise EpisodeError(
            f"k_shot + n_query = {k_shot} + {n_query} = {k_shot + n_query} is more than the {smallest} images "
            f"a class of {dataset.name} has; use k_shot + n_query <= {smallest}."
        )


def _whole(name: str, value: object, low: int) -> int:
    """:func:`helpers.validation.whole_number`, raising :class:`EpisodeError`."""
    try:
        return validation.whole_number(name, value, low)
    except validation.ParameterError as exc:
        raise EpisodeError(str(exc)) from None


class EpisodeSampler:
    """Draws N-way K-shot episodes from a :class:`FewShotDataset`, reproducibly.

    >>> sampler = EpisodeSampler(omniglot_dataset("evaluation"), n_way=5, k_shot=1, n_query=15, seed=0)
    >>> episode = sampler.sample()  # doctest: +SKIP

    Classes in an episode are distinct, and support and query images never overlap. The same
    ``seed`` gives the same sequence of episodes, so methods can be compared on identical tasks.
    """

    def __init__(
        self, dataset: FewShotDataset, n_way: int, k_shot: int, n_query: int, seed: int | None = 0
    ) -> None:
        check_episode_settings(dataset, n_way, k_shot, n_query)
        self.dataset, self.n_way, self.k_shot, self.n_query = (
            dataset,
            int(n_way),
            int(k_shot),
            int(n_query),
        )
        self.rng = np.random.default_rng(None if seed is None else _checked_seed(seed))

    def sample(self) -> Episode:
        return self.dataset.episode(*self.draw())

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next episode as indices only: its classes, support rows and query rows.

        ``sample()`` is ``dataset.episode(*draw())``; both advance the same random stream. This is
        the one place where episodes are drawn: :func:`sample_episodes`, :func:`sampled_episodes`
        and :class:`helpers.training.DeviceEpisodeSampler` all call it.
        """
        classes = self.rng.choice(self.dataset.n_classes, size=self.n_way, replace=False)
        per_class = self.k_shot + self.n_query
        # one random key per (class, member); padding gets +inf so it is never among the smallest
        sizes = self.dataset._sizes[classes]
        keys = self.rng.random((self.n_way, self.dataset._table.shape[1]))
        keys[np.arange(keys.shape[1]) >= sizes[:, None]] = np.inf
        chosen = np.argsort(keys, axis=1)[
            :, :per_class
        ]  # a uniform draw without replacement per class
        picks = np.take_along_axis(self.dataset._table[classes], chosen, axis=1)
        return classes, picks[:, : self.k_shot].reshape(-1), picks[:, self.k_shot :].reshape(-1)

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()

    def take(self, count: int) -> list[Episode]:
        """The next ``count`` episodes, as a list (e.g. a fixed evaluation set)."""
        return [self.sample() for _ in range(_whole("count", count, 1))]


#: The float of every uint8 pixel value, ``v / 255``, divided on the CPU (correctly rounded).
_PIXEL_VALUES = torch.arange(256, dtype=torch.float32) / 255.0


@functools.cache
def _pixel_values(device: torch.device) -> torch.Tensor:
    return _PIXEL_VALUES.to(device)


def float_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images ``(n, H, W)`` -> floats ``(n, 1, H, W)`` in [0, 1], ``v / 255``, on the images' device.

    The one conversion of the course's pixels (episodes, the device sampler, batched embedding),
    and the same floats on every device: on the CPU it divides (no temporary beyond the result,
    for whole datasets); elsewhere it reads the 256 CPU quotients off a table, because CUDA
    divides a tensor by a number by multiplying with its reciprocal, which rounds 126 of the 256
    values one step differently.
    """
    if not isinstance(
        images, torch.Tensor
    ):  # NumPy: one float copy (a read-only array is fine too)
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 pixels (a dataset's .images), got dtype {images.dtype}; use float_images only on uint8 images."
            )
        return torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    if images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 pixels (a dataset's .images), got dtype {images.dtype}; use float_images only on uint8 images."
        )
    if images.device.type == "cpu":
        return images.float().div_(255.0).unsqueeze(1)
    return _pixel_values(images.device)[images.long()].unsqueeze(1)


def _no_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.zeros((len(images), 1, 1, 1))


class EpisodeList(Sequence[Episode]):
    """A fixed list of episodes that keeps only their image indices.

    Indexing or iterating gives full :class:`Episode` objects, their pixels read from the dataset
    at that moment, so a thousand 20-way 5-shot episodes take kilobytes, not the 600 MB their
    float images would. The episodes are the same on every pass.
    """

    def __init__(
        self, dataset: FewShotDataset, draws: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> None:
        self.dataset, self._draws = dataset, list(draws)

    def __len__(self) -> int:
        return len(self._draws)

    def __getitem__(self, index):  # an int gives an Episode, a slice another EpisodeList
        if isinstance(index, slice):
            return EpisodeList(self.dataset, self._draws[index])
        return self.dataset.episode(*self._draws[index])

    def __repr__(self) -> str:
        return f"EpisodeList({len(self)} episodes of {self.dataset.name})"


def sample_episodes(
    dataset: FewShotDataset, n_way: int, k_shot: int, n_query: int, count: int, seed: int = 0
) -> EpisodeList:
    """A fixed, seeded list of ``count`` episodes: the same tasks for every method compared.

    They are the first ``count`` episodes of ``EpisodeSampler(dataset, ..., seed=seed)``.
    """
    sampler = EpisodeSampler(dataset, n_way, k_shot, n_query, seed=seed)
    return EpisodeList(dataset, [sampler.draw() for _ in range(_whole("count", count, 1))])


def sampled_episodes(
    dataset: FewShotDataset, n_way: int, k_shot: int, n_query: int, count: int, seed: int = 0
) -> Iterator[Episode]:
    """The episodes of ``sample_episodes(dataset, ...)``, one at a time, *without their pixels*.

    Each has the same classes, labels and ``support_indices`` / ``query_indices`` as the one
    :class:`EpisodeSampler` draws with this ``seed``, and ``(n, 1, 1, 1)`` zeros for images:
    all that a method reading embeddings by row needs (no image is copied or converted).
    Impossible settings are refused here, before the first episode is asked for.
    """
    sampler = EpisodeSampler(dataset, n_way, k_shot, n_query, seed=seed)
    return (dataset.episode(*sampler.draw(), pixels=False) for _ in range(count))
