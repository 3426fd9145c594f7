"""helpers.protonet: prototypes, distances, the loss, the zero-shot form, learning, the panel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import fewshot, protonet
from helpers.episodes import EpisodeSampler, FewShotDataset, omniglot_dataset, sampled_episodes
from helpers.fewshot import cosine_similarity, embed_in_batches, evaluate
from helpers.nets import Conv4
from helpers.training import DeviceEpisodeSampler, train_episodic


def test_euclidean_protonet_is_a_linear_classifier():
    generator = torch.Generator().manual_seed(1)
    prototypes = torch.randn(5, 8, generator=generator)
    queries = torch.randn(11, 8, generator=generator)
    weights, biases = protonet.as_linear_classifier(prototypes)
    assert torch.allclose(weights, 2 * prototypes)
    assert torch.allclose(biases, -(prototypes**2).sum(1))
    linear = queries @ weights.T + biases
    scores = protonet.class_scores(queries, prototypes)
    # they differ only by -||x||^2, the same for every class of a query ...
    assert torch.allclose(scores, linear - (queries**2).sum(1, keepdim=True), atol=1e-5)
    # ... so the class probabilities are identical
    assert torch.allclose(scores.softmax(1), linear.softmax(1), atol=1e-6)


def test_loss_matches_the_formula_by_hand():
    # 1-D embeddings: prototypes at 0 and 2; queries 0.5 (class 0) and 1.5 (class 0)
    prototypes = torch.tensor([[0.0], [2.0]])
    queries = torch.tensor([[0.5], [1.5]])
    labels = torch.tensor([0, 0])
    # d = [[0.25, 2.25], [2.25, 0.25]]; J = mean over queries of d(x, c_y) + log sum_k exp(-d(x, c_k))
    by_hand = 0.5 * (
        (0.25 + math.log(math.exp(-0.25) + math.exp(-2.25)))
        + (2.25 + math.log(math.exp(-2.25) + math.exp(-0.25)))
    )
    loss, accuracy = protonet.prototypical_loss(queries, labels, prototypes)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert accuracy.item() == 0.5  # 1.5 is nearer to class 1


def test_distances_by_hand_and_cosine_ignores_length():
    queries = torch.tensor([[3.0, 4.0]])
    prototypes = torch.tensor([[0.0, 0.0], [3.0, 0.0], [6.0, 8.0]])
    assert torch.equal(
        protonet.squared_euclidean(queries, prototypes), torch.tensor([[25.0, 16.0, 25.0]])
    )
    cos = cosine_similarity(queries, prototypes[1:])
    assert torch.allclose(cos, torch.tensor([[0.6, 1.0]]))
    assert torch.allclose(protonet.class_scores(10 * queries, prototypes[1:], "cosine"), cos)
    with pytest.raises(ValueError, match="distance"):
        protonet.class_scores(queries, prototypes, "manhattan")


def test_gradient_of_the_loss_matches_finite_differences():
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(6, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    queries = torch.randn(4, 3, dtype=torch.float64, generator=generator)
    support_labels, query_labels = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 1])

    def loss(s):
        return protonet.prototypical_loss(
            queries, query_labels, fewshot.prototypes(s, support_labels)
        )[0]

    assert torch.autograd.gradcheck(loss, (support,))


def test_protonet_method_uses_the_shared_interface():
    encoder = nn.Flatten()  # embedding = the pixels themselves
    method = protonet.ProtoNet(nn.Sequential(encoder, nn.Identity()), device=torch.device("cpu"))
    support = torch.zeros(4, 1, 2, 2)
    support[2:, 0, 0, 0] = 1.0  # class 1 has a bright top-left pixel
    method.process_support_set(support, torch.tensor([0, 0, 1, 1]))
    queries = torch.zeros(2, 1, 2, 2)
    queries[1, 0, 0, 0] = 0.9
    assert method.predict(queries).tolist() == [0, 1]


def toy_dataset(seed: int = 0) -> FewShotDataset:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 255, size=(6, 8, 8))
    images = np.clip(
        np.repeat(centres, 10, axis=0) + rng.integers(-80, 80, size=(60, 8, 8)), 0, 255
    ).astype(np.uint8)
    return FewShotDataset("toy", images, np.repeat(np.arange(6), 10), tuple("abcdef"))


def small_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8))


@pytest.mark.parametrize(("distance", "cosine_scale"), [("euclidean", 1.0), ("cosine", 10.0)])
def test_the_training_step_is_the_prototypical_loss_of_one_batch(distance, cosine_scale):
    # episode_loss = prototypical_loss of the queries against the class means of the support
    # embeddings, support and queries embedded in one batch (batch norm sees them together)
    episode = EpisodeSampler(toy_dataset(), 3, 2, 4, seed=1).sample()
    encoder = nn.Sequential(small_encoder(), nn.BatchNorm1d(8))
    method = protonet.ProtoNet(encoder, distance, cosine_scale)
    loss, accuracy = method.episode_loss(episode)
    embeddings = encoder(torch.cat([episode.support_images, episode.query_images]))
    prototypes = torch.stack(
        [embeddings[:6][episode.support_labels == k].mean(0) for k in range(3)]
    )
    if distance == "euclidean":
        logits = -((embeddings[6:, None, :] - prototypes[None]) ** 2).sum(-1)
    else:
        logits = (
            cosine_scale
            * torch.nn.functional.normalize(embeddings[6:], dim=-1)
            @ torch.nn.functional.normalize(prototypes, dim=-1).T
        )
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, episode.query_labels).item(), rel=1e-6
    )
    assert accuracy.item() == (logits.argmax(1) == episode.query_labels).float().mean().item()
    loss.backward()
    assert all(p.grad is not None for p in encoder.parameters())  # the loss trains the encoder


def test_train_episodic_is_exactly_the_plain_loop_of_training_steps():
    # The reference computation: draw an episode, take the method's training step, step Adam and
    # the scheduler. train_episodic must give the same losses, accuracies and weights, bit for bit.
    data = toy_dataset()
    encoder = small_encoder()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    history = train_episodic(
        protonet.ProtoNet(encoder, "cosine", 5.0),
        DeviceEpisodeSampler(data, 3, 1, 3, seed=4),
        30,
        optimizer,
        scheduler,
        progress=False,
        seed=0,
    )
    reference = small_encoder()
    method = protonet.ProtoNet(reference, "cosine", 5.0)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    sampler = DeviceEpisodeSampler(data, 3, 1, 3, seed=4)
    losses, accuracies = [], []
    for _ in range(30):
        loss, accuracy = method.episode_loss(sampler.sample())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        accuracies.append(accuracy.item())
    assert (
        history.loss == losses
        and history.accuracy == accuracies
        and history.episode == list(range(1, 31))
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(encoder.state_dict().values(), reference.state_dict().values())
    )


def test_zero_shot_prototypes_generalise_to_unseen_classes():
    # Each class k has a metadata vector v_k; its images embed near A v_k for a fixed unknown A.
    # Learning g(v) = W v + b on seen classes must recover the map for classes never trained on.
    rng = np.random.default_rng(0)
    n_classes, meta_dim, dim = 30, 6, 10
    metadata = torch.tensor(rng.normal(size=(n_classes, meta_dim)), dtype=torch.float32)
    mixing = torch.tensor(rng.normal(size=(meta_dim, dim)), dtype=torch.float32)
    features = metadata @ mixing  # class centres
    labels = torch.arange(n_classes).repeat_interleave(20)
    images = features[labels] + 0.3 * torch.tensor(
        rng.normal(size=(len(labels), dim)), dtype=torch.float32
    )
    seen, unseen = torch.arange(20), torch.arange(20, 30)
    torch.manual_seed(0)
    model = protonet.ZeroShotProtoNet(nn.Identity(), meta_dim, dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    in_seen = torch.isin(labels, seen)
    for _ in range(300):
        loss, _ = model.loss(metadata[seen], images[in_seen], labels[in_seen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    in_unseen = torch.isin(labels, unseen)
    model.process_support_set(metadata[unseen], torch.arange(10))
    accuracy = (model.predict(images[in_unseen]) == labels[in_unseen] - 20).float().mean().item()
    assert accuracy > 0.9  # chance is 0.1, and no unseen image was ever used


def small_omniglot() -> tuple[FewShotDataset, FewShotDataset]:
    background = omniglot_dataset("background")
    return background.subset(range(0, 40), "train40"), background.subset(range(500, 540), "test40")


def test_a_few_dozen_episodes_beat_chance_by_far(needs_data):
    torch.set_num_threads(1)
    train, test = small_omniglot()
    torch.manual_seed(0)
    encoder = Conv4(hidden=32)
    test_episodes = EpisodeSampler(test, 5, 1, 5, seed=7).take(30)
    method = protonet.ProtoNet(encoder)
    encoder.eval()
    before = evaluate(method, test_episodes, progress=False).mean
    history = train_episodic(
        method,
        DeviceEpisodeSampler(train, 10, 1, 5, seed=0),
        40,
        torch.optim.Adam(encoder.parameters(), lr=1e-3),
        val_episodes=test_episodes,
        val_every=40,
        progress=False,
        seed=0,
    )
    after = history.val_accuracy[-1]
    print(f"5-way 1-shot on unseen classes: {before:.2f} before, {after:.2f} after 40 episodes")
    assert after > 0.7 and after > before  # chance is 0.2
    assert np.mean(history.loss[-10:]) < np.mean(history.loss[:10])


def test_evaluation_from_cached_embeddings_equals_running_every_episode(needs_data):
    _, test = small_omniglot()
    torch.manual_seed(0)
    encoder = Conv4(hidden=16)
    encoder.train()
    encoder(torch.rand(50, 1, 28, 28))  # move batch-norm statistics away from their defaults
    encoder.eval()
    episodes = EpisodeSampler(test, 5, 2, 4, seed=3).take(12)
    light = list(sampled_episodes(test, 5, 2, 4, 12, seed=3))
    for full, index_only in zip(episodes, light, strict=True):
        assert np.array_equal(full.support_indices, index_only.support_indices)
        assert np.array_equal(full.query_indices, index_only.query_indices)
    embeddings = embed_in_batches(encoder, test.images, batch_size=97)
    for distance in protonet.DISTANCES:
        slow = evaluate(protonet.ProtoNet(encoder, distance), episodes, progress=False)
        fast = protonet.evaluate_from_embeddings(embeddings, light, distance, progress=False)
        np.testing.assert_allclose(fast.accuracies, slow.accuracies)


def test_seven_segment_codes():
    codes = protonet.seven_segment_vectors()
    assert codes.shape == (10, 7)
    assert codes.sum(1).tolist() == [6, 2, 5, 5, 4, 5, 6, 3, 7, 6]  # segments lit per digit
    assert torch.equal(codes[8], torch.ones(7))


def _two_class_episode(support, queries, query_labels):
    from types import SimpleNamespace

    return SimpleNamespace(
        support_indices=np.array(support),
        query_indices=np.array(queries),
        support_labels=torch.tensor([0, 1]),
        query_labels=torch.tensor(query_labels),
    )


def test_support_atypicality_measures_the_support_drawing_against_its_class_mean():
    # class 0: images 0-3 at x = -1, -1, -1, 3 (mean 0, mean distance 1.5); class 1: images 4-7 near x = 10
    embeddings = torch.tensor(
        [[-1.0, 0], [-1, 0], [-1, 0], [3, 0], [9, 0], [11, 0], [9, 0], [11, 0]]
    )
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    typical = _two_class_episode([0, 4], [1, 2, 5, 6], [0, 0, 1, 1])
    odd = _two_class_episode([3, 4], [1, 2, 5, 6], [0, 0, 1, 1])
    atypicality, errors = protonet.support_atypicality(embeddings, labels, [typical, odd])
    np.testing.assert_allclose(atypicality, [1 / 1.5, 1.0, 3 / 1.5, 1.0], rtol=1e-6)
    # with the odd drawing (x = 3) as prototype, the class-0 queries at -1 are still nearer to it than to 9
    np.testing.assert_allclose(errors, [0, 0, 0, 0])
    far = torch.tensor([[-1.0, 0], [-1, 0], [-1, 0], [20, 0], [9, 0], [11, 0], [9, 0], [11, 0]])
    _, errors = protonet.support_atypicality(far, labels, [odd])
    np.testing.assert_allclose(
        errors, [1.0, 0.0]
    )  # a prototype at 20: both class-0 queries go to class 1
    with pytest.raises(ValueError, match="labels"):
        protonet.support_atypicality(embeddings, labels[:3], [typical])


def test_tsne_map_boxes_exactly_the_misclassified_queries_and_maps_the_class_means():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    generator = torch.Generator().manual_seed(0)
    prototypes = 4 * torch.randn(3, 6, generator=generator)
    labels = torch.arange(3).repeat_interleave(5)
    queries = prototypes[labels] + torch.randn(15, 6, generator=generator)
    predictions = labels.clone()
    predictions[[0, 7]] = torch.tensor([1, 2])
    means = prototypes + 0.5
    ax, xy = protonet.tsne_map(
        queries, labels, prototypes, ["a", "b", "c"], predictions=predictions, class_means=means
    )
    assert xy.shape == (15 + 3 + 3, 2)
    assert sum(isinstance(p, Rectangle) for p in ax.patches) == 2
    assert "crosses" in ax.get_title()
    plt.close("all")
    ax, xy = protonet.tsne_map(
        queries, labels, prototypes, ["a", "b", "c"], predictions=predictions
    )
    assert xy.shape == (18, 2) and "crosses" not in ax.get_title()
    with pytest.raises(ValueError, match="class_means"):
        protonet.tsne_map(queries, labels, prototypes, ["a", "b", "c"], class_means=means[:2])
    plt.close("all")
