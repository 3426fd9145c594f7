"""The interactive panel of every notebook: one function each, returning a :class:`helpers.widgets.Panel`.

A notebook's panel cell is one call, e.g. ``panel = panels.protonet_training(train_data, val_data,
device)``, then ``display(panel)`` and ``panel.run()``. Each function takes the data and models the
notebook has already built, and the notebook's settings as keyword arguments (the panel's starting
values); the controls keep the labels the browser test moves (tests/test_browser.py).

Every run checks its settings first and answers a bad one with one line (a ``ValueError`` from the
helpers, turned into the panel's message), before anything is trained or drawn. The figures a run
shows are kept in ``panel.figures`` and what it prints goes to the panel's output area, which is
how tests/test_panels.py checks each panel: set a control's ``.value``, run, look.

This module sits on top: it imports :mod:`helpers.widgets` and the method modules, and nothing in
``helpers`` imports it. ``helpers.siamese`` is imported only when its panel is made, because it
starts TensorFlow.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import clear_output

from . import maml, matching, protonet
from . import side_by_side as sbs
from . import zero_shot as zs
from .datasets import FASHION_CLASSES
from .device import seed_everything
from .episodes import (
    EpisodeSampler,
    FewShotDataset,
    check_episode_settings,
    mnist_dataset,
    omniglot_dataset,
    sample_episodes,
)
from .fewshot import FewShotMethod, PixelNearestNeighbour, evaluate
from .maml_rl import RLSettings, adaptation_returns, meta_train, rollout
from .nets import Conv4
from .one_shot import NearestEmbedding, RetrainedSoftmax
from .plots import plot_sinusoid_fits, show_episode
from .training import DeviceEpisodeSampler, History, train_episodic
from .widgets import Panel, check_positive, checkbox, float_box, int_slider

# ----------------------------------------------------------------------------- 01 episodes


def episode_explorer(
    datasets: Mapping[str, FewShotDataset],
    method: FewShotMethod | None = None,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 3,
    n_eval: int = 100,
) -> Panel:
    """Notebook 01: draw a fresh episode from the chosen dataset; with ``method``, classify its queries.

    Each click (and each change of a control) samples a new episode and draws it; with a method,
    every query is framed green or red, and ``n_eval`` more episodes at the same settings give
    the method's accuracy beside chance. Impossible settings (more ways than classes, more shots
    plus queries than images per class) answer with one line.
    """
    clicks = {"count": 0}
    controls = {
        "dataset": w.Dropdown(options=list(datasets), description="dataset"),
        "n_way": int_slider("N (ways)", n_way, 2, 30),
        "k_shot": int_slider("K (shots)", k_shot, 1, 20),
        "n_query": int_slider("queries", n_query, 1, 20),
    }

    def draw(values: dict[str, Any]) -> None:
        clicks["count"] += 1
        sampler = EpisodeSampler(
            datasets[values["dataset"]],
            values["n_way"],
            values["k_shot"],
            values["n_query"],
            seed=clicks["count"],
        )
        episode = sampler.sample()
        predictions = None
        if method is not None:
            method.process_support_set(episode.support_images, episode.support_labels)
            predictions = method.predict(episode.query_images)
            result = evaluate(method, sampler.take(n_eval), progress=False)
            print(
                f"{type(method).__name__} on {n_eval} more {episode.n_way}-way {episode.k_shot}-shot episodes: "
                f"{result}; chance is {100 / episode.n_way:.1f} %."
            )
        panel.show(
            show_episode(episode, max_query=min(values["n_query"], 5), predictions=predictions)
        )

    panel = Panel(
        "Episodes: pick N, K and the number of queries",
        controls,
        draw,
        run_label="Resample",
        auto=True,
    )
    return panel


# ----------------------------------------------------------------------------- 02 zero-shot


def zero_shot_split(
    fashion,
    vectors: Mapping[str, torch.Tensor],
    device: torch.device | str = "cpu",
    unseen: Sequence[str] = ("Trouser", "Sneaker"),
    view: str = "descriptions",
    map_lr: float = 0.01,
    images_per_class: int = 500,
    val_per_class: int = 300,
    test_per_class: int | None = 1000,
    encoder_lr: float = 1e-3,
    map_steps: int = 200,
    seed: int = 0,
) -> Panel:
    """Notebook 02: hold out the chosen Fashion-MNIST classes, train, and test zero-shot.

    ``fashion`` is Fashion-MNIST as :func:`helpers.datasets.load_mnist` gives it, ``vectors`` maps
    each class view to its ``(10, dim)`` class vectors. A run trains the image encoder (one epoch)
    on the seen classes, ``images_per_class`` images each (cached: changing only the view or the
    learning rate is quick), fits the compatibility map and draws conventional and generalised
    accuracy as bars.
    """
    encoders: dict[
        tuple, zs.PreparedSplit
    ] = {}  # (unseen classes, images per class) -> prepared split

    def on_run(values: dict[str, Any]) -> None:
        names, view, lr, per_class = (
            list(values["unseen"]),
            values["class view"],
            values["map lr"],
            values["images/class"],
        )
        check_positive("map lr", lr)
        if not 20 <= per_class <= 5000:
            raise ValueError(f"images/class={per_class} must lie between 20 and 5000.")
        classes = zs.class_ids(names)
        split = zs.make_split(fashion.train_labels, classes, val_per_class, per_class, seed=seed)
        key = (tuple(split.unseen), per_class)
        if key not in encoders:
            encoders[key] = zs.prepare_split(
                fashion,
                split,
                1,
                encoder_lr,
                seed=seed,
                device=device,
                test_per_class=test_per_class,
            )
        prepared = encoders[key]
        model = zs.fit_map(prepared, vectors[view], lr=lr, steps=map_steps, seed=seed)
        result = zs.evaluate_view(prepared, model, vectors[view])
        bars = {
            "conventional\n(unseen only)": result.conventional,
            "generalised\nseen": result.generalised.seen,
            "generalised\nunseen": result.generalised.unseen,
        }
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(
            list(bars),
            [100 * v for v in bars.values()],
            color=["tab:blue", "tab:grey", "tab:orange"],
        )
        ax.axhline(
            100 / len(classes),
            color="k",
            linestyle="--",
            label=f"chance among unseen ({100 / len(classes):.0f} %)",
        )
        ax.set(ylim=(0, 100), ylabel="accuracy (%)", title=f"unseen {', '.join(names)}; {view}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        panel.show(fig)
        print(
            f"conventional {100 * result.conventional:.1f} %, generalised seen {100 * result.generalised.seen:.1f} % / "
            f"unseen {100 * result.generalised.unseen:.1f} %"
        )

    panel = Panel(
        "Zero-shot learning on Fashion-MNIST",
        {
            "unseen": w.SelectMultiple(
                options=list(FASHION_CLASSES), value=tuple(unseen), rows=5, description="unseen"
            ),
            "class view": w.Dropdown(options=list(zs.VIEWS), value=view, description="class view"),
            "map lr": float_box("map lr", map_lr),
            "images/class": int_slider("images/class", images_per_class, 0, 6000, step=50),
        },
        on_run,
        run_label="Train and test",
    )
    return panel


# ----------------------------------------------------------------------------- 03 one-shot database


def database_lookup(
    dataset: FewShotDataset,
    encoder: torch.nn.Module,
    device: torch.device | str = "cpu",
    n_classes: int = 20,
    metric: str = "cosine",
    retrain_steps: int = 40,
    retrain_lr: float = 0.01,
    seed: int = 0,
) -> Panel:
    """Notebook 03: a database of ``N`` characters, ``K`` stored drawings each; look a new drawing up.

    ``encoder`` embeds ``(n, 1, 28, 28)`` images (a :class:`helpers.one_shot.CachedEncoder` makes
    repeated lookups quick). The ``draw #`` slider seeds which characters, stored drawings and
    query are drawn from ``dataset``. The run shows the query and its five best matches with their
    similarities (green frame: the right character), and says in the title whether the nearest
    key and a softmax classifier retrained on the stored images (``retrain_steps`` Adam steps at
    the chosen learning rate) are right.
    """

    def on_run(values: dict[str, Any]) -> None:
        n_classes, k_shot, metric, lr = (
            values["N (classes)"],
            values["K (stored)"],
            values["similarity"],
            values["retrain lr"],
        )
        if not 2 <= n_classes <= dataset.n_classes:
            raise ValueError(
                f"N={n_classes} must lie between 2 and the {dataset.n_classes} characters there are to choose from."
            )
        per_class = int(dataset.class_sizes().min())
        if not 1 <= k_shot <= per_class - 1:
            raise ValueError(
                f"K={k_shot} must lie between 1 and {per_class - 1}: a character has {per_class} drawings and one is the query."
            )
        check_positive("retrain lr", lr)
        rng = np.random.default_rng(values["query"])
        classes = rng.choice(dataset.n_classes, size=n_classes, replace=False)
        picks = np.stack(
            [rng.choice(dataset.members(c), size=k_shot + 1, replace=False) for c in classes]
        )

        def to_tensor(rows: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(dataset.images[rows]).float().div(255).unsqueeze(1)

        support, support_labels = (
            to_tensor(picks[:, :k_shot].reshape(-1)),
            torch.arange(n_classes).repeat_interleave(k_shot),
        )
        target = int(rng.integers(n_classes))
        query = to_tensor(picks[target, k_shot : k_shot + 1])
        method = NearestEmbedding(encoder, metric)
        method.process_support_set(support.to(device), support_labels.to(device))
        sims = method.scores(query.to(device))[0].cpu()
        order = sims.argsort(descending=True)[:5].tolist()
        retrain = RetrainedSoftmax(steps=retrain_steps, lr=lr, device=device, seed=seed)
        retrain.process_support_set(support.to(device), support_labels.to(device))
        retrained_guess = int(retrain.predict(query.to(device))[0])
        fig, axes = plt.subplots(1, 6, figsize=(10, 2.2))
        axes[0].imshow(query[0, 0].numpy(), cmap="gray_r")
        axes[0].set_title("query", fontsize=9)
        for ax, k in zip(axes[1:], order):
            ax.imshow(support[k * k_shot, 0].numpy(), cmap="gray_r")
            ax.set_title(f"{sims[k]:.2f}", fontsize=9)
            for spine in ax.spines.values():
                spine.set_color("green" if k == target else "red")
                spine.set_linewidth(2.5 if k == target else 1)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(
            f"{dataset.class_names[classes[target]]}: database of {n_classes} × {k_shot}, {metric}; "
            f"nearest is {'right' if order[0] == target else 'wrong'}; retrained softmax is "
            f"{'right' if retrained_guess == target else 'wrong'}",
            fontsize=9,
        )
        fig.tight_layout()
        panel.show(fig)

    panel = Panel(
        "One-shot database lookup",
        {
            "N (classes)": int_slider("N (classes)", n_classes, 1, 700),
            "K (stored)": int_slider("K (stored)", 1, 1, 20),
            "similarity": w.Dropdown(
                options=["cosine", "euclidean"], value=metric, description="similarity"
            ),
            "query": int_slider("draw #", 0, 0, 100),
            "retrain lr": float_box("retrain lr", retrain_lr),
        },
        on_run,
        run_label="Look up",
    )
    return panel


# ----------------------------------------------------------------------------- 04 Matching Networks


def matching_training(
    train_dataset: FewShotDataset,
    test_dataset: FewShotDataset,
    device: torch.device | str = "cpu",
    n_way: int = 5,
    k_shot: int = 1,
    processing_steps: int = 2,
    lr: float = 1e-3,
    scale: float = 10.0,
    episodes: int = 60,
    n_query: int = 5,
    test_episodes: int = 100,
    seed: int = 0,
) -> Panel:
    """Notebook 04: train a fresh Matching Network from scratch, drawing the loss, then test it.

    ``T`` is the number of processing steps of the attention LSTM (``T = 0``: no FCE), ``scale s``
    the starting value of the attention's scale, learned unless "learn s" is off. The loss is
    redrawn six times during the run; the last line gives the accuracy on ``test_episodes``
    episodes of ``test_dataset``.
    """

    def on_run(values: dict[str, Any]) -> None:
        n_way, k_shot, steps, lr, n_episodes = (
            values["N"],
            values["K"],
            values["T"],
            values["learning rate"],
            values["episodes"],
        )
        check_positive("learning rate", lr)
        check_positive("scale s", values["scale s"])
        sampler = EpisodeSampler(
            train_dataset, n_way, k_shot, n_query, seed=seed
        )  # EpisodeError if impossible
        tests = sample_episodes(test_dataset, n_way, k_shot, n_query, test_episodes, seed=seed + 3)
        seed_everything(seed)
        model = matching.MatchingNetwork(
            fce=steps > 0,
            processing_steps=max(steps, 1),
            scale=values["scale s"],
            learn_scale=values["learn s"],
        ).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        history, chunk = History(), max(n_episodes // 6, 1)
        while history.n_episodes < n_episodes:
            train_episodic(
                model, sampler, min(chunk, n_episodes - history.n_episodes), optimizer,
                device=device, progress=False, seed=None, history=history,
            )  # fmt: skip
            clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.plot(history.episode, history.loss, alpha=0.3)
            ax.plot(history.episode, history.smoothed("loss", 10), label="running mean (10)")
            ax.axhline(np.log(n_way), color="k", ls="--", lw=1, label=f"chance: log {n_way}")
            kernel = f"FCE with T = {steps}" if steps else "no FCE"
            ax.set(
                xlabel="training episode", ylabel="loss", xlim=(0, n_episodes),
                title=f"{n_way}-way {k_shot}-shot, {kernel}, lr {lr:g}, s = {model.scale.item():.1f}",
            )  # fmt: skip
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            panel.show(fig)
        result = evaluate(model.eval(), tests, progress=False)
        print(
            f"after {history.n_episodes} episodes ({history.seconds:.0f} s): {result} on test characters; chance {100 / n_way:.0f} %"
        )

    panel = Panel(
        "Matching Network: train from scratch, then test",
        {
            "N": int_slider("N", n_way, 2, 30),
            "K": int_slider("K", k_shot, 1, 20),
            "T": int_slider("T", processing_steps, 0, 10),
            "learning rate": float_box("learning rate", lr),
            "scale s": float_box("scale s", scale),
            "learn s": checkbox("learn s", True),
            "episodes": int_slider("episodes", episodes, 10, 1000, step=10),
        },
        on_run,
        run_label="Train",
    )
    return panel


# ----------------------------------------------------------------------------- 05 Siamese networks


def _held_out_digits(text: str) -> list[int]:
    """'5, 6, 7' -> [5, 6, 7]; one line of explanation for anything else."""
    try:
        digits = sorted({int(t) for t in str(text).replace(" ", "").split(",") if t != ""})
    except ValueError:
        raise ValueError(
            f"held_out={text!r} must be digits 0-9 separated by commas, e.g. 5,6,7,8,9."
        ) from None
    if not digits or not all(0 <= d <= 9 for d in digits):
        raise ValueError(f"held_out={text!r} must name at least one digit between 0 and 9.")
    if len(digits) > 8:
        raise ValueError(
            f"held_out={text!r} leaves {10 - len(digits)} digit(s) to train on; hold out at most 8 so at least 2 remain."
        )
    return digits


def siamese_held_out(
    mnist,
    held_out: Sequence[int] = (5, 6, 7, 8, 9),
    n_way: int = 5,
    learning_rate: float = 0.001,
    epochs: int = 3,
    pairs_per_class: int = 1000,
    episodes: int = 100,
    n_query: int = 5,
    seed: int = 0,
) -> Panel:
    """Notebook 05: train a fresh twin on pairs of the other digits, test it one-shot on the held-out ones.

    ``mnist`` is MNIST as :func:`helpers.datasets.load_mnist` gives it. The twin trains on at most
    ``pairs_per_class`` same pairs per digit, the loss drawn after every epoch; then N-way one-shot
    accuracy on ``episodes`` episodes of held-out test images is printed beside the pixel baseline.
    Importing this panel's Keras model starts TensorFlow, so it happens here, not on import.
    """
    from . import siamese

    def on_run(values: dict[str, Any]) -> None:
        held = _held_out_digits(values["held_out"])
        check_positive("learning_rate", values["learning_rate"])
        if values["epochs"] < 1:
            raise ValueError(f"epochs={values['epochs']} must be at least 1.")
        n_way = values["n_way"]
        held_test = mnist_dataset("mnist", train=False, classes=held)
        check_episode_settings(
            held_test, n_way, 1, n_query
        )  # N larger than the held-out digits -> one line
        train_digits = [d for d in range(10) if d not in held]
        mask = np.isin(mnist.train_labels, train_digits)
        images, labels = mnist.train_images[mask], mnist.train_labels[mask]
        pairs = siamese.make_pairs(labels, pairs_per_class, seed=seed)
        seed_everything(seed)
        twin = siamese.compile_siamese(
            siamese.build_siamese(image_shape=(28, 28)), values["learning_rate"]
        )
        losses = []

        def draw(epoch, logs):
            losses.append(logs["loss"])
            clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5, 2.6))
            ax.plot(range(1, len(losses) + 1), losses, "o-")
            ax.set(
                xlabel="epoch",
                ylabel="training loss",
                xlim=(0.5, values["epochs"] + 0.5),
                title=f"twin trained on digits {train_digits}",
            )
            ax.grid(alpha=0.3)
            panel.show(fig)

        progress = siamese.EpochProgress(values["epochs"], on_epoch=draw)
        siamese.train_siamese(
            twin, images, pairs, epochs=values["epochs"], callbacks=[progress], verbose=0
        )
        tests = sample_episodes(held_test, n_way, 1, n_query, episodes, seed=seed)
        twin_result = evaluate(siamese.SiameseOneShot(twin), tests, progress=False)
        pixel_result = evaluate(PixelNearestNeighbour("cosine"), tests, progress=False)
        print(
            f"{n_way}-way one-shot on held-out digits {held}: twin {twin_result} | pixel 1-NN {pixel_result} | chance {100 / n_way:.0f} %"
        )

    panel = Panel(
        "Siamese twin: train on some digits, test one-shot on the others",
        {
            "n_way": int_slider("N-way", min(n_way, len(held_out)), 1, 10),
            "held_out": w.Text(value=",".join(map(str, held_out)), description="held out"),
            "learning_rate": float_box("learning rate", learning_rate),
            "epochs": int_slider("epochs", epochs, 0, 20),
        },
        on_run,
        run_label="Train and test",
    )
    return panel


# ----------------------------------------------------------------------------- 06 Prototypical Networks


def protonet_training(
    train_dataset: FewShotDataset,
    test_dataset: FewShotDataset,
    device: torch.device,
    n_query: int = 5,
    val_episodes: int = 20,
    episodes: int = 100,
    seed: int = 0,
) -> Panel:
    """Notebook 06: train a fresh ProtoNet with the chosen settings, live.

    Sliders: training N, test N, K, episodes; boxes: learning rate; a distance menu. The run
    draws the smoothed training loss and the test accuracy (``val_episodes`` episodes of
    ``test_dataset``) as training proceeds. Impossible settings give one line, no traceback.
    Cosine runs use a scale of 10 (notebook 06, exercise 5).
    """

    def on_run(values: dict) -> None:
        protonet.check_panel_settings(values, train_dataset, test_dataset, n_query)
        torch.manual_seed(seed)
        encoder = Conv4().to(device)
        test_episodes = sample_episodes(
            test_dataset,
            values["test_n_way"],
            values["k_shot"],
            n_query,
            val_episodes,
            seed=seed + 1,
        )
        method = protonet.ProtoNet(encoder, values["distance"], cosine_scale=10.0)
        chance = 1 / values["test_n_way"]

        def draw(history: History) -> None:
            fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
            left.plot(history.episode, history.smoothed("loss", 10))
            left.set(
                xlabel="training episode",
                ylabel="loss (running mean)",
                title=f"{values['train_n_way']}-way {values['k_shot']}-shot training",
            )
            right.errorbar(
                history.val_episode,
                [100 * a for a in history.val_accuracy],
                yerr=[100 * c for c in history.val_ci95],
                marker="o",
                capsize=3,
            )
            right.axhline(100 * chance, color="k", linestyle="--", label="chance")
            right.set(
                xlabel="training episode", ylabel="test accuracy (%)", ylim=(0, 100),
                title=f"{values['test_n_way']}-way {values['k_shot']}-shot test, {values['distance']}",
            )  # fmt: skip
            right.legend(loc="lower right")
            for ax in (left, right):
                ax.grid(alpha=0.3)
            fig.tight_layout()
            clear_output(wait=True)
            panel.show(fig)

        history = train_episodic(
            method,
            DeviceEpisodeSampler(train_dataset, values["train_n_way"], values["k_shot"], n_query, device=device, seed=seed),
            values["episodes"], torch.optim.Adam(encoder.parameters(), lr=values["lr"]),
            val_episodes=test_episodes, val_every=max(1, values["episodes"] // 5),
            device=device, progress=False, seed=seed, on_validation=draw,
        )  # fmt: skip
        print(
            f"{len(history.episode)} episodes in {history.seconds:.1f} s; final test accuracy "
            f"{100 * history.val_accuracy[-1]:.1f} ± {100 * history.val_ci95[-1]:.1f} % (chance {100 * chance:.0f} %)"
        )

    controls = {
        "train_n_way": int_slider("train N", 20, 2, 100),
        "test_n_way": int_slider("test N", 5, 2, 50),
        "k_shot": int_slider("K (shots)", 1, 1, 20),
        "episodes": int_slider("episodes", episodes, 0, 2000, step=10),
        "lr": float_box("learning rate", 1e-3),
        "distance": w.Dropdown(
            options=list(protonet.DISTANCES), value="euclidean", description="distance"
        ),
    }
    panel = Panel("Train a Prototypical Network", controls, on_run, run_label="Train")
    return panel


# ----------------------------------------------------------------------------- 07 MAML


def _adapted_accuracy(model: torch.nn.Module, episode, inner_lr: float, steps: int) -> float:
    """Query accuracy of ``model`` after ``steps`` inner steps on ``episode``'s support set,
    the queries scored one of each class per batch, as the panel's training query sets are."""
    method = maml.MAMLClassifier(model, inner_lr, steps, query_group=1)
    method.process_support_set(episode.support_images, episode.support_labels)
    return float((method.predict(episode.query_images) == episode.query_labels).float().mean())


def maml_training(
    tasks: maml.SinusoidTasks | None = None,
    omniglot_train: FewShotDataset | None = None,
    omniglot_val: FewShotDataset | None = None,
    inner_lr: float = 0.01,
    outer_lr: float = 1e-3,
    k_shot: int = 10,
    n_way: int = 5,
    meta_steps: int = 300,
    meta_batch: int = 25,
    seed: int = 0,
) -> Panel:
    """Notebook 07: a short meta-training run of MAML, drawn live.

    On the left the meta-loss; on the right what adaptation does for a new task: for sinusoids
    (``tasks``, :class:`helpers.maml.SinusoidTasks` by default, ``meta_batch`` tasks per
    meta-step) the fit after 0, 1 and five times the chosen inner steps, each inner step of size
    alpha; for Omniglot (meta-batches of 4 episodes of ``omniglot_train``, by default the
    ``vinyals-train`` split, loaded at the first Omniglot run) the accuracy on 5 episodes of
    ``omniglot_val`` (``vinyals-val``) after 0 to steps + 1 steps.
    """
    tasks = tasks if tasks is not None else maml.SinusoidTasks()
    omniglot = {"train": omniglot_train, "val": omniglot_val}

    def split(name: str) -> FewShotDataset:
        if omniglot[name] is None:
            omniglot[name] = omniglot_dataset(f"vinyals-{name}")
        return omniglot[name]

    def on_run(v: dict[str, Any]) -> None:
        check_positive("alpha", v["alpha"])
        check_positive("beta", v["beta"])
        check_positive("meta-steps", v["meta-steps"])
        check_positive("inner steps", v["inner steps"])
        steps, k, n_steps = int(v["inner steps"]), int(v["K"]), int(v["meta-steps"])
        seed_everything(seed)
        generator = torch.Generator().manual_seed(seed)
        if v["task"] == "sinusoid":
            check_positive("K", k)
            net, loss = maml.sinusoid_net(), F.mse_loss

            def sample() -> maml.TaskBatch:
                return tasks.sample(meta_batch, k, k, generator)[0]
        else:
            sampler = EpisodeSampler(split("train"), int(v["N"]), k, 1, seed=seed)  # checks N and K
            net, loss = maml.maml_conv4(int(v["N"])), F.cross_entropy

            def sample() -> maml.TaskBatch:
                return maml.episodes_to_batch(sampler.take(4))

        learner = maml.MAML(net, v["alpha"], v["beta"], steps, v["first order"], loss)
        fig, (ax_loss, ax_task) = plt.subplots(1, 2, figsize=(10, 3.3))
        live = panel.live_plot(fig)
        losses, every = [], max(1, n_steps // 5)

        def draw(done: int) -> None:
            ax_loss.clear()
            ax_loss.plot(losses)
            ax_loss.set(xlabel="meta-step", ylabel="meta-loss", title=f"{done} meta-steps")
            ax_task.clear()
            if v["task"] == "sinusoid":
                shown = sorted({0, 1, max(steps, 1) * 5})
                plot_sinusoid_fits(
                    ax_task, learner.model, learner.params, tasks, task_seed=11, k=k, inner_lr=v["alpha"],
                    title=f"a new task, K={k}", steps_shown=shown,
                )  # fmt: skip
                ax_task.legend(fontsize=7, loc="lower left")
            else:
                eps = sample_episodes(split("val"), int(v["N"]), k, 5, 5, seed=seed)
                accs = [
                    np.mean([_adapted_accuracy(learner.model, e, v["alpha"], s) for e in eps])
                    for s in range(steps + 2)
                ]
                ax_task.plot(range(steps + 2), accs, "o-")
                ax_task.set(
                    xlabel="adaptation steps",
                    ylabel="accuracy",
                    ylim=(0, 1),
                    title="5 validation episodes",
                )
            fig.tight_layout()
            live.update()

        def callback(step: int, value: float) -> None:
            losses.append(value)
            if step % every == 0 or step == n_steps:
                draw(step)

        maml.train_maml(learner, sample, n_steps, desc="panel", callback=callback)

    panel = Panel(
        "Meta-train MAML",
        {
            "task": w.Dropdown(
                options=["sinusoid", "omniglot"], value="sinusoid", description="task"
            ),
            "alpha": float_box("alpha", inner_lr, 0.001),
            "beta": float_box("beta", outer_lr, 0.0001),
            "inner steps": int_slider("inner steps", 1, 0, 5),
            "N": int_slider("N (Omniglot)", n_way, 1, 30),
            "K": int_slider("K", k_shot, 1, 25),
            "meta-steps": int_slider("meta-steps", meta_steps, 0, 3000, 10),
            "first order": w.Checkbox(value=False, description="first order"),
        },
        on_run,
        run_label="Meta-train",
    )
    return panel


# ----------------------------------------------------------------------------- 08 MAML for RL


def maml_rl_adaptation(
    maml_policy: torch.nn.Module,
    pretrained_policy: torch.nn.Module,
    settings: RLSettings,
    device: torch.device | str = "cpu",
    inner_lr: float = 0.1,
    outer_lr: float = 0.01,
    steps: int = 3,
    meta_iterations: int = 0,
    goal: tuple[float, float] = (0.4, -0.3),
    meta_batch: int = 10,
    inner_steps: int = 1,
    seed: int = 0,
) -> Panel:
    """Notebook 08: adapt the MAML and the pretrained policy to a goal of your choice.

    A run optionally meta-trains a copy of ``maml_policy`` further (``meta-iters`` iterations of
    ``meta_batch`` goals with outer step size beta, a live curve), then adapts both policies to
    the goal with ``steps`` policy-gradient steps of size alpha, and draws the mean path after
    each step and the average return step by step. The checkpoints themselves never change.
    """

    def on_run(values: dict[str, Any]) -> None:
        alpha, beta = values["alpha"], values["beta"]
        check_positive("alpha", alpha)
        check_positive("beta", beta)
        goal_x, goal_y = values["goal x"], values["goal y"]
        for name, v in (("goal x", goal_x), ("goal y", goal_y)):
            if not -0.5 <= v <= 0.5:
                raise ValueError(
                    f"{name}={v} is outside the unit square the goals come from; pick a value in [-0.5, 0.5]."
                )
        policy = copy.deepcopy(maml_policy)
        if values["meta-iters"] > 0:
            fig, ax = plt.subplots(figsize=(5, 2.6))
            curve = panel.live_plot(fig)  # redraws in place inside the panel

            def live(i, history) -> None:
                ax.clear()
                ax.plot(
                    history.post_return, "C0o-", markersize=3, label="after 1 step"
                )  # a dot shows a single iteration
                ax.plot(history.pre_return, "C0o--", markersize=3, label="before")
                ax.set(xlabel="extra meta-iteration", ylabel="return")
                ax.legend(fontsize=8)
                curve.update()

            meta_train(
                policy,
                values["meta-iters"],
                meta_batch,
                alpha,
                beta,
                inner_steps,
                settings,
                seed=seed + 99,
                callback=live,
            )
        target = torch.tensor([[goal_x, goal_y]], device=device)
        steps = values["steps"]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.9))
        for ax, (name, start) in zip(
            axes[:2], [("MAML", policy), ("pretrained", pretrained_policy)]
        ):
            result = adaptation_returns(start, target, alpha, steps, settings, seed=seed)
            shades = plt.cm.viridis(np.linspace(0, 0.9, steps + 1))
            for s in range(steps + 1):
                path = (
                    rollout(
                        start,
                        result.params[s],
                        target,
                        1,
                        settings.horizon,
                        settings.reward,
                        deterministic=True,
                    )
                    .positions[0, 0]
                    .cpu()
                    .numpy()
                )
                ax.plot(*path.T, color=shades[s], lw=1.8, label=f"{s} step{'s' if s != 1 else ''}")
            ax.plot(goal_x, goal_y, "r*", markersize=15, markeredgecolor="k")
            ax.plot(0, 0, "ko", markersize=4)
            ax.add_patch(
                plt.Rectangle((-0.5, -0.5), 1, 1, fill=False, ls="--", color="gray", lw=0.8)
            )
            ax.set(
                xlim=(-0.65, 0.65),
                ylim=(-0.65, 0.65),
                aspect="equal",
                title=f"{name}: mean paths",
                xlabel="x position",
                ylabel="y position",
            )
            ax.legend(fontsize=7, loc="lower left")
            axes[2].plot(range(steps + 1), result.returns[:, 0].tolist(), "o-", label=name)
        axes[2].set(
            xlabel="steps",
            ylabel="average return",
            xticks=range(steps + 1),
            title=f"goal ({goal_x:.2f}, {goal_y:.2f}), alpha={alpha}",
        )
        axes[2].grid(alpha=0.3)
        axes[2].legend()
        fig.tight_layout()
        panel.show(fig)

    panel = Panel(
        "MAML-RL: adapt to your goal",
        {
            "alpha": float_box("alpha", inner_lr, step=0.01),
            "beta": float_box("beta", outer_lr, step=0.001),
            "steps": int_slider("steps", steps, 0, 5),
            "meta-iters": int_slider("meta-iters", meta_iterations, 0, 30),
            "goal x": float_box("goal x", goal[0], step=0.05),
            "goal y": float_box("goal y", goal[1], step=0.05),
        },
        on_run,
        run_label="Adapt",
    )
    return panel


# ----------------------------------------------------------------------------- 09 side by side


def fast_methods(
    dataset: FewShotDataset,
    embeddings: Mapping[str, torch.Tensor],
    matching_models: Mapping[str, matching.MatchingNetwork],
    cosine: Sequence[str] = ("classifier + cosine",),
    n_way: int = 10,
    k_shot: int = 1,
    episodes: int = 200,
    n_query: int = 5,
    seed: int = 0,
) -> Panel:
    """Notebook 09: every method that works from a table of embeddings, on fresh episodes of your shape.

    ``embeddings[name]`` ``(n_images, dim)`` embeds every image of ``dataset`` once. A name in
    ``matching_models`` is scored by that Matching Network, a name in ``cosine`` by cosine
    similarity to the class means (the pretrained classifier), every other name by Euclidean
    distance to the class means (a ProtoNet). The bars follow the families of the notebook's
    first table: pixels, then the cosine rows, the Matching Networks, the ProtoNets.
    """

    def on_run(values: dict[str, Any]) -> None:
        n_way, k_shot, count = values["N"], values["K"], values["episodes"]
        tests = sbs.light_episodes(
            dataset, n_way, k_shot, n_query, count, seed=seed + 99
        )  # refuses impossible settings
        scores = {
            "pixels": sbs.evaluate_on_pixels(
                PixelNearestNeighbour("cosine"), dataset, tests, progress=False
            )
        }
        for name in cosine:
            scores[name] = protonet.evaluate_from_embeddings(
                embeddings[name], tests, "cosine", progress=False
            )
        for name, model in matching_models.items():
            scores[name] = matching.evaluate_embedded(
                model, embeddings[name], tests, progress=False
            )
        for name in embeddings:
            if name not in scores:
                scores[name] = protonet.evaluate_from_embeddings(
                    embeddings[name], tests, progress=False
                )
        fig, ax = plt.subplots(figsize=(8, 3.2))
        names = list(scores)
        ax.barh(
            names,
            [100 * r.mean for r in scores.values()],
            xerr=[100 * r.ci95 for r in scores.values()],
            capsize=3,
            color="tab:blue",
        )
        ax.axvline(100 / n_way, color="k", ls="--", lw=1, label=f"chance ({100 / n_way:.0f} %)")
        ax.set(
            xlim=(0, 100),
            xlabel="accuracy (%)",
            title=f"{n_way}-way {k_shot}-shot, {count} episodes, {n_query} queries per class",
        )
        ax.legend(fontsize=8, loc="lower right")
        ax.invert_yaxis()
        fig.tight_layout()
        panel.show(fig)

    panel = Panel(
        "Every fast method on episodes of your choice",
        {
            "N": int_slider("N", n_way, 2, 100),
            "K": int_slider("K", k_shot, 1, 20),
            "episodes": int_slider("episodes", episodes, 0, 1000, step=10),
        },
        on_run,
        run_label="Evaluate",
    )
    return panel
