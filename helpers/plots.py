"""Plots shared by the notebooks: episodes as image grids, accuracy curves with chance level, sinusoid fits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from .episodes import Episode

if TYPE_CHECKING:
    from .maml import SinusoidTasks

SUPPORT_COLOUR, QUERY_COLOUR = "#1f77b4", "#ff7f0e"
RIGHT_COLOUR, WRONG_COLOUR = "#2ca02c", "#d62728"


def show_episode(
    episode: Episode, max_query: int = 5, title: str | None = None, predictions=None
) -> plt.Figure:
    """Draw an episode: one row per class, support images (blue frame) then queries (orange).

    Row ``i`` is the class the episode calls label ``i``; its name is on the left. With
    ``predictions`` (one label per query), each query is framed green when right and red when
    wrong, and a wrong one shows the label it was given.
    """
    k, q = episode.k_shot, min(episode.n_query, max_query)
    n = episode.n_way
    support = (
        episode.support_images.squeeze(1)
        .cpu()
        .numpy()
        .reshape(n, k, *episode.support_images.shape[-2:])
    )
    query = (
        episode.query_images.squeeze(1)
        .cpu()
        .numpy()
        .reshape(n, episode.n_query, *episode.query_images.shape[-2:])
    )
    columns = k + q
    fig, axes = plt.subplots(
        n, columns, figsize=(0.9 * columns + 1.6, 0.9 * n + 0.6), squeeze=False
    )
    for row in range(n):
        for col in range(columns):
            ax = axes[row, col]
            image = support[row, col] if col < k else query[row, col - k]
            ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            colour = SUPPORT_COLOUR if col < k else QUERY_COLOUR
            if predictions is not None and col >= k:
                guess = int(predictions[row * episode.n_query + col - k])
                colour = RIGHT_COLOUR if guess == row else WRONG_COLOUR
                if guess != row:
                    ax.set_title(f"→{guess}", color=WRONG_COLOUR, fontsize=7, pad=1)
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(2.5)
        label = episode.class_names[row].replace("_", " ")
        axes[row, 0].set_ylabel(
            f"{row}: {label}" if len(label) < 28 else f"{row}: …{label[-26:]}",
            rotation=0,
            ha="right",
            va="center",
            fontsize=7,
        )
    axes[0, 0].set_title("support", color=SUPPORT_COLOUR, fontsize=9, loc="left")
    if q and predictions is None:
        axes[0, k].set_title("queries", color=QUERY_COLOUR, fontsize=9, loc="left")
    fig.suptitle(
        title or f"{n}-way {k}-shot episode ({episode.n_query} queries per class)", fontsize=10
    )
    fig.tight_layout()
    return fig


def plot_sinusoid_fits(
    ax: plt.Axes,
    model,
    params,
    tasks: SinusoidTasks,
    task_seed: int,
    k: int,
    inner_lr: float,
    title: str,
    steps_shown: Sequence[int] = (0, 1, 10),
) -> plt.Axes:
    """One new sinusoid task (drawn with ``task_seed``): the true function, ``k`` points, and the fits.

    The fits are ``model`` with weights ``params`` after each number of inner steps in
    ``steps_shown`` (at most three) of size ``inner_lr`` on the ``k`` points, on a grid over [-5, 5].
    """
    import torch

    from .maml import adapt_predictions

    generator = torch.Generator().manual_seed(task_seed)
    amplitude, phase = tasks.sample_functions(1, generator)
    xs = tasks.sample_x(1, k, generator)
    ys = tasks.evaluate(amplitude, phase, xs)
    grid = torch.linspace(-5, 5, 200).view(1, -1, 1)
    fits = adapt_predictions(model, params, xs[0], ys[0], grid[0], inner_lr, steps_shown)
    x = grid[0, :, 0].numpy()
    ax.plot(
        x,
        tasks.evaluate(amplitude, phase, grid)[0, :, 0].numpy(),
        "k-",
        lw=2,
        label="true function",
    )
    for steps, colour in zip(steps_shown, ("tab:gray", "tab:green", "tab:red")):
        ax.plot(
            x,
            fits[steps][:, 0].cpu().numpy(),
            "--",
            color=colour,
            label=f"after {steps} step{'s' if steps != 1 else ''}",
        )
    ax.plot(
        xs[0, :, 0].numpy(),
        ys[0, :, 0].numpy(),
        "^",
        color="tab:purple",
        ms=8,
        label=f"{k} points used",
    )
    ax.set(title=title, xlim=(-5, 5), ylim=(-6, 6), xlabel="x")
    return ax


def plot_accuracy_vs_ways(
    results: Mapping[int, Mapping[int, tuple[float, float]]],
    ax: plt.Axes | None = None,
    paper: Mapping[tuple[int, int], float] | None = None,
    title: str = "",
) -> plt.Axes:
    """Accuracy (with 95 % CI bars) against the number of ways, one line per shot, chance dashed.

    ``results[k_shot][n_way] = (mean, ci95)`` as fractions; ``paper[(n_way, k_shot)]`` adds a
    marker for a published number.
    """
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    all_ways: set[int] = set()
    for k_shot, by_way in sorted(results.items()):
        ways = sorted(by_way)
        all_ways.update(ways)
        means = [100 * by_way[n][0] for n in ways]
        cis = [100 * by_way[n][1] for n in ways]
        line = ax.errorbar(ways, means, yerr=cis, marker="o", capsize=3, label=f"{k_shot}-shot")
        for (n_way, shot), value in (paper or {}).items():
            if shot == k_shot:
                ax.plot(
                    n_way,
                    value,
                    marker="*",
                    markersize=11,
                    color=line[0].get_color(),
                    linestyle="none",
                )
    ways = np.array(sorted(all_ways))
    dense = np.linspace(ways.min(), ways.max(), 200)
    ax.plot(dense, 100 / dense, "k--", label="chance (1/N)")
    if paper:
        ax.plot([], [], "k*", markersize=10, linestyle="none", label="paper")
    ax.set(xlabel="N (ways)", ylabel="accuracy on query images (%)", ylim=(0, 100), title=title)
    ax.set_xticks(ways)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
