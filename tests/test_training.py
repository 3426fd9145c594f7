"""helpers.training: the shared episodic loop, its history, checkpoints and the device sampler.

Everything runs on small generated data, so these tests are offline and take seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.episodes import EpisodeError, EpisodeSampler, FewShotDataset
from helpers.fewshot import FewShotMethod
from helpers.training import (
    DeviceEpisodeSampler,
    History,
    load_checkpoint,
    save_checkpoint,
    train_episodic,
)


def toy_dataset(n_classes: int = 12, per_class: int = 10, seed: int = 0, sizes=None) -> FewShotDataset:
    """8x8 images: each class lights its own random pattern of pixels, plus heavy noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((n_classes, 8, 8)) < 0.3
    sizes = sizes or [per_class] * n_classes
    images, labels = [], []
    for c, size in enumerate(sizes):
        noise = rng.random((size, 8, 8)) < 0.25
        images.append(((patterns[c][None] ^ noise) * 255).astype(np.uint8))
        labels.append(np.full(size, c))
    return FewShotDataset("toy", np.concatenate(images), np.concatenate(labels), tuple(f"c{c}" for c in range(n_classes)))


def proto_loss(model, episode):
    """A minimal prototype loss, written out here so this test does not depend on helpers.protonet."""
    support = model(episode.support_images)
    query = model(episode.query_images)
    prototypes = torch.stack([support[episode.support_labels == k].mean(0) for k in range(episode.n_way)])
    logits = -torch.cdist(query, prototypes) ** 2
    return F.cross_entropy(logits, episode.query_labels), (logits.argmax(1) == episode.query_labels).float().mean()


class ToyProto(FewShotMethod):
    def __init__(self, model):
        self.model = model

    def process_support_set(self, support_images, support_labels):
        support = self.model(support_images)
        self.prototypes = torch.stack([support[support_labels == k].mean(0) for k in range(int(support_labels.max()) + 1)])

    def scores(self, query_images):
        return -torch.cdist(self.model(query_images), self.prototypes) ** 2


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))


def test_history_smoothed_is_a_running_mean():
    history = History(episode=[1, 2, 3, 4], loss=[4.0, 2.0, 0.0, 2.0])
    np.testing.assert_allclose(history.smoothed("loss", window=2), [4.0, 3.0, 1.0, 1.0])
    np.testing.assert_allclose(history.smoothed("loss", window=10), [4.0, 3.0, 2.0, 2.0])
    assert history.best_validation() is None
    history.val_episode, history.val_accuracy, history.val_ci95 = [2, 4], [0.5, 0.7], [0.1, 0.05]
    assert history.best_validation() == (4, 0.7, 0.05)


def test_checkpoint_round_trip(tmp_path):
    model = toy_model()
    save_checkpoint(tmp_path / "m.pt", model, {"command": "python -m x", "accuracy": np.float32(0.5)})
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    meta = load_checkpoint(tmp_path / "m.pt", other)
    assert meta["command"] == "python -m x" and meta["accuracy"] == 0.5
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", other)


def test_device_sampler_draws_valid_reproducible_episodes():
    data = toy_dataset(sizes=[10, 7, 9, 10, 8, 10, 10, 12, 10, 10, 10, 10])
    a = DeviceEpisodeSampler(data, n_way=5, k_shot=2, n_query=4, seed=3)
    b = DeviceEpisodeSampler(data, n_way=5, k_shot=2, n_query=4, seed=3)
    for _ in range(30):
        e, f = a.sample(), b.sample()
        assert torch.equal(e.support_images, f.support_images) and torch.equal(e.query_images, f.query_images)
        assert len(set(e.class_ids)) == 5 and e.support_images.shape == (10, 1, 8, 8) and e.query_images.shape == (20, 1, 8, 8)
        assert not set(e.support_indices) & set(e.query_indices)
        # every image belongs to the class its label names, and pixels are the dataset's / 255
        for rows, labels, pixels in ((e.support_indices, e.support_labels, e.support_images), (e.query_indices, e.query_labels, e.query_images)):
            assert np.array_equal(data.labels[rows], e.class_ids[labels.numpy()])
            assert torch.allclose(pixels.squeeze(1), torch.from_numpy(data.images[rows]).float() / 255)
    with pytest.raises(EpisodeError):
        DeviceEpisodeSampler(data, n_way=5, k_shot=4, n_query=4)  # the smallest class has 7 images


def test_training_beats_chance_and_keeps_the_best_weights(tmp_path):
    data = toy_dataset()
    model = toy_model()
    val_episodes = EpisodeSampler(data, 5, 1, 5, seed=99).take(20)
    method = ToyProto(model)
    before = float(np.mean([proto_loss(model, e)[1] for e in val_episodes]))
    history = train_episodic(
        model, proto_loss, DeviceEpisodeSampler(data, 5, 1, 5, seed=1), 150,
        torch.optim.Adam(model.parameters(), lr=1e-2), val_method=method, val_episodes=val_episodes,
        val_every=50, checkpoint=tmp_path / "best.pt", progress=False, metadata={"command": "test"},
    )
    assert history.episode == list(range(1, 151)) and len(history.loss) == 150
    assert history.val_episode == [50, 100, 150]
    assert max(history.val_accuracy) > 0.8 > before  # chance is 0.2
    meta = json.loads((tmp_path / "best.pt").with_suffix(".json").read_text())
    best_episode, best_accuracy, _ = history.best_validation()
    assert meta["episode"] == best_episode and meta["val_accuracy"] == pytest.approx(best_accuracy)
    assert meta["command"] == "test" and meta["saved"] == "best"
    # the saved weights really are the best ones: they reproduce the best validation accuracy
    fresh = toy_model()
    load_checkpoint(tmp_path / "best.pt", fresh)
    from helpers.fewshot import evaluate

    assert evaluate(ToyProto(fresh), val_episodes, progress=False).mean == pytest.approx(best_accuracy)


def test_training_is_seeded_and_history_continues():
    data = toy_dataset()
    runs = []
    for _ in range(2):
        model = toy_model()
        h = train_episodic(model, proto_loss, DeviceEpisodeSampler(data, 4, 1, 3, seed=5), 20, torch.optim.SGD(model.parameters(), lr=0.05), progress=False)
        runs.append(h.loss)
    assert runs[0] == runs[1]
    h = train_episodic(model, proto_loss, DeviceEpisodeSampler(data, 4, 1, 3, seed=6), 10, torch.optim.SGD(model.parameters(), lr=0.05), progress=False, history=h)
    assert h.episode == list(range(1, 31))


def test_keyboard_interrupt_returns_what_it_has(tmp_path):
    data = toy_dataset()
    model = toy_model()
    sampler = DeviceEpisodeSampler(data, 4, 1, 3, seed=0)
    calls = {"n": 0}

    class Interrupting:
        def sample(self):
            calls["n"] += 1
            if calls["n"] == 8:
                raise KeyboardInterrupt
            return sampler.sample()

    history = train_episodic(model, proto_loss, Interrupting(), 100, torch.optim.SGD(model.parameters(), lr=0.05), checkpoint=tmp_path / "last.pt", progress=False)
    assert history.interrupted and history.episode == list(range(1, 8))
    assert (tmp_path / "last.pt").exists()


def test_scheduler_steps_once_per_episode():
    data = toy_dataset()
    model = toy_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    train_episodic(model, proto_loss, DeviceEpisodeSampler(data, 4, 1, 3), 8, optimizer, scheduler, progress=False)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)


def test_bad_settings_are_rejected():
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="n_episodes"):
        train_episodic(model, proto_loss, None, -1, opt)
    with pytest.raises(ValueError, match="val_method"):
        train_episodic(model, proto_loss, None, 1, opt, val_method=ToyProto(model))
