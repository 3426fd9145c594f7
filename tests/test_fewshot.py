"""helpers.fewshot: the shared interface, the pixel baseline, evaluation and its CI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.episodes import Episode, EpisodeSampler, omniglot_dataset
from helpers.fewshot import FewShotMethod, PixelNearestNeighbour, confidence_interval, evaluate


def _episode(support, support_labels, query, query_labels) -> Episode:
    n_way = int(max(support_labels)) + 1
    as_images = lambda x: torch.tensor(x, dtype=torch.float32).reshape(len(x), 1, 1, -1)  # noqa: E731
    return Episode(as_images(support), torch.tensor(support_labels), as_images(query), torch.tensor(query_labels), np.arange(n_way), tuple(map(str, range(n_way))))


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
    episode = _episode(third([[1, 0], [0, 1], [0, 3]]), [0, 1, 1], third([[2, 1], [0.1, 1]]), [0, 1])
    for metric in ("cosine", "euclidean"):
        method = PixelNearestNeighbour(metric)
        method.process_support_set(episode.support_images, episode.support_labels)
        scores = method.scores(episode.query_images)
        assert scores.shape == (2, 2)
        assert method.predict(episode.query_images).tolist() == [0, 1]
    cosine = PixelNearestNeighbour("cosine")
    cosine.process_support_set(episode.support_images, episode.support_labels)
    expected = torch.tensor([[2 / math.sqrt(5), 1 / math.sqrt(5)]])  # class score = best support similarity
    assert torch.allclose(cosine.scores(episode.query_images[:1]), expected)


def test_one_shot_pixel_nn_ranking_is_cosine_ranking(needs_data):
    episode = EpisodeSampler(omniglot_dataset("evaluation"), 5, 1, 3, seed=3).sample()
    method = PixelNearestNeighbour()
    method.process_support_set(episode.support_images, episode.support_labels)
    direct = F.normalize(episode.query_images.flatten(1), dim=1) @ F.normalize(episode.support_images.flatten(1), dim=1).T
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
