"""One-shot learning with a pretrained embedding: similarity, the database, the contrast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.episodes import omniglot_dataset, sample_episodes
from helpers.fewshot import PixelNearestNeighbour, embed_in_batches, evaluate
from helpers.nets import Conv4
from helpers.one_shot import (
    ONE_SHOT_CHECKPOINT,
    EmbeddingDatabase,
    NearestEmbedding,
    RetrainedSoftmax,
    _shift,
    background_classes,
    checkpoint_record,
    evaluate_lake_runs,
    load_encoder,
    pretrain_classifier,
    similarity,
)


@pytest.fixture(scope="module")
def evaluation():
    return omniglot_dataset("evaluation")


def random_encoder(seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    encoder = Conv4().eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def as_images(dataset, rows) -> torch.Tensor:
    return torch.from_numpy(dataset.images[rows]).float().div(255).unsqueeze(1)


def test_similarity_exact_values():
    queries = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    stored = torch.tensor([[6.0, 8.0], [0.0, 2.0]])
    cosine = similarity(queries, stored, "cosine")
    assert torch.allclose(cosine, torch.tensor([[1.0, 0.8], [0.6, 0.0]]))
    euclidean = similarity(queries, stored, "euclidean")
    assert torch.allclose(
        euclidean, -torch.tensor([[5.0, np.sqrt(13.0)], [np.hypot(5, 8), np.sqrt(5.0)]]).float()
    )
    # cosine ignores length, Euclidean does not
    assert torch.allclose(similarity(10 * queries, stored, "cosine"), cosine)
    with pytest.raises(ValueError, match="metric"):
        similarity(queries, stored, "manhattan")


def test_adding_a_class_only_moves_queries_to_it_and_never_trains(evaluation):
    encoder = random_encoder()
    before_weights = {k: v.clone() for k, v in encoder.state_dict().items()}
    db = EmbeddingDatabase(encoder, metric="cosine")
    classes = list(range(10))
    for c in classes:
        db.add(evaluation.class_names[c], as_images(evaluation, evaluation.members(c)[:1])[0])
    queries = as_images(evaluation, np.concatenate([evaluation.members(c)[1:6] for c in range(11)]))
    before = db.identify(queries)
    new_name = evaluation.class_names[10]
    db.add(new_name, as_images(evaluation, evaluation.members(10)[:1])[0])
    after = db.identify(queries)
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert changed, "the new class should capture at least its own queries"
    assert all(after[i] == new_name for i in changed)
    # exactly the queries whose nearest stored embedding is now the new entry changed
    sims = db.similarities(queries)
    assert set(changed) == set(np.flatnonzero(sims.argmax(1).numpy() == len(db) - 1))
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before_weights[k]), f"{k} changed"
    assert (
        len(db) == 11 and db.ranked(queries[0], top=3)[0][2] >= db.ranked(queries[0], top=3)[1][2]
    )


def test_nearest_embedding_matches_the_database(evaluation):
    encoder = random_encoder(1)
    episode = sample_episodes(evaluation, n_way=5, k_shot=1, n_query=3, count=1, seed=3)[0]
    method = NearestEmbedding(encoder, metric="euclidean")
    method.process_support_set(episode.support_images, episode.support_labels)
    db = EmbeddingDatabase(encoder, metric="euclidean")
    for i, image in enumerate(episode.support_images):
        db.add(str(i), image)
    assert [str(int(p)) for p in method.predict(episode.query_images)] == db.identify(
        episode.query_images
    )


def test_nearest_embedding_averages_shots():
    encoder = random_encoder(2)
    images = torch.rand(4, 1, 28, 28)
    method = NearestEmbedding(encoder, metric="cosine")
    method.process_support_set(images, torch.tensor([0, 0, 1, 1]))
    keys = embed_in_batches(encoder, images)
    assert torch.allclose(method.keys, torch.stack([keys[:2].mean(0), keys[2:].mean(0)]), atol=1e-6)


def test_shift_moves_pixels_without_changing_them():
    image = torch.zeros(2, 1, 28, 28)
    image[:, 0, 14, 14] = 1.0
    generator = torch.Generator().manual_seed(0)
    shifted = _shift(image, 2, generator)
    assert shifted.sum() == 2 and shifted.shape == image.shape
    rows, cols = torch.nonzero(shifted[:, 0] == 1, as_tuple=True)[1:]
    assert ((rows - 14).abs() <= 2).all() and ((cols - 14).abs() <= 2).all()
    assert torch.equal(_shift(image, 0, generator), image)


def test_retrained_softmax_memorises_its_one_shot_set(evaluation):
    episode = sample_episodes(evaluation, n_way=3, k_shot=1, n_query=2, count=1, seed=0)[0]
    method = RetrainedSoftmax(steps=15, lr=0.01)
    method.process_support_set(episode.support_images, episode.support_labels)
    assert torch.equal(method.predict(episode.support_images), episode.support_labels)
    assert method.final_loss < 0.2
    with pytest.raises(ValueError, match="lr"):
        RetrainedSoftmax(lr=-1)


def test_pretraining_learns_on_a_small_subset(evaluation):
    subset = evaluation.subset(range(8))
    result = pretrain_classifier(
        subset, epochs=10, lr=1e-3, batch_size=16, val_per_class=4, max_shift=0, progress=False
    )
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert max(result.history["val accuracy"]) > 0.3  # 8 classes: chance is 0.125


def test_lake_runs_pixel_baseline_beats_chance():
    from helpers.datasets import load_lake_runs

    accuracies = evaluate_lake_runs(PixelNearestNeighbour("cosine"), load_lake_runs()[:5])
    assert accuracies.shape == (5,) and 0.05 < accuracies.mean() < 0.8


@pytest.mark.skipif(
    not ONE_SHOT_CHECKPOINT.exists(), reason="the pretrained checkpoint is not committed yet"
)
def test_committed_checkpoint_beats_pixels(evaluation):
    encoder = load_encoder()
    assert not any(p.requires_grad for p in encoder.parameters())
    episodes = sample_episodes(evaluation, n_way=5, k_shot=1, n_query=5, count=30, seed=7)
    learned = evaluate(NearestEmbedding(encoder), episodes, progress=False).mean
    pixels = evaluate(PixelNearestNeighbour(), episodes, progress=False).mean
    assert learned > pixels + 0.2 and learned > 0.75
    record = checkpoint_record()
    assert {"command", "hardware", "wall_time_s", "val_accuracy_964_way"} <= set(record)


def test_cached_encoder_gives_identical_embeddings(evaluation):
    from helpers.one_shot import CachedEncoder

    encoder = random_encoder(3)
    cached = CachedEncoder(encoder)
    images = as_images(evaluation, np.arange(12))
    first = cached(images[:8])
    again = cached(images[4:])  # 4 remembered, 4 new
    assert len(cached.memory) == 12
    assert torch.allclose(again, embed_in_batches(encoder, images[4:]), atol=1e-6)
    assert torch.allclose(first, embed_in_batches(encoder, images[:8]), atol=1e-6)


def test_pretraining_stopped_between_two_epochs_resumes_exactly():
    # one step of the shared loop is a batch; a stop before an epoch's first batch keeps that
    # epoch's order (drawn at the end of the one before), so the resumed run is the same run
    from helpers.episodes import FewShotDataset

    rng = np.random.default_rng(1)
    data = FewShotDataset(
        "toy",
        rng.integers(0, 255, size=(48, 28, 28)).astype(np.uint8),
        np.repeat(np.arange(4), 12),
        tuple("abcd"),
    )
    settings = dict(
        epochs=3, lr=1e-2, batch_size=16, val_per_class=2, max_shift=1, seed=0, progress=False
    )
    whole = pretrain_classifier(data, **settings)  # 40 training images: 3 batches per epoch
    asked = {"n": 0}

    def stop_before_the_second_epoch():
        asked["n"] += 1
        return asked["n"] == 4

    stopped = pretrain_classifier(data, **settings, should_stop=stop_before_the_second_epoch)
    state = stopped.stopped_state
    assert (state["epoch"], state["next_batch"], state["sums"]) == (1, 0, [0, 0, 0.0])
    assert (
        len(stopped.history["loss"]) == len(stopped.history["val accuracy"]) == 1
    )  # the first epoch was validated
    resumed = pretrain_classifier(data, **settings, resume=state)
    assert resumed.history == whole.history and resumed.val_accuracy == whole.val_accuracy
    assert all(
        torch.equal(a, b)
        for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values())
    )


def test_held_out_alphabets_are_the_siamese_runs_validation_alphabets():
    # the committed twin's run (seed 0, five validation alphabets) names the alphabets it held
    # out; the function that a classifier's run uses to leave them out finds the same five
    from helpers.episodes import held_out_alphabets

    twin = Path(__file__).parents[1] / "data/checkpoints/siamese_omniglot_conv4_fromclassifier.json"
    validated_on = json.loads(twin.read_text())["validation_alphabets"]
    assert background_classes(5, 0)[1] == validated_on
    assert background_classes(5, 1)[1] != validated_on
    names = ["b", "a", "c", "a"]
    assert list(held_out_alphabets(names, 0, np.random.default_rng(0))) == []
    assert sorted(held_out_alphabets(names, 3, np.random.default_rng(0))) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="count"):
        held_out_alphabets(names, 4, np.random.default_rng(0))


def test_background_classes_leave_out_exactly_the_held_out_alphabets():
    def alphabet(name):
        return name.split("/")[0]

    everything, none = background_classes(0)
    kept, held = background_classes(5, 0)
    assert none == [] and everything.n_classes == 964 and len(held) == 5
    kept_alphabets = {alphabet(n) for n in kept.class_names}
    assert not kept_alphabets & set(held)
    assert kept_alphabets | set(held) == {alphabet(n) for n in everything.class_names}
    assert kept.n_classes == sum(alphabet(n) not in held for n in everything.class_names) == 836
    for c in (0, kept.n_classes - 1):  # a kept class holds the same drawings as before
        was = everything.class_names.index(kept.class_names[c])
        np.testing.assert_array_equal(
            kept.images[kept.members(c)], everything.images[everything.members(was)]
        )
