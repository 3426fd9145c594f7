"""Interactive panels: sliders, a run button, a one-line message and a live output area.

Every notebook's panel is a :class:`Panel`. Bad settings raise ``ValueError`` (episode
settings raise :class:`helpers.episodes.EpisodeError`, a ``ValueError``) somewhere in the
helpers; the panel turns that into one line of text instead of a traceback.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w
from IPython.display import clear_output, display

from .datasets import DatasetError
from .episodes import EpisodeSampler, FewShotDataset
from .fewshot import FewShotMethod, evaluate


class Panel:
    """A titled group of controls that calls ``on_run(values)`` and shows what it draws.

    ``controls`` maps a parameter name to a widget with a ``.value``; ``on_run`` receives
    ``{name: value}`` and draws into the panel's output area. With ``auto=True`` the panel
    also runs whenever a control changes (for cheap actions such as drawing an episode).
    """

    def __init__(
        self,
        title: str,
        controls: Mapping[str, w.ValueWidget],
        on_run: Callable[[dict[str, Any]], None],
        run_label: str = "Run",
        auto: bool = False,
    ) -> None:
        self.controls = dict(controls)
        self.on_run = on_run
        self.button = w.Button(description=run_label, button_style="primary", icon="play")
        self.message = w.HTML()
        self.output = w.Output()
        self.button.on_click(lambda _: self.run())
        if auto:
            for control in self.controls.values():
                control.observe(lambda _: self.run(), names="value")
        self.widget = w.VBox(
            [w.HTML(f"<b>{html.escape(title)}</b>"), w.HBox(list(self.controls.values())[:4]), *_rows(list(self.controls.values())[4:]), w.HBox([self.button, self.message]), self.output]
        )

    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

    def run(self) -> bool:
        """Run once with the current values; return False (and say why) on bad settings."""
        self.message.value = ""
        self.button.disabled = True
        error: Exception | None = None
        try:
            with self.output:
                clear_output(wait=True)
                # Caught inside the Output context on purpose: in a Jupyter kernel,
                # Output.__exit__ swallows exceptions and prints a traceback instead.
                try:
                    self.on_run(self.values())
                except (ValueError, DatasetError) as exc:
                    error = exc
            if error is None:
                return True
            self.message.value = f"<span style='color:#b00020'>⚠ {html.escape(str(error))}</span>"
            return False
        finally:
            self.button.disabled = False

    def _ipython_display_(self) -> None:
        display(self.widget)


def _rows(controls: list[w.Widget], per_row: int = 4) -> list[w.HBox]:
    return [w.HBox(controls[i : i + per_row]) for i in range(0, len(controls), per_row)]


def int_slider(name: str, value: int, low: int, high: int, step: int = 1) -> w.IntSlider:
    """A labelled integer slider whose range deliberately allows impossible values to be tried."""
    return w.IntSlider(value=value, min=low, max=high, step=step, description=name, continuous_update=False)


def float_box(name: str, value: float, step: float = 0.001) -> w.FloatText:
    """A labelled number box (learning rates: any value, including bad ones, can be typed)."""
    return w.FloatText(value=value, step=step, description=name)


def checkbox(name: str, value: bool) -> w.Checkbox:
    """A labelled on/off switch."""
    return w.Checkbox(value=bool(value), description=name, indent=False)


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` > 0 (learning rates, step counts)."""
    if not value > 0:
        raise ValueError(f"{name}={value} must be positive; try a small positive number such as 0.001.")


def episode_panel(
    datasets: Mapping[str, FewShotDataset],
    method: FewShotMethod | None = None,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 3,
    n_eval: int = 100,
) -> Panel:
    """Draw a fresh episode from the chosen dataset; with ``method``, classify its queries.

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
        import matplotlib.pyplot as plt

        from .plots import show_episode

        clicks["count"] += 1
        sampler = EpisodeSampler(datasets[values["dataset"]], values["n_way"], values["k_shot"], values["n_query"], seed=clicks["count"])
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
        show_episode(episode, max_query=min(values["n_query"], 5), predictions=predictions)
        plt.show()

    return Panel("Episodes: pick N, K and the number of queries", controls, draw, run_label="Resample", auto=True)
