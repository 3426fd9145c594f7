"""Tests of helpers.siamese: pairs, the shared twin, the L1 layer, saving, backends, learning."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

from helpers import checkpoints, siamese
from helpers.fewshot import evaluate

ROOT = Path(__file__).resolve().parent.parent


def blobs(n_classes: int = 4, per_class: int = 30, size: int = 8, seed: int = 0):
    """Tiny images: class c is a bright square at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.3, size=(n_classes * per_class, size, size)).astype(np.float32)
    labels = np.repeat(np.arange(n_classes), per_class)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 2)
        images[i, 4 * r : 4 * r + 3, 4 * col : 4 * col + 3] += 0.7
    return images, labels


# ---------------------------------------------------------------------------------- pairs


def test_pairs_are_balanced_per_class_and_overall():
    labels = np.repeat(np.arange(5), [7, 9, 5, 6, 8])
    pairs = siamese.make_pairs(labels, seed=3)
    n = 5 - 1  # smallest class has 5 images
    assert len(pairs) == 2 * 5 * n
    assert pairs.same.mean() == 0.5
    for c in range(5):
        mine = pairs.anchor_class == c
        assert pairs.same[mine].sum() == n and (1 - pairs.same[mine]).sum() == n
    assert np.array_equal(labels[pairs.left], pairs.anchor_class)
    # same and different alternate
    assert np.array_equal(pairs.same, np.tile([1.0, 0.0], len(pairs) // 2))


def test_same_pairs_have_equal_labels_and_different_pairs_unequal():
    labels = np.random.default_rng(0).integers(0, 10, size=500)
    pairs = siamese.make_pairs(labels, seed=1)
    is_same = pairs.same == 1
    assert np.all(labels[pairs.left][is_same] == labels[pairs.right][is_same])
    assert np.all(labels[pairs.left][~is_same] != labels[pairs.right][~is_same])
    # a same pair never pairs an image with itself
    assert np.all(pairs.left[is_same] != pairs.right[is_same])


def test_pairs_are_seeded_and_checked():
    labels = np.repeat(np.arange(3), 4)
    a, b = siamese.make_pairs(labels, seed=7), siamese.make_pairs(labels, seed=7)
    assert np.array_equal(a.left, b.left) and np.array_equal(a.right, b.right)
    assert len(siamese.make_pairs(labels, pairs_per_class=2)) == 12
    with pytest.raises(ValueError, match="pairs_per_class"):
        siamese.make_pairs(labels, pairs_per_class=4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        siamese.make_pairs(np.zeros(5))


def test_same_group_negatives_come_from_the_group():
    labels = np.repeat(np.arange(6), 5)
    groups = np.array([0, 0, 0, 1, 1, 1])
    pairs = siamese.make_pairs(labels, seed=0, groups=groups, same_group_fraction=1.0)
    different = pairs.same == 0
    assert np.all(groups[labels[pairs.left][different]] == groups[labels[pairs.right][different]])


# ---------------------------------------------------------------------------------- model


def test_l1_layer_is_symmetric_and_zero_on_identical_inputs():
    layer = siamese.L1Distance()
    a = np.array([[1.0, -2.0, 3.0]], dtype=np.float32)
    b = np.array([[0.5, 1.0, 3.0]], dtype=np.float32)
    ab = keras.ops.convert_to_numpy(layer([a, b]))
    assert np.allclose(ab, [[0.5, 3.0, 0.0]])
    assert np.allclose(ab, keras.ops.convert_to_numpy(layer([b, a])))
    assert np.allclose(keras.ops.convert_to_numpy(layer([a, a])), 0.0)


def test_both_branches_share_one_set_of_weights():
    keras.utils.set_random_seed(0)
    model = siamese.build_siamese(image_shape=(8, 8))
    base = model.get_layer("base")
    # no duplicated weights: the twin holds the base's weights once, plus the head (64 + 1)
    assert model.count_params() == base.count_params() + 65
    x = np.random.default_rng(0).uniform(size=(5, 8, 8)).astype(np.float32)
    y = np.random.default_rng(1).uniform(size=(5, 8, 8)).astype(np.float32)
    before = siamese.predict_pairs(model, x, y)
    # change the base once: both branches see it, so swapping inputs still gives the same answer
    weights = base.get_weights()
    weights[0] = weights[0] + 0.05
    base.set_weights(weights)
    after_xy, after_yx = siamese.predict_pairs(model, x, y), siamese.predict_pairs(model, y, x)
    assert not np.allclose(before, after_xy)
    assert np.allclose(after_xy, after_yx, atol=1e-6)
    # identical inputs: the distance is zero, so p = sigmoid(bias of the head)
    bias = float(model.get_layer("similarity").get_weights()[1][0])
    assert np.allclose(siamese.predict_pairs(model, x, x), 1 / (1 + np.exp(-bias)), atol=1e-6)


def test_saved_model_reloads_and_predicts_the_same(tmp_path):
    keras.utils.set_random_seed(1)
    model = siamese.build_siamese(
        siamese.koch_base((20, 20), filters=(4, 4, 4), features=8), image_shape=(20, 20)
    )
    x = np.random.default_rng(2).uniform(size=(6, 20, 20)).astype(np.float32)
    y = np.random.default_rng(3).uniform(size=(6, 20, 20)).astype(np.float32)
    path = tmp_path / "twin.keras"
    model.save(path)
    again = siamese.load_checkpoint(path)
    assert isinstance(again.get_layer("l1_distance"), siamese.L1Distance)
    assert np.allclose(
        siamese.predict_pairs(model, x, y), siamese.predict_pairs(again, x, y), atol=1e-6
    )


def test_conv4_tower_is_the_few_shot_conv4_and_its_twin_reloads_the_same(tmp_path):
    # four blocks take 28 -> 14 -> 7 -> 3 -> 1, so 64 features; each block: 3x3 conv without
    # bias (9 * c_in * 64) and batch norm (4 * 64: scale, shift, running mean and variance)
    keras.utils.set_random_seed(0)
    tower = siamese.conv4_base((28, 28))
    assert tower.output_shape == (None, 64)
    assert tower.count_params() == (9 * 1 * 64 + 3 * 9 * 64 * 64) + 4 * (4 * 64)
    model = siamese.build_siamese(tower)
    x = np.random.default_rng(0).uniform(size=(4, 28, 28)).astype(np.float32)
    y = np.random.default_rng(1).uniform(size=(4, 28, 28)).astype(np.float32)
    path = tmp_path / "conv4_twin.keras"
    model.save(path)
    again = siamese.load_checkpoint(path)
    assert np.allclose(
        siamese.predict_pairs(model, x, y), siamese.predict_pairs(again, x, y), atol=1e-6
    )
    assert np.allclose(
        siamese.predict_pairs(model, x, y), siamese.predict_pairs(model, y, x), atol=1e-6
    )
    # every query against every support: the tower runs once per image, the head on each
    # distance, and that equals the whole twin run on each pair (batch norm in inference mode)
    grid = siamese.pair_similarities(model, x, y[:3])
    explicit = siamese.predict_pairs(model, np.repeat(x, 3, axis=0), np.tile(y[:3], (4, 1, 1)))
    assert grid.shape == (4, 3) and np.allclose(grid, explicit.reshape(4, 3), atol=1e-5)
    assert siamese.pair_similarities(model, x[:0], y).shape == (0, 4)


def test_a_torch_conv4_ported_to_keras_gives_the_same_features_in_both_modes():
    from helpers.nets import Conv4

    torch.manual_seed(0)
    encoder = Conv4()
    # non-trivial running statistics, scales, shifts and convolution biases: a few batches in
    # training mode, then random affine parameters
    images = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        encoder.train()
        for _ in range(3):
            encoder(images)
        for block in encoder.blocks:
            block[0].bias.uniform_(-0.5, 0.5)
            block[1].weight.uniform_(0.5, 1.5)
            block[1].bias.uniform_(-0.2, 0.2)
        encoder.eval()
        expected = encoder(images[:16]).numpy()
    tower = siamese.conv4_base_from_torch(encoder)
    assert tower.count_params() == siamese.conv4_base((28, 28)).count_params()
    features = np.asarray(tower(images[:16, 0].numpy(), training=False))
    assert np.abs(expected).max() > 0.1  # not a zero embedding that any port would match
    assert np.allclose(features, expected, atol=1e-5), np.abs(features - expected).max()
    # training mode normalises with the batch's own statistics, where the folded bias cancels
    # as it does in torch
    with torch.no_grad():
        encoder.train()
        batch_stats = encoder(images[:16]).numpy()
    assert np.allclose(
        np.asarray(tower(images[:16, 0].numpy(), training=True)), batch_stats, atol=1e-4
    )
    with pytest.raises(ValueError, match="helpers.nets.Conv4"):
        siamese.conv4_base_from_torch(torch.nn.Linear(2, 2))


def test_all_pairs_loss_is_the_balanced_cross_entropy_of_every_pair_by_hand():
    labels = np.array([0, 0, 1, 2, 2, 2], dtype=np.float32)
    p = np.random.default_rng(0).uniform(0.05, 0.95, size=(6, 6, 1)).astype(np.float32)
    same = labels[:, None] == labels[None, :]
    positive, negative = same & ~np.eye(6, dtype=bool), ~same
    bce = -(same * np.log(p[..., 0]) + (1 - same) * np.log(1 - p[..., 0]))
    expected = 0.5 * (bce[positive].mean() + bce[negative].mean())
    got = float(keras.ops.convert_to_numpy(siamese.all_pairs_loss(labels, p)))
    assert np.isclose(got, expected, rtol=1e-5)
    right = (p[..., 0] > 0.5) == same
    accuracy = float(keras.ops.convert_to_numpy(siamese.all_pairs_accuracy(labels, p)))
    assert np.isclose(accuracy, 0.5 * (right[positive].mean() + right[negative].mean()))


def test_all_pairs_batches_take_distinct_drawings_of_characters_mostly_from_few_alphabets():
    groups = np.repeat(np.arange(6), 10)  # 60 characters, 10 per alphabet
    rows, labels = siamese.all_pairs_batches(groups, np.random.default_rng(0), 5, 8, 4, 2)
    assert rows.shape == labels.shape == (5 * 32,)
    assert np.array_equal(rows // 20, labels)  # a row is class * 20 + drawing
    for batch in range(5):
        r, c = rows[32 * batch : 32 * (batch + 1)], labels[32 * batch : 32 * (batch + 1)]
        assert len(np.unique(c)) == 8 and len(np.unique(r)) == 32  # 4 distinct drawings of each
        assert len(np.unique(groups[c])) <= 2  # 8 characters fit in the 2 alphabets drawn
    with pytest.raises(ValueError, match="drawings"):
        siamese.all_pairs_batches(groups, np.random.default_rng(0), 1, 8, 1)


def test_the_all_pairs_trainer_trains_the_twin_it_shares_layers_with():
    keras.utils.set_random_seed(0)
    twin = siamese.build_siamese(
        siamese.koch_base((20, 20), filters=(4, 4, 4), features=8), image_shape=(20, 20)
    )
    trainer = siamese.build_all_pairs_trainer(twin, image_shape=(20, 20))
    x = np.random.default_rng(0).uniform(size=(8, 20, 20)).astype(np.float32)
    grid = keras.ops.convert_to_numpy(trainer.predict_on_batch(x))[..., 0]
    explicit = siamese.predict_pairs(twin, np.repeat(x, 8, axis=0), np.tile(x, (8, 1, 1)))
    assert np.allclose(
        grid, explicit.reshape(8, 8), atol=1e-5
    )  # output (i, j) is the twin on (x_i, x_j)
    before = twin.get_weights()
    trainer.fit(x, np.repeat(np.arange(4), 2).astype(np.float32), batch_size=8, epochs=1, verbose=0)
    assert any(not np.allclose(a, b) for a, b in zip(before, twin.get_weights()))


def test_a_head_fitted_to_the_tower_scores_pairs_by_l1_distance_by_hand():
    # a tower that only flattens: its features are the pixels. Same-label pairs are 0.2 apart
    # in L1 (both), different-label pairs 2.0, 2.2, 1.8 and 2.0 (mean 2.0), so c = 2 * 2 / 1.8
    # and b = c * 1.1: the logit is +2 at the same pairs' mean distance and -2 at the others'.
    base = keras.Sequential([keras.Input((2, 2)), keras.layers.Flatten()], name="base")
    twin = siamese.build_siamese(base, (2, 2))
    images = np.array(
        [[0, 0, 0, 0], [0.2, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0.2, 0]], dtype=np.float32
    ).reshape(4, 2, 2)
    fit = siamese.fit_head_to_tower(twin, images, [0, 0, 1, 1])
    assert fit["mean_l1_same"] == pytest.approx(0.2) and fit["mean_l1_different"] == pytest.approx(
        2.0
    )
    assert fit["c"] == pytest.approx(4 / 1.8) and fit["b"] == pytest.approx(4 / 1.8 * 1.1)
    p = keras.ops.convert_to_numpy(twin([images[[0, 0]], images[[1, 2]]]))[:, 0]
    np.testing.assert_allclose(p, 1 / (1 + np.exp([-2.0, 2.0])), rtol=1e-5)
    # the twin now ranks support images exactly as an L1 nearest neighbour on the features
    queries, support = images[[1, 3]], images[[0, 2]]
    scores = keras.ops.convert_to_numpy(
        twin([np.repeat(queries, 2, axis=0), np.tile(support, (2, 1, 1))])
    ).reshape(2, 2)
    assert list(scores.argmax(1)) == [0, 1]
    # the same four drawings as two characters of two drawings each, drawn in either order
    by_character = images.reshape(2, 2, 2, 2)
    again = siamese.fit_head_on_characters(twin, by_character, seed=3, characters=2, drawings=2)
    assert again["c"] == pytest.approx(fit["c"]) and again["b"] == pytest.approx(fit["b"])
    with pytest.raises(ValueError, match="two different labels"):
        siamese.fit_head_to_tower(twin, images, [0, 0, 0, 0])
    with pytest.raises(ValueError, match="no further apart"):
        siamese.fit_head_to_tower(twin, images, [0, 1, 0, 1])


def test_the_omniglot_trainer_refuses_an_unknown_tower(tmp_path):
    with pytest.raises(ValueError, match="base must be one of koch28, conv4, got 'vgg'"):
        siamese.train_omniglot_checkpoint(tmp_path / "t.keras", base="vgg")


def test_one_shot_scores_equal_explicit_pair_predictions():
    keras.utils.set_random_seed(0)
    model = siamese.build_siamese(image_shape=(8, 8))
    images, _ = blobs()
    support, query = images[:3], images[3:7]
    method = siamese.SiameseOneShot(model)
    method.process_support_set(torch.from_numpy(support).unsqueeze(1), torch.tensor([0, 1, 2]))
    scores = method.scores(torch.from_numpy(query).unsqueeze(1)).numpy()
    for q in range(4):
        for s in range(3):
            expected = siamese.predict_pairs(model, query[q : q + 1], support[s : s + 1])[0]
            # scores are the head's logits: the sigmoid of a score is the pair's probability
            assert np.isclose(1 / (1 + np.exp(-scores[q, s])), expected, atol=1e-5)
    probabilities = siamese.pair_similarities(model, query, support)
    assert np.allclose(probabilities, 1 / (1 + np.exp(-scores)), atol=1e-5)
    assert np.array_equal(probabilities.argmax(axis=1), scores.argmax(axis=1))
    # two support images of one class: its score is the better of the two
    method.process_support_set(torch.from_numpy(support).unsqueeze(1), torch.tensor([0, 0, 1]))
    two = method.scores(torch.from_numpy(query).unsqueeze(1)).numpy()
    assert np.allclose(two[:, 0], scores[:, :2].max(axis=1)) and np.allclose(
        two[:, 1], scores[:, 2]
    )


def test_bad_settings_raise_value_errors():
    model = siamese.build_siamese(image_shape=(8, 8))
    with pytest.raises(ValueError, match="learning_rate"):
        siamese.compile_siamese(model, learning_rate=-0.1)
    images, labels = blobs()
    siamese.compile_siamese(model)
    with pytest.raises(ValueError, match="epochs"):
        siamese.train_siamese(model, images, siamese.make_pairs(labels), epochs=0)


def _epoch(batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [
        (np.asarray(left), np.asarray(right), np.asarray(same)) for (left, right), same in batches
    ]
    return tuple(np.concatenate(column) for column in zip(*parts))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_pair_batches_give_every_pair_once_an_epoch_reshuffled_and_reproducible(dtype):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 3, 3)).astype(np.uint8)
    labels = np.repeat(np.arange(4), 6)
    pairs = siamese.make_pairs(labels, seed=0)
    if dtype == "float32":
        images = siamese.as_float(images)
    expected_left, expected_right = (siamese.as_float(x) for x in pairs.images(images))
    key = {
        (a.tobytes(), b.tobytes()): s for a, b, s in zip(expected_left, expected_right, pairs.same)
    }
    batches = siamese.pair_batches(images, pairs, batch_size=7, shuffle=True, seed=3)
    first, second = _epoch(batches), _epoch(batches)
    for left, right, same in (first, second):
        assert left.dtype == np.float32 and len(left) == len(pairs)
        seen = [(a.tobytes(), b.tobytes()) for a, b in zip(left, right)]
        assert sorted(seen) == sorted(key)  # every pair exactly once (pairs here are distinct)
        assert [key[k] for k in seen] == list(same)  # each pair keeps its label
    assert not np.array_equal(first[0], second[0])  # drawn again for the second epoch
    again = _epoch(siamese.pair_batches(images, pairs, batch_size=7, shuffle=True, seed=3))
    assert np.array_equal(again[0], first[0]) and np.array_equal(again[2], first[2])
    fixed = _epoch(siamese.pair_batches(images, pairs, batch_size=7, shuffle=False))
    assert np.array_equal(fixed[0], expected_left) and np.array_equal(fixed[2], pairs.same)


def test_pair_batches_share_one_copy_of_the_same_images_and_copy_changed_ones():
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    first = siamese._tensorflow_images(images)
    assert siamese._tensorflow_images(images.copy()) is first  # the same pixels: one copy
    images[0] = 9  # changed in place: a fresh copy with the new pixels
    changed = siamese._tensorflow_images(images)
    assert changed is not first and int(np.asarray(changed)[0, 0, 0]) == 9
    for k in range(3):  # only the most recent few are kept
        siamese._tensorflow_images(np.full((2, 2), k, dtype=np.uint8))
    assert len(siamese._TF_IMAGES) == siamese._TF_IMAGES_KEPT


# ---------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_short_training_beats_chance_on_held_out_pairs_and_one_shot():
    keras.utils.set_random_seed(0)
    images, labels = blobs(per_class=40)
    train = np.arange(len(labels)) % 40 < 30
    model = siamese.compile_siamese(siamese.build_siamese(image_shape=(8, 8)), learning_rate=0.003)
    history, seconds = siamese.train_siamese(
        model, images[train], siamese.make_pairs(labels[train], seed=0), epochs=20, verbose=0
    )
    assert len(seconds) == 20 and history["loss"][-1] < history["loss"][0]
    held_images, held_labels = images[~train], labels[~train]
    held = siamese.make_pairs(held_labels, seed=1)
    accuracy = siamese.pair_accuracy(
        siamese.predict_pairs(model, *held.images(held_images)), held.same
    )
    assert accuracy > 0.75  # chance is 0.5
    from helpers.episodes import FewShotDataset, sample_episodes

    dataset = FewShotDataset(
        "blobs",
        (held_images * 255).clip(0, 255).astype(np.uint8),
        held_labels,
        ("a", "b", "c", "d"),
    )
    result = evaluate(
        siamese.SiameseOneShot(model), sample_episodes(dataset, 4, 1, 3, count=10), progress=False
    )
    assert result.mean > 0.5  # chance is 0.25


# ---------------------------------------------------------------------------------- contrastive loss


def test_contrastive_loss_exact_values_on_hand_made_pairs():
    # same pairs cost d^2; different pairs cost (margin - d)^2 inside the margin and nothing beyond
    distance = np.array([0.0, 0.5, 2.0, 0.25, 1.5])
    same = np.array([1, 1, 1, 0, 0])
    per_pair = keras.ops.convert_to_numpy(
        siamese.contrastive_loss(distance, same, margin=1.0, reduction="none")
    )
    np.testing.assert_allclose(per_pair, [0.0, 0.25, 4.0, 0.5625, 0.0], rtol=0, atol=1e-12)
    assert float(siamese.contrastive_loss(distance, same)) == pytest.approx(4.8125 / 5, abs=1e-12)
    wider = keras.ops.convert_to_numpy(
        siamese.contrastive_loss(distance, same, margin=2.0, reduction="none")
    )
    np.testing.assert_allclose(wider, [0.0, 0.25, 4.0, 3.0625, 0.25], rtol=0, atol=1e-12)


def test_contrastive_loss_ignores_different_pairs_beyond_the_margin_and_takes_lists_and_float32():
    far = siamese.contrastive_loss([1.0, 3.0, 10.0], [0, 0, 0], margin=1.0, reduction="none")
    assert np.array_equal(keras.ops.convert_to_numpy(far), [0.0, 0.0, 0.0])
    # an integer distance is made a float; booleans count as labels
    assert float(siamese.contrastive_loss(np.array([2]), np.array([True]))) == 4.0
    inside = siamese.contrastive_loss(np.float32([0.5]), [0], margin=2.0)
    assert float(inside) == 2.25


def test_contrastive_loss_refuses_bad_inputs_in_one_sentence():
    for kwargs, message in (
        (dict(margin=0.0), "margin=0.0 must be a positive finite number"),
        (dict(margin=-1), "margin=-1 must be a positive finite number"),
        (dict(reduction="sum"), "reduction='sum' must be 'mean' or 'none'"),
    ):
        with pytest.raises(ValueError, match=message):
            siamese.contrastive_loss([0.5], [1], **kwargs)
    with pytest.raises(
        ValueError, match=r"distance holds -0.5; every distance must be a finite number >= 0\."
    ):
        siamese.contrastive_loss([1.0, -0.5], [1, 0])
    with pytest.raises(ValueError, match=r"distance holds nan"):
        siamese.contrastive_loss([float("nan")], [1])
    with pytest.raises(
        ValueError,
        match=r"same holds 2.0; every label must be 1 \(same class\) or 0 \(different\)\.",
    ):
        siamese.contrastive_loss([1.0, 0.5], [1, 2])
    with pytest.raises(ValueError, match=r"distance has shape \(2,\) but same has shape \(3,\)"):
        siamese.contrastive_loss([1.0, 0.5], [1, 0, 1])


def test_contrastive_twin_outputs_the_euclidean_distance_and_its_loss_matches_by_hand(tmp_path):
    keras.utils.set_random_seed(0)
    model = siamese.build_contrastive_siamese(image_shape=(8, 8))
    base = model.get_layer("base")
    assert model.count_params() == base.count_params()  # no head: the distance is the answer
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 8, 8)).astype(np.float32)
    y = rng.uniform(size=(6, 8, 8)).astype(np.float32)
    by_hand = np.linalg.norm(
        keras.ops.convert_to_numpy(base(x)) - keras.ops.convert_to_numpy(base(y)), axis=1
    )
    distance = siamese.predict_pairs(model, x, y)
    np.testing.assert_allclose(distance, by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(siamese.predict_pairs(model, y, x), distance, atol=1e-6)
    assert np.all(siamese.predict_pairs(model, x, x) <= 1e-5)  # sqrt of the 1e-12 floor
    # the Keras loss is the formula: same pairs d^2, different pairs max(0, m - d)^2, averaged
    loss = siamese.ContrastiveLoss(margin=2.0)
    same = np.array([1, 0, 1, 0], dtype=np.float32)
    d = np.array([[0.5], [0.5], [3.0], [3.0]], dtype=np.float32)
    assert float(loss(same, d)) == pytest.approx((0.25 + 2.25 + 9.0 + 0.0) / 4, abs=1e-6)
    assert siamese.ContrastiveLoss.from_config(loss.get_config()).margin == 2.0
    with pytest.raises(ValueError, match="margin=0 must be a positive finite number"):
        siamese.ContrastiveLoss(margin=0)
    path = tmp_path / "contrastive.keras"
    siamese.compile_contrastive(model, margin=2.0).save(path)
    again = siamese.load_checkpoint(path)
    assert isinstance(again.get_layer("euclidean_distance"), siamese.EuclideanDistance)
    np.testing.assert_allclose(siamese.predict_pairs(again, x, y), distance, atol=1e-6)


def test_distance_accuracy_calls_close_pairs_same():
    distances, same = np.array([0.1, 0.7, 0.4, 0.9]), np.array([1, 0, 0, 1])
    assert siamese.distance_pair_accuracy(distances, same) == 0.5
    assert siamese.distance_pair_accuracy(distances, same, threshold=0.3) == 0.75
    assert siamese.distance_pair_accuracy(distances, same, threshold=1.0) == 0.5


def test_both_losses_train_the_same_tower_and_beat_chance_on_held_out_pairs():
    images, labels = blobs(per_class=40)
    train = np.arange(len(labels)) % 40 < 30
    pairs = siamese.make_pairs(labels[train], seed=0)
    held = siamese.make_pairs(labels[~train], seed=1)
    results = siamese.compare_pair_losses(
        images[train], pairs, images[~train], held, epochs=8, learning_rate=0.003, seed=0
    )
    assert set(results) == {"cross-entropy", "contrastive"}
    for name, result in results.items():
        assert len(result["accuracies"]) == len(result["loss"]) == 8
        assert result["accuracy"] == result["accuracies"][-1] > 0.75, name  # chance is 0.5
        assert result["loss"][-1] < result["loss"][0]
    # both started from the same tower: the seed fixes the first weights of each base
    towers = [r["model"].get_layer("base") for r in results.values()]
    assert [w.shape for w in towers[0].get_weights()] == [w.shape for w in towers[1].get_weights()]
    keras.utils.set_random_seed(0)
    fresh = siamese.mlp_base((8, 8)).get_weights()[0]
    keras.utils.set_random_seed(0)
    assert np.array_equal(siamese.mlp_base((8, 8)).get_weights()[0], fresh)
    # the reported accuracy is the rule named in the docstring, recomputed from the outputs
    outputs = results["contrastive"]["outputs"]
    assert results["contrastive"]["accuracy"] == siamese.distance_pair_accuracy(
        outputs, held.same, 0.5
    )


def test_tower_nearest_neighbour_is_cosine_between_base_embeddings():
    keras.utils.set_random_seed(0)
    model = siamese.build_siamese(image_shape=(8, 8))
    images, _ = blobs()
    support, query = torch.from_numpy(images[:4, None]), torch.from_numpy(images[40:46, None])
    method = siamese.TowerNearestNeighbour(model)
    method.process_support_set(support, torch.arange(4))
    base = model.get_layer("base")
    s = keras.ops.convert_to_numpy(base(images[:4]))
    q = keras.ops.convert_to_numpy(base(images[40:46]))
    cosine = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        s / np.linalg.norm(s, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(method.scores(query).numpy(), cosine, atol=1e-5)
    euclidean = siamese.TowerNearestNeighbour(model, "euclidean")
    euclidean.process_support_set(support, torch.arange(4))
    np.testing.assert_allclose(
        euclidean.scores(query).numpy(),
        -np.linalg.norm(q[:, None] - s[None], axis=2),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="metric"):
        siamese.TowerNearestNeighbour(model, "manhattan")


def test_random_alphabet_episodes_ignore_the_alphabet_and_use_two_drawers():
    images = np.arange(30 * 4 * 2 * 2, dtype=np.uint8).reshape(30, 4, 2, 2)
    alphabets = np.repeat(np.array(["A", "B", "C"]), 10)
    episodes = siamese.random_alphabet_episodes(images, alphabets, n_way=20, count=5, seed=0)
    again = siamese.random_alphabet_episodes(images, alphabets, n_way=20, count=5, seed=0)
    assert len(episodes) == 5
    for e, f in zip(episodes, again):
        assert e.n_way == 20 and e.k_shot == 1 and len(set(e.class_ids.tolist())) == 20
        assert len(set(e.class_names)) > 1  # 20 of 30 characters cannot all be of one alphabet
        assert torch.equal(e.support_images, f.support_images)
        assert not torch.equal(e.support_images, e.query_images)  # two different drawers
    with pytest.raises(ValueError, match="n_way"):
        siamese.random_alphabet_episodes(images, alphabets, n_way=31)


def test_pair_accuracy_counts_by_threshold():
    assert siamese.pair_accuracy(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1])) == 0.5
    assert (
        siamese.pair_accuracy(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1]), threshold=0.3)
        == 0.75
    )
    assert siamese.pair_accuracy(np.array([0.9, 0.2]), np.array([1, 0]), threshold=0.95) == 0.5


def test_lake_runs_become_episodes_with_the_answer_key():
    from helpers.datasets import LakeRun

    run = LakeRun(
        "run01",
        np.zeros((20, 8, 8), np.uint8),
        np.full((20, 8, 8), 255, np.uint8),
        np.arange(20)[::-1].copy(),
    )
    (episode,) = siamese.lake_run_episodes([run])
    assert episode.n_way == 20 and episode.k_shot == 1
    assert episode.query_labels.tolist() == list(range(19, -1, -1))
    assert float(episode.query_images.max()) == 1.0


# ---------------------------------------------------------------------------------- backends

BACKEND_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["KERAS_BACKEND"] = sys.argv[1]
    import numpy as np, keras
    from helpers import siamese
    assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(40, 8, 8)).astype("float32")
    labels = np.repeat(np.arange(4), 10)
    model = siamese.compile_siamese(siamese.build_siamese(image_shape=(8, 8)))
    history, seconds = siamese.train_siamese(model, images, siamese.make_pairs(labels), epochs=1, verbose=0)
    p = siamese.predict_pairs(model, images[:5], images[5:10])
    assert p.shape == (5,) and np.all((p >= 0) & (p <= 1))
    path = sys.argv[2]
    model.save(path)
    again = siamese.load_checkpoint(path)
    assert np.allclose(p, siamese.predict_pairs(again, images[:5], images[5:10]), atol=1e-6)
    import torch
    method = siamese.SiameseOneShot(again)
    method.process_support_set(torch.from_numpy(images[:4, None]), torch.arange(4))
    scores = method.scores(torch.from_numpy(images[4:7, None])).numpy()
    assert np.allclose(1 / (1 + np.exp(-scores)), siamese.pair_similarities(again, images[4:7], images[:4]), atol=1e-5)
    print("ok", keras.backend.backend())
    """
)


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_model_trains_saves_and_reloads_under_each_backend(backend, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT, backend, str(tmp_path / f"{backend}.keras")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ok {backend}" in done.stdout


def test_a_missing_or_truncated_twin_is_one_sentence_with_the_command(tmp_path):
    from helpers.checkpoints import CheckpointError, MissingCheckpoint

    with pytest.raises(MissingCheckpoint) as caught:
        siamese.load_checkpoint(tmp_path / "gone.keras")
    assert (
        "\n" not in str(caught.value)
        and "a Keras Siamese twin" in str(caught.value)
        and "python -m helpers.siamese" in str(caught.value)
    )
    model = siamese.build_siamese(
        siamese.koch_base((20, 20), filters=(4, 4, 4), features=8), image_shape=(20, 20)
    )
    model.save(tmp_path / "twin.keras")
    data = (tmp_path / "twin.keras").read_bytes()
    (tmp_path / "twin.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as caught:
        siamese.load_checkpoint(tmp_path / "twin.keras")
    assert "\n" not in str(caught.value) and str(tmp_path / "twin.keras") in str(caught.value)


@pytest.mark.slow
@pytest.mark.usefixtures("needs_data")
def test_the_omniglot_twin_keeps_its_best_round_stops_and_resumes(tmp_path, monkeypatch, capsys):
    # The rounds are steps of the shared training loop: validated every round, the best saved
    # only when it improves, a stop request handing back a resumable state, the time budget
    # (earlier sessions included) ending the resumed run after one more round; a budget that the
    # first session has already spent allows none.
    from helpers import checkpoints

    real_make_pairs = siamese.make_pairs
    monkeypatch.setattr(
        siamese,
        "make_pairs",
        lambda labels, pairs_per_class=None, **kw: real_make_pairs(labels, 1, **kw),
    )
    saver = checkpoints.Saver(tmp_path / "twin.keras", "run-1")
    saved_rounds = []
    real_save = saver.save

    def counting_save(write_weights, record):
        saved_rounds.append(record["rounds"])
        return real_save(write_weights, record)

    saver.save = counting_save
    import helpers.fewshot as fewshot

    validated, real_evaluate = [], fewshot.evaluate

    def counting_evaluate(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        validated.append(result.mean)
        return result

    monkeypatch.setattr(fewshot, "evaluate", counting_evaluate)

    def stop_before_round_3():  # asked before every round, after every batch and after every fit
        return len(validated) == 2

    settings = dict(seed=0, validation_alphabets=2, features=8, saver=saver, progress=False)
    first = siamese.train_omniglot_checkpoint(
        tmp_path / "twin.keras", minutes=5, should_stop=stop_before_round_3, **settings
    )
    state = first.pop("stopped_state")
    assert (
        first["status"] == "interrupted"
        and [e["round"] for e in state["log"]] == [1, 2]
        and state["round"] == 2
    )
    assert state["best_accuracy"] == max(validated)
    # without the bar (progress=False), each round still prints its log line
    printed = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    assert [e["round"] for e in printed] == [1, 2] and printed[1]["val_20way"] == validated[1]
    improved = [i + 1 for i, v in enumerate(validated) if v > max([-1.0, *validated[:i]])]
    assert saved_rounds == improved  # saved only when the validation improved
    spent = siamese.train_omniglot_checkpoint(
        tmp_path / "spent.keras", minutes=state["seconds"] / 60 / 2, resume=state, **settings
    )
    assert [e["round"] for e in spent["log"]] == [1, 2] and len(validated) == 2
    resumed = siamese.train_omniglot_checkpoint(
        tmp_path / "twin.keras", minutes=state["seconds"] / 60 + 1e-4, resume=state, **settings
    )
    assert (
        resumed["status"] == "complete"
        and [e["round"] for e in resumed["log"]] == [1, 2, 3]
        and resumed["rounds"] == 3
    )
    assert resumed["best_validation_20way_accuracy"] == max(validated) and len(validated) == 3
    assert checkpoints.read_record(tmp_path / "twin.keras")["status"] == "complete"
    siamese.load_checkpoint(tmp_path / "twin.keras")


def test_the_learning_rate_decays_by_round_and_bad_factors_are_refused():
    assert siamese.round_learning_rate(1e-3, 0.5, 1) == 1e-3
    assert siamese.round_learning_rate(1e-3, 0.5, 3) == pytest.approx(2.5e-4, rel=1e-12)
    assert siamese.round_learning_rate(1e-3, 1.0, 50) == 1e-3
    for bad in (0.0, -0.5, 1.01, float("nan")):
        with pytest.raises(ValueError):
            siamese.check_lr_decay(bad)


@pytest.mark.slow
@pytest.mark.usefixtures("needs_data")
def test_a_twin_can_start_its_tower_from_notebook_03s_conv4(tmp_path, monkeypatch):
    # one round at a learning rate too small to move a weight: the twin's trainable tower
    # weights are the ported classifier's, its batch norm uses PyTorch's epsilon, the record
    # names the source, and a warm start from that twin keeps the epsilon
    from helpers import one_shot

    real_make_pairs = siamese.make_pairs
    monkeypatch.setattr(
        siamese,
        "make_pairs",
        lambda labels, pairs_per_class=None, **kw: real_make_pairs(labels, 1, **kw),
    )
    encoder_path = ROOT / "data" / "checkpoints" / "oneshot_conv4_background.pt"
    settings = dict(validation_alphabets=2, progress=False, base="conv4", learning_rate=1e-12)
    record = siamese.train_omniglot_checkpoint(
        tmp_path / "t.keras", minutes=1e-4, tower_from=encoder_path, **settings
    )
    ported = siamese.conv4_base_from_torch(one_shot.load_encoder(encoder_path))
    tower = siamese.load_checkpoint(tmp_path / "t.keras").get_layer("base")
    for got, want in zip(tower.trainable_weights, ported.trainable_weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want), atol=1e-7
        )
    norms = [layer for layer in tower.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {layer.epsilon for layer in norms} == {1e-5}
    assert record["tower_from"]["checkpoint"] == str(encoder_path)
    # the head starts as an L1 nearest neighbour on the ported features (fit_head_to_tower)
    fit = record["tower_from"]["head"]
    kernel, bias = (
        siamese.load_checkpoint(tmp_path / "t.keras").get_layer("similarity").get_weights()
    )
    assert fit["mean_l1_different"] > fit["mean_l1_same"] > 0
    np.testing.assert_allclose(kernel, -fit["c"], rtol=1e-6)
    np.testing.assert_allclose(bias, [fit["b"]], rtol=1e-6)
    assert 0 <= record["tower_from"]["val_20way_before_training"] <= 1
    assert record["tower_from"]["sha256"] and record["batch_norm_epsilon"] == 1e-5
    # that classifier learned all 30 background alphabets, the validation ones among them; one
    # whose record says it held them out (helpers.one_shot --hold-out-alphabets) saw none
    assert record["tower_from"]["validation_alphabets_seen"] == record["validation_alphabets"]
    clean = tmp_path / "clean.pt"
    shutil.copy(encoder_path, clean)
    clean_record = json.loads(encoder_path.with_suffix(".json").read_text())
    clean_record["held_out_alphabets"] = record["validation_alphabets"]
    clean.with_suffix(".json").write_text(json.dumps(clean_record))
    unseen = siamese.train_omniglot_checkpoint(
        tmp_path / "u.keras", minutes=1e-4, tower_from=clean, **settings
    )
    assert unseen["validation_alphabets"] == record["validation_alphabets"]
    assert unseen["tower_from"]["validation_alphabets_seen"] == []
    # the twin as that run began: the classifier's tower and the recorded head; a learning rate
    # too small to move a weight leaves the trainable weights there (batch norm's running
    # statistics move in training mode, so they are not compared)
    start = siamese.starting_twin(tmp_path / "u.keras")
    trained = siamese.load_checkpoint(tmp_path / "u.keras")
    for got, want in zip(start.trainable_weights, trained.trainable_weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want), atol=1e-6
        )
    with pytest.raises(checkpoints.CheckpointError, match="missing or is no longer the classifier"):
        siamese.starting_twin(tmp_path / "t.keras")  # its classifier is not beside it
    warm = siamese.train_omniglot_checkpoint(
        tmp_path / "w.keras", minutes=1e-4, init=tmp_path / "t.keras", **settings
    )
    again = siamese.load_checkpoint(tmp_path / "w.keras").get_layer("base")
    assert warm["batch_norm_epsilon"] == 1e-5 and "tower_from" not in warm
    assert {
        layer.epsilon
        for layer in again.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    } == {1e-5}
    with pytest.raises(ValueError, match="did not start its tower from a classifier"):
        siamese.starting_twin(tmp_path / "w.keras")
    with pytest.raises(ValueError, match="base='conv4' and no init"):
        siamese.train_omniglot_checkpoint(
            tmp_path / "x.keras", minutes=1e-4, tower_from=encoder_path, progress=False
        )


@pytest.mark.usefixtures("needs_data")
def test_a_warm_start_begins_at_its_source_and_each_round_uses_its_decayed_rate(
    tmp_path, monkeypatch
):
    # One round from random weights, then runs started from it: with a learning rate too small to
    # move a weight, the warm start ends at its source's weights (a random start does not); its
    # record names the source; each round's logged and applied rate is lr * decay ** (round - 1).
    real_make_pairs = siamese.make_pairs
    monkeypatch.setattr(
        siamese,
        "make_pairs",
        lambda labels, pairs_per_class=None, **kw: real_make_pairs(labels, 1, **kw),
    )
    settings = dict(validation_alphabets=2, features=8, progress=False)
    source = siamese.train_omniglot_checkpoint(tmp_path / "a.keras", minutes=1e-4, **settings)
    source_weights = siamese.load_checkpoint(tmp_path / "a.keras").get_weights()
    warm = siamese.train_omniglot_checkpoint(
        tmp_path / "b.keras",
        minutes=1e-4,
        learning_rate=1e-12,
        seed=1,
        init=tmp_path / "a.keras",
        **settings,
    )
    for got, want in zip(
        siamese.load_checkpoint(tmp_path / "b.keras").get_weights(), source_weights, strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-7)
    assert warm["init_from"]["checkpoint"] == str(tmp_path / "a.keras")
    assert warm["init_from"]["rounds"] == source["rounds"] == 1
    assert warm["init_from"]["train_seconds"] == source["train_seconds"]
    cold = siamese.train_omniglot_checkpoint(
        tmp_path / "c.keras", minutes=1e-4, learning_rate=1e-12, seed=1, **settings
    )
    assert "init_from" not in cold
    assert (
        max(
            float(np.abs(a - b).max())
            for a, b in zip(
                siamese.load_checkpoint(tmp_path / "c.keras").get_weights(), source_weights
            )
        )
        > 1e-3
    )

    applied = []
    real_fit = keras.Model.fit

    def recording_fit(self, *args, **kwargs):
        applied.append(float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    rounds = 0

    def stop_after_three():
        return rounds >= 3

    def count(*args, **kwargs):
        nonlocal rounds
        rounds += 1
        return real_evaluate(*args, **kwargs)

    import helpers.fewshot as fewshot

    real_evaluate = fewshot.evaluate
    monkeypatch.setattr(fewshot, "evaluate", count)
    decayed = siamese.train_omniglot_checkpoint(
        tmp_path / "d.keras", minutes=5, lr_decay=0.5, should_stop=stop_after_three, **settings
    )
    log = decayed["stopped_state"]["log"]
    assert [e["learning_rate"] for e in log] == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-12)
    assert applied == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-6)
    assert decayed["lr_decay"] == 0.5


def test_a_warm_started_twin_counts_the_rounds_of_the_run_it_began_from(tmp_path):
    from helpers import checkpoints

    def write(name, run_id, log, seconds, init_from=None):
        record = {
            "method": "siamese",
            "run_id": run_id,
            "log": log,
            "train_seconds": seconds,
            "history": {
                "minutes": [e["minutes"] for e in log],
                "val_20way": [e["val"] for e in log],
            },
        }
        if init_from:
            record["init_from"] = init_from
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
        (tmp_path / f"{name}.keras").write_bytes(b"")

    write(
        "a",
        "run-a",
        [
            {"pairs": 10, "minutes": 1.0, "val": 0.5},  # balanced pairs: two images a pair
            {"pairs": 10, "minutes": 2.0, "val": 0.6},
        ],
        180.0,
    )
    source = {"checkpoint": "elsewhere/a.keras", "run_id": "run-a"}
    write("b", "run-b", [{"pairs": 99, "images": 7, "minutes": 0.5, "val": 0.7}], 30.0, source)
    lineage = siamese.record_lineage(tmp_path / "b.keras")
    assert [r["run_id"] for r in lineage] == ["run-a", "run-b"]
    images, minutes, val = siamese.training_curve(lineage)
    np.testing.assert_array_equal(images, [20, 40, 47])
    np.testing.assert_allclose(minutes, [1.0, 2.0, 3.5])  # the second run starts after 180 s
    np.testing.assert_allclose(val, [50.0, 60.0, 70.0])
    write("b", "run-b", [{"pairs": 1, "minutes": 0.5, "val": 0.7}], 30.0, source | {"run_id": "x"})
    with pytest.raises(checkpoints.CheckpointError, match="is no longer the twin that b.keras"):
        siamese.record_lineage(tmp_path / "b.keras")
