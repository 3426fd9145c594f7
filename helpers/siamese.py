"""Siamese twins in Keras 3: same/different pairs, one shared base network, an L1 distance.

The worked example of chapter 10 ("Meta Learning") of Ivan Vasilev's *Advanced Deep Learning with
Python* (Packt, 2019), "the chapter" below, rewritten for today's Keras (TensorFlow is the default
backend; everything also runs with ``KERAS_BACKEND=torch``)::

    left image  -> base network h -> h(x1) --+
                                             |-- |h(x1) - h(x2)| -> Dense(1, sigmoid) -> p(same)
    right image -> base network h -> h(x2) --+      (L1Distance)

Both branches call the *same* layer objects, so they share one set of weights. Training is
binary classification of pairs (1 = same class, 0 = different) with cross-entropy.
:func:`contrastive_loss` is the other classic loss for pairs (Hadsell, Chopra & LeCun, 2006),
on a distance instead of a probability.

After training, :class:`SiameseOneShot` turns the twin into an N-way one-shot classifier
behind the course's :class:`~helpers.fewshot.FewShotMethod` interface: pair each query with
every support image and pick the class of the most similar one.

Run ``python -m helpers.siamese --help`` for the command that trains the committed Omniglot
checkpoint (a reduced Koch et al. convolutional twin).
"""

from __future__ import annotations

import os

# TensorFlow is the default backend; a notebook or test may choose torch before importing us.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import json  # noqa: E402
import time  # noqa: E402
import weakref  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# the validation constraints, as "rules": train_siamese has an argument named validation
from . import validation as rules  # noqa: E402
from .device import quiet_tensorflow, set_tensorflow_threads  # noqa: E402
from .fewshot import FewShotMethod  # noqa: E402

with quiet_tensorflow():  # TensorFlow's start-up log would fill a notebook with stderr boxes
    import keras

# TensorFlow sizes its thread pools from every visible core when it first runs; give it the
# threads that torch was given (helpers.device.setup), chosen from the CPUs really available.
set_tensorflow_threads(torch.get_num_threads())

# --------------------------------------------------------------------------------------------
# Pairs


@dataclass
class Pairs:
    """Index pairs into an image array: ``left[i]`` and ``right[i]`` with ``same[i]`` in {0, 1}.

    ``anchor_class[i]`` is the class of ``left[i]``: the class the pair was built for.
    """

    left: np.ndarray
    right: np.ndarray
    same: np.ndarray
    anchor_class: np.ndarray

    def __len__(self) -> int:
        return len(self.same)

    def images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pair images as floats in [0, 1]: two arrays ``(n_pairs, H, W)``."""
        return as_float(images[self.left]), as_float(images[self.right])

    def stored_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pair images as stored (uint8 stays uint8, a quarter of the floats' memory)."""
        return images[self.left], images[self.right]


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1] (float input is returned as float32 unchanged)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def make_pairs(
    labels: np.ndarray,
    pairs_per_class: int | None = None,
    seed: int | None = 0,
    groups: np.ndarray | None = None,
    same_group_fraction: float = 0.0,
) -> Pairs:
    """Balanced same/different pairs, built class by class and alternating same, different.

    For every class ``c`` its members are shuffled, then for ``i = 0 .. n - 1``:

    * a *same* pair ``(m[i], m[i + 1])``: two different images of ``c`` (label 1);
    * a *different* pair ``(m[i], x)`` with ``x`` an image of another class (label 0), the
      other class drawn uniformly from all classes but ``c``.

    So every class anchors exactly ``n`` same and ``n`` different pairs, and the whole set is
    half same, half different. ``n`` defaults to the smallest class size minus one (the most
    that every class can give). ``groups`` (one group id per class, e.g. Omniglot alphabets)
    with ``same_group_fraction > 0`` draws that fraction of the different pairs from another
    class of the same group: harder negatives.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError(
            f"make_pairs needs at least 2 classes to build different pairs, got {len(classes)}."
        )
    largest_n = int(counts.min()) - 1
    if largest_n < 1:
        raise ValueError(
            f"make_pairs needs at least 2 images of every class to build same pairs; the smallest class has {largest_n + 1}."
        )
    n = (
        largest_n
        if pairs_per_class is None
        else rules.whole_number("pairs_per_class", pairs_per_class, 1, largest_n)
    )
    rules.number_in_range("same_group_fraction", same_group_fraction, 0, 1)
    rng = rules.numpy_rng(seed)
    members = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    left, right, same, anchor = [], [], [], []
    for position, c in enumerate(classes):
        m = members[c]
        partners = _other_classes(classes, position, n, rng, groups, same_group_fraction)
        for i in range(n):
            left += [m[i], m[i]]
            right += [m[i + 1], rng.choice(members[partners[i]])]
            same += [1, 0]
            anchor += [c, c]
    return Pairs(
        np.array(left), np.array(right), np.array(same, dtype=np.float32), np.array(anchor)
    )


def _other_classes(classes, position, n, rng, groups, same_group_fraction) -> np.ndarray:
    """``n`` classes other than ``classes[position]``, some from its group if asked."""
    # shifting by 1 .. n_classes - 1 places never lands on the class itself
    others = classes[(position + rng.integers(1, len(classes), size=n)) % len(classes)]
    if groups is None or same_group_fraction == 0.0:
        return others
    groups = np.asarray(groups)
    mates = classes[(groups == groups[position]) & (classes != classes[position])]
    if len(mates):
        use_mate = rng.random(n) < same_group_fraction
        others[use_mate] = rng.choice(mates, size=int(use_mate.sum()))
    return others


# --------------------------------------------------------------------------------------------
# The model


@keras.saving.register_keras_serializable(package="metalearn")
class L1Distance(keras.layers.Layer):
    """``|a - b|`` element by element: the distance the twin's last layer weighs.

    A registered layer (not a ``Lambda``), so a saved ``.keras`` model reloads anywhere.
    """

    def call(self, inputs):
        a, b = inputs
        return keras.ops.abs(a - b)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="metalearn")
class AllPairsL1(keras.layers.Layer):
    """``|h_i - h_j|`` for every two rows of one batch of features: ``(B, F) -> (B, B, F)``.

    The twin's :class:`L1Distance` for all ``B * B`` pairs of a batch at once, so that one
    pass of the tower over ``B`` images trains the head on every pair among them
    (:func:`build_all_pairs_trainer`).
    """

    def call(self, features):
        return keras.ops.abs(
            keras.ops.expand_dims(features, 1) - keras.ops.expand_dims(features, 0)
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[0], input_shape[-1])


def _pair_masks(labels, probabilities):
    """The ``(B, B)`` probabilities of a batch, and its masks of same pairs (not an image with
    itself) and of different pairs, from the ``B`` class labels."""
    labels = keras.ops.reshape(keras.ops.cast(labels, "int32"), (-1,))
    n = keras.ops.shape(labels)[0]
    probabilities = keras.ops.reshape(probabilities, (n, n))
    same = keras.ops.cast(
        keras.ops.equal(keras.ops.expand_dims(labels, 1), keras.ops.expand_dims(labels, 0)),
        probabilities.dtype,
    )
    positive = same * (1.0 - keras.ops.eye(n, dtype=probabilities.dtype))
    return probabilities, same, positive, 1.0 - same


def _balanced_mean(values, positive, negative):
    """Half the mean over the same pairs plus half the mean over the different ones."""
    return 0.5 * (
        keras.ops.sum(values * positive) / keras.ops.maximum(keras.ops.sum(positive), 1.0)
        + keras.ops.sum(values * negative) / keras.ops.maximum(keras.ops.sum(negative), 1.0)
    )


def all_pairs_loss(labels, probabilities):
    """Binary cross-entropy over every pair of a batch, same and different pairs weighted equally.

    ``labels``: the ``B`` images' class labels; ``probabilities``: the twin's ``(B, B, 1)``
    outputs (:func:`build_all_pairs_trainer`). A batch of ``C`` classes with ``k`` images each
    has ``C * k * (k - 1)`` ordered same pairs and ``B * (B - k)`` different ones; weighting
    each kind by half keeps the loss balanced as :func:`make_pairs` does by construction.
    """
    probabilities, same, positive, negative = _pair_masks(labels, probabilities)
    losses = keras.ops.binary_crossentropy(same, probabilities)
    return _balanced_mean(losses, positive, negative)


def all_pairs_accuracy(labels, probabilities):
    """Balanced pair accuracy of a batch: same pairs above 0.5 and different pairs below it."""
    probabilities, same, positive, negative = _pair_masks(labels, probabilities)
    right = keras.ops.cast(keras.ops.equal(probabilities > 0.5, same > 0.5), probabilities.dtype)
    return _balanced_mean(right, positive, negative)


def build_all_pairs_trainer(
    twin: keras.Model, learning_rate: float = 0.001, image_shape: Sequence[int] = (28, 28)
) -> keras.Model:
    """A model that trains ``twin`` on every pair of each batch, compiled with Adam.

    It shares the twin's layers (its tower ``base`` and its head ``similarity``): input a batch
    of ``B`` images, output the ``(B, B, 1)`` same-class probabilities of all pairs,
    ``sigmoid(w . |h(x_i) - h(x_j)| + b)``; the targets are the images' class labels
    (:func:`all_pairs_loss`). Training it trains the twin, which is what is saved and tested.
    """
    learning_rate = rules.positive_number("learning_rate", learning_rate, 0.001)
    images = keras.Input(shape=tuple(image_shape), name="images")
    distances = AllPairsL1(name="all_pairs_l1")(twin.get_layer("base")(images))
    trainer = keras.Model(images, twin.get_layer("similarity")(distances), name="all_pairs")
    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=all_pairs_loss,
        metrics=[keras.metrics.MeanMetricWrapper(all_pairs_accuracy, name="accuracy")],
        steps_per_execution=_steps_per_execution(None),
    )
    return trainer


def all_pairs_batches(
    groups: np.ndarray,
    rng: np.random.Generator,
    batches: int,
    classes_per_batch: int = 32,
    drawings: int = 4,
    alphabets_per_batch: int = 4,
    per_class: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Image rows and class labels for ``batches`` batches of :func:`build_all_pairs_trainer`.

    ``groups`` holds one alphabet id per class; class ``c``'s images are rows
    ``c * per_class .. c * per_class + per_class - 1``. Each batch takes ``classes_per_batch``
    classes, as many as possible from ``alphabets_per_batch`` random alphabets (so many of its
    different pairs are within one alphabet, as in Lake's runs), and ``drawings`` distinct
    drawings of each. Returns ``(rows, labels)``, batch after batch, each ``classes_per_batch *
    drawings`` long.
    """
    groups = np.asarray(groups)
    classes_per_batch = rules.whole_number("classes_per_batch", classes_per_batch, 2, len(groups))
    drawings = rules.whole_number("drawings", drawings, 2, per_class)
    names = np.unique(groups)
    alphabets_per_batch = rules.whole_number(
        "alphabets_per_batch", alphabets_per_batch, 1, len(names)
    )
    rows, labels = [], []
    for _ in range(rules.whole_number("batches", batches, 1)):
        pool = rng.permutation(
            np.flatnonzero(np.isin(groups, rng.choice(names, alphabets_per_batch, replace=False)))
        )
        rest = rng.permutation(np.setdiff1d(np.arange(len(groups)), pool))
        chosen = np.concatenate([pool, rest])[:classes_per_batch]
        picks = np.stack([rng.choice(per_class, drawings, replace=False) for _ in chosen])
        rows.append((chosen[:, None] * per_class + picks).reshape(-1))
        labels.append(np.repeat(chosen, drawings))
    return np.concatenate(rows), np.concatenate(labels)


@keras.saving.register_keras_serializable(package="metalearn")
class EuclideanDistance(keras.layers.Layer):
    """``||a - b||_2`` per row, shape ``(batch, 1)``: the one number the contrastive loss reads.

    The square root is taken of at least ``1e-12``, so its gradient stays finite when the two
    embeddings coincide (a same pair the loss has already pulled together).
    """

    def call(self, inputs):
        a, b = inputs
        squared = keras.ops.sum(keras.ops.square(a - b), axis=-1, keepdims=True)
        return keras.ops.sqrt(keras.ops.maximum(squared, 1e-12))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)


def mlp_base(image_shape: Sequence[int] = (28, 28), dropout: float = 0.1) -> keras.Model:
    """The chapter's base network h: Flatten -> 128 -> 128 -> 64, ReLU, dropout 0.1."""
    return keras.Sequential(
        [
            keras.Input(shape=tuple(image_shape)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(64, activation="relu"),
        ],
        name="base",
    )


def koch_base(
    image_shape: Sequence[int] = (28, 28),
    filters: Sequence[int] = (32, 64, 64),
    features: int = 256,
) -> keras.Model:
    """A reduced Koch et al. (2015) convolutional base for small images.

    Koch: 105x105 inputs, four conv layers (64 10x10, 128 7x7, 128 4x4, 256 4x4) and a
    4096-unit sigmoid layer. Here, for 28x28 inputs and a shared 2-core CPU:
    ``filters[0]`` 5x5 -> pool -> ``filters[1]`` 3x3 -> pool -> ``filters[2]`` 3x3 ->
    ``features`` sigmoid units (ReLU after every convolution, as in Koch).
    """
    return keras.Sequential(
        [
            keras.Input(shape=tuple(image_shape)),
            keras.layers.Reshape((*image_shape, 1)),
            keras.layers.Conv2D(filters[0], 5, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(filters[1], 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(filters[2], 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(features, activation="sigmoid"),
        ],
        name="base",
    )


def conv4_base(
    image_shape: Sequence[int] = (28, 28),
    filters: int = 64,
    blocks: int = 4,
    momentum: float = 0.9,
    epsilon: float = 1e-3,
) -> keras.Model:
    """The Conv-4 tower of the few-shot papers (Vinyals et al. 2016; Snell et al. 2017) in Keras.

    ``blocks`` times: 3x3 convolution of ``filters`` channels ("same" padding, no bias),
    batch normalisation, ReLU, 2x2 max-pooling; then flatten. On 28x28 inputs four blocks
    leave 1x1x``filters``: a ``filters``-dimensional embedding, the same network as notebook
    03's classifier embedding (:class:`helpers.nets.Conv4`, whose convolutions also carry a
    bias, redundant before batch normalisation), here trained on pairs.

    ``momentum`` is batch normalisation's: the running statistics that inference uses move
    ``1 - momentum`` of the way to each batch's. 0.9 is PyTorch's default (its ``momentum=0.1``);
    Keras's own 0.99 lags about 100 steps behind the weights, which showed here: after one
    all-in-batch round of 131 steps a twin validated at 2.3 % (chance is 5 %) with the running
    statistics, while the same weights scored 40 % on Lake's runs with each batch's own
    statistics; with 0.9 the same round validated at 36 %.

    ``epsilon`` is added to the variance before its square root: Keras's 0.001 by default;
    PyTorch's is 1e-5, which :func:`conv4_base_from_torch` takes to give a torch tower's outputs.
    """
    layers = [keras.Input(shape=tuple(image_shape)), keras.layers.Reshape((*image_shape, 1))]
    for _ in range(blocks):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
        ]
    return keras.Sequential([*layers, keras.layers.Flatten()], name="base")


TORCH_BATCH_NORM_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default


def conv4_base_from_torch(encoder: torch.nn.Module, momentum: float = 0.9) -> keras.Model:
    """A Keras :func:`conv4_base` holding the weights of a PyTorch Conv-4 (:class:`helpers.nets.Conv4`).

    Notebook 03's classifier embedding (trained to name the 964 background characters) is such a
    Conv-4; a twin can start from it instead of from random weights. Per block:

    * the 3x3 kernel ``(out, in, 3, 3)`` becomes Keras's ``(3, 3, in, out)``;
    * batch norm's scale, shift, running mean and running variance are copied, and ``epsilon``
      is PyTorch's;
    * the convolution's bias (this tower has none) is folded into the running mean: batch norm
      subtracts the mean, so ``BN(conv(x) + b)`` with mean ``m`` is ``BN(conv(x))`` with mean
      ``m - b``. In training mode each batch's own mean absorbs ``b`` the same way.

    In inference mode the tower's output equals ``encoder(x)`` in eval mode, within float
    rounding (``tests/test_siamese.py``). 28x28 inputs only, as :class:`helpers.nets.Conv4`.
    """
    blocks = list(getattr(encoder, "blocks", []))
    if not blocks or not all(isinstance(b[0], torch.nn.Conv2d) for b in blocks):
        raise ValueError(
            f"conv4_base_from_torch needs a helpers.nets.Conv4, got {type(encoder).__name__}."
        )
    first = blocks[0][0]
    if first.in_channels != 1:
        raise ValueError(
            f"conv4_base_from_torch needs a one-channel Conv-4 (Omniglot), got {first.in_channels} channels."
        )
    epsilons = {float(b[1].eps) for b in blocks}
    if len(epsilons) != 1:
        raise ValueError(
            f"the Conv-4's blocks use different batch-norm epsilons: {sorted(epsilons)}."
        )
    tower = conv4_base(
        (28, 28), first.out_channels, len(blocks), momentum=momentum, epsilon=epsilons.pop()
    )
    convs = [layer for layer in tower.layers if isinstance(layer, keras.layers.Conv2D)]
    norms = [layer for layer in tower.layers if isinstance(layer, keras.layers.BatchNormalization)]
    with torch.no_grad():
        for block, conv, norm in zip(blocks, convs, norms, strict=True):
            torch_conv, torch_norm = block[0], block[1]
            bias = (
                torch_conv.bias
                if torch_conv.bias is not None
                else torch.zeros_like(torch_norm.running_mean)  # on the encoder's device
            )
            conv.set_weights([torch_conv.weight.permute(2, 3, 1, 0).cpu().numpy()])
            norm.set_weights(
                [
                    torch_norm.weight.cpu().numpy(),
                    torch_norm.bias.cpu().numpy(),
                    (torch_norm.running_mean - bias).cpu().numpy(),
                    torch_norm.running_var.cpu().numpy(),
                ]
            )
    return tower


def build_siamese(
    base: keras.Model | None = None, image_shape: Sequence[int] = (28, 28)
) -> keras.Model:
    """The twin: one ``base`` applied to both inputs, L1 distance, ``Dense(1, sigmoid)``.

    Inputs: two arrays ``(batch, H, W)`` of floats in [0, 1]; output ``(batch, 1)``,
    the probability that the two images show the same class.
    """
    base = base if base is not None else mlp_base(image_shape)
    left = keras.Input(shape=tuple(image_shape), name="left")
    right = keras.Input(shape=tuple(image_shape), name="right")
    # the same base object on both sides: one set of weights, two branches
    distance = L1Distance(name="l1_distance")([base(left), base(right)])
    similarity = keras.layers.Dense(1, activation="sigmoid", name="similarity")(distance)
    return keras.Model([left, right], similarity, name="siamese")


def fit_head_to_tower(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, margin: float = 2.0
) -> dict:
    """Set a twin's head so that it scores pairs by the L1 distance of its tower's features.

    The head computes ``sigmoid(w . |h(x1) - h(x2)| + b)``. A random ``w`` weighs the features at
    random (half of them the wrong way round), which wastes a tower that already separates
    characters, such as notebook 03's classifier embedding. Here every weight is ``-c`` and
    the bias ``b`` is chosen from the tower's features of ``images`` (inference mode) and their
    ``labels``: with ``d_same`` and ``d_diff`` the mean L1 distances of the same-label and
    different-label pairs,

        ``c = 2 margin / (d_diff - d_same)``,   ``b = c (d_same + d_diff) / 2``,

    so the logit is ``c ((d_same + d_diff) / 2 - d)``: ``+margin`` at ``d_same``, ``-margin`` at
    ``d_diff``. The twin then ranks support images exactly as an L1 nearest neighbour on the
    tower's features does. Returns ``c``, ``b`` and the two mean distances.
    """
    labels = np.asarray(labels)
    different = labels[:, None] != labels[None, :]
    same = ~different & ~np.eye(len(labels), dtype=bool)
    if not same.any() or not different.any():
        raise ValueError(
            "fit_head_to_tower needs at least two images of one label and two different labels."
        )
    features = keras.ops.convert_to_numpy(model.get_layer("base")(as_float(images), training=False))
    distances = np.abs(features[:, None, :] - features[None, :, :]).sum(-1)
    d_same = float(distances[same].mean())
    d_diff = float(distances[different].mean())
    if not d_diff > d_same:
        raise ValueError(
            f"the tower puts different labels no further apart than equal ones (mean L1 {d_diff:.3g} "
            f"against {d_same:.3g}): there is nothing for the head to start from."
        )
    c = 2 * margin / (d_diff - d_same)
    bias = c * (d_same + d_diff) / 2
    set_l1_head(model, c, bias)
    return {"c": c, "b": bias, "mean_l1_same": d_same, "mean_l1_different": d_diff}


def set_l1_head(model: keras.Model, c: float, b: float) -> None:
    """Set a twin's head to ``sigmoid(b - c * sum_k |h_k(x1) - h_k(x2)|)``: every weight ``-c``."""
    head = model.get_layer("similarity")
    kernel = head.get_weights()[0]
    head.set_weights([np.full_like(kernel, -c), np.array([b], dtype=kernel.dtype)])


def fit_head_on_characters(
    model: keras.Model,
    character_images: np.ndarray,
    seed: int = 0,
    characters: int = 32,
    drawings: int = 4,
) -> dict:
    """:func:`fit_head_to_tower` on ``drawings`` drawings of each of ``characters`` characters
    drawn at random (``seed``, a generator of its own) from ``character_images``
    ``(n_characters, n_drawings, H, W)``, such as Omniglot's ``images`` of some alphabets."""
    rng = rules.numpy_rng(seed)
    chosen = rng.choice(len(character_images), characters, replace=False)
    images = np.asarray(character_images)[chosen][:, :drawings]
    return fit_head_to_tower(
        model,
        images.reshape(-1, *images.shape[2:]),
        np.repeat(np.arange(characters), drawings),
    )


def build_contrastive_siamese(
    base: keras.Model | None = None, image_shape: Sequence[int] = (28, 28)
) -> keras.Model:
    """The twin of Hadsell et al. and the Keras example: one ``base``, Euclidean distance, no head.

    Output ``(batch, 1)``: the distance ``||h(x1) - h(x2)||`` itself, small for a pair the
    network thinks the same. Train it with :func:`compile_contrastive`.
    """
    base = base if base is not None else mlp_base(image_shape)
    left = keras.Input(shape=tuple(image_shape), name="left")
    right = keras.Input(shape=tuple(image_shape), name="right")
    distance = EuclideanDistance(name="euclidean_distance")([base(left), base(right)])
    return keras.Model([left, right], distance, name="contrastive_siamese")


@keras.saving.register_keras_serializable(package="metalearn")
class ContrastiveLoss(keras.losses.Loss):
    """:func:`contrastive_loss` as a Keras loss: ``y_true`` is 1 for same, ``y_pred`` the distance."""

    def __init__(self, margin: float = 1.0, name: str = "contrastive", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.margin = rules.positive_number("margin", margin, 1.0)

    def call(self, y_true, y_pred):
        distance = keras.ops.reshape(y_pred, (-1,))
        same = keras.ops.reshape(y_true, (-1,))
        return contrastive_loss(distance, same, self.margin, reduction="none")

    def get_config(self) -> dict:
        return {**super().get_config(), "margin": self.margin}


def _steps_per_execution(steps_per_execution: int | None) -> int:
    if steps_per_execution is not None:
        return rules.whole_number("steps_per_execution", steps_per_execution, 1)
    return 1 if keras.backend.backend() == "torch" else 32


def compile_contrastive(
    model: keras.Model,
    learning_rate: float = 0.001,
    margin: float = 1.0,
    steps_per_execution: int | None = None,
) -> keras.Model:
    """Adam on the contrastive loss with ``margin`` (a twin from :func:`build_contrastive_siamese`).

    The same optimiser and batching as :func:`compile_siamese`; only the loss differs. A pair
    is later called "same" when its distance is below ``margin / 2``
    (:func:`distance_pair_accuracy`).
    """
    learning_rate = rules.positive_number("learning_rate", learning_rate, 0.001)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=ContrastiveLoss(margin),
        steps_per_execution=_steps_per_execution(steps_per_execution),
    )
    return model


def compile_siamese(
    model: keras.Model, learning_rate: float = 0.001, steps_per_execution: int | None = None
) -> keras.Model:
    """Adam on binary cross-entropy, reporting pair accuracy (threshold 0.5).

    ``steps_per_execution`` is only a speed trick: Keras runs that many batches per call into
    the backend, which cuts the per-batch overhead that dominates a small MLP on a CPU
    (measured here: about 3x faster per epoch). The updates are the same batch by batch.
    ``None`` means 32, or 1 under the torch backend, which only supports 1.
    """
    learning_rate = rules.positive_number("learning_rate", learning_rate, 0.001)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.5)],
        steps_per_execution=_steps_per_execution(steps_per_execution),
    )
    return model


def contrastive_loss(distance, same, margin: float = 1.0, reduction: str = "mean"):
    """The contrastive loss of Hadsell, Chopra & LeCun (2006) for pairs at embedding distance ``d``.

    Per pair, with ``same`` 1 for a same pair and 0 for a different one,
    ``same * d**2 + (1 - same) * max(0, margin - d)**2``: same pairs are pulled together, and
    different pairs are pushed apart only until they are ``margin`` apart (beyond it they cost
    nothing). ``distance`` is ``(n_pairs,)`` of distances >= 0, such as the Euclidean distance
    ``||h(x1) - h(x2)||`` of the embeddings (a scalar per pair: unlike the twin's
    ``Dense(1, sigmoid)`` head, this loss has no weights of its own). Hadsell et al. write it with
    factors 1/2 and the opposite label (0 for similar); this is the convention of the Keras
    example the chapter builds on.

    Built on ``keras.ops``, so it works on NumPy arrays and on tensors of any backend, inside a
    model too. ``reduction="mean"`` (the default) averages over the pairs; ``"none"`` returns the
    ``(n_pairs,)`` per-pair losses. Concrete inputs (lists, NumPy arrays) are checked: distances
    must be >= 0, ``same`` 0 or 1, both of one shape.
    """
    margin = rules.positive_number("margin", margin, 1.0)
    rules.one_of("reduction", reduction, ("mean", "none"))
    if isinstance(distance, (list, tuple, np.ndarray, int, float)) and isinstance(
        same, (list, tuple, np.ndarray, int, float)
    ):
        d, s = np.asarray(distance, dtype=float), np.asarray(same, dtype=float)
        if d.shape != s.shape:
            raise rules.ParameterError(
                f"distance has shape {d.shape} but same has shape {s.shape}; give one label per distance."
            )
        if not np.all(np.isfinite(d) & (d >= 0)):
            bad = d[~(np.isfinite(d) & (d >= 0))][0]
            raise rules.ParameterError(
                f"distance holds {bad.item()}; every distance must be a finite number >= 0."
            )
        if not np.all((s == 0) | (s == 1)):
            bad = s[(s != 0) & (s != 1)][0]
            raise rules.ParameterError(
                f"same holds {bad.item()}; every label must be 1 (same class) or 0 (different)."
            )
    distance = keras.ops.convert_to_tensor(distance)
    if not keras.backend.is_float_dtype(distance.dtype):
        distance = keras.ops.cast(distance, "float32")
    same = keras.ops.cast(keras.ops.convert_to_tensor(same), distance.dtype)
    per_pair = same * keras.ops.square(distance) + (1 - same) * keras.ops.square(
        keras.ops.relu(margin - distance)
    )
    return keras.ops.mean(per_pair) if reduction == "mean" else per_pair


def predict_pairs(
    model: keras.Model, left: np.ndarray, right: np.ndarray, batch_size: int = 1024
) -> np.ndarray:
    """Similarity ``(n_pairs,)`` in [0, 1] for image arrays ``(n_pairs, H, W)``, in inference mode.

    uint8 images are turned into floats a batch at a time, so large pair sets stay small.
    """
    # predict_on_batch runs a compiled inference step (dropout off): several times faster than
    # calling the model eagerly, and it works on every backend
    out = [
        keras.ops.convert_to_numpy(
            model.predict_on_batch(
                [as_float(left[i : i + batch_size]), as_float(right[i : i + batch_size])]
            )
        )
        for i in range(0, len(left), batch_size)
    ]
    return np.concatenate(out).reshape(-1) if out else np.zeros(0, dtype=np.float32)


def pair_accuracy(similarities: np.ndarray, same: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of pairs called correctly: 'same' when the similarity exceeds ``threshold``."""
    return float(np.mean((np.asarray(similarities) > threshold) == (np.asarray(same) > 0.5)))


def distance_pair_accuracy(
    distances: np.ndarray, same: np.ndarray, threshold: float = 0.5
) -> float:
    """Fraction of pairs called correctly by a distance: 'same' when it is below ``threshold``."""
    return float(np.mean((np.asarray(distances) < threshold) == (np.asarray(same) > 0.5)))


# --------------------------------------------------------------------------------------------
# Training


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of every epoch in ``self.seconds``."""

    def on_train_begin(self, logs=None):
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


class EpochProgress(keras.callbacks.Callback):
    """A tqdm bar over epochs showing loss and accuracy; ``on_epoch(epoch, logs)`` is called after each."""

    def __init__(self, epochs: int, on_epoch=None, desc: str = "training") -> None:
        super().__init__()
        self.epochs, self.on_epoch, self.desc = epochs, on_epoch, desc

    def on_train_begin(self, logs=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.epochs, desc=self.desc, unit="epoch")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.bar.set_postfix(
            {k: f"{v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_accuracy")}
        )
        self.bar.update(1)
        if self.on_epoch is not None:
            self.on_epoch(epoch, logs)

    def on_train_end(self, logs=None):
        self.bar.close()


class PairBatches(keras.utils.PyDataset):
    """``((left, right), same)`` batches of ``pairs``, their float images made batch by batch.

    With ``shuffle`` the order of the pairs is drawn again at the end of every epoch.
    """

    def __init__(
        self,
        images: np.ndarray,
        pairs: Pairs,
        batch_size: int,
        shuffle: bool,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.images, self.pairs, self.batch_size, self.shuffle = images, pairs, batch_size, shuffle
        self.rng = np.random.default_rng(
            np.random.randint(2**31) if seed is None else rules.seed(seed)
        )
        self.order = self.rng.permutation(len(pairs)) if shuffle else np.arange(len(pairs))

    def __len__(self) -> int:
        return -(-len(self.pairs) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        left, right = self.pairs.left[rows], self.pairs.right[rows]
        return (as_float(self.images[left]), as_float(self.images[right])), self.pairs.same[
            rows
        ].astype(np.float32)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.pairs))


_TF_IMAGES: dict[tuple, object] = {}  # (shape, dtype, CRC-32 of the bytes) -> tf.Variable
_TF_IMAGES_KEPT = 2


def _tensorflow_images(images: np.ndarray):
    """``images`` as a TensorFlow variable, one copy shared by every run on the same pixels.

    A variable holds one copy of the images (a constant made from a NumPy array held two:
    90 MB of resident memory for MNIST's 45 MB of training images), and twins trained one after
    the other on the same images share it, found by the images' content (a CRC-32 of their
    bytes: 18 ms for MNIST's training images), so an array changed in place gets a fresh copy.
    The two most recently used image sets are kept.
    """
    import zlib

    import tensorflow as tf

    array = np.ascontiguousarray(images)
    key = (array.shape, array.dtype.str, zlib.crc32(memoryview(array).cast("B")))
    variable = _TF_IMAGES.pop(key, None)
    if variable is None:
        variable = tf.Variable(array, trainable=False)
    _TF_IMAGES[key] = variable  # now the most recently used
    while len(_TF_IMAGES) > _TF_IMAGES_KEPT:
        _TF_IMAGES.pop(next(iter(_TF_IMAGES)))
    return variable


def pair_batches(
    images: np.ndarray,
    pairs: Pairs,
    batch_size: int,
    shuffle: bool,
    seed: int | None = None,
):
    """The ``((left, right), same)`` batches that :func:`train_siamese` feeds to ``model.fit``.

    Under the TensorFlow backend this is a ``tf.data`` pipeline that gathers each batch's
    images inside TensorFlow. Measured on this project's 2-core CPU (Keras epochs of the
    108,400 MNIST pairs, one TensorFlow thread, idle machine, the second and third epochs of
    three runs each): 3.5 to 3.8 s of CPU time an epoch, against 4.5 to 6.0 s for the
    :class:`PairBatches` generator, at about the same wall time (2.9 to 5.2 s for either). The
    generator's Python batches run on a second core beside the training step, so beside another
    program that holds that core an epoch costs their whole CPU time: notebook 05 took 1.56
    times as long beside one CPU-bound process as on an idle machine with the generator, 1.22
    with this pipeline. Under another backend it is a :class:`PairBatches`.
    With ``shuffle`` the order is drawn again every epoch, from ``seed``.
    """
    batch_size = rules.whole_number("batch_size", batch_size, 1)
    rules.seed(seed, allow_none=True)
    if keras.backend.backend() != "tensorflow":
        return PairBatches(images, pairs, batch_size, shuffle=shuffle, seed=seed)
    import tensorflow as tf

    stored = _tensorflow_images(images)
    left, right = tf.constant(pairs.left), tf.constant(pairs.right)
    same = tf.constant(pairs.same.astype(np.float32))

    divisor = 255.0 if stored.dtype == tf.uint8 else 1.0  # as as_float does, inside TensorFlow

    def gather(rows):
        def images_of(side):
            return tf.cast(tf.gather(stored, tf.gather(side, rows)), tf.float32) / divisor

        return (images_of(left), images_of(right)), tf.gather(same, rows)

    count = len(pairs)
    if not shuffle:
        rows = tf.data.Dataset.range(count).batch(batch_size)
    else:
        # One permutation tensor an epoch, from a seed drawn afresh every epoch (reproducibly),
        # rather than tf.data's shuffle buffer, which holds every index as an element of its own.
        def epoch_rows(epoch_seed):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(count, dtype=tf.int64),
                seed=tf.stack([epoch_seed, tf.constant(0, tf.int64)]),
            )
            return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

        draw = np.random.randint(2**31) if seed is None else seed
        epoch_seeds = tf.data.Dataset.random(seed=int(draw), rerandomize_each_iteration=True)
        rows = epoch_seeds.take(1).flat_map(epoch_rows)
        # flat_map hides the number of batches; Keras wants it (for its progress bar, and so as
        # not to warn that the data "ran out" at the end of the first epoch)
        rows = rows.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))
    return rows.map(gather).prefetch(1)


def train_siamese(
    model: keras.Model,
    images: np.ndarray,
    pairs: Pairs,
    epochs: int = 20,
    batch_size: int = 128,
    validation: tuple[np.ndarray, Pairs] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    seed: int | None = None,
) -> tuple[dict[str, list[float]], list[float]]:
    """Fit a compiled twin on ``pairs`` of ``images``; return (history, seconds per epoch).

    The pairs are shuffled every epoch (``seed``; ``None`` draws it from NumPy's global
    generator, which :func:`helpers.device.seed_everything` seeds).
    """
    epochs = rules.whole_number("epochs", epochs, 1)
    batch_size = rules.whole_number("batch_size", batch_size, 1)
    rules.seed(seed, allow_none=True)
    # Batches are cut from the uint8 images as they are needed: the float images of all
    # 108,400 MNIST pairs would take 680 MB, and Keras would copy them again.
    batches = pair_batches(images, pairs, int(batch_size), shuffle=True, seed=seed)
    validation_data = (
        None if validation is None else pair_batches(*validation, int(batch_size), shuffle=False)
    )
    timer = EpochTimer()
    fit = model.fit(
        batches,
        epochs=int(epochs),
        validation_data=validation_data,
        callbacks=[timer, *callbacks],
        verbose=verbose,
        shuffle=False,  # the batches reshuffle themselves every epoch
    )
    return {k: [float(v) for v in vs] for k, vs in fit.history.items()}, timer.seconds


class _HeldOutPairAccuracy(keras.callbacks.Callback):
    """After every epoch, the pair accuracy on held-out pairs, by ``score(outputs, same)``."""

    def __init__(self, left: np.ndarray, right: np.ndarray, same: np.ndarray, score) -> None:
        super().__init__()
        self.left, self.right, self.same, self.score = left, right, same, score
        self.accuracies: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        outputs = predict_pairs(self.model, self.left, self.right)
        self.accuracies.append(self.score(outputs, self.same))


def compare_pair_losses(
    images: np.ndarray,
    pairs: Pairs,
    test_images: np.ndarray,
    test_pairs: Pairs,
    epochs: int = 2,
    batch_size: int = 128,
    learning_rate: float = 0.001,
    margin: float = 1.0,
    seed: int = 0,
) -> dict[str, dict]:
    """Train the same tower twice on the same pairs, once per loss, and score the held-out pairs.

    ``"cross-entropy"``: :func:`build_siamese` (L1 distance, sigmoid head), a pair is "same"
    when ``p > 0.5``. ``"contrastive"``: :func:`build_contrastive_siamese` (Euclidean distance,
    no head) with ``margin``, "same" when ``d < margin / 2``. Both start from the same initial
    :func:`mlp_base` weights (``seed``), see the pairs in the same order and take the same
    number of Adam steps. Returns, per loss: ``accuracies`` on ``test_pairs`` after every epoch
    (``accuracy``: the last), ``outputs`` (the final held-out similarities or distances), the
    per-epoch training ``loss``, ``seconds`` and the ``model``.
    """
    rules.seed(seed)
    margin = rules.positive_number("margin", margin, 1.0)
    image_shape = images.shape[1:]
    test_left, test_right = test_pairs.images(test_images)
    results: dict[str, dict] = {}
    for name in ("cross-entropy", "contrastive"):
        keras.utils.set_random_seed(seed)  # the same initial tower for both losses
        if name == "cross-entropy":
            model = compile_siamese(build_siamese(image_shape=image_shape), learning_rate)
            score = pair_accuracy
        else:
            model = compile_contrastive(
                build_contrastive_siamese(image_shape=image_shape), learning_rate, margin
            )

            def score(outputs, same):
                return distance_pair_accuracy(outputs, same, margin / 2)

        held_out = _HeldOutPairAccuracy(test_left, test_right, test_pairs.same, score)
        start = time.perf_counter()
        history, _ = train_siamese(
            model, images, pairs, epochs, batch_size, callbacks=[held_out], verbose=0, seed=seed
        )
        seconds = time.perf_counter() - start
        results[name] = dict(
            accuracies=held_out.accuracies,
            accuracy=held_out.accuracies[-1],
            outputs=predict_pairs(model, test_left, test_right),
            loss=history["loss"],
            seconds=seconds,
            model=model,
        )
    return results


# --------------------------------------------------------------------------------------------
# One-shot meta-testing


def pair_similarities(
    model: keras.Model, query_images: np.ndarray, support_images: np.ndarray, logits: bool = False
) -> np.ndarray:
    """``(n_query, n_support)`` similarity of every query to every support image.

    A twin of :func:`build_siamese` (a layer ``base``, ``l1_distance`` and ``similarity``)
    embeds every image once with its tower ``h`` and applies the head to each of the
    ``n_query * n_support`` distances ``|h(q) - h(s)|``: the same numbers as running the twin on
    every pair (the tower is deterministic in inference mode), with ``n_query + n_support``
    tower passes instead of ``2 * n_query * n_support``. Any other two-input model is run on
    all the pairs explicitly. ``logits=True`` returns ``w . |h(x1) - h(x2)| + b``, the head's
    input to the sigmoid: it ranks the support images exactly as the probability does, but
    never saturates (a well-trained twin gives many probabilities of exactly 0.0 or 1.0 in
    float32, which tie).
    """
    layers = {layer.name: layer for layer in getattr(model, "layers", [])}
    if {"base", "l1_distance", "similarity"} <= set(layers):
        queries, supports = (embed(layers["base"], x) for x in (query_images, support_images))
        weights, bias = (
            np.asarray(w, dtype=np.float64) for w in layers["similarity"].get_weights()
        )
        rows = max(1, 2**22 // max(1, len(supports) * queries.shape[1]))  # about 32 MB at a time
        scores = (
            np.concatenate(
                [
                    np.abs(queries[i : i + rows, None, :] - supports[None]) @ weights[:, 0]
                    + bias[0]
                    for i in range(0, len(queries), rows)
                ]
            )
            if len(queries)
            else np.zeros((0, len(supports)))
        )
        scores = scores.astype(np.float32)
        return (
            scores if logits else (1 / (1 + np.exp(-scores.astype(np.float64)))).astype(np.float32)
        )
    n_query, n_support = len(query_images), len(support_images)
    left = np.repeat(query_images, n_support, axis=0)  # q0 q0 q0 ... q1 q1 q1 ...
    right = np.tile(support_images, (n_query, 1, 1))  # s0 s1 s2 ... s0 s1 s2 ...
    if not logits:
        return predict_pairs(model, left, right).reshape(n_query, n_support)
    return pair_logits(model, left, right).reshape(n_query, n_support)


def embed(base: keras.Model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """A tower's features ``h(x)`` of images ``(n, H, W)``, batch by batch, in inference mode."""
    images = as_float(images)
    if not len(images):
        return np.zeros((0, int(base.output_shape[-1])), dtype=np.float32)
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(base.predict_on_batch(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
    )


_DISTANCE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pair_logits(model: keras.Model, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The head's pre-sigmoid score ``w . |h(x1) - h(x2)| + b`` for each pair, ``(n_pairs,)``."""
    distance_model = _DISTANCE_MODELS.get(model)
    if distance_model is None:  # built once per twin: a new model would be traced again each call
        distance_model = _DISTANCE_MODELS[model] = keras.Model(
            model.inputs, model.get_layer("l1_distance").output
        )
    weights, bias = model.get_layer("similarity").get_weights()
    distances = predict_pairs_with(distance_model, left, right)
    return (distances @ weights).reshape(-1) + bias[0]


def predict_pairs_with(
    model: keras.Model, left: np.ndarray, right: np.ndarray, batch_size: int = 1024
) -> np.ndarray:
    """Any two-input model's outputs on pairs, batch by batch, in inference mode."""
    left, right = as_float(left), as_float(right)
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(
                model.predict_on_batch([left[i : i + batch_size], right[i : i + batch_size]])
            )
            for i in range(0, len(left), batch_size)
        ]
    )


class SiameseOneShot(FewShotMethod):
    """N-way K-shot classification with a trained twin: the class of the most similar support.

    A class's score is the highest similarity between the query and that class's support
    images (with K = 1, simply the similarity to its one example). Scores are the head's
    logits (see :func:`pair_similarities`), so saturated probabilities cannot tie.
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        # one twin's input is (H, W) (or (H, W, 1)): the images are (n, 1, H, W)
        shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else ()
        shape = shape[:2] if len(shape) == 3 and shape[2] == 1 else shape
        self.image_shape = (1, *shape) if len(shape) == 2 and all(shape) else None

    def process_support_set(
        self, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> None:
        self.support_images = _to_numpy_images(support_images)
        self.support_labels = support_labels.detach().cpu().numpy()
        self.n_way = int(self.support_labels.max()) + 1

    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        similarity = pair_similarities(
            self.model, _to_numpy_images(query_images), self.support_images, logits=True
        )
        scores = np.full((len(similarity), self.n_way), -np.inf, dtype=np.float32)
        for label in range(self.n_way):
            scores[:, label] = similarity[:, self.support_labels == label].max(axis=1)
        return torch.from_numpy(scores).to(query_images.device)


class TowerNearestNeighbour(FewShotMethod):
    """One-shot with a twin's tower alone: embed with its shared base ``h``, take the nearest support.

    The twin's own head (``w . |h(x1) - h(x2)| + b``) is left out; ``metric`` (``"cosine"`` or
    ``"euclidean"``) compares the embeddings instead, as notebook 03 compares its Conv-4
    embeddings. Comparing this with :class:`SiameseOneShot` on the same episodes separates what
    the learned head adds from what the features allow. With K > 1 shots a class keeps the
    mean of its embeddings.
    """

    def __init__(self, model: keras.Model, metric: str = "cosine") -> None:
        from .one_shot import check_metric

        self.base, self.metric = model.get_layer("base"), check_metric(metric)
        shape = tuple(self.base.inputs[0].shape[1:])
        self.image_shape = (1, *shape) if len(shape) == 2 and all(shape) else None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(n, features)`` tower outputs of ``(n, 1, H, W)`` images, in inference mode."""
        return torch.from_numpy(np.asarray(embed(self.base, _to_numpy_images(images)), np.float32))

    def process_support_set(
        self, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> None:
        from .fewshot import prototypes

        self.keys = prototypes(self.embed(support_images), support_labels.cpu())

    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        from .one_shot import similarity

        return similarity(self.embed(query_images), self.keys, self.metric).to(query_images.device)


def _to_numpy_images(images: torch.Tensor) -> np.ndarray:
    """``(n, 1, H, W)`` torch floats -> ``(n, H, W)`` float32 numpy."""
    return images.detach().cpu().numpy().reshape(len(images), *images.shape[-2:]).astype(np.float32)


def lake_run_episodes(runs) -> list:
    """Lake et al.'s 20-way one-shot runs as :class:`~helpers.episodes.Episode` objects.

    Support: the run's 20 training drawings, labels 0..19; queries: its 20 test drawings,
    labelled by the answer key.
    """
    from .episodes import Episode, float_images

    episodes = []
    for run in runs:
        n = len(run.train_images)
        episodes.append(
            Episode(
                float_images(run.train_images),
                torch.arange(n),
                float_images(run.test_images),
                torch.as_tensor(run.answers, dtype=torch.long),
                np.arange(n),
                tuple(f"{run.name}/{i}" for i in range(n)),
            )
        )
    return episodes


# --------------------------------------------------------------------------------------------
# Pictures


def draw_architecture(model: keras.Model, ax=None):
    """A box diagram of the twin, with each layer's output size and the shared weights marked."""
    import matplotlib.pyplot as plt

    base = model.get_layer("base")
    rows = [
        f"{layer.__class__.__name__} {_shape_text(layer.output.shape)}" for layer in base.layers
    ]
    ax = ax or plt.subplots(figsize=(9, 0.42 * len(rows) + 2.6))[1]
    ax.set_axis_off()
    height = len(rows) + 3
    ax.set(xlim=(0, 10), ylim=(-0.5, height))
    for x, name in ((0.3, "left image x1"), (5.7, "right image x2")):
        top = height - 1
        ax.text(
            x + 2, top, name, ha="center", va="center", bbox=dict(boxstyle="round", fc="#e8f0fe")
        )
        for i, row in enumerate(rows):
            ax.text(
                x + 2,
                top - 1 - i,
                row,
                ha="center",
                va="center",
                fontsize=8,
                bbox=dict(boxstyle="square", fc="#fff3e0"),
            )
    ax.text(
        5, height - 2.2, "shared\nweights", ha="center", va="center", fontsize=9, color="#b00020"
    )
    ax.annotate(
        "",
        xy=(3.9, height - 2.7),
        xytext=(6.1, height - 2.7),
        arrowprops=dict(arrowstyle="<->", color="#b00020"),
    )
    bottom = height - 2 - len(rows)
    ax.text(
        5,
        bottom,
        "L1Distance |h(x1) - h(x2)|",
        ha="center",
        va="center",
        bbox=dict(boxstyle="round", fc="#e6f4ea"),
    )
    ax.text(
        5,
        bottom - 1,
        "Dense(1, sigmoid) -> p(same class)",
        ha="center",
        va="center",
        bbox=dict(boxstyle="round", fc="#e6f4ea"),
    )
    for x in (2.3, 7.7):
        ax.annotate(
            "", xy=(5, bottom + 0.3), xytext=(x, bottom + 0.6), arrowprops=dict(arrowstyle="->")
        )
    ax.set_title(
        f"{model.name}: {model.count_params():,} parameters ({base.count_params():,} in the shared base)",
        fontsize=10,
    )
    return ax


def _shape_text(shape) -> str:
    return "x".join(str(s) for s in shape[1:])


def plot_similarity_histograms(similarities: np.ndarray, same: np.ndarray, ax=None, bins: int = 40):
    """Histograms of predicted similarity for same pairs and for different pairs (log counts)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    same = np.asarray(same) > 0.5
    edges = np.linspace(0, 1, bins + 1)
    ax.hist(
        similarities[same],
        bins=edges,
        alpha=0.6,
        label=f"same class ({same.sum()} pairs)",
        color="#2e7d32",
    )
    ax.hist(
        similarities[~same],
        bins=edges,
        alpha=0.6,
        label=f"different class ({(~same).sum()} pairs)",
        color="#c62828",
    )
    ax.axvline(0.5, color="k", linestyle="--", linewidth=1, label="threshold 0.5")
    ax.set(yscale="log", xlabel="predicted similarity p(same)", ylabel="pairs (log scale)")
    ax.legend(fontsize=8)
    return ax


def show_pairs(
    left: np.ndarray,
    right: np.ndarray,
    same: np.ndarray,
    similarities: np.ndarray | None = None,
    columns: int = 8,
):
    """A grid of pairs, the two images side by side, titled truth and similarity; red when wrong.

    Without ``similarities`` only the truth ("same" / "different") is shown.
    """
    import matplotlib.pyplot as plt

    n = len(left)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns, 1.25 * rows + 0.3), squeeze=False
    )
    for ax in axes.flat:
        ax.set_axis_off()
    for i, ax in enumerate(axes.flat[:n]):
        gap = np.full((left[i].shape[0], 2), np.nan)
        ax.imshow(np.concatenate([left[i], gap, right[i]], axis=1), cmap="gray_r")
        truth = "same" if same[i] > 0.5 else "different"
        if similarities is None:
            ax.set_title(truth, fontsize=8)
            continue
        correct = (similarities[i] > 0.5) == (same[i] > 0.5)
        ax.set_title(
            f"{truth}, p={similarities[i]:.2f}",
            fontsize=7,
            color="#1b5e20" if correct else "#b00020",
        )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# The Omniglot checkpoint (a reduced Koch et al. twin), trained once by a command


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    max_shift: float = 2.0,
    max_rotation: float = 10.0,
    scale: float = 0.1,
    shear: float = 0.15,
) -> np.ndarray:
    """Small random affine distortions of float images ``(n, H, W)``, as Koch et al. used."""
    from scipy.ndimage import affine_transform

    out = np.empty_like(images)
    centre = (np.array(images.shape[1:]) - 1) / 2
    for i, image in enumerate(images):
        angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrix = (
            rotation
            @ np.array([[1, rng.uniform(-shear, shear)], [rng.uniform(-shear, shear), 1]])
            @ np.diag(rng.uniform(1 - scale, 1 + scale, 2))
        )
        offset = centre - matrix @ centre + rng.uniform(-max_shift, max_shift, 2)
        out[i] = affine_transform(image, matrix, offset=offset, order=1)
    return out


def within_alphabet_episodes(
    images: np.ndarray, alphabets: np.ndarray, n_way: int = 20, seed: int = 0, per_alphabet: int = 2
) -> list:
    """Lake-style 20-way one-shot tasks on given characters: within one alphabet, two drawers.

    ``images``: ``(n_characters, 20, H, W)`` uint8; each task takes ``n_way`` characters of one
    alphabet, one drawer's drawings as support and another drawer's as queries.
    """
    rng = rules.numpy_rng(seed)
    episodes = []
    for alphabet in np.unique(alphabets):
        rows = np.flatnonzero(alphabets == alphabet)
        if len(rows) < n_way:
            continue
        for _ in range(per_alphabet):
            episodes.append(
                _two_drawer_episode(images, alphabets, rng.choice(rows, n_way, replace=False), rng)
            )
    return episodes


def _two_drawer_episode(
    images: np.ndarray, alphabets: np.ndarray, chosen: np.ndarray, rng
) -> Episode:  # noqa: F821  (helpers.episodes, imported lazily below)
    """One N-way one-shot task on the characters ``chosen``: one drawer's images are the support,
    another's the queries (both drawers drawn from ``rng``)."""
    from .episodes import Episode, float_images

    first, second = rng.choice(images.shape[1], 2, replace=False)
    labels = torch.arange(len(chosen))
    return Episode(
        float_images(images[chosen, first]),
        labels,
        float_images(images[chosen, second]),
        labels.clone(),
        chosen,
        tuple(str(alphabets[i]) for i in chosen),
    )


def random_alphabet_episodes(
    images: np.ndarray, alphabets: np.ndarray, n_way: int = 20, count: int = 20, seed: int = 0
) -> list:
    """20-way one-shot tasks like :func:`within_alphabet_episodes`, but the characters of each
    are drawn from all of ``images`` regardless of their alphabet (two drawers, as there).

    The contrast to Lake's runs: the same characters, drawers and N, only the alphabet
    constraint removed.
    """
    n_way = rules.whole_number("n_way", n_way, 2, len(images))
    count = rules.whole_number("count", count, 1)
    rng = rules.numpy_rng(seed)
    return [
        _two_drawer_episode(images, alphabets, rng.choice(len(images), n_way, replace=False), rng)
        for _ in range(count)
    ]


class _StopWhenAsked(keras.callbacks.Callback):
    """Ends ``model.fit`` after the current batch once ``should_stop()`` is true (Ctrl-C, SIGTERM)."""

    def __init__(self, should_stop) -> None:
        super().__init__()
        self.should_stop = should_stop

    def on_train_batch_end(self, batch, logs=None):
        if self.should_stop():
            self.model.stop_training = True


def check_all_in_batch_size(
    batch_size: int, name: str = "batch_size", pairing: str = "all-in-batch pairing"
) -> None:
    """All-in-batch pairing takes 4 drawings of each of ``batch_size / 4`` characters a batch."""
    if batch_size % 4 or batch_size < 8:
        raise ValueError(
            f"{name}={batch_size}: with {pairing} a batch holds 4 drawings of each of its "
            "characters, so give a multiple of 4 of at least 8 (128, say)."
        )


def check_lr_decay(lr_decay, name: str = "lr_decay") -> float:
    """A per-round learning-rate factor: a number in (0, 1]."""
    value = rules.positive_number(name, lr_decay, 0.99)
    if value > 1:
        raise ValueError(
            f"{name}={lr_decay} would grow the learning rate every round; give a factor in "
            "(0, 1] (0.99 takes 1 % off each round, 1 keeps it constant)."
        )
    return value


def round_learning_rate(learning_rate: float, lr_decay: float, number: int) -> float:
    """Adam's learning rate in round ``number`` (from 1): ``learning_rate * lr_decay ** (number - 1)``."""
    return float(learning_rate) * float(lr_decay) ** (int(number) - 1)


def check_init(init: str | Path, base: str, features: int = 256) -> dict:
    """The record of ``init``, a twin to start a ``base`` run from; ``ValueError`` (one
    sentence) unless it is a checkpoint of this command with the same tower."""
    from . import checkpoints

    record = checkpoints.read_record(init) if Path(init).is_file() else None
    if record is None or record.get("method") != "siamese":
        raise ValueError(
            f"--init {init} is not a twin that {PROG} saved (no such .keras, or no "
            ".json record beside it); give one that --out wrote."
        )
    tower = record.get("tower", "koch28")  # records from before --base had only this tower
    if tower != base:
        raise ValueError(
            f"--init {init} has the {tower} tower, but --base is {base}; give --base {tower} or "
            f"a {base} twin."
        )
    recorded = record.get("features", (record.get("settings") or {}).get("features", 256))
    if base == "koch28" and recorded != features:
        raise ValueError(
            f"--init {init} has {recorded} features, but --features is {features}; give "
            f"--features {recorded}."
        )
    return record


TOWERS = ("koch28", "conv4")  # the towers train_omniglot_checkpoint and the command build
PAIRINGS = ("balanced", "all-in-batch")  # the pairs it trains on (see its docstring)


def train_omniglot_checkpoint(
    out: Path,
    minutes: float = 18.0,
    learning_rate: float = 1e-3,
    seed: int = 0,
    validation_alphabets: int = 5,
    features: int = 256,
    saver=None,
    should_stop=None,
    resume: dict | None = None,
    progress: bool = True,
    base: str = "koch28",
    batch_size: int = 128,
    pairing: str = "balanced",
    lr_decay: float = 1.0,
    init: str | Path | None = None,
    tower_from: str | Path | None = None,
) -> dict:
    """Train a twin on the 30 background alphabets for a time budget.

    ``base`` names the shared tower: ``"koch28"`` (:func:`koch_base`, the reduced Koch et al.
    network with ``features`` sigmoid units) or ``"conv4"`` (:func:`conv4_base`, the few-shot
    papers' Conv-4; ``features`` is not used). The head is the same for both: L1 distance and
    one sigmoid unit (:func:`build_siamese`).

    ``pairing`` says which pairs a round trains on: ``"balanced"``, the :func:`make_pairs` list
    (every background drawing anchors one same and one different pair, half of the different
    ones within the alphabet; ``batch_size`` pairs per Adam step), or ``"all-in-batch"``, every
    pair among the images of each batch (:func:`build_all_pairs_trainer`: ``batch_size``
    images per step, 4 drawings of each of ``batch_size / 4`` characters from 4 alphabets,
    :func:`all_pairs_batches`; a round has as many images as the training characters have
    drawings). The second trains the same twin on the same loss, with about ``batch_size``
    times more pairs per pass of the tower.

    Round ``r`` (from 1) runs Adam at ``learning_rate * lr_decay ** (r - 1)`` (Koch et al.
    decayed theirs by 1 % an epoch: ``lr_decay=0.99``; 1.0 keeps it constant). ``init`` (a twin
    this function saved, with the same tower) starts from its weights with a fresh optimiser
    instead of random ones; the record keeps that run's rounds and time in ``init_from``.
    ``tower_from`` (``base="conv4"`` only) starts the tower from a PyTorch Conv-4 checkpoint
    such as notebook 03's classifier embedding (:func:`conv4_base_from_torch`, PyTorch's
    batch-norm epsilon), and the head as an L1 nearest neighbour on its features
    (:func:`fit_head_to_tower`); the record names the source in ``tower_from``, with the head's
    fit and the twin's validation before its first round.

    Each round prints one line (its log entry: pairs, loss, step size, validation);
    ``progress`` adds Keras's bar over the round's batches.

    ``validation_alphabets`` of the 30 are held out of training to choose the best round by
    within-alphabet 20-way one-shot accuracy; the best weights are saved (without the
    optimizer state) to ``out`` and a record to ``out`` with ``.json``, as one atomic pair,
    every time the validation improves (so a killed run keeps its best round). The rounds are
    the steps of the course's shared :class:`helpers.training.Loop` (time budget, keep-best,
    stop requests). ``saver`` (a
    :class:`helpers.checkpoints.Saver`) decides where a command's run may save.

    ``should_stop()`` (the command's Ctrl-C and SIGTERM) ends the current round after its
    batch; the returned record then has ``"stopped_state"``: weights, optimiser variables,
    random state and log, which ``resume`` continues from the next round. (The run is
    time-budgeted and TensorFlow shuffles each round, so a resumed run is not step-for-step
    the run it would have been.)
    """
    from . import checkpoints, runs
    from .datasets import load_omniglot
    from .episodes import held_out_alphabets
    from .fewshot import evaluate
    from .training import History, KeepBest, Loop

    batch_size = rules.whole_number("batch_size", batch_size, 1)
    lr_decay = check_lr_decay(lr_decay)
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}.")
    if pairing == "all-in-batch":
        check_all_in_batch_size(batch_size)
    if base not in TOWERS:
        raise ValueError(f"base must be one of {', '.join(TOWERS)}, got {base!r}.")
    init_record = check_init(init, base, features) if init is not None else None
    keras.utils.set_random_seed(rules.seed(seed))
    rng = rules.numpy_rng(seed)
    omniglot = load_omniglot(28)
    rows = np.flatnonzero(omniglot.background)
    alphabets = np.array([omniglot.alphabets[r] for r in rows])
    names = np.unique(alphabets)
    held_out = held_out_alphabets(alphabets, validation_alphabets, rng)  # the run's first draw
    train_rows = rows[~np.isin(alphabets, held_out)]
    val_rows = rows[np.isin(alphabets, held_out)]
    train_images = omniglot.images[train_rows].reshape(-1, 28, 28)
    char_labels = np.repeat(np.arange(len(train_rows)), 20)
    char_groups = np.unique(alphabets[~np.isin(alphabets, held_out)], return_inverse=True)[1]
    val_episodes = (
        within_alphabet_episodes(
            omniglot.images[val_rows],
            alphabets[np.isin(alphabets, held_out)],
            seed=seed,
            per_alphabet=8,
        )
        if len(val_rows)
        else []
    )

    if tower_from is not None and (base != "conv4" or init is not None):
        raise ValueError(
            "tower_from starts a Conv-4 tower from a PyTorch Conv-4: give base='conv4' and no init."
        )
    # batch norm's epsilon: PyTorch's for a tower that began as a PyTorch Conv-4 (here or in the
    # run that init comes from), Keras's otherwise
    epsilon = (
        TORCH_BATCH_NORM_EPSILON
        if tower_from is not None
        else float((init_record or {}).get("batch_norm_epsilon", 1e-3))
    )

    def tower() -> keras.Model:
        if base == "koch28":
            return koch_base((28, 28), features=features)
        return conv4_base((28, 28), epsilon=epsilon)

    model = build_siamese(tower())
    tower_source = None
    if tower_from is not None:
        from . import checkpoints, one_shot

        model.get_layer("base").set_weights(
            conv4_base_from_torch(one_shot.load_encoder(tower_from)).get_weights()
        )
        # the head starts as an L1 nearest neighbour on those features (a random head would
        # weigh half of them the wrong way round), fitted on 4 drawings of 32 training
        # characters drawn by a generator of its own, so the run's other draws stay as they were
        head = fit_head_on_characters(model, omniglot.images[train_rows], seed)
        source_record = checkpoints.read_record(tower_from) or {}
        tower_source = {
            "checkpoint": str(tower_from),
            "sha256": (source_record.get("weights") or {}).get("sha256"),
            "command": source_record.get("command"),
            "what": source_record.get("what"),
            "train_seconds": source_record.get("train_seconds"),
            "head": head,
            # the validation alphabets whose characters the tower's classifier learned: all of
            # them for a classifier of the 30 background alphabets; none for one that held out
            # the same alphabets (python -m helpers.one_shot --hold-out-alphabets)
            "validation_alphabets_seen": sorted(
                set(map(str, held_out)) - set(source_record.get("held_out_alphabets") or [])
            ),
            # the twin as it starts, before any pair is trained on
            "val_20way_before_training": (
                evaluate(SiameseOneShot(model), val_episodes, progress=False).mean
                if val_episodes
                else None
            ),
        }
    init_from = None
    if init is not None:
        model.set_weights(load_checkpoint(init).get_weights())
        init_from = {
            "checkpoint": str(init),
            "run_id": init_record.get("run_id"),
            "sha256": (init_record.get("weights") or {}).get("sha256"),
            "command": init_record.get("command"),
            "pairing": init_record.get("pairing"),
            "learning_rate": init_record.get("learning_rate"),
            "rounds": init_record.get("rounds"),
            "images": sum(e.get("images") or 0 for e in init_record.get("log", [])),
            "train_seconds": init_record.get("train_seconds"),
            "best_validation_20way_accuracy": init_record.get("best_validation_20way_accuracy"),
        }
    # the model that fit() trains: the twin itself, or one that shares its layers (all pairs of a batch)
    trainer = (
        build_all_pairs_trainer(model, learning_rate)
        if pairing == "all-in-batch"
        else compile_siamese(model, learning_rate)
    )

    def final_model(weights=None):
        final = build_siamese(tower())
        final.set_weights(
            weights
            if weights is not None
            else keep.state
            if keep.state is not None
            else model.get_weights()
        )
        return final

    # one step of the shared loop is a round; the best round's weights are kept (and saved as a whole model)
    keep = KeepBest(
        lambda: [w.copy() for w in model.get_weights()],
        saver,
        lambda: record("interrupted"),
        writer=lambda weights: final_model(weights).save,
        value=-1.0,
    )
    log, round_, seconds_before = [], 0, 0.0
    if resume is not None:
        model.set_weights([np.asarray(w) for w in resume["weights"]])
        trainer.optimizer.build(trainer.trainable_variables)
        for variable, value in zip(trainer.optimizer.variables, resume["optimizer"], strict=True):
            variable.assign(np.asarray(value))
        keep.value = float(resume["best_accuracy"])
        keep.state = (
            [np.asarray(w) for w in resume["best_weights"]] if resume["best_weights"] else None
        )
        log, round_, seconds_before = (
            list(resume["log"]),
            int(resume["round"]),
            float(resume["seconds"]),
        )
        runs.set_generator_state(rng, resume["rng"])
    callbacks = [_StopWhenAsked(should_stop)] if should_stop is not None else []
    description = {
        "model": (
            "reduced Koch et al. (2015) convolutional Siamese twin, 28x28 inputs"
            if base == "koch28"
            else "Siamese twin with a Conv-4 tower (Koch et al.'s L1 head), 28x28 inputs"
        ),
        "base": (
            f"Conv 32@5x5 - pool - Conv 64@3x3 - pool - Conv 64@3x3 - Dense {features} sigmoid"
            if base == "koch28"
            else "4 x (Conv 64@3x3 - batch norm - ReLU - pool): 64 features"
        ),
        "tower": base,
        **({"features": features} if base == "koch28" else {}),
        **({"batch_norm_epsilon": epsilon} if base == "conv4" else {}),
        **({"tower_from": tower_source} if tower_source else {}),
        "training_classes": f"{len(train_rows)} characters of the {len(names) - len(held_out)} background alphabets not held out",
        "validation_alphabets": sorted(str(a) for a in held_out),
        "validation": f"within-alphabet 20-way one-shot, {len(val_episodes)} tasks, held-out background alphabets",
        "learning_rate": learning_rate,
        "lr_decay": lr_decay,
        "batch_size": batch_size,
        "seed": seed,
        "augmentation": "random affine: rotation +-10 deg, shear +-0.15, scale 0.9-1.1, shift +-2 px",
        "pairing": pairing,
        "negatives": (
            "half of the different pairs from the same alphabet"
            if pairing == "balanced"
            else "every pair of each batch of 4 drawings of each of "
            f"{batch_size // 4} characters from 4 alphabets; same and different pairs weighted equally"
        ),
        "keras_backend": keras.backend.backend(),
        "keras": keras.__version__,
        **({"init_from": init_from} if init_from else {}),
    }

    def record(status: str) -> dict:
        minutes_so_far = loop.elapsed() / 60
        return {
            **description,
            "method": "siamese",
            "status": status,
            "val_score": checkpoints.score(keep.value) if keep.state is not None else None,
            "best_validation_20way_accuracy": keep.value,
            "rounds": round_,
            "wall_minutes": minutes_so_far,
            "train_seconds": round(60 * minutes_so_far, 1),
            "wall_seconds": None,
            "log": log,
            "history": {
                key: [entry.get(key) for entry in log]
                for key in (
                    "round",
                    "pairs",
                    "images",
                    "loss",
                    "pair_accuracy",
                    "val_20way",
                    "minutes",
                )
            },
            "results": {"rounds": round_, "best_validation_20way_accuracy": keep.value},
        }

    entry: dict = {}

    def step(number: int):
        nonlocal round_, entry
        round_ = number
        rate = round_learning_rate(learning_rate, lr_decay, number)
        trainer.optimizer.learning_rate.assign(rate)
        if pairing == "all-in-batch":
            batches = -(-len(train_images) // batch_size)
            rows, labels = all_pairs_batches(char_groups, rng, batches, batch_size // 4)
            fit = trainer.fit(
                augment(as_float(train_images[rows]), rng),
                labels.astype(np.float32),
                batch_size=batch_size,
                epochs=1,
                shuffle=False,  # each batch is one block of characters: keep the blocks
                verbose=1 if progress else 0,  # Keras's bar over the round's batches
                callbacks=callbacks,
            )
            n_pairs, n_images = batches * batch_size * (batch_size - 1), len(rows)
        else:
            pairs = make_pairs(
                char_labels, seed=seed + number, groups=char_groups, same_group_fraction=0.5
            )
            left = augment(as_float(train_images[pairs.left]), rng)
            right = augment(as_float(train_images[pairs.right]), rng)
            fit = trainer.fit(
                [left, right],
                pairs.same,
                batch_size=batch_size,
                epochs=1,
                shuffle=True,
                verbose=1 if progress else 0,  # Keras's bar over the round's batches
                callbacks=callbacks,
            )
            n_pairs, n_images = len(pairs), 2 * len(pairs)
        loss = float(fit.history["loss"][-1])
        runs.check_finite(number, loss)
        if should_stop is not None and should_stop():
            return None  # this round was cut short: it is not validated or logged
        entry = {
            "round": number,
            "pairs": n_pairs,
            "images": n_images,  # passes of the tower
            "loss": loss,
            "pair_accuracy": float(fit.history["accuracy"][-1]),
            "learning_rate": rate,
            "minutes": loop.elapsed() / 60,
        }
        return loss, entry["pair_accuracy"]

    def validate(number: int) -> float:
        entry["val_20way"] = evaluate(SiameseOneShot(model), val_episodes, progress=False).mean
        return entry["val_20way"]

    def logged(number: int, history: History) -> None:
        log.append(entry)
        # one line per round, with or without the progress bar: a run in the background
        # (--no-progress, output to a log) then shows how far it is and how it is doing
        print(json.dumps(entry), flush=True)

    stopped: list[dict] = []

    def save_resumable(history: History) -> None:
        stopped.append(
            {
                "weights": [torch.from_numpy(np.array(w)) for w in model.get_weights()],
                "optimizer": [
                    torch.from_numpy(np.array(keras.ops.convert_to_numpy(v)))
                    for v in trainer.optimizer.variables
                ],
                "best_accuracy": keep.value,
                "best_weights": [torch.from_numpy(w) for w in keep.state]
                if keep.state is not None
                else [],
                "log": log,
                "round": len(log),  # rounds completed; a round cut short is run again
                "seconds": history.seconds,
                "rng": runs.generator_state(rng),
            }
        )

    loop = Loop(
        None,
        history=History(seconds=seconds_before),
        first_step=round_ + 1,
        validate=validate if val_episodes else None,
        val_every=1,
        keep=keep,
        max_seconds=60 * minutes,
        should_stop=should_stop,
        save_resumable=save_resumable,
        on_step=logged,
    )
    loop.run(step)
    result = record("interrupted" if stopped else "complete")
    if stopped:
        result["stopped_state"] = stopped[0]
        return result
    final = final_model()
    if saver is not None:
        written = saver.save(final.save, result)
    else:
        written = checkpoints.write_pair(out, final.save, result)
    return {**result, "weights": written["weights"], "saved_at": written["saved_at"]}


EPOCH_TIMING_SCRIPT = """
import json, os, sys, time
os.environ["KERAS_BACKEND"] = sys.argv[1]
import keras
from helpers import siamese
from helpers.datasets import load_mnist
keras.utils.set_random_seed(0)
data = load_mnist("mnist")
pairs = siamese.make_pairs(data.train_labels, pairs_per_class=int(sys.argv[2]) or None, seed=0)
model = siamese.compile_siamese(siamese.build_siamese())
history, seconds = siamese.train_siamese(model, data.train_images, pairs, epochs=int(sys.argv[3]), verbose=0)
print(json.dumps({"backend": keras.backend.backend(), "pairs": len(pairs), "seconds": seconds}))
"""


def time_epochs_with_backend(
    backend: str,
    pairs_per_class: int | None = None,
    epochs: int = 2,
    timeout: float = 600,
    threads: int | None = None,
) -> dict:
    """Train the MNIST twin for ``epochs`` in a fresh Python process using ``backend``.

    A Keras backend is fixed when Keras is first imported, so comparing backends needs a
    separate process. Returns ``{"backend", "pairs", "seconds": [per epoch]}``; the first
    epoch includes tracing/compilation, the later ones are the steady state. ``threads`` sets
    ``OMP_NUM_THREADS`` for that process (on a CPU shared with other jobs, PyTorch's OpenMP
    threads can spend most of their time waiting for each other).
    """
    import subprocess
    import sys

    if backend not in ("tensorflow", "torch", "jax"):
        raise ValueError(f"backend={backend!r} must be 'tensorflow', 'torch' or 'jax'.")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            EPOCH_TIMING_SCRIPT,
            backend,
            str(pairs_per_class or 0),
            str(epochs),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"timing with backend {backend} failed:\n{done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


SIAMESE_COMMAND = "python -m helpers.siamese --minutes 18"


def load_checkpoint(path: str | Path) -> keras.Model:
    """Reload a saved twin (the registered :class:`L1Distance` makes this work).

    A missing, truncated or mismatched file raises :class:`helpers.checkpoints.CheckpointError`
    with one sentence: which file, what was expected, and the command that makes it.
    """
    from . import checkpoints

    model, _ = checkpoints.load(
        path,
        lambda p: keras.models.load_model(p, compile=False),
        "a Keras Siamese twin (.keras)",
        f"{SIAMESE_COMMAND} --out {path}",
    )
    return model


def checkpoint_record(path: str | Path) -> dict:
    """The ``.json`` beside a twin's checkpoint (command, hardware, minutes, validation)."""
    from . import checkpoints

    record = checkpoints.read_record(path)
    if record is None:
        raise checkpoints.MissingCheckpoint(
            f"no record {checkpoints.record_path(path)}: expected the record of a Siamese twin; "
            f"make it with `{SIAMESE_COMMAND} --out {path}`."
        )
    return record


def record_lineage(path: str | Path) -> list[dict]:
    """The records behind the weights of the twin at ``path``, oldest first: the runs a warm
    start began from (each record's ``init_from``, looked up beside ``path`` by file name and
    checked by run id), then its own. A source that is missing or was replaced is one sentence."""
    from . import checkpoints

    path = Path(path)
    record = checkpoint_record(path)
    source = record.get("init_from")
    if not source:
        return [record]
    earlier = path.parent / Path(source["checkpoint"]).name
    lineage = record_lineage(earlier)
    if lineage[-1].get("run_id") != source["run_id"]:
        raise checkpoints.CheckpointError(
            f"{earlier} is no longer the twin that {path.name} started from (run "
            f"{source['run_id']}); restore it from git."
        )
    return [*lineage, record]


def starting_twin(path: str | Path) -> keras.Model:
    """The twin at ``path`` as its run began, before its first round: a run that started its
    tower from a PyTorch Conv-4 classifier (``--tower-from``) and its head fitted to that tower.

    The classifier is looked up beside ``path`` by file name and checked against the sha256 its
    record names; the head's weights are the ones the record keeps (``tower_from.head``: every
    weight ``-c``, bias ``b``). Anything missing or replaced is one sentence.
    """
    from . import checkpoints, one_shot

    path = Path(path)
    source = checkpoint_record(path).get("tower_from")
    if not source:
        raise ValueError(
            f"{path.name} did not start its tower from a classifier (its record has no tower_from); "
            "only a run of --tower-from has a start to rebuild."
        )
    classifier = path.parent / Path(source["checkpoint"]).name
    found = (checkpoints.read_record(classifier) or {}).get("weights", {}).get("sha256")
    if found != source["sha256"]:
        raise checkpoints.CheckpointError(
            f"{classifier} is missing or is no longer the classifier that {path.name} started from "
            f"(sha256 {str(source['sha256'])[:12]}...); restore it from git."
        )
    model = build_siamese(conv4_base_from_torch(one_shot.load_encoder(classifier)))
    set_l1_head(model, source["head"]["c"], source["head"]["b"])
    return model


def training_curve(lineage: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images through the tower, training minutes and validation accuracy (%) after every
    round of the runs in ``lineage`` (:func:`record_lineage`), each run counted after the
    ones before it (a balanced pair passes the tower twice)."""
    images, minutes, val = [], [], []
    images_before, minutes_before = 0, 0.0
    for record in lineage:
        passes = np.cumsum([entry.get("images", 2 * entry["pairs"]) for entry in record["log"]])
        images.append(images_before + passes)
        minutes.append(minutes_before + np.array(record["history"]["minutes"], dtype=float))
        val.append(100 * np.array(record["history"]["val_20way"], dtype=float))
        images_before += int(passes[-1])
        minutes_before += record["train_seconds"] / 60
    return np.concatenate(images), np.concatenate(minutes), np.concatenate(val)


PROG = "python -m helpers.siamese"


def build_parser():
    from .commands import Parser, add_run_options

    parser = Parser(
        PROG,
        description="Train the reduced Koch Siamese twin on Omniglot's background alphabets for a time "
        "budget and save the best round. Ctrl-C or SIGTERM saves the run; --resume continues it.",
    )
    parser.add_argument(
        "--base",
        choices=TOWERS,
        default="koch28",
        help="the shared tower: the reduced Koch network or the few-shot papers' Conv-4",
    )
    parser.add_argument(
        "--pairing",
        choices=PAIRINGS,
        default="balanced",
        help="balanced: the make_pairs list of same and different pairs; all-in-batch: every pair "
        "among the images of each batch (--batch-size images, a multiple of 4)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default data/checkpoints/siamese_omniglot_<base>.keras, or <base>_allpairs.keras with "
        "--pairing all-in-batch",
    )
    parser.add_argument("--minutes", type=float, default=18.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--lr-decay",
        type=float,
        default=1.0,
        help="round r trains at --learning-rate x this ** (r - 1); Koch et al. took 1 %% off an "
        "epoch (0.99)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from the weights of this twin (same --base; fresh optimiser) instead of random ones",
    )
    parser.add_argument(
        "--tower-from",
        type=Path,
        default=None,
        help="with --base conv4: start the tower from this PyTorch Conv-4 checkpoint, such as notebook "
        "03's classifier embedding data/checkpoints/oneshot_conv4_background.pt (the head starts afresh)",
    )
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="pairs per Adam step (64 ran the Conv-4 twin 1.4x faster per pair here than 128)",
    )
    parser.add_argument(
        "--validation-alphabets",
        type=int,
        default=5,
        help="background alphabets held out to pick the best round",
    )
    parser.add_argument(
        "--hardware", default="", help="a note on the machine, added to the recorded hardware"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no bar over each round's batches (a line per round is printed either way)",
    )
    add_run_options(parser, device=False)
    return parser


def validate_arguments(args) -> None:
    from . import commands

    commands.run_options(args)
    commands.positive(args, "minutes", example=18)
    commands.positive(args, "learning_rate", example=0.001)
    check_lr_decay(args.lr_decay, "--lr-decay")
    commands.whole(args, "features", 1)
    commands.whole(args, "batch_size", 1)
    if args.pairing == "all-in-batch":
        check_all_in_batch_size(args.batch_size, "--batch-size", "--pairing all-in-batch")
    commands.whole(args, "validation_alphabets", 1, 29)
    if args.out is None:
        suffix = "_allpairs" if args.pairing == "all-in-batch" else ""
        args.out = Path(f"data/checkpoints/siamese_omniglot_{args.base}{suffix}.keras")
    if args.out.suffix != ".keras":
        raise ValueError(
            f"--out {args.out} must end in .keras (the format Keras saves a whole model in)."
        )
    commands.writable_target(args.out)
    if args.tower_from is not None:
        if args.base != "conv4":
            raise ValueError(
                f"--tower-from {args.tower_from} is a Conv-4, but --base is {args.base}; give --base conv4."
            )
        if args.init is not None:
            raise ValueError(
                "--tower-from and --init both say where the weights start: give one of them."
            )
        if not args.tower_from.is_file():
            raise ValueError(
                f"--tower-from {args.tower_from}: there is no such file; notebook 03's Conv-4 is "
                "data/checkpoints/oneshot_conv4_background.pt."
            )
    if args.init is not None:
        check_init(args.init, args.base, args.features)
        if args.init.resolve() == args.out.resolve():
            raise ValueError(
                f"--init {args.init} is also --out: give the new run another --out, so the twin "
                "it starts from is kept."
            )


def train_command(args, device, command: str) -> dict:
    import platform

    from . import checkpoints, commands, runs

    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("out", "hardware", "no_progress", "resume", "overwrite", "debug", "started")
    }
    files = commands.RunFiles(args.out, args, settings)
    hardware = (
        f"CPU ({platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} "
        f"cores visible), Keras {keras.__version__} on {keras.backend.backend()}"
        + (f"; {args.hardware}" if args.hardware else "")
    )
    common = {
        "command": command,
        "hardware": hardware,
        "settings": settings,
        "run_id": files.run_id,
        "schema": checkpoints.SCHEMA_VERSION,
    }
    try:
        result = train_omniglot_checkpoint(
            args.out,
            args.minutes,
            args.learning_rate,
            args.seed,
            args.validation_alphabets,
            features=args.features,
            saver=_RecordingSaver(files.saver, common),
            should_stop=runs.stop_requested,
            resume=files.state,
            progress=not args.no_progress,
            base=args.base,
            batch_size=args.batch_size,
            pairing=args.pairing,
            lr_decay=args.lr_decay,
            init=args.init,
            tower_from=args.tower_from,
        )
    except runs.NonFiniteLoss as exc:
        raise commands.nonfinite(
            exc,
            "the learning rate --learning-rate is probably too large",
            files.saver.path if commands.own_checkpoint(files) else None,
        ) from None
    wall = commands.wall_seconds(files, args)
    if "stopped_state" in result:
        state = result.pop("stopped_state")
        files.save_state(
            {**state, "wall_seconds": wall}, {**result, **common, "wall_seconds": round(wall, 1)}
        )
        raise files.interrupted(
            f"round {state['round'] + 1}", command, commands.own_checkpoint(files)
        )
    written = checkpoints.update_record(
        files.saver.path, wall_seconds=round(wall, 1), file_bytes=result["weights"]["bytes"]
    )
    files.finish()
    print(
        json.dumps(
            {k: v for k, v in written.items() if k not in ("log", "history", "settings")}, indent=2
        )
    )
    return written


class _RecordingSaver:
    """A :class:`helpers.checkpoints.Saver` that adds the command's part of the record."""

    def __init__(self, saver, common: dict) -> None:
        self.saver, self.common = saver, common

    def save(self, write_weights, record: dict) -> dict:
        return self.saver.save(write_weights, {**record, **self.common})


def _main(argv: Sequence[str] | None = None) -> dict:
    """``python -m helpers.siamese ...``: see ``--help``; every failure is one line (exit status 2)."""
    from .commands import main as run_command

    return run_command(PROG, build_parser(), validate_arguments, train_command, argv, device=False)


main = _main


if __name__ == "__main__":
    _main()
