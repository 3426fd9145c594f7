"""helpers.fewshot: the shared interface, the pixel baseline, evaluation and its CI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.episodes import Episode, EpisodeSampler, omniglot_dataset
from helpers.fewshot import (
    FewShotMethod,
    PixelNearestNeighbour,
    confidence_interval,
    cosine_similarity,
    embed_in_batches,
    evaluate,
    prototypes,
)


def _episode(support, support_labels, query, query_labels) -> Episode:
    n_way = int(max(support_labels)) + 1
    as_images = lambda x: torch.tensor(x, dtype=torch.float32).reshape(len(x), 1, 1, -1)  # noqa: E731
    return Episode(
        as_images(support),
        torch.tensor(support_labels),
        as_images(query),
        torch.tensor(query_labels),
        np.arange(n_way),
        tuple(map(str, range(n_way))),
    )


def test_interface_cannot_be_used_half_implemented():
    class OnlySupport(FewShotMethod):
        def process_support_set(self, support_images, support_labels):
            pass

    with pytest.raises(TypeError):
        OnlySupport()


def test_pixel_nearest_neighbour_by_hand():
    # two classes on the axes; the query at (2, 1) is nearer class 0 by angle and by distance
    # (every coordinate divided by 3: pixels lie in [0, 1], and neither ranking changes)
    third = lambda points: [[x / 3 for x in p] for p in points]  # noqa: E731
    episode = _episode(
        third([[1, 0], [0, 1], [0, 3]]), [0, 1, 1], third([[2, 1], [0.1, 1]]), [0, 1]
    )
    for metric in ("cosine", "euclidean"):
        method = PixelNearestNeighbour(metric)
        method.process_support_set(episode.support_images, episode.support_labels)
        scores = method.scores(episode.query_images)
        assert scores.shape == (2, 2)
        assert method.predict(episode.query_images).tolist() == [0, 1]
    cosine = PixelNearestNeighbour("cosine")
    cosine.process_support_set(episode.support_images, episode.support_labels)
    expected = torch.tensor(
        [[2 / math.sqrt(5), 1 / math.sqrt(5)]]
    )  # class score = best support similarity
    assert torch.allclose(cosine.scores(episode.query_images[:1]), expected)


def test_one_shot_pixel_nn_ranking_is_cosine_ranking(needs_data):
    episode = EpisodeSampler(omniglot_dataset("evaluation"), 5, 1, 3, seed=3).sample()
    method = PixelNearestNeighbour()
    method.process_support_set(episode.support_images, episode.support_labels)
    direct = (
        F.normalize(episode.query_images.flatten(1), dim=1)
        @ F.normalize(episode.support_images.flatten(1), dim=1).T
    )
    assert torch.allclose(method.scores(episode.query_images), direct, atol=1e-6)


def test_queries_equal_to_support_are_all_right_and_ci_formula():
    support = np.eye(4).tolist()
    episode = _episode(support, [0, 1, 2, 3], support, [0, 1, 2, 3])
    result = evaluate(PixelNearestNeighbour(), [episode] * 3, progress=False)
    assert result.mean == 1.0 and result.ci95 == 0.0
    values = [0.5, 0.75, 1.0, 0.25]
    mean, half = confidence_interval(values)
    assert mean == pytest.approx(0.625)
    assert half == pytest.approx(1.96 * np.std(values, ddof=1) / 2)


def test_bad_metric_is_refused():
    with pytest.raises(ValueError, match=r"^metric='manhattan' must be 'cosine' or 'euclidean'\.$"):
        PixelNearestNeighbour("manhattan")


# ---- the ideas the methods share -------------------------------------------------------------


def test_cosine_similarity_of_known_vectors():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[6.0, 8.0], [0.0, 2.0], [-1.0, 0.0]])
    expected = torch.tensor(
        [[1.0, 0.8, -0.6], [0.6, 0.0, -1.0], [0.0, 0.0, 0.0]]
    )  # a zero row has cosine 0
    assert torch.allclose(cosine_similarity(a, b), expected)
    assert torch.allclose(cosine_similarity(10 * a, 0.5 * b), expected)  # lengths do not matter
    # without b: the rows against each other, symmetric, 1 on the diagonal of non-zero rows
    assert torch.allclose(
        cosine_similarity(b), torch.tensor([[1.0, 0.8, -0.6], [0.8, 1.0, 0.0], [-0.6, 0.0, 1.0]])
    )
    with pytest.raises(
        ValueError,
        match=r"^a must be a matrix with one vector per row, got shape \(2,\); reshape it to \(n, d\)\.$",
    ):
        cosine_similarity(torch.ones(2), b)
    with pytest.raises(
        ValueError,
        match=r"^a and b must have rows of one length, got shapes \(3, 2\) and \(1, 3\); .*\.$",
    ):
        cosine_similarity(a, torch.ones(1, 3))


def test_prototypes_are_the_class_means_of_known_points():
    # point of class k = k * (1, 1, 1) + an offset that averages to zero within each class
    labels = torch.tensor([2, 0, 1, 2, 0, 1, 0, 2, 1])
    offsets = torch.tensor(
        [
            [1.0, 0, -2],
            [3, 1, 0],
            [0.5, 0.5, 0.5],
            [-1, 0, 2],
            [-3, -2, 0],
            [-0.5, -0.5, -0.5],
            [0, 1, 0],
            [0, 0, 0],
            [0, 0, 0],
        ]
    )
    points = labels[:, None].float() * torch.ones(3) + offsets
    means = prototypes(points, labels)
    assert torch.equal(means, torch.arange(3.0)[:, None] * torch.ones(3))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prototypes(points[perm], labels[perm]), means)  # the order does not matter
    # one point per class: the prototypes are the points themselves (one-shot)
    assert torch.equal(
        prototypes(torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([1, 0])),
        torch.tensor([[3.0, 5.0], [1.0, 2.0]]),
    )
    assert prototypes(points, labels.numpy()).shape == (3, 3)  # NumPy labels are labels too
    with pytest.raises(
        ValueError,
        match=r"^every class needs at least one support example; classes \[3\] have none\.$",
    ):
        prototypes(points, labels, n_way=4)
    with pytest.raises(
        ValueError, match=r"^labels must lie in 0 \.\. n_way - 1 = 1, got labels from 0 to 2\.$"
    ):
        prototypes(points, labels, n_way=2)
    with pytest.raises(
        ValueError,
        match=r"^labels must give one label to each of the 9 embeddings, got 8 labels\.$",
    ):
        prototypes(points, labels[:8])


class Doubler(nn.Module):
    """Embedding = 2 * pixels after a batch norm with known running statistics: per image,
    exactly computable, and different in train mode (batch statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        with torch.no_grad():
            self.norm.running_mean.fill_(0.5)
            self.norm.running_var.fill_(4.0 - self.norm.eps)  # so eval mode divides by exactly 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 2 * self.norm(images).flatten(start_dim=1)


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_batched_embedding_equals_one_big_batch(batch_size):
    pixels = np.arange(7 * 4, dtype=np.uint8).reshape(7, 2, 2) * 9
    encoder = Doubler()
    encoder.train()
    embeddings = embed_in_batches(encoder, pixels, batch_size=batch_size)
    # uint8 pixels become v / 255 (as in every episode), then eval-mode batch norm: (x - 0.5) / 2, times 2
    expected = (torch.from_numpy(pixels).float() / 255 - 0.5).reshape(7, 4)
    assert torch.allclose(embeddings, expected, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(
            embeddings, encoder.eval()(torch.from_numpy(pixels).float().div(255).unsqueeze(1))
        )
    # float images are used as they are, and the result does not depend on the batch size
    floats = torch.from_numpy(pixels).float().div(255).unsqueeze(1)
    assert torch.equal(
        embed_in_batches(encoder, floats, batch_size=batch_size),
        embed_in_batches(encoder, floats, batch_size=len(floats)),
    )


def test_batched_embedding_leaves_every_module_in_its_mode_and_refuses_bad_input():
    outer = nn.Sequential(Doubler(), nn.Identity())
    outer.train()
    outer[0].eval()  # a frozen part inside a module in train mode stays frozen
    embed_in_batches(outer, np.zeros((3, 2, 2), np.uint8))
    assert (
        outer.training
        and not outer[0].training
        and not outer[0].norm.training
        and outer[1].training
    )
    with pytest.raises(ValueError, match=r"^batch_size=0 must be a whole number >= 1\.$"):
        embed_in_batches(outer, np.zeros((3, 2, 2), np.uint8), batch_size=0)
    with pytest.raises(
        ValueError,
        match=r"^images must be uint8 pixels \(n, H, W\) or floats \(n, 1, H, W\), got dtype torch.int64; .*\.$",
    ):
        embed_in_batches(outer, torch.zeros(3, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^images must hold at least one image, got none\.$"):
        embed_in_batches(outer, np.zeros((0, 2, 2), np.uint8))
    assert outer.training and not outer[0].training
