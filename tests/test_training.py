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


def toy_dataset(
    n_classes: int = 12, per_class: int = 10, seed: int = 0, sizes=None
) -> FewShotDataset:
    """8x8 images: each class lights its own random pattern of pixels, plus heavy noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((n_classes, 8, 8)) < 0.3
    sizes = sizes or [per_class] * n_classes
    images, labels = [], []
    for c, size in enumerate(sizes):
        noise = rng.random((size, 8, 8)) < 0.25
        images.append(((patterns[c][None] ^ noise) * 255).astype(np.uint8))
        labels.append(np.full(size, c))
    return FewShotDataset(
        "toy",
        np.concatenate(images),
        np.concatenate(labels),
        tuple(f"c{c}" for c in range(n_classes)),
    )


class ToyProto(FewShotMethod):
    """A minimal prototype method, written out here so that these tests do not depend on helpers.protonet."""

    def __init__(self, encoder):
        self.encoder = encoder

    def prototypes_and_logits(self, support_images, support_labels, query_images, n_way):
        support = self.encoder(support_images)
        prototypes = torch.stack([support[support_labels == k].mean(0) for k in range(n_way)])
        return prototypes, -(torch.cdist(self.encoder(query_images), prototypes) ** 2)

    def process_support_set(self, support_images, support_labels):
        support = self.encoder(support_images)
        self.prototypes = torch.stack(
            [support[support_labels == k].mean(0) for k in range(int(support_labels.max()) + 1)]
        )

    def scores(self, query_images):
        return -(torch.cdist(self.encoder(query_images), self.prototypes) ** 2)

    def episode_loss(self, episode):
        _, logits = self.prototypes_and_logits(
            episode.support_images, episode.support_labels, episode.query_images, episode.n_way
        )
        return F.cross_entropy(logits, episode.query_labels), (
            logits.argmax(1) == episode.query_labels
        ).float().mean()


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
    save_checkpoint(
        tmp_path / "m.pt", model, {"command": "python -m x", "accuracy": np.float32(0.5)}
    )
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
        assert torch.equal(e.support_images, f.support_images) and torch.equal(
            e.query_images, f.query_images
        )
        assert (
            len(set(e.class_ids)) == 5
            and e.support_images.shape == (10, 1, 8, 8)
            and e.query_images.shape == (20, 1, 8, 8)
        )
        assert not set(e.support_indices) & set(e.query_indices)
        # every image belongs to the class its label names, and pixels are the dataset's / 255
        for rows, labels, pixels in (
            (e.support_indices, e.support_labels, e.support_images),
            (e.query_indices, e.query_labels, e.query_images),
        ):
            assert np.array_equal(data.labels[rows], e.class_ids[labels.numpy()])
            assert torch.allclose(
                pixels.squeeze(1), torch.from_numpy(data.images[rows]).float() / 255
            )
    with pytest.raises(EpisodeError):
        DeviceEpisodeSampler(data, n_way=5, k_shot=4, n_query=4)  # the smallest class has 7 images


def test_training_beats_chance_and_keeps_the_best_weights(tmp_path):
    data = toy_dataset()
    model = toy_model()
    val_episodes = EpisodeSampler(data, 5, 1, 5, seed=99).take(20)
    method = ToyProto(model)
    before = float(np.mean([method.episode_loss(e)[1] for e in val_episodes]))
    history = train_episodic(
        method,
        DeviceEpisodeSampler(data, 5, 1, 5, seed=1),
        150,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        val_episodes=val_episodes,
        val_every=50,
        checkpoint=tmp_path / "best.pt",
        progress=False,
        metadata={"command": "test"},
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

    assert evaluate(ToyProto(fresh), val_episodes, progress=False).mean == pytest.approx(
        best_accuracy
    )


def test_training_is_seeded_and_history_continues():
    data = toy_dataset()
    runs = []
    for _ in range(2):
        model = toy_model()
        h = train_episodic(
            ToyProto(model),
            DeviceEpisodeSampler(data, 4, 1, 3, seed=5),
            20,
            torch.optim.SGD(model.parameters(), lr=0.05),
            progress=False,
        )
        runs.append(h.loss)
    assert runs[0] == runs[1]
    h = train_episodic(
        ToyProto(model),
        DeviceEpisodeSampler(data, 4, 1, 3, seed=6),
        10,
        torch.optim.SGD(model.parameters(), lr=0.05),
        progress=False,
        history=h,
    )
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

    history = train_episodic(
        ToyProto(model),
        Interrupting(),
        100,
        torch.optim.SGD(model.parameters(), lr=0.05),
        checkpoint=tmp_path / "last.pt",
        progress=False,
    )
    assert history.interrupted and history.episode == list(range(1, 8))
    assert (tmp_path / "last.pt").exists()


def test_scheduler_steps_once_per_episode():
    data = toy_dataset()
    model = toy_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    train_episodic(
        ToyProto(model),
        DeviceEpisodeSampler(data, 4, 1, 3),
        8,
        optimizer,
        scheduler,
        progress=False,
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)


def test_bad_settings_are_rejected():
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"^n_episodes=-1 must be a whole number >= 0\.$"):
        train_episodic(ToyProto(model), None, -1, opt)
    with pytest.raises(ValueError, match=r"^val_every=0 must be a whole number >= 1\.$"):
        train_episodic(ToyProto(model), None, 1, opt, val_every=0)
    with pytest.raises(ValueError, match=r"^keep='first' must be 'best' or 'last'\.$"):
        train_episodic(ToyProto(model), None, 1, opt, keep="first")


def test_a_method_without_a_training_step_or_weights_is_named():
    from helpers.fewshot import PixelNearestNeighbour
    from helpers.training import trainable_module

    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Untrained(ToyProto):
        episode_loss = FewShotMethod.episode_loss

    with pytest.raises(
        NotImplementedError,
        match=r"^Untrained is not trained episodically: it has no episode_loss\.$",
    ):
        Untrained(model).episode_loss(None)
    with pytest.raises(
        ValueError,
        match=r"^method=Untrained is not trained episodically \(it has no episode_loss\); train a",
    ):
        train_episodic(Untrained(model), None, 1, opt)
    with pytest.raises(
        ValueError, match=r"^method=PixelNearestNeighbour has no weights to train: give a method"
    ):
        train_episodic(PixelNearestNeighbour(), None, 1, opt)
    assert trainable_module(ToyProto(model)) is model


# ----------------------------------------------------------------------------- the shared loop, with a fake step


class FakeClock:
    """Stands in for time.perf_counter: time moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    from helpers import training

    fake = FakeClock()
    monkeypatch.setattr(training.time, "perf_counter", fake)
    return fake


def fake_step(clock, seconds=1.0, losses=None):
    """A step that takes ``seconds`` of (fake) time and returns loss ``losses[n]`` (default 1 / n)."""

    def step(number):
        clock.now += seconds
        return (losses or {}).get(number, 1.0 / number), 0.5

    return step


def test_the_time_budget_stops_the_loop_and_it_validates_once_more(clock):
    from helpers.training import Loop

    validated = []
    loop = Loop(100, validate=lambda n: validated.append(n) or 0.5, val_every=10, max_seconds=3.5)
    history = loop.run(fake_step(clock))
    assert history.episode == [1, 2, 3, 4] and history.val_episode == [4] and validated == [4]
    assert history.seconds == 4.0 and not history.interrupted
    # looked at only every third step (an epoch's last batch), the budget stops at step 6
    history = Loop(100, validate=lambda n: 0.5, val_every=10, max_seconds=3.5, budget_every=3).run(
        fake_step(clock)
    )
    assert history.episode == list(range(1, 7)) and history.val_episode == [6]
    # the training time of an earlier session counts: 2 s before, so 2 more steps
    history = Loop(100, history=History(seconds=2.0), max_seconds=3.5).run(fake_step(clock))
    assert history.episode == [1, 2] and history.seconds == 4.0
    # an earlier session that already spent the budget: not one more step, nothing validated
    spent = History(seconds=4.0)
    history = Loop(100, history=spent, validate=lambda n: 0.5, max_seconds=3.5).run(
        fake_step(clock)
    )
    assert history is spent and history.episode == [] and history.val_episode == []
    assert history.seconds == 4.0 and not history.interrupted


def test_a_validation_that_uses_up_the_budget_stops_the_loop_without_another_one(clock):
    from helpers.training import Loop

    def slow_validation(number):
        clock.now += 10.0
        return 0.5

    history = Loop(100, validate=slow_validation, val_every=2, max_seconds=5.0).run(
        fake_step(clock)
    )
    assert history.episode == [1, 2] and history.val_episode == [2]


def test_keep_best_saves_only_when_the_validation_improves(tmp_path, clock):
    from helpers import checkpoints
    from helpers.training import KeepBest, Loop

    scores = {1: 0.5, 2: 0.4, 3: 0.7, 4: 0.7, 5: 0.6}
    saver = checkpoints.Saver(tmp_path / "best.pt", "run-1")
    saves = []
    real_save = saver.save

    def counting_save(write_weights, record):
        saves.append(record["step"])
        return real_save(write_weights, record)

    saver.save = counting_save
    weights = {"w": torch.zeros(1)}

    def step(number):
        weights["w"] = torch.tensor([float(number)])
        return 1.0, None

    keep = KeepBest(lambda: dict(weights), saver, lambda: {"method": "toy", "step": loop.last_step})
    loop = Loop(5, validate=lambda n: (scores[n], 0.01), val_every=1, keep=keep)
    history = loop.run(step)
    assert history.val_accuracy == [0.5, 0.4, 0.7, 0.7, 0.6] and history.val_ci95 == [0.01] * 5
    assert saves == [1, 3]  # a tie (step 4) keeps the earlier weights
    assert (keep.step, keep.value, keep.ci95) == (3, 0.7, 0.01) and torch.equal(
        keep.state["w"], torch.tensor([3.0])
    )
    assert torch.equal(
        torch.load(tmp_path / "best.pt", weights_only=True)["w"], torch.tensor([3.0])
    )
    assert checkpoints.read_record(tmp_path / "best.pt")["step"] == 3
    assert (
        history.accuracy == [pytest.approx(float("nan"), nan_ok=True)] * 5
    )  # the step measured no accuracy


def test_a_non_finite_loss_stops_with_one_line_and_saves_nothing(tmp_path, clock):
    from helpers import checkpoints, runs
    from helpers.training import KeepBest, Loop

    def keep():
        return KeepBest(
            lambda: {"w": torch.ones(1)}, checkpoints.Saver(tmp_path / "x.pt", "run"), lambda: {}
        )

    with pytest.raises(runs.NonFiniteLoss) as caught:
        Loop(20, validate=lambda n: 0.9, val_every=5, keep=keep()).run(
            fake_step(clock, losses={3: float("nan")})
        )
    assert str(caught.value) == "the loss became nan at step 3"
    assert list(tmp_path.iterdir()) == []
    # tensors are read every sync_every steps, but always before a validation could save
    loop = Loop(
        20, validate=lambda n: 0.9, val_every=10, keep=keep(), sync_every=50, loss_name="meta-loss"
    )

    def tensor_step(number):
        return torch.tensor(float("inf") if number == 7 else 1.0), torch.tensor(0.5)

    with pytest.raises(runs.NonFiniteLoss, match=r"^the meta-loss became inf at step 7$"):
        loop.run(tensor_step)
    assert loop.history.episode == list(range(1, 11)) and loop.history.val_episode == []
    assert list(tmp_path.iterdir()) == []
    # weights that are not finite are never saved either
    bad = KeepBest(
        lambda: {"w": torch.tensor([float("nan")])},
        checkpoints.Saver(tmp_path / "x.pt", "run"),
        lambda: {},
    )
    with pytest.raises(runs.NonFiniteLoss, match=r"^the weights became nan at step 2$"):
        Loop(5, validate=lambda n: 0.9, val_every=2, keep=bad).run(fake_step(clock))
    assert list(tmp_path.iterdir()) == []


def test_a_stop_request_returns_the_interrupted_history_and_saves_a_resumable_state(
    tmp_path, clock
):
    from helpers import checkpoints
    from helpers.training import Loop

    asked = {"n": 0}

    def should_stop():
        asked["n"] += 1
        return asked["n"] == 4  # asked before every step: steps 1-3 run

    def save_resumable(history):
        checkpoints.write_pair(
            tmp_path / "run.resume.pt",
            checkpoints.torch_writer({"episode": history.episode}),
            {"status": "resumable"},
        )

    history = Loop(
        10,
        validate=lambda n: 0.5,
        val_every=2,
        should_stop=should_stop,
        save_resumable=save_resumable,
    ).run(fake_step(clock))
    assert (
        history.interrupted and history.episode == [1, 2, 3] and history.val_episode == [2]
    )  # no extra validation
    state, record = checkpoints.load(
        tmp_path / "run.resume.pt", lambda p: torch.load(p, weights_only=True), "a state"
    )
    assert state["episode"] == [1, 2, 3] and record["status"] == "resumable"
    # a step cut short by the request does not count; the run goes on from where it stopped
    saved = []

    def cut_short(number):
        return None if number == 3 else (1.0, 1.0)

    history = Loop(10, save_resumable=saved.append).run(cut_short)
    assert history.interrupted and history.episode == [1, 2] and saved == [history]
    history.interrupted = False
    history = Loop(2, history=history, validate=lambda n: 0.5, val_every=2).run(fake_step(clock))
    assert history.episode == [1, 2, 3, 4] and history.val_episode == [4]


def test_a_keyboard_interrupt_ends_an_interruptible_loop_without_a_resumable_state(clock):
    from helpers import runs
    from helpers.training import Loop

    def interrupted_at_3(number):
        if number == 3:
            raise KeyboardInterrupt
        return 1.0, 1.0

    saved = []
    history = Loop(10, interruptible=True, save_resumable=saved.append).run(interrupted_at_3)
    assert (
        history.interrupted and history.episode == [1, 2] and saved == []
    )  # step 3 may be half done
    with pytest.raises(KeyboardInterrupt):
        Loop(10).run(interrupted_at_3)
    with runs.StopSignals(announce=False):
        runs.request_stop("SIGINT")  # a second Ctrl-C after the first: stop at once
        with pytest.raises(KeyboardInterrupt):
            Loop(10, interruptible=True, should_stop=None).run(interrupted_at_3)


def test_loop_settings_are_checked():
    from helpers.training import Loop

    with pytest.raises(
        ValueError,
        match=r"^steps=None trains until the time budget runs out: give max_seconds too\.$",
    ):
        Loop(None)
    with pytest.raises(ValueError, match=r"^steps=-1 must be a whole number >= 0\.$"):
        Loop(-1)
    with pytest.raises(ValueError, match=r"^val_every=0 must be a whole number >= 1\.$"):
        Loop(3, val_every=0)
    with pytest.raises(
        ValueError, match=r"^max_seconds=-1 must be a finite number of seconds >= 0\.$"
    ):
        Loop(3, max_seconds=-1)
    with pytest.raises(ValueError, match=r"^budget_every=0 must be a whole number >= 1\.$"):
        Loop(3, budget_every=0)
