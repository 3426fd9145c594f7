"""Zero-shot learning: the offline text encoder, the seen/unseen wall, the maps, calibration."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from helpers import zero_shot as zs
from helpers.datasets import FASHION_CLASSES, load_mnist


@pytest.fixture(scope="module")
def text_encoder():
    """Load all-MiniLM-L6-v2 with every socket connection refused: it must not need the network."""
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network is off in this test")

    patch.setattr(socket.socket, "connect", refuse)
    try:
        yield zs.load_text_encoder()
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def fashion():
    return load_mnist("fashion-mnist")


def test_text_encoder_offline_and_paraphrases_are_closer(text_encoder):
    vectors = zs.encode_texts(
        text_encoder,
        [
            "A shoe you wear for jogging.",
            "A trainer made for running.",
            "A tax form for small businesses.",
        ],
    )
    assert vectors.shape == (3, 384)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.2


def test_saved_text_vectors_match_the_live_encoder(text_encoder):
    if not zs.TEXT_CACHE.exists():
        pytest.skip("the text-vector cache is not committed yet")
    assert torch.allclose(
        zs.class_vectors("descriptions"), zs.class_vectors("descriptions", text_encoder), atol=1e-4
    )
    assert torch.allclose(
        zs.class_vectors("names"), zs.class_vectors("names", text_encoder), atol=1e-4
    )


def test_attributes_and_views():
    attributes = zs.attribute_matrix()
    assert attributes.shape == (10, len(zs.ATTRIBUTES))
    assert len({tuple(row.tolist()) for row in attributes}) == 10, (
        "every class needs its own attribute vector"
    )
    bag = FASHION_CLASSES.index("Bag")
    carried = zs.ATTRIBUTES.index("is carried, not worn")
    assert attributes[:, carried].nonzero().flatten().tolist() == [bag]
    with pytest.raises(ValueError, match="view"):
        zs.class_vectors("smells")


def test_split_and_training_never_see_unseen_images(fashion):
    unseen = (5, 7)  # Sandal, Sneaker
    split = zs.make_split(
        fashion.train_labels, unseen, val_per_class=20, train_per_class=40, seed=1
    )
    assert split.seen == (0, 1, 2, 3, 4, 6, 8, 9)
    assert not np.isin(fashion.train_labels[split.train_indices], unseen).any()
    assert not np.isin(fashion.train_labels[split.val_indices], unseen).any()
    assert not set(split.train_indices) & set(split.val_indices)
    encoder = zs.train_image_encoder(
        fashion.train_images, fashion.train_labels, split, epochs=1, progress=False
    )
    assert not np.isin(fashion.train_labels[encoder.trained_on], unseen).any()
    features = zs.image_features(encoder, fashion.train_images[:30])
    with pytest.raises(ValueError, match="unseen"):
        zs.train_compatibility(
            features, fashion.train_labels[:30], split.seen, zs.attribute_matrix(), steps=1
        )
    with pytest.raises(ValueError, match="unseen"):
        zs.train_prototypes(
            features, fashion.train_labels[:30], split.seen, zs.attribute_matrix(), steps=1
        )


def test_bad_settings_raise_one_sentence():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(ValueError, match="at least 2 unseen"):
        zs.make_split(labels, [3], val_per_class=1)
    with pytest.raises(ValueError, match="at most 8"):
        zs.make_split(labels, range(9), val_per_class=1)
    with pytest.raises(ValueError, match="lr"):
        zs.train_compatibility(torch.zeros(4, 3), np.zeros(4, int), [0, 1], torch.eye(3), lr=-0.1)


def test_zero_shot_beats_chance(fashion):
    torch.set_num_threads(1)
    unseen = (1, 7)  # Trouser vs Sneaker: chance is 50 %
    split = zs.make_split(
        fashion.train_labels, unseen, val_per_class=50, train_per_class=300, seed=0
    )
    encoder = zs.train_image_encoder(
        fashion.train_images, fashion.train_labels, split, epochs=1, seed=0, progress=False
    )
    train_features = zs.image_features(encoder, fashion.train_images[split.train_indices])
    test_rows = np.flatnonzero(np.isin(fashion.test_labels, unseen))[:400]
    test_features = zs.image_features(encoder, fashion.test_images[test_rows])
    vectors = zs.attribute_matrix()
    model = zs.train_compatibility(
        train_features, fashion.train_labels[split.train_indices], split.seen, vectors, steps=150
    )
    accuracy = zs.conventional_accuracy(
        zs.zero_shot_scores(model, test_features, vectors), fashion.test_labels[test_rows], unseen
    )
    assert accuracy > 0.75
    prototypes = zs.train_prototypes(
        train_features, fashion.train_labels[split.train_indices], split.seen, vectors, steps=150
    )
    accuracy = zs.conventional_accuracy(
        zs.zero_shot_scores(prototypes, test_features, vectors),
        fashion.test_labels[test_rows],
        unseen,
    )
    assert accuracy > 0.6
    conse = zs.ConSEMap(
        encoder.head, vectors[list(split.seen)]
    )  # trains nothing: the encoder's softmax is the map
    accuracy = zs.conventional_accuracy(
        zs.zero_shot_scores(conse, test_features, vectors), fashion.test_labels[test_rows], unseen
    )
    assert accuracy > 0.75


def test_conse_places_an_image_at_the_mixture_of_seen_class_vectors():
    head = torch.nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 2) * 100.0)  # feature i -> seen class i, almost surely
        head.bias.zero_()
    seen_vectors = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    conse = zs.ConSEMap(head, seen_vectors)
    z = conse.embed(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(
        z[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6
    )  # certain: exactly its (unit) class vector
    assert torch.allclose(z[1], torch.full((3,), 1 / 3))  # undecided: the average of the three
    unseen = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    scores = conse(torch.tensor([[0.1, 0.1]]), unseen)  # looks like seen classes 0 and 1 equally
    assert scores.argmax().item() == 0 and torch.allclose(
        scores[0, 0], torch.tensor(10.0), atol=1e-3
    )
    top1 = zs.ConSEMap(head, seen_vectors, top=1)
    assert torch.allclose(top1.embed(torch.tensor([[0.02, 0.01]])), torch.tensor([[1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="seen class vectors"):
        zs.ConSEMap(head, seen_vectors[:2])
    with pytest.raises(ValueError, match="top"):
        zs.ConSEMap(head, seen_vectors, top=4)


def test_cosine_and_prototype_scores_exact():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    compatibility = zs.CompatibilityMap(2, 2, scale=10.0)
    with torch.no_grad():
        compatibility.project.weight.copy_(torch.eye(2))
        compatibility.project.bias.zero_()
    # W = I: the scores are s times the cosines of the features with the class vectors
    assert torch.allclose(compatibility(z, v), 10 * torch.tensor([[1.0, 0.0], [2**-0.5, 2**-0.5]]))
    model = zs.PrototypeMap(2, 2, embed_dim=2)
    with torch.no_grad():
        for layer in (model.image_to_embedding, model.class_to_prototype):
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
    # prototypes are the class vectors themselves; scores are minus squared distances
    assert torch.allclose(model(z, v), -torch.tensor([[1.0, 10.0], [2.0, 5.0]]))


def test_calibrated_stacking_exact():
    # two images of seen class 0, two of unseen class 1; seen scores are inflated by 0.3
    scores = torch.tensor([[0.9, 0.2], [0.6, 0.5], [0.7, 0.6], [0.1, 0.8]])
    labels = np.array([0, 0, 1, 1])
    plain = zs.generalised_accuracy(scores, labels, seen=[0], unseen=[1])
    assert (plain.seen, plain.unseen) == (1.0, 0.5)
    calibrated = zs.generalised_accuracy(scores, labels, seen=[0], unseen=[1], gamma=0.15)
    assert (calibrated.seen, calibrated.unseen) == (0.5, 1.0)
    assert calibrated.harmonic == pytest.approx(2 * 0.5 / 1.5)
    assert zs.calibrated_predictions(scores, [0], gamma=10).tolist() == [1, 1, 1, 1]
    curve = zs.calibration_curve(scores, labels, [0], [1], [0.0, 0.15, 1.0])
    assert [(r.seen, r.unseen) for r in curve] == [
        (1.0, 0.5),
        (0.5, 1.0),
        (0.0, 1.0),
    ]  # gamma = 1: all called unseen
    assert zs.conventional_accuracy(scores, labels, [0, 1]) == 0.75
