"""helpers.validation and the input checks every few-shot method shares: one class of bad input
per test, each answered with one sentence that names what was wrong and what to use instead.

The table of bad inputs runs through every :class:`~helpers.fewshot.FewShotMethod` that builds
in a moment (untrained networks: the checks come before any weight is used).
"""

from __future__ import annotations

import math
import re
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import validation
from helpers.episodes import (
    EpisodeError,
    EpisodeSampler,
    FewShotDataset,
    check_episode_settings,
    sample_episodes,
)
from helpers.fewshot import NoSupportSet, PixelNearestNeighbour, evaluate
from helpers.validation import ParameterError

N_WAY, K_SHOT, N_QUERY = 5, 2, 3


def pixel_nn():
    return PixelNearestNeighbour()


def protonet():
    from helpers.nets import Conv4
    from helpers.protonet import ProtoNet

    return ProtoNet(Conv4().eval())


def matching():
    from helpers.matching import MatchingNetwork

    return MatchingNetwork().eval()


def maml():
    from helpers.maml import MAMLClassifier, maml_conv4

    return MAMLClassifier(maml_conv4(N_WAY), inner_lr=0.4, steps=1)


def nearest_embedding():
    from helpers.nets import Conv4
    from helpers.one_shot import NearestEmbedding

    return NearestEmbedding(Conv4().eval())


def retrained_softmax():
    from helpers.one_shot import RetrainedSoftmax

    return RetrainedSoftmax(steps=2)


def siamese():
    from helpers import siamese  # Keras and TensorFlow: imported once, here only

    return siamese.SiameseOneShot(siamese.build_siamese())


METHODS = [pixel_nn, protonet, matching, maml, nearest_embedding, retrained_softmax, siamese]
#: the methods that take 1x28x28 images only (a Conv-4, or a twin built for 28x28 inputs)
SIZED = [m for m in METHODS if m is not pixel_nn]


def episode(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    support = torch.rand(N_WAY * K_SHOT, 1, 28, 28, generator=generator)
    labels = torch.arange(N_WAY).repeat_interleave(K_SHOT)
    queries = torch.rand(N_WAY * N_QUERY, 1, 28, 28, generator=generator)
    return support, labels, queries


def one_sentence(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message.endswith("."), message
    return message


def with_nan(images: torch.Tensor) -> torch.Tensor:
    images = images.clone()
    images[1, 0, 3, 4] = float("nan")
    return images


# ----------------------------------------------------------------------------- the support set

BAD_SUPPORT = [
    # (what is wrong, how the support set is spoiled, what the one sentence says)
    (
        "uint8 images",
        lambda s, y: ((s * 255).to(torch.uint8), y),
        r"^support_images holds uint8 pixels, but the methods take floats in \[0, 1\]: divide by 255 \(images\.float\(\) / 255\), "
        r"or draw episodes with FewShotDataset\.episode or an EpisodeSampler\.$",
    ),
    (
        "no channel axis",
        lambda s, y: (s[:, 0], y),
        r"^support_images has shape \(10, 28, 28\), without a channel axis; add one with images\.unsqueeze\(1\)",
    ),
    (
        "an extra axis",
        lambda s, y: (s[:, None], y),
        r"^support_images has shape \(10, 1, 1, 28, 28\), an extra axis of size 1; drop it with images\.squeeze\(1\)",
    ),
    (
        "NaN pixels",
        lambda s, y: (with_nan(s), y),
        r"^support_images holds 1 pixel that is not finite \(NaN or infinity\); give images with every pixel a number in \[0, 1\]\.$",
    ),
    (
        "pixels in 0..255",
        lambda s, y: (s * 255, y),
        r"^support_images has pixels from [\d.e-]+ to [\d.]+, outside \[0, 1\]; scale the images to \[0, 1\] \(uint8 images: divide by 255\)\.$",
    ),
    (
        "a label outside 0..n-1",
        lambda s, y: (s, torch.cat([y[:-1], torch.tensor([12])])),
        r"^support_labels run from 0 to 12, but the 10 labels of an episode must number its classes 0 \.\. n_way - 1 \(so at most 9\)\.$",
    ),
    (
        "labels 1..n instead of 0..n-1",
        lambda s, y: (s, y + 1),
        r"^support_labels has no example of class 0; number the classes 0 \.\. n_way - 1 with every class present \(here n_way = 6\)\.$",
    ),
    ("a negative label", lambda s, y: (s, y - 1), r"^support_labels run from -1 to 3"),
    (
        "fewer labels than images",
        lambda s, y: (s, y[:-1]),
        r"^support_labels has 9 labels but support_images holds 10 images; give one label per image\.$",
    ),
    (
        "float labels",
        lambda s, y: (s, y.float()),
        r"^support_labels has dtype float32, but labels are whole numbers 0 \.\. n_way - 1; convert them with labels\.long\(\)\.$",
    ),
    (
        "a list of images",
        lambda s, y: (s.tolist(), y),
        r"^support_images must be a torch tensor or a NumPy array of images \(n, C, H, W\), not a list\.$",
    ),
]

BAD_SIZE = [
    (
        "3 channels for a 1-channel method",
        lambda s, y: (s.repeat(1, 3, 1, 1), y),
        r"^support_images has 3 channels \(shape \(10, 3, 28, 28\)\) but this method takes 1-channel images \(n, 1, 28, 28\)\.$",
    ),
    (
        "32 px images for a 28 px method",
        lambda s, y: (F.interpolate(s, size=(32, 32)), y),
        r"^support_images holds 32x32 images but this method takes 28x28; resize them \(e\.g\. torch\.nn\.functional\.interpolate",
    ),
]


@pytest.mark.parametrize("make", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(("case", "spoil", "message"), BAD_SUPPORT, ids=[c[0] for c in BAD_SUPPORT])
def test_a_bad_support_set_is_refused_in_one_sentence(make, case, spoil, message):
    method = make()
    support, labels, queries = episode()
    with pytest.raises(ParameterError) as caught:
        method.process_support_set(*spoil(support, labels))
    assert isinstance(caught.value, ValueError)  # what panels and commands turn into one line
    assert re.search(message, one_sentence(caught.value)), str(caught.value)
    # nothing half-done is kept: the refused support set cannot be scored against
    with pytest.raises(NoSupportSet):
        method.scores(queries)


@pytest.mark.parametrize("make", SIZED, ids=lambda m: m.__name__)
@pytest.mark.parametrize(("case", "spoil", "message"), BAD_SIZE, ids=[c[0] for c in BAD_SIZE])
def test_images_of_another_shape_are_refused_by_the_methods_that_declare_one(
    make, case, spoil, message
):
    method = make()
    support, labels, queries = episode()
    with pytest.raises(ParameterError, match=message):
        method.process_support_set(*spoil(support, labels))
    method.process_support_set(support, labels)
    with pytest.raises(
        ParameterError,
        match=message.replace("support_images", "query_images").replace(r"\(10,", r"\(15,"),
    ):
        method.scores(spoil(queries, None)[0])


def test_the_pixel_baseline_takes_any_size_but_the_queries_must_match_the_support_set():
    method = pixel_nn()
    support, labels, queries = episode()
    method.process_support_set(F.interpolate(support, size=(32, 32)), labels)
    with pytest.raises(
        ParameterError,
        match=r"^query_images holds 28x28 images but the support set has 32x32; resize them",
    ):
        method.scores(queries)
    method.process_support_set(support.repeat(1, 3, 1, 1), labels)
    with pytest.raises(
        ParameterError,
        match=r"^query_images has 1 channel \(shape \(15, 1, 28, 28\)\) but the support set has 3-channel images \(n, 3, 28, 28\)\.$",
    ):
        method.scores(queries)


# ----------------------------------------------------------------------------- the queries

BAD_QUERIES = [
    (
        "uint8 images",
        lambda q: (q * 255).to(torch.uint8),
        r"^query_images holds uint8 pixels, but the methods take floats in \[0, 1\]",
    ),
    ("NaN pixels", with_nan, r"^query_images holds 1 pixel that is not finite \(NaN or infinity\)"),
    (
        "infinite pixels",
        lambda q: q.index_fill(0, torch.tensor([2]), math.inf),
        r"^query_images holds 784 pixels that are not finite",
    ),
    (
        "no channel axis",
        lambda q: q[:, 0],
        r"^query_images has shape \(15, 28, 28\), without a channel axis",
    ),
    ("no images", lambda q: q[:0], r"^query_images holds no images; give at least one\.$"),
]


@pytest.mark.parametrize("make", METHODS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(("case", "spoil", "message"), BAD_QUERIES, ids=[c[0] for c in BAD_QUERIES])
def test_bad_queries_are_refused_in_one_sentence(make, case, spoil, message):
    method = make()
    support, labels, queries = episode()
    method.process_support_set(support, labels)
    with pytest.raises(ParameterError) as caught:
        method.predict(spoil(queries))
    assert re.search(message, one_sentence(caught.value)), str(caught.value)


@pytest.mark.parametrize("make", METHODS, ids=lambda m: m.__name__)
def test_scores_before_process_support_set_is_one_sentence(make):
    method = make()
    with pytest.raises(NoSupportSet) as caught:
        method.scores(episode()[2])
    assert one_sentence(caught.value) == (
        f"{type(method).__name__}.scores was called before process_support_set; give the method an episode's support set "
        "first: method.process_support_set(support_images, support_labels)."
    )


@pytest.mark.parametrize("make", METHODS, ids=lambda m: m.__name__)
def test_numpy_arrays_are_accepted_and_give_the_tensors_scores(make):
    support, labels, queries = episode(3)
    method = make()
    method.process_support_set(support, labels)
    from_tensors = method.scores(queries)
    method = (
        make() if make is retrained_softmax else method
    )  # a fresh one trains from the same seed
    method.process_support_set(support.numpy(), labels.numpy())
    from_arrays = method.scores(
        queries.numpy().astype(np.float64)
    )  # NumPy's float64 becomes torch's float32
    assert isinstance(from_arrays, torch.Tensor) and from_arrays.shape == (N_WAY * N_QUERY, N_WAY)
    assert torch.allclose(from_arrays, from_tensors, rtol=1e-5, atol=1e-6)


def test_a_subclass_calling_its_parents_method_is_checked_once():
    calls = []

    class Counting(PixelNearestNeighbour):
        def check_support(self, support_images, support_labels):
            calls.append("support")
            return super().check_support(support_images, support_labels)

        def process_support_set(self, support_images, support_labels):
            super().process_support_set(support_images, support_labels)

        def scores(self, query_images):
            return super().scores(query_images) * 2

    support, labels, queries = episode()
    method = Counting()
    method.process_support_set(support, labels)
    plain = PixelNearestNeighbour()
    plain.process_support_set(support, labels)
    assert calls == ["support"] and torch.equal(method.scores(queries), 2 * plain.scores(queries))
    with pytest.raises(ParameterError, match="uint8"):
        method.process_support_set((support * 255).to(torch.uint8), labels)


def test_the_zero_shot_protonet_takes_metadata_vectors_as_its_support_set():
    from torch import nn

    from helpers.protonet import ZeroShotProtoNet

    model = ZeroShotProtoNet(nn.Identity(), metadata_dim=3, embedding_dim=4)
    model.process_support_set(
        np.eye(3), np.arange(3)
    )  # NumPy float64 vectors become float32 tensors
    assert model.prototypes.dtype == torch.float32 and model.predict(torch.randn(5, 4)).shape == (
        5,
    )
    with pytest.raises(
        ParameterError,
        match=r"^support_images \(the metadata vectors\) holds values that are not finite",
    ):
        model.process_support_set(torch.tensor([[0.0, math.nan, 1.0]]), torch.tensor([0]))
    with pytest.raises(
        ParameterError, match=r"^support_labels has 2 labels but support_images holds 3 images"
    ):
        model.process_support_set(torch.eye(3), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- evaluation


@contextmanager
def fails_within(seconds: int):
    """Turn a hang into a test failure: SIGALRM interrupts the main thread after ``seconds``."""

    def hung(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def toy_dataset() -> FewShotDataset:
    rng = np.random.default_rng(0)
    return FewShotDataset(
        "toy",
        rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        np.repeat(np.arange(6), 10),
        tuple("abcdef"),
    )


def test_evaluate_refuses_an_endless_sampler_at_once():
    from helpers.training import DeviceEpisodeSampler

    data = toy_dataset()
    for sampler in (EpisodeSampler(data, 3, 1, 2), DeviceEpisodeSampler(data, 3, 1, 2)):
        with fails_within(10), pytest.raises(ParameterError) as caught:
            evaluate(PixelNearestNeighbour(), sampler, progress=False)
        assert one_sentence(caught.value) == (
            f"episodes={type(sampler).__name__}(...) draws episodes forever, so this would never end; pass a fixed set instead: "
            "episodes=sampler.take(n) or sample_episodes(dataset, n_way, k_shot, n_query, count)."
        )

    class Forever:  # an iterable with no length that never ends
        def __iter__(self):
            while True:
                yield EpisodeSampler(data, 3, 1, 2).sample()

    with (
        fails_within(10),
        pytest.raises(
            ParameterError, match=r"^episodes is a Forever with no length, which may never end"
        ),
    ):
        evaluate(PixelNearestNeighbour(), Forever(), progress=False)
    with pytest.raises(ParameterError, match=r"for one episode pass \[episode\]\.$"):
        evaluate(PixelNearestNeighbour(), EpisodeSampler(data, 3, 1, 2).sample(), progress=False)


def test_evaluate_takes_lists_episode_lists_and_generators():
    data = toy_dataset()
    fixed = sample_episodes(data, 3, 1, 2, count=4, seed=1)
    expected = evaluate(PixelNearestNeighbour(), fixed, progress=False).accuracies
    for episodes in (
        list(fixed),
        (e for e in fixed),
        EpisodeSampler(data, 3, 1, 2, seed=1).take(4),
    ):
        assert np.array_equal(
            evaluate(PixelNearestNeighbour(), episodes, progress=False).accuracies, expected
        )


def test_the_cached_embedding_evaluations_refuse_an_endless_sampler_too():
    from helpers import matching, protonet
    from helpers.nets import Conv4

    sampler = EpisodeSampler(toy_dataset(), 3, 1, 2)
    with fails_within(10), pytest.raises(ParameterError, match="draws episodes forever"):
        protonet.evaluate_from_embeddings(torch.zeros(60, 4), sampler, progress=False)
    with fails_within(10), pytest.raises(ParameterError, match="draws episodes forever"):
        matching.evaluate_embedded(
            matching.MatchingNetwork(Conv4(hidden=8)), torch.zeros(60, 8), sampler, progress=False
        )


# ----------------------------------------------------------------------------- device and seeds


def test_a_bad_device_variable_names_it_and_the_valid_values(monkeypatch):
    from helpers.device import DeviceError, pick_device

    monkeypatch.setenv("METALEARN_DEVICE", "gpu")
    with pytest.raises(DeviceError) as caught:
        pick_device()
    assert one_sentence(caught.value) == (
        "METALEARN_DEVICE='gpu' is not a device name; use cpu, cuda (or cuda:0, cuda:1, ...) or mps, or unset it."
    )


def seeded_calls():
    from helpers import maml_rl, one_shot
    from helpers.device import seed_everything
    from helpers.training import DeviceEpisodeSampler, train_episodic

    data = toy_dataset()
    return {
        "seed_everything": lambda seed: seed_everything(seed),
        "EpisodeSampler": lambda seed: EpisodeSampler(data, 3, 1, 2, seed=seed),
        "DeviceEpisodeSampler": lambda seed: DeviceEpisodeSampler(data, 3, 1, 2, seed=seed),
        "sample_episodes": lambda seed: sample_episodes(data, 3, 1, 2, count=2, seed=seed),
        "RetrainedSoftmax": lambda seed: one_shot.RetrainedSoftmax(seed=seed),
        "split_per_class": lambda seed: one_shot.split_per_class(data, 2, seed=seed),
        "train_episodic": lambda seed: train_episodic(None, None, 1, None, seed=seed),
        "adaptation_returns": lambda seed: maml_rl.adaptation_returns(
            maml_rl.GaussianMLPPolicy(), torch.zeros(1, 2), 0.1, seed=seed
        ),
    }


@pytest.mark.parametrize("seed", ["3", -1, 2.0, 2**32])
@pytest.mark.parametrize(
    "call",
    [
        "seed_everything",
        "EpisodeSampler",
        "DeviceEpisodeSampler",
        "sample_episodes",
        "RetrainedSoftmax",
        "split_per_class",
        "train_episodic",
        "adaptation_returns",
    ],
)
def test_a_string_float_or_negative_seed_gets_the_seed_sentence(call, seed):
    with pytest.raises(ParameterError) as caught:
        seeded_calls()[call](seed)
    assert one_sentence(caught.value).startswith(
        f"seed={validation.show(seed)} must be a whole number from 0 to 2**32 - 1 (4294967295)"
    )


# ----------------------------------------------------------------------------- numbers


def test_numpy_numbers_are_numbers_and_booleans_and_strings_are_not():
    from helpers.maml import MAML, MAMLClassifier, maml_conv4, sinusoid_net
    from helpers.matching import MatchingNetwork
    from helpers.one_shot import RetrainedSoftmax

    learner = MAML(
        sinusoid_net(),
        inner_lr=np.float32(0.01),
        outer_lr=np.float64(1e-3),
        inner_steps=np.int64(2),
    )
    assert (
        learner.inner_lr == pytest.approx(0.01)
        and type(learner.inner_lr) is float
        and learner.inner_steps == 2
    )
    method = MAMLClassifier(maml_conv4(5), np.float32(0.4), np.int32(1), query_group=np.int64(1))
    assert method.inner_lr == pytest.approx(0.4) and method.steps == 1
    assert method.query_group == 1 and type(method.query_group) is int
    assert RetrainedSoftmax(steps=np.int64(3), lr=np.float32(0.01)).steps == 3
    assert float(MatchingNetwork(scale=np.float32(10)).scale) == pytest.approx(10)
    for bad in (True, "0.01", None, math.inf, math.nan, 0.0, -1e-3):
        with pytest.raises(
            ParameterError,
            match=r"^inner_lr \(alpha\)=.* must be a positive finite number such as 0\.01\.$",
        ):
            MAML(sinusoid_net(), inner_lr=bad)
    with pytest.raises(ParameterError, match=r"^steps=True must be a whole number >= 0\.$"):
        MAMLClassifier(maml_conv4(5), 0.4, True)
    with pytest.raises(ParameterError, match=r"^query_group=True must be a whole number >= 1\.$"):
        MAMLClassifier(maml_conv4(5), 0.4, 1, query_group=True)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: validation.whole_number("episodes", 0, 1),
            "episodes=0 must be a whole number >= 1.",
        ),
        (
            lambda: validation.whole_number("n_way", np.int64(9), 2, 5),
            "n_way=9 must be a whole number between 2 and 5.",
        ),
        (
            lambda: validation.positive_number("lr", "0.1", 0.001),
            "lr='0.1' must be a positive finite number such as 0.001.",
        ),
        (
            lambda: validation.number_in_range("gamma", 1.5, 0, 1),
            "gamma=1.5 must be a number from 0 to 1.",
        ),
        (
            lambda: validation.number_in_range("radius", -1, 0, example=0.01),
            "radius=-1 must be a finite number >= 0 such as 0.01.",
        ),
        (
            lambda: validation.one_of("metric", "manhattan", ("cosine", "euclidean")),
            "metric='manhattan' must be 'cosine' or 'euclidean'.",
        ),
        (
            lambda: validation.one_of("mode", 1, ("auto", "loop", "vmap")),
            "mode=1 must be one of 'auto', 'loop' or 'vmap'.",
        ),
        (lambda: validation.one_of("flag", 1, (True, False)), "flag=1 must be True or False."),
        (lambda: validation.boolean("fce", "yes"), "fce='yes' must be True or False."),
        (
            lambda: validation.seed(None),
            "seed=None must be a whole number from 0 to 2**32 - 1 (4294967295).",
        ),
    ],
)
def test_each_constraint_names_the_parameter_its_value_and_what_to_use(call, message):
    with pytest.raises(ParameterError) as caught:
        call()
    assert one_sentence(caught.value) == message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)


def test_constraints_return_plain_values():
    assert (
        validation.whole_number("k", np.int16(3)) == 3
        and type(validation.whole_number("k", np.int16(3))) is int
    )
    assert type(validation.positive_number("lr", np.float32(0.5))) is float
    assert validation.seed(None, allow_none=True) is None and validation.seed(np.uint32(7)) == 7
    assert validation.boolean("b", np.bool_(True)) is True
    assert validation.check_all(
        {"lr": np.float64(0.1), "note": "x"}, {"lr": validation.Positive()}
    ) == {"lr": 0.1, "note": "x"}
    assert validation.Optional(validation.Whole(1)).check("n", None) is None


# ----------------------------------------------------------------------------- episodes


def test_episode_settings_that_fit_the_classes_are_accepted():
    data = FewShotDataset(
        "omniglot-like",
        np.zeros((4 * 20, 28, 28), np.uint8),
        np.repeat(np.arange(4), 20),
        tuple("abcd"),
    )
    check_episode_settings(
        data, 2, 6, 1
    )  # MAML's 6-shot episodes with one query: 7 of a class's 20 drawings
    check_episode_settings(data, np.int64(4), 19, 1)
    with pytest.raises(
        EpisodeError, match=r"^k_shot \+ n_query = 6 \+ 15 = 21 is more than the 20 images"
    ):
        check_episode_settings(data, 2, 6, 15)
    with pytest.raises(EpisodeError, match=r"^n_query='1' must be a whole number >= 1\.$"):
        check_episode_settings(data, 2, 6, "1")


def test_the_maml_command_takes_six_shots_with_one_query(tmp_path):
    from helpers import maml

    args = maml.build_parser().parse_args(
        ["omniglot", "--k-shot", "6", "--n-query", "1", "--out", str(tmp_path / "m.pt")]
    )
    maml.validate_arguments(args)  # valid: every Omniglot class has 20 drawings
    args = maml.build_parser().parse_args(
        ["omniglot", "--k-shot", "6", "--n-query", "15", "--out", str(tmp_path / "m.pt")]
    )
    with pytest.raises(ValueError, match=r"^--k-shot 6 plus --n-query 15 is 21 images per class"):
        maml.validate_arguments(args)


def test_counts_of_the_samplers_are_whole_numbers():
    sampler = EpisodeSampler(toy_dataset(), 3, 1, 2)
    for count, shown in ((0, "0"), (2.0, "2.0"), ("3", "'3'")):
        with pytest.raises(EpisodeError, match=rf"^count={shown} must be a whole number >= 1\.$"):
            sampler.take(count)


# ----------------------------------------------------------------------------- panels


def test_a_count_of_zero_is_not_told_to_try_a_small_number():
    from helpers import widgets

    with pytest.raises(ValueError) as caught:
        widgets.check_positive("episodes", 0)
    assert one_sentence(
        caught.value
    ) == "episodes=0 must be a whole number >= 1." and "0.001" not in str(caught.value)
    with pytest.raises(ValueError, match=r"^meta-steps=-5 must be a whole number >= 1\.$"):
        widgets.check_positive("meta-steps", np.int64(-5))
    with pytest.raises(ValueError, match=r"^alpha=inf must be a positive finite number\.$"):
        widgets.check_positive("alpha", math.inf)
    with pytest.raises(
        ValueError, match=r"^beta=0\.0 must be a positive finite number such as 0\.001\.$"
    ):
        widgets.check_positive("beta", 0.0, 0.001)
    assert widgets.check_positive("alpha", 0.4) == 0.4 and widgets.check_positive("steps", 3) == 3


def test_a_panel_checks_its_declared_constraints_before_it_runs():
    from helpers import widgets

    ran = []
    panel = widgets.Panel(
        "toy",
        {
            "lr": widgets.float_box("learning rate", 0.1),
            "steps": widgets.int_slider("steps", 2, 0, 5),
        },
        ran.append,
        constraints={"lr": validation.Positive(0.01), "steps": validation.Whole(1)},
    )
    messages = panel.try_values({"steps": 0}, {"lr": math.inf}, {"lr": -0.5})
    assert messages == [
        "steps=0 must be a whole number >= 1.",
        "learning rate=inf must be a positive finite number such as 0.01.",
        "learning rate=-0.5 must be a positive finite number such as 0.01.",
    ]
    assert ran == [{"lr": 0.1, "steps": 2}]  # only the panel's own values ran
    with pytest.raises(KeyError, match="not controls"):
        widgets.Panel(
            "toy",
            {"lr": widgets.float_box("lr", 0.1)},
            ran.append,
            constraints={"steps": validation.Whole(1)},
        )


def test_the_protonet_panel_refuses_an_infinite_learning_rate_and_zero_episodes():
    from helpers import panels

    panel = panels.protonet_training(
        None, None, torch.device("cpu")
    )  # refused before any data is needed
    for name, value, expected in (
        ("lr", math.inf, "learning rate=inf must be a positive finite number such as 0.001."),
        ("lr", 0.0, "learning rate=0.0 must be a positive finite number such as 0.001."),
        ("episodes", 0, "episodes=0 must be a whole number >= 1."),
    ):
        own = panel.controls[name].value
        panel.controls[name].value = value
        assert panel.run() is False and panel.last_error == expected
        panel.controls[name].value = own
