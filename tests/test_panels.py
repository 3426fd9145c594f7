"""helpers.panels: every notebook's panel, built on small real data and driven as a reader drives it.

Each test sets controls' ``.value`` (which is what moving a slider does), runs the panel and looks
at what it showed (``panel.figures``), printed (captured stdout) and said (``panel.message``). Bad
settings must be refused with one sentence before anything is drawn, and the panel must be usable
again afterwards. tests/test_browser.py drives the same panels in Chromium.
"""

from __future__ import annotations

import math
import re

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from helpers import maml, matching, panels, plots, protonet  # noqa: E402
from helpers import side_by_side as sbs  # noqa: E402
from helpers.episodes import FewShotDataset, omniglot_dataset  # noqa: E402
from helpers.fewshot import (
    PixelNearestNeighbour,  # noqa: E402
    embed_in_batches,  # noqa: E402
)
from helpers.nets import Conv4  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread_and_no_figures_left():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    plt.close("all")


@pytest.fixture(scope="module")
def small_omniglot(needs_data) -> tuple[FewShotDataset, FewShotDataset]:
    background = omniglot_dataset("background")
    return background.subset(range(0, 40), "train40"), background.subset(range(500, 540), "test40")


def ran(panel) -> None:
    """Run ``panel``; assert that it ran cleanly and gave its controls back."""
    assert panel.run() is True, panel.last_error
    assert panel.message.value == "" and panel.last_error == ""
    assert not panel.button.disabled


def refusals(panel, *tries: dict) -> list[str]:
    """Each try's one-line refusal (``panel.try_values``), checked to be one sentence each.

    ``try_values`` also runs the panel with its own values at the end: the panel must take them.
    """
    messages = panel.try_values(*tries)
    for values, message in zip(tries, messages):
        assert message, f"{values} was not refused"
        assert "\n" not in message and "Traceback" not in message and message.endswith("."), message
    assert panel.last_error == "" and panel.message.value == "" and not panel.button.disabled
    return messages


def refused_before_drawing(panel, **values) -> str:
    """Set ``values``, run, and assert the run was refused with nothing drawn; return the message."""
    own = panel.values()
    open_before = plt.get_fignums()
    for name, value in values.items():
        panel.controls[name].value = value
    try:
        assert panel.run() is False
        assert panel.figures == [] and plt.get_fignums() == open_before
        assert "⚠" in panel.message.value and not panel.button.disabled
        return panel.last_error
    finally:
        for name, value in own.items():
            panel.controls[name].value = value


def titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes]


# --------------------------------------------------------------------------- 01 episodes


def _tiny_datasets() -> dict[str, FewShotDataset]:
    images = np.repeat(np.arange(40, dtype=np.uint8), 16).reshape(40, 4, 4) * 6
    return {
        "tiny (4 classes)": FewShotDataset(
            "tiny", images, np.repeat(np.arange(4), 10), ("a", "b", "c", "d")
        )
    }


def test_episode_explorer_draws_each_episode_and_answers_impossible_settings_in_one_line(capsys):
    panel = panels.episode_explorer(
        _tiny_datasets(), method=PixelNearestNeighbour(), n_way=2, n_query=2, n_eval=5
    )
    ran(panel)
    (figure,) = panel.figures
    assert len(figure.axes) == 2 * (1 + 2)  # one row per class: K support images, then the queries
    assert "PixelNearestNeighbour on 5 more 2-way 1-shot episodes" in capsys.readouterr().out
    panel.controls["n_query"].value = 4  # the change itself re-runs the panel
    assert len(panel.figures[0].axes) == 2 * (1 + 4) and panel.message.value == ""
    panel.controls["n_way"].value = 6  # more ways than the 4 classes
    assert (
        "n_way=6" in panel.message.value
        and "4 classes" in panel.message.value
        and panel.figures == []
    )
    assert panel.run() is False
    panel.controls["n_way"].value = 2
    assert panel.message.value == "" and len(panel.figures) == 1
    panel.controls["k_shot"].value = 9  # 9 shots + 4 queries > 10 images per class
    assert "k_shot + n_query" in panel.message.value


def test_episode_explorer_without_a_method_only_draws():
    panel = panels.episode_explorer(_tiny_datasets(), n_way=3, k_shot=2, n_query=1)
    ran(panel)
    assert len(panel.figures[0].axes) == 3 * (2 + 1)


# --------------------------------------------------------------------------- 02 zero-shot


def test_zero_shot_split_bars_are_the_printed_accuracies_and_the_encoder_is_trained_once(
    needs_data, capsys, monkeypatch
):
    from helpers import zero_shot as zs
    from helpers.datasets import load_mnist

    fashion = load_mnist("fashion-mnist")
    vectors = {view: zs.class_vectors(view) for view in ("descriptions", "attributes")}
    prepared = []
    real_prepare = zs.prepare_split
    monkeypatch.setattr(
        zs, "prepare_split", lambda *a, **k: prepared.append(a[1].unseen) or real_prepare(*a, **k)
    )
    panel = panels.zero_shot_split(
        fashion, vectors, unseen=("Trouser", "Sneaker"), images_per_class=20, val_per_class=10, test_per_class=20, map_steps=5,
    )  # fmt: skip
    assert list(panel.controls["class view"].options) == list(zs.VIEWS)
    ran(panel)
    (figure,) = panel.figures
    (ax,) = figure.axes
    heights = [bar.get_height() for bar in ax.patches]
    printed = capsys.readouterr().out
    printed_numbers = [
        float(n) for n in re.findall(r"([\d.]+) %", printed)
    ]  # conventional, seen, unseen
    assert len(printed_numbers) == 3 and heights == pytest.approx(printed_numbers, abs=0.051)
    assert ax.get_title() == "unseen Trouser, Sneaker; descriptions"
    assert ax.lines[0].get_ydata()[0] == pytest.approx(50.0)  # chance among 2 unseen classes
    panel.controls["class view"].value = "attributes"
    ran(panel)
    assert panel.figures[0].axes[0].get_title().endswith("; attributes")
    assert prepared == [(1, 7)]  # Trouser and Sneaker; changing the view reused the encoder
    messages = refusals(panel, {"map lr": 0.0}, {"images/class": 10}, {"unseen": ("Bag",)})
    assert messages[0].startswith("map lr=0.0 must be a positive finite number")
    assert messages[1] == "images/class=10 must lie between 20 and 5000."
    assert "at least 2 unseen classes" in messages[2]


# --------------------------------------------------------------------------- 03 one-shot database


def test_database_lookup_shows_the_query_and_its_best_matches_in_order(needs_data):
    characters = omniglot_dataset("evaluation").subset(range(30), "eval30")
    torch.manual_seed(0)
    encoder = Conv4(hidden=16).eval()
    panel = panels.database_lookup(characters, encoder, n_classes=5, retrain_steps=2)
    ran(panel)
    (figure,) = panel.figures
    assert len(figure.axes) == 6 and figure.axes[0].get_title() == "query"
    similarities = [float(t) for t in titles(figure)[1:]]
    assert similarities == sorted(similarities, reverse=True) and all(
        -1 <= s <= 1 for s in similarities
    )
    # With 5 characters the five matches are all of them: exactly one is framed as the right one.
    frames = [{spine.get_edgecolor() for spine in ax.spines.values()} for ax in figure.axes[1:]]
    assert sum(matplotlib.colors.to_rgba("green") in colours for colours in frames) == 1
    assert "database of 5 × 1, cosine" in figure._suptitle.get_text()
    panel.controls["similarity"].value = "euclidean"
    panel.controls["K (stored)"].value = 3
    ran(panel)
    similarities = [float(t) for t in titles(panel.figures[0])[1:]]
    assert all(s <= 0 for s in similarities)  # minus a distance
    assert "database of 5 × 3, euclidean" in panel.figures[0]._suptitle.get_text()
    assert (
        refused_before_drawing(panel, **{"N (classes)": 1})
        == "N=1 must lie between 2 and the 30 characters there are to choose from."
    )
    assert refused_before_drawing(panel, **{"K (stored)": 20}).startswith(
        "K=20 must lie between 1 and 19"
    )
    assert refused_before_drawing(panel, **{"retrain lr": -1.0}).startswith(
        "retrain lr=-1.0 must be a positive finite number"
    )
    ran(panel)


# --------------------------------------------------------------------------- 04 Matching Networks


def test_matching_training_redraws_the_loss_and_tests_at_the_end(small_omniglot, capsys):
    train, test = small_omniglot
    panel = panels.matching_training(train, test, processing_steps=0, episodes=12, test_episodes=3)
    ran(panel)
    # 12 episodes in chunks of max(12 // 6, 1) = 2: the curve is redrawn six times
    assert len(panel.figures) == 6
    (ax,) = panel.figures[-1].axes
    loss, smoothed, chance = ax.lines
    assert len(loss.get_xdata()) == 12 and chance.get_ydata()[0] == pytest.approx(math.log(5))
    assert ax.get_title().startswith("5-way 1-shot, no FCE, lr 0.001, s = ")
    assert "after 12 episodes" in capsys.readouterr().out
    panel.controls["T"].value = 1
    panel.controls["episodes"].value = 10
    ran(panel)
    assert "FCE with T = 1" in panel.figures[-1].axes[0].get_title()
    messages = refusals(panel, {"K": 18}, {"learning rate": -0.01}, {"scale s": 0.0})
    assert "k_shot + n_query" in messages[0]
    assert messages[1].startswith("learning rate=-0.01 must be a positive finite number")
    assert messages[2].startswith("scale s=0.0 must be a positive finite number")


# --------------------------------------------------------------------------- 05 Siamese networks


def test_siamese_held_out_refuses_bad_digits_and_trains_a_twin(needs_data, capsys):
    from helpers.datasets import load_mnist

    panel = panels.siamese_held_out(load_mnist("mnist"), epochs=1, pairs_per_class=10, episodes=2)
    assert panel.controls["held_out"].value == "5,6,7,8,9" and panel.controls["n_way"].value == 5
    for text, expected in [
        ("a,b", "held_out='a,b' must be digits 0-9 separated by commas, e.g. 5,6,7,8,9."),
        ("12", "held_out='12' must name at least one digit between 0 and 9."),
        (
            "0,1,2,3,4,5,6,7,8",
            "held_out='0,1,2,3,4,5,6,7,8' leaves 1 digit(s) to train on; hold out at most 8 so at least 2 remain.",
        ),
    ]:
        assert refused_before_drawing(panel, held_out=text) == expected
    assert refused_before_drawing(panel, epochs=0) == "epochs=0 must be at least 1."
    assert refused_before_drawing(panel, learning_rate=0.0).startswith(
        "learning_rate=0.0 must be a positive finite number"
    )
    assert "n_way=6" in refused_before_drawing(panel, n_way=6)  # 6 ways over 5 held-out digits
    panel.controls["held_out"].value = " 7, 9 ,8"
    panel.controls["n_way"].value = 3
    ran(panel)
    (figure,) = panel.figures  # one epoch: one point of the loss curve
    (ax,) = figure.axes
    assert (
        len(ax.lines[0].get_xdata()) == 1
        and ax.get_title() == "twin trained on digits [0, 1, 2, 3, 4, 5, 6]"
    )
    assert "3-way one-shot on held-out digits [7, 8, 9]: twin" in capsys.readouterr().out


# --------------------------------------------------------------------------- 06 Prototypical Networks


def test_protonet_training_draws_loss_and_test_accuracy_as_it_trains(small_omniglot, capsys):
    train, test = small_omniglot
    panel = panels.protonet_training(train, test, torch.device("cpu"), episodes=4, val_episodes=2)
    panel.controls["train_n_way"].value = 10
    ran(panel)
    # validation every max(1, 4 // 5) = 1 episode: the figure is redrawn after each
    assert len(panel.figures) == 4
    left, right = panel.figures[-1].axes
    assert (
        left.get_title() == "10-way 1-shot training"
        and right.get_title() == "5-way 1-shot test, euclidean"
    )
    assert len(left.lines[0].get_xdata()) == 4
    assert right.lines[-1].get_ydata()[0] == pytest.approx(20.0)  # chance, dashed
    assert "4 episodes in" in capsys.readouterr().out


def test_protonet_training_rejects_impossible_settings_with_one_line(small_omniglot):
    train, test = small_omniglot
    panel = panels.protonet_training(train, test, torch.device("cpu"), episodes=4, val_episodes=2)
    for name, value, expected in (
        ("train_n_way", 100, "n_way=100"),
        ("k_shot", 18, "k_shot + n_query"),
        ("lr", -0.1, "learning rate"),
        ("episodes", 0, "episodes"),
    ):
        message = refused_before_drawing(panel, **{name: value})
        assert expected in message and "\n" not in message and "Traceback" not in message
    panel.controls["train_n_way"].value = 5
    ran(panel)


# --------------------------------------------------------------------------- 07 MAML


def test_sinusoid_fits_adapt_with_the_given_step_size():
    # A linear model y = w x + b with w = b = 0: one step of size alpha on MSE moves (w, b) by
    # alpha * (2 mean(x y), 2 mean(y)), so the fit after one step is known exactly.
    model = torch.nn.Linear(1, 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    tasks = maml.SinusoidTasks()
    fig, ax = plt.subplots()
    plots.plot_sinusoid_fits(
        ax,
        model,
        maml.parameters_of(model),
        tasks,
        task_seed=3,
        k=4,
        inner_lr=0.05,
        title="t",
        steps_shown=(0, 1),
    )
    truth, before, after, points = ax.lines
    x, y = (torch.tensor(np.asarray(v, dtype=np.float32)) for v in points.get_data())
    assert len(x) == 4 and ax.get_title() == "t"
    grid = torch.tensor(np.asarray(after.get_xdata(), dtype=np.float32))
    w, b = 0.05 * 2 * (x * y).mean(), 0.05 * 2 * y.mean()
    np.testing.assert_allclose(before.get_ydata(), 0.0)
    np.testing.assert_allclose(after.get_ydata(), (w * grid + b).numpy(), rtol=1e-5, atol=1e-6)
    assert [line.get_label() for line in ax.lines] == [
        "true function",
        "after 0 steps",
        "after 1 step",
        "4 points used",
    ]


def test_maml_training_on_sinusoids_draws_loss_and_fits_live():
    panel = panels.maml_training(meta_steps=2, meta_batch=3, k_shot=5)
    ran(panel)
    (figure,) = panel.figures
    ax_loss, ax_task = figure.axes
    assert ax_loss.get_title() == "2 meta-steps" and len(ax_loss.lines[0].get_ydata()) == 2
    assert ax_task.get_title() == "a new task, K=5"
    # inner steps 1: the fits after 0, 1 and 5 steps, between the true function and the 5 points
    assert [line.get_label() for line in ax_task.lines] == [
        "true function",
        "after 0 steps",
        "after 1 step",
        "after 5 steps",
        "5 points used",
    ]
    messages = refusals(
        panel, {"alpha": -0.01}, {"beta": 0.0}, {"meta-steps": 0}, {"inner steps": 0}
    )
    assert [m.split("=")[0] for m in messages] == ["alpha", "beta", "meta-steps", "inner steps"]


def test_maml_training_on_omniglot_draws_validation_accuracy_after_each_step(small_omniglot):
    train, test = small_omniglot
    panel = panels.maml_training(omniglot_train=train, omniglot_val=test, meta_steps=1)
    panel.controls["task"].value = "omniglot"
    panel.controls["alpha"].value = 0.4
    for name, value in (("N", 2), ("K", 1)):
        panel.controls[name].value = value
    ran(panel)
    _, ax_task = panel.figures[0].axes
    steps, accuracies = ax_task.lines[0].get_data()
    assert list(steps) == [0, 1, 2] and all(0 <= a <= 1 for a in accuracies)  # 0 .. inner steps + 1
    assert ax_task.get_title() == "5 validation episodes"
    assert "n_way=1" in refused_before_drawing(panel, N=1)


# --------------------------------------------------------------------------- 08 MAML for RL


def test_maml_rl_adaptation_draws_paths_and_returns_and_leaves_the_policies_alone():
    from helpers.maml_rl import GaussianMLPPolicy, RLSettings

    torch.manual_seed(0)
    maml_policy, pretrained = GaussianMLPPolicy(hidden=(8,)), GaussianMLPPolicy(hidden=(8,))
    before = {k: v.clone() for k, v in maml_policy.state_dict().items()}
    settings = RLSettings(n_trajectories=2, horizon=5, reward="distance")
    panel = panels.maml_rl_adaptation(maml_policy, pretrained, settings, steps=2, meta_batch=2)
    ran(panel)
    (figure,) = panel.figures
    maml_ax, pretrained_ax, returns_ax = figure.axes
    assert (
        maml_ax.get_title() == "MAML: mean paths"
        and pretrained_ax.get_title() == "pretrained: mean paths"
    )
    assert [line.get_label() for line in maml_ax.lines[:3]] == ["0 steps", "1 step", "2 steps"]
    assert all(
        len(line.get_xdata()) == settings.horizon + 1 for line in maml_ax.lines[:3]
    )  # start and 5 moves
    assert all(
        (ax.get_xlabel(), ax.get_ylabel()) == ("x position", "y position")
        for ax in (maml_ax, pretrained_ax)
    )
    assert [line.get_label() for line in returns_ax.lines] == ["MAML", "pretrained"]
    assert returns_ax.get_title() == "goal (0.40, -0.30), alpha=0.1"
    panel.controls["meta-iters"].value = 1
    ran(panel)
    curve, paths = panel.figures  # the live curve of the extra meta-training, then the paths
    assert len(curve.axes[0].lines[0].get_ydata()) == 1 and len(paths.axes) == 3
    assert all(
        torch.equal(v, before[k]) for k, v in maml_policy.state_dict().items()
    )  # trained a copy
    messages = refusals(panel, {"alpha": -0.1}, {"goal x": 0.8})
    assert messages[0].startswith("alpha=-0.1 must be a positive finite number")
    assert (
        messages[1]
        == "goal x=0.8 is outside the unit square the goals come from; pick a value in [-0.5, 0.5]."
    )


# --------------------------------------------------------------------------- 09 side by side


def test_fast_methods_bars_are_each_methods_accuracy_on_the_same_episodes(small_omniglot):
    _, test = small_omniglot
    torch.manual_seed(0)
    encoder = Conv4(hidden=16).eval()
    model = matching.MatchingNetwork(encoder=Conv4(hidden=16), scale=10.0).eval()
    embeddings = {
        "classifier + cosine": embed_in_batches(encoder, test.images),
        "ProtoNet": embed_in_batches(encoder, test.images),
        "Matching": embed_in_batches(model.encoder, test.images),
    }
    panel = panels.fast_methods(test, embeddings, {"Matching": model}, n_way=5, episodes=4, seed=1)
    ran(panel)
    (ax,) = panel.figures[0].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "pixels",
        "classifier + cosine",
        "Matching",
        "ProtoNet",
    ]
    episodes = sbs.light_episodes(test, 5, 1, 5, 4, seed=1 + 99)
    expected = [
        sbs.evaluate_on_pixels(PixelNearestNeighbour("cosine"), test, episodes, progress=False),
        protonet.evaluate_from_embeddings(
            embeddings["classifier + cosine"], episodes, "cosine", progress=False
        ),
        matching.evaluate_embedded(model, embeddings["Matching"], episodes, progress=False),
        protonet.evaluate_from_embeddings(embeddings["ProtoNet"], episodes, progress=False),
    ]
    assert [bar.get_width() for bar in ax.patches] == pytest.approx(
        [100 * r.mean for r in expected]
    )
    assert ax.get_title() == "5-way 1-shot, 4 episodes, 5 queries per class"
    messages = refusals(panel, {"K": 18}, {"episodes": 0})
    assert (
        "k_shot + n_query" in messages[0] and messages[1] == "count=0 must be a whole number >= 1."
    )


# --------------------------------------------------------------------------- layers


def test_only_the_panels_use_widgets_and_nothing_in_helpers_imports_the_panels():
    import ast
    from pathlib import Path

    importers: dict[str, set[str]] = {"widgets": set(), "panels": set()}
    for path in sorted((Path(panels.__file__).parent).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if (
                isinstance(node, ast.ImportFrom) and node.level == 1
            ):  # from .x import ... / from . import x
                names = (
                    [node.module.split(".")[0]]
                    if node.module
                    else [alias.name for alias in node.names]
                )
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers"):
                names = (
                    [node.module.split(".")[1]]
                    if "." in node.module
                    else [alias.name for alias in node.names]
                )
            elif isinstance(node, ast.Import):
                names = [
                    alias.name.split(".")[1]
                    for alias in node.names
                    if alias.name.startswith("helpers.")
                ]
            for name in set(names) & set(importers):
                importers[name].add(path.stem)
    assert importers == {"widgets": {"panels"}, "panels": set()}
