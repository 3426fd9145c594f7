"""Matching Networks: the attention kernel, full context embeddings, and that training learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers.fewshot import PixelNearestNeighbour, cosine_similarity, embed_in_batches, evaluate
from helpers.matching import (
    AttentionLSTM,
    MatchingNetwork,
    SupportContextEncoder,
    attention_weights,
    evaluate_embedded,
    label_distribution,
    log_label_distribution,
)
from helpers.nets import Conv4


def _zero_parameters(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


# ---- the attention kernel -------------------------------------------------------------------


def test_cosine_attention_on_hand_made_vectors():
    query = torch.tensor([[1.0, 0.0]])
    support = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # cosines 1, 0, -1
    assert torch.allclose(cosine_similarity(query, support), torch.tensor([[1.0, 0.0, -1.0]]))
    e = math.e
    expected = torch.tensor([[e, 1.0, 1 / e]]) / (e + 1 + 1 / e)
    assert torch.allclose(attention_weights(query, support), expected)


def test_attention_is_a_distribution_and_prediction_a_convex_combination():
    torch.manual_seed(0)
    queries, support = torch.randn(7, 16), torch.randn(12, 16)
    labels = torch.arange(4).repeat_interleave(3)
    attention = attention_weights(queries, support)
    assert (attention >= 0).all()
    assert torch.allclose(attention.sum(dim=1), torch.ones(7))
    y_hat = label_distribution(attention, labels, n_way=4)
    assert (y_hat >= 0).all() and torch.allclose(y_hat.sum(dim=1), torch.ones(7))
    # class k's probability is exactly the attention paid to class k's support images
    for k in range(4):
        assert torch.allclose(y_hat[:, k], attention[:, labels == k].sum(dim=1))
    # a one-hot attention copies that support image's one-hot label
    picked = torch.zeros(1, 12)
    picked[0, 5] = 1.0
    assert torch.equal(label_distribution(picked, labels, 4), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_log_label_distribution_is_the_log_of_the_prediction():
    torch.manual_seed(1)
    similarities = torch.randn(5, 10, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    direct = label_distribution(similarities.softmax(dim=1), labels, 3).log()
    assert torch.allclose(log_label_distribution(similarities, labels, 3), direct)
    # and its gradient matches finite differences
    similarities.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: log_label_distribution(s, labels, 3), (similarities,))


def test_without_fce_one_shot_ranking_is_cosine_nearest_neighbour():
    torch.manual_seed(2)
    support, queries = torch.rand(6, 1, 28, 28), torch.rand(9, 1, 28, 28)
    labels = torch.arange(6)
    # on raw pixels, the attention kernel ranks classes exactly like 1-NN by cosine similarity
    pixels = MatchingNetwork(encoder=nn.Flatten())
    pixels.process_support_set(support, labels)
    nearest = PixelNearestNeighbour("cosine")
    nearest.process_support_set(support, labels)
    assert torch.equal(
        pixels.scores(queries).argsort(dim=1), nearest.scores(queries).argsort(dim=1)
    )
    # and with a Conv-4 embedding, it ranks like cosine similarity of the embeddings
    model = MatchingNetwork().eval()
    model.process_support_set(support, labels)
    with torch.no_grad():
        cosine = cosine_similarity(model.encoder(queries), model.encoder(support))
    assert torch.equal(model.scores(queries).argsort(dim=1), cosine.argsort(dim=1))


# ---- full context embeddings ----------------------------------------------------------------


def test_support_encoder_is_forward_plus_backward_plus_skip():
    torch.manual_seed(3)
    g = SupportContextEncoder(dim=8)
    embeddings = torch.randn(5, 8)
    states, _ = g.lstm(embeddings.unsqueeze(0))
    assert torch.allclose(g(embeddings), states[0, :, :8] + states[0, :, 8:] + embeddings)
    # the forward half of the state at position i has seen only positions 0..i
    prefix, _ = g.lstm(embeddings[:3].unsqueeze(0))
    assert torch.allclose(prefix[0, :, :8], states[0, :3, :8], atol=1e-6)
    # with every LSTM weight at zero, h = sigmoid(0) * tanh(0) = 0: only the skip connection is left
    _zero_parameters(g)
    assert torch.allclose(g(embeddings), embeddings)


def test_support_encoder_gradient_reaches_every_support_embedding():
    torch.manual_seed(4)
    g = SupportContextEncoder(dim=8)
    embeddings = torch.randn(6, 8, requires_grad=True)
    for i in range(6):  # each output depends on every input, through one of the two directions
        (grad,) = torch.autograd.grad(g(embeddings)[i].sum(), embeddings)
        assert (grad.abs().sum(dim=1) > 0).all(), (
            f"output {i} does not depend on every support image"
        )


def test_attention_lstm_step_is_an_ordinary_lstm_cell():
    torch.manual_seed(5)
    f = AttentionLSTM(dim=6, processing_steps=1)
    cell = nn.LSTMCell(6, 6)
    with torch.no_grad():  # same weights for x and h; the read r gets weight zero
        f.input_gates.weight.copy_(cell.weight_ih)
        f.input_gates.bias.copy_(cell.bias_ih + cell.bias_hh)
        f.state_gates.weight.zero_()
        f.state_gates.weight[:, :6].copy_(cell.weight_hh)
    x, h, r, c = (torch.randn(3, 6) for _ in range(4))
    ours = f.lstm_step(x, h, r, c)
    theirs = cell(x, (h, c))
    assert torch.allclose(ours[0], theirs[0], atol=1e-6) and torch.allclose(
        ours[1], theirs[1], atol=1e-6
    )


def test_attention_lstm_read_and_skip_connection():
    torch.manual_seed(6)
    support = torch.randn(4, 5)
    h = torch.randn(2, 5)
    r, weights = AttentionLSTM.read(h, support)
    assert torch.allclose(weights, (h @ support.T).softmax(dim=1))
    assert torch.allclose(r, weights @ support)
    # with zero weights the LSTM adds nothing: f(x_hat, S) = f'(x_hat) after any number of steps
    f = AttentionLSTM(dim=5, processing_steps=4)
    _zero_parameters(f)
    queries = torch.randn(3, 5)
    output, reads = f(queries, support, return_reads=True)
    assert torch.allclose(output, queries) and len(reads) == 4
    assert torch.allclose(reads[0], torch.full((3, 4), 0.25))  # h_0 = 0: the first read is the mean


def test_attention_lstm_reads_a_set():
    torch.manual_seed(7)
    f = AttentionLSTM(dim=8, processing_steps=3)
    queries, support = torch.randn(5, 8), torch.randn(10, 8)
    permutation = torch.randperm(10)
    assert torch.allclose(f(queries, support), f(queries, support[permutation]), atol=1e-6)


def test_predictions_do_not_depend_on_support_order_given_g():
    torch.manual_seed(8)
    model = MatchingNetwork(encoder=nn.Flatten(start_dim=1), fce=False)
    support, queries = torch.rand(8, 1, 4, 4), torch.rand(3, 1, 4, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    permutation = torch.randperm(8)
    a = model(support, labels, queries)
    b = model(support[permutation], labels[permutation], queries)
    assert torch.allclose(a, b, atol=1e-6)
    # with FCE, f(x_hat, S) given g(S) is unchanged when g(S) is shuffled with its labels
    encoder = nn.Flatten(start_dim=1)
    encoder.out_features = 16  # 4x4 pixels
    fce = MatchingNetwork(encoder=encoder, fce=True, processing_steps=2)
    with torch.no_grad():
        context = fce.embed_support(support)
        f1 = fce.embed_queries(queries, context)
        f2 = fce.embed_queries(queries, context[permutation])
    assert torch.allclose(f1, f2, atol=1e-6)


def test_fce_model_shapes_gradients_and_interface():
    torch.manual_seed(9)
    model = MatchingNetwork(
        encoder=Conv4(hidden=16), fce=True, processing_steps=3, scale=5.0, learn_scale=True
    )
    support, queries = torch.rand(10, 1, 28, 28), torch.rand(6, 1, 28, 28)
    labels = torch.arange(5).repeat_interleave(2)
    log_p = model(support, labels, queries)
    assert log_p.shape == (6, 5) and torch.allclose(
        log_p.exp().sum(dim=1), torch.ones(6), atol=1e-5
    )
    log_p.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    model.eval()  # the shared interface gives the same probabilities as forward() does
    model.process_support_set(support, labels)
    assert torch.allclose(
        model.scores(queries), model(support, labels, queries).exp().detach(), atol=1e-5
    )
    attention = model.attention(support, queries)
    assert torch.allclose(attention.sum(dim=1), torch.ones(6), atol=1e-5)
    model.device = "cpu"  # the training loop and evaluate() set it
    assert model.device.type == "cpu"


def test_the_training_step_by_hand():
    # 1x2-pixel "images" embedded as themselves; class 0's support is (1, 0), class 1's (0, 1).
    # Query (1, 0) of class 0 has cosines (1, 0): y_hat_0 = e / (e + 1). Query (1, 1) of class 1
    # has cosines (1/sqrt 2, 1/sqrt 2): y_hat_1 = 1/2, and the tie goes to class 0 (a miss).
    from helpers.episodes import Episode

    encoder = nn.Flatten()
    encoder.out_features = 2
    model = MatchingNetwork(encoder=encoder)
    episode = Episode(
        torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]]),
        torch.tensor([0, 1]),
        torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]]),
        torch.tensor([0, 1]),
        np.arange(2),
        ("a", "b"),
    )
    loss, accuracy = model.episode_loss(episode)
    assert loss.item() == pytest.approx(
        (-math.log(math.e / (math.e + 1)) + math.log(2)) / 2, rel=1e-6
    )
    assert accuracy.item() == 0.5
    model.log_scale.requires_grad_(True)
    model.episode_loss(episode)[0].backward()
    assert model.log_scale.grad is not None  # a learned scale is trained by the same loss


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_processing_steps_are_refused_with_a_sentence(bad):
    with pytest.raises(ValueError, match="processing_steps"):
        MatchingNetwork(fce=True, processing_steps=bad)


@pytest.mark.parametrize("fce", [False, True])
def test_evaluating_on_cached_embeddings_gives_the_same_accuracies(fce):
    from helpers.episodes import FewShotDataset, sample_episodes

    rng = np.random.default_rng(0)
    images = (rng.random((8 * 6, 28, 28)) > 0.7).astype(np.uint8) * 255
    dataset = FewShotDataset("noise", images, np.repeat(np.arange(8), 6), tuple("abcdefgh"))
    episodes = sample_episodes(dataset, n_way=4, k_shot=2, n_query=3, count=6, seed=0)
    torch.manual_seed(10)
    model = MatchingNetwork(encoder=Conv4(hidden=8), fce=fce, processing_steps=2).eval()
    direct = evaluate(model, episodes, progress=False)
    cached = evaluate_embedded(
        model,
        embed_in_batches(model.encoder, dataset.images, batch_size=20),
        episodes,
        progress=False,
    )
    assert np.allclose(direct.accuracies, cached.accuracies)


# ---- learning -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fce", [False, True])
def test_training_on_a_few_classes_beats_chance(needs_data, fce):
    from helpers.episodes import EpisodeSampler, omniglot_dataset, sample_episodes
    from helpers.training import train_episodic

    torch.manual_seed(0)
    data = omniglot_dataset("background")
    train, held_out = data.subset(range(0, 40)), data.subset(range(40, 60))
    test_episodes = sample_episodes(held_out, n_way=5, k_shot=1, n_query=5, count=40, seed=1)
    model = MatchingNetwork(encoder=Conv4(hidden=16), fce=fce, processing_steps=2)
    before = evaluate(model.eval(), test_episodes, progress=False).mean
    sampler = EpisodeSampler(train, n_way=5, k_shot=1, n_query=5, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = train_episodic(model, sampler, 120, optimizer, progress=False, seed=0)
    after = evaluate(model.eval(), test_episodes, progress=False).mean
    assert history.loss[-20:] and sum(history.loss[-20:]) / 20 < sum(history.loss[:20]) / 20
    assert after > 0.45, f"5-way accuracy {after:.2f} is not far above chance (0.20)"
    assert after > before + 0.1, f"training did not help enough: {before:.2f} -> {after:.2f}"


def test_the_scale_sharpens_the_attention_but_never_changes_a_one_shot_ranking():
    torch.manual_seed(3)
    support, queries = torch.rand(5, 1, 28, 28), torch.rand(8, 1, 28, 28)
    paper = MatchingNetwork(encoder=Conv4(hidden=8)).eval()
    sharp = MatchingNetwork(encoder=Conv4(hidden=8), scale=20.0).eval()
    sharp.load_state_dict({**paper.state_dict(), "log_scale": torch.tensor(math.log(20.0))})
    assert float(paper.scale) == 1.0 and abs(float(sharp.scale) - 20.0) < 1e-4
    with torch.no_grad():
        a_paper, a_sharp = paper.attention(support, queries), sharp.attention(support, queries)
    assert torch.equal(a_paper.argsort(dim=1), a_sharp.argsort(dim=1))
    assert (a_sharp.max(dim=1).values > a_paper.max(dim=1).values).all()
    # the cosine kernel is bounded: with s = 1 no support image can take much more than its share
    assert a_paper.max() < math.e / (math.e + 4 * math.exp(-1)) + 1e-6


def test_a_learned_scale_is_trained_and_a_checkpoint_without_one_loads_with_the_papers_kernel():
    model = MatchingNetwork(encoder=Conv4(hidden=8), scale=10.0, learn_scale=True)
    assert model.log_scale.requires_grad and abs(float(model.scale) - 10.0) < 1e-4
    fixed = MatchingNetwork(encoder=Conv4(hidden=8))
    assert not fixed.log_scale.requires_grad
    old = {k: v for k, v in model.state_dict().items() if k != "log_scale"}
    fixed.load_state_dict(old)
    assert float(fixed.scale) == 1.0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True])
def test_bad_scales_are_refused_with_a_sentence(bad):
    with pytest.raises(ValueError, match="scale"):
        MatchingNetwork(scale=bad)
