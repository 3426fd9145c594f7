"""The building blocks of the interactive panels: sliders, a run button, a one-line message and a live output area.

Every notebook's panel is a :class:`Panel`, made by a function of :mod:`helpers.panels`. Bad
settings raise ``ValueError`` (episode settings raise :class:`helpers.episodes.EpisodeError`, a
``ValueError``) somewhere in the helpers; the panel turns that into one line of text instead of
a traceback. A figure that is redrawn while a panel runs (a training curve) is a
:class:`LivePlot`. A panel may also declare its controls' constraints
(``constraints={"lr": validation.Positive(0.001)}``, the rules of :mod:`helpers.validation`),
checked before it runs. Nothing here knows a method: ``panels`` imports this module and the methods,
never the reverse.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as w
from IPython.display import clear_output, display

from . import validation
from .datasets import DatasetError


class Panel:
    """A titled group of controls that calls ``on_run(values)`` and shows what it draws.

    ``controls`` maps a parameter name to a widget with a ``.value``; ``on_run`` receives
    ``{name: value}`` and draws into the panel's output area. With ``auto=True`` the panel
    also runs whenever a control changes (for cheap actions such as drawing an episode).
    ``constraints`` maps control names to :class:`helpers.validation.Constraint` objects: those
    values are checked (a message names the control by its label) before ``on_run`` sees them.
    Display the panel before running it, so that progress bars and live plots are seen while
    they change. ``on_run`` shows its figures with :meth:`show` or :meth:`live_plot`, which keep
    them in :attr:`figures` for tests and readers to look at.
    """

    def __init__(
        self,
        title: str,
        controls: Mapping[str, w.ValueWidget],
        on_run: Callable[[dict[str, Any]], None],
        run_label: str = "Run",
        auto: bool = False,
        constraints: Mapping[str, validation.Constraint] | None = None,
    ) -> None:
        self.controls = dict(controls)
        self.on_run = on_run
        unknown = sorted(set(constraints or {}) - set(self.controls))
        if unknown:
            raise KeyError(
                f"constraints name {unknown}, which are not controls; the controls are {list(self.controls)}"
            )
        self.constraints = dict(constraints or {})
        self.title = title
        #: The one-line refusal of the last run, or "" when it ran.
        self.last_error = ""
        #: The matplotlib figures the last run showed, in order (empty after a refusal).
        self.figures: list[Any] = []
        self._holding = False  # True while try_values sets controls: no automatic runs then
        self.button = w.Button(description=run_label, button_style="primary", icon="play")
        self.message = w.HTML()
        self.output = w.Output()
        self.button.on_click(lambda _: self.run())
        if auto:
            for control in self.controls.values():
                control.observe(self._run_on_change, names="value")
        for control in self.controls.values():
            fit_label(control)
            if control.layout.margin is None:
                control.layout.margin = (
                    "2px 18px 2px 2px"  # space between a control and the next label
                )
        # The controls wrap onto further lines instead of being squeezed or cut at the right edge.
        controls_row = w.HBox(list(self.controls.values()), layout=w.Layout(flex_flow="row wrap"))
        run_row = w.HBox([self.button, self.message], layout=w.Layout(align_items="center"))
        self.widget = w.VBox(
            [w.HTML(f"<b>{html.escape(title)}</b>"), controls_row, run_row, self.output]
        )
        # Names for the parts, so that a browser test (tests/test_browser.py) can find them.
        self.widget.add_class("metalearn-panel")
        self.button.add_class("metalearn-panel-button")
        self.message.add_class("metalearn-panel-message")
        self.output.add_class("metalearn-panel-output")

    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

    def checked_values(self) -> dict[str, Any]:
        """:meth:`values` after the declared ``constraints`` (``ValueError``: one sentence)."""
        labels = {
            name: getattr(control, "description", "") or name
            for name, control in self.controls.items()
        }
        return validation.check_all(self.values(), self.constraints, labels)

    def run(self) -> bool:
        """Run once with the current values; return False (and say why) on bad settings."""
        self.message.value = ""
        self.last_error = ""
        self.figures = []
        self.button.disabled = True
        error: Exception | None = None
        try:
            with self.output:
                clear_output(wait=True)
                # Caught inside the Output context on purpose: in a Jupyter kernel,
                # Output.__exit__ swallows exceptions and prints a traceback instead.
                try:
                    self.on_run(self.checked_values())
                except (ValueError, DatasetError) as exc:
                    error = exc
                if error is not None:
                    # clear_output(wait=True) clears only once something new is drawn; a refusal
                    # draws nothing, and the last good plot must not stand under its message.
                    clear_output()
            if error is None:
                return True
            self.last_error = str(error)
            self.message.value = (
                f"<span style='color:#b00020'>⚠ {html.escape(self.last_error)}</span>"
            )
            return False
        finally:
            self.button.disabled = False

    def show(self, figure: Any) -> None:
        """Show ``figure`` in the output area (call it inside ``on_run``) and keep it in :attr:`figures`.

        The figure is closed in pyplot afterwards, so that the inline backend does not show it
        a second time when the cell ends.
        """
        import matplotlib.pyplot as plt

        self.figures.append(figure)
        display(figure)
        plt.close(figure)

    def live_plot(self, figure: Any) -> LivePlot:
        """Show ``figure`` as a :class:`LivePlot` (redrawn by its ``update()``) and keep it in :attr:`figures`."""
        live = LivePlot(figure)
        self.figures.append(figure)
        display(live)
        return live

    def try_values(self, *tries: Mapping[str, Any]) -> list[str]:
        """Run with each mapping of values in turn, then with the panel's own values again.

        Each try sets its controls (``{"K": 18}``), runs, and puts the controls back. Returns the
        one-line refusal of each try ("" for a try that ran). The final run leaves the panel as a
        reader expects it: clean, with the plot of its own settings. A notebook's self-check
        cell shows the refusals with it. Raises ``KeyError`` for a name that is not a control and
        ``RuntimeError`` if the panel's own values are refused.
        """
        own = self.values()
        for values in tries:
            unknown = sorted(set(values) - set(self.controls))
            if unknown:
                raise KeyError(
                    f"the panel has no control {unknown}; its controls are {list(self.controls)}"
                )
        messages = []
        self._holding = True
        try:
            for values in tries:
                try:
                    for name, value in values.items():
                        self.controls[name].value = value
                    self.run()
                    messages.append(self.last_error)
                finally:
                    for name in values:
                        self.controls[name].value = own[name]
        finally:
            self._holding = False
        if not self.run():
            raise RuntimeError(
                f"the panel refused its own settings after the tries: {self.last_error}"
            )
        return messages

    def _run_on_change(self, _change: Any) -> None:
        if not self._holding:
            self.run()

    def summary(self) -> str:
        """The panel as one line of plain text: its title, its settings and the last refusal.

        This is what a reader sees where widgets cannot be drawn (a static render, a viewer
        without the widget manager) instead of the widget's own ``repr``, which spells out the
        nested HTML widgets with their markup.
        """
        settings = ", ".join(f"{name} = {control.value}" for name, control in self.controls.items())
        text = f"[interactive panel: {self.title}] {settings}. Its controls work in a running notebook."
        return text + (f" Last run refused: {self.last_error}" if self.last_error else "")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        # the widget itself for Jupyter (the widget view), readable text for everything else
        bundle = dict(self.widget._repr_mimebundle_() or {})
        bundle["text/plain"] = self.summary()
        return bundle


class LivePlot:
    """A matplotlib figure that redraws in place inside a panel, e.g. a curve during training.

    ``display(fig, display_id=True)`` and ``handle.update(fig)`` do not work in a panel: its
    ``ipywidgets.Output`` area keeps displayed outputs but drops display *updates*, so such a
    plot stays as first drawn (blank). A LivePlot renders the figure to PNG and puts the bytes
    into an ``ipywidgets.Image``: a widget state update, which every view of the image receives.

    ``live = LivePlot(fig)``, ``display(live)``, then after drawing on ``fig``: ``live.update()``.
    The figure is closed in pyplot, so that ``plt.show()`` or the inline backend do not show it
    a second time.
    """

    def __init__(self, figure: Any) -> None:
        import matplotlib.pyplot as plt

        self.figure = figure
        plt.close(figure)
        self.image = w.Image(format="png")
        self.image.add_class("metalearn-live-plot")
        self.update()

    def update(self) -> None:
        """Draw the figure as it is now into the image."""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", bbox_inches="tight")
        self.image.value = buffer.getvalue()

    def _ipython_display_(self) -> None:
        display(self.image)


def fit_label(control: w.Widget) -> w.Widget:
    """Give a control's description the width its text needs, and return the control.

    ipywidgets gives every description the same fixed width and cuts longer ones ("images/cl...").
    """
    style = getattr(control, "style", None)
    if style is not None and hasattr(style, "description_width"):
        style.description_width = "initial"
    if isinstance(control, w.Dropdown) and control.layout.width is None:
        control.layout.width = "max-content"  # show the longest option whole
    return control


def int_slider(name: str, value: int, low: int, high: int, step: int = 1) -> w.IntSlider:
    """A labelled integer slider whose range deliberately allows impossible values to be tried."""
    return fit_label(
        w.IntSlider(
            value=value, min=low, max=high, step=step, description=name, continuous_update=False
        )
    )


def float_box(name: str, value: float, step: float = 0.001) -> w.FloatText:
    """A labelled number box (learning rates: any value, including bad ones, can be typed)."""
    return fit_label(w.FloatText(value=value, step=step, description=name))


def checkbox(name: str, value: bool) -> w.Checkbox:
    """A labelled on/off switch."""
    return w.Checkbox(value=bool(value), description=name, indent=False)


def check_positive(name: str, value: float, example: float | None = None) -> float:
    """``value`` if it is > 0; else ``ValueError`` (one sentence) naming ``name``.

    A whole number (an ``int_slider``'s value: steps, episodes, shots) is a count and must be a
    whole number >= 1; any other value (a ``float_box``: a learning rate, a scale) must be a
    positive finite number, ``example`` being suggested in the message. The rules are
    :func:`helpers.validation.whole_number` and :func:`helpers.validation.positive_number`.
    """
    if validation.is_whole(value):
        return validation.whole_number(name, value, 1)
    return validation.positive_number(name, value, example)
