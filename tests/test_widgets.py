"""helpers.widgets: what a panel does when its controls change, driven as a notebook would drive it.

Callbacks are driven by setting ``.value`` on the controls and calling ``.run()`` or clicking the
button; no browser is needed (tests/test_browser.py looks at the same panels in Chromium).
"""

from __future__ import annotations

import io

import ipywidgets as w
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from helpers import widgets  # noqa: E402


def _panel(auto: bool = False, limit: int = 5):
    """A panel over one slider ``n`` whose run refuses ``n > limit``; ``calls`` records each run."""
    calls: list[int] = []

    def on_run(values):
        calls.append(values["n"])
        if values["n"] > limit:
            raise ValueError(f"n={values['n']} must be at most {limit}.")
        print("drew", values["n"])

    controls = {
        "n": widgets.int_slider("n", 2, 0, 10),
        "lr": widgets.float_box("learning rate", 0.1),
    }
    return widgets.Panel("test", controls, on_run, auto=auto), calls


# --------------------------------------------------------------------------- runs and refusals


def test_button_click_runs_with_the_current_values():
    panel, calls = _panel()
    panel.controls["n"].value = 4
    panel.button.click()
    assert calls == [4] and panel.last_error == "" and panel.message.value == ""
    assert not panel.button.disabled


def test_refusal_is_one_line_and_clears_the_previous_output(monkeypatch):
    cleared: list[bool] = []
    monkeypatch.setattr(widgets, "clear_output", lambda wait=False: cleared.append(wait))
    panel, _ = _panel()
    assert panel.run() is True
    assert cleared == [True]  # a good run replaces the old output when it draws the new one
    panel.controls["n"].value = 9
    assert panel.run() is False
    # A refusal draws nothing, so wait=True would never clear: the old plot must go at once.
    assert cleared == [True, True, False]
    assert panel.last_error == "n=9 must be at most 5."
    assert "⚠" in panel.message.value and "n=9 must be at most 5." in panel.message.value
    panel.controls["n"].value = 3
    assert panel.run() is True and panel.last_error == "" and panel.message.value == ""
    assert cleared == [True, True, False, True]


def test_auto_panel_runs_when_a_control_changes():
    panel, calls = _panel(auto=True)
    panel.controls["n"].value = 3
    panel.controls["n"].value = 7
    assert calls == [3, 7] and panel.last_error == "n=7 must be at most 5."


# --------------------------------------------------------------------------- try_values


def test_try_values_returns_each_refusal_and_ends_clean_with_the_own_values():
    panel, calls = _panel()
    panel.controls["n"].value = 4
    messages = panel.try_values({"n": 9}, {"n": 7, "lr": -1.0})
    assert messages == ["n=9 must be at most 5.", "n=7 must be at most 5."]
    assert panel.values() == {"n": 4, "lr": 0.1}  # every control put back
    assert calls == [9, 7, 4]  # each try once, then one run with the panel's own values
    assert panel.last_error == "" and panel.message.value == ""


def test_try_values_gives_an_empty_message_for_a_try_that_runs():
    panel, calls = _panel()
    assert panel.try_values({"n": 1}) == [""]
    assert calls == [1, 2] and panel.controls["n"].value == 2


def test_try_values_does_not_let_an_auto_panel_run_on_every_change():
    panel, calls = _panel(auto=True)
    assert panel.try_values({"n": 8}) == ["n=8 must be at most 5."]
    assert calls == [8, 2]  # not also on setting 8 and on putting 2 back
    panel.controls["n"].value = 3  # and the panel runs on changes again afterwards
    assert calls == [8, 2, 3]


def test_try_values_refuses_an_unknown_control_before_changing_anything():
    panel, calls = _panel()
    with pytest.raises(KeyError, match="no control"):
        panel.try_values({"n": 9}, {"steps": 3})
    assert calls == [] and panel.controls["n"].value == 2


def test_try_values_says_when_the_panel_refuses_its_own_values():
    panel, _ = _panel(limit=1)  # its own n = 2 is refused
    with pytest.raises(RuntimeError, match="refused its own settings"):
        panel.try_values({"n": 9})
    assert panel.controls["n"].value == 2


def test_try_values_puts_controls_back_even_when_a_try_raises_something_else():
    def on_run(values):
        if values["n"] == 0:
            raise ZeroDivisionError("not a settings error")

    panel = widgets.Panel("t", {"n": widgets.int_slider("n", 2, 0, 10)}, on_run)
    with pytest.raises(ZeroDivisionError):
        panel.try_values({"n": 0})
    assert panel.controls["n"].value == 2 and not panel.button.disabled


# --------------------------------------------------------------------------- labels and layout


def test_every_label_gets_the_width_it_needs():
    controls = {
        "made by helpers": widgets.int_slider("images/class", 100, 0, 500),
        "a box": widgets.float_box("learning rate", 0.01),
        "made in a notebook": w.Dropdown(
            options=["a rather long option name", "b"], description="class view"
        ),
        "text": w.Text(value="5,6", description="held out"),
    }
    panel = widgets.Panel("t", controls, lambda values: None)
    for control in panel.controls.values():
        assert control.style.description_width == "initial"
    # The longest option of a menu shows whole.
    assert controls["made in a notebook"].layout.width == "max-content"
    row = panel.widget.children[1]
    assert list(row.children) == list(controls.values()) and row.layout.flex_flow == "row wrap"


def test_slider_and_box_made_alone_fit_their_labels_too():
    assert widgets.int_slider("meta-steps", 5, 0, 3000, 10).style.description_width == "initial"
    assert widgets.float_box("learning rate", 0.1).style.description_width == "initial"


def test_panel_parts_carry_names_for_the_browser_test():
    panel, _ = _panel()
    assert "metalearn-panel" in panel.widget._dom_classes
    assert "metalearn-panel-button" in panel.button._dom_classes
    assert "metalearn-panel-message" in panel.message._dom_classes
    assert "metalearn-panel-output" in panel.output._dom_classes


def test_a_panel_shows_as_the_widget_in_jupyter_and_as_plain_text_elsewhere():
    panel, _ = _panel()
    bundle = panel._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
    # not the widget's repr, VBox(children=(HTML(value='<b>test</b>'), ...: no markup shown as text
    assert (
        bundle["text/plain"]
        == "[interactive panel: test] n = 2, lr = 0.1. Its controls work in a running notebook."
    )
    panel.controls["n"].value = 7
    panel.run()
    assert panel._repr_mimebundle_()["text/plain"].endswith(
        "Last run refused: n=7 must be at most 5."
    )
    assert "<" not in panel._repr_mimebundle_()["text/plain"]


# --------------------------------------------------------------------------- LivePlot


def _png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_live_plot_redraws_through_the_image_widget_state():
    fig, ax = plt.subplots(figsize=(3, 2))
    live = widgets.LivePlot(fig)
    assert fig.number not in plt.get_fignums()  # closed in pyplot: shown only through the image
    assert isinstance(live.image, w.Image) and live.image.format == "png"
    empty = _png(live.image.value)
    changes: list[bytes] = []
    live.image.observe(lambda change: changes.append(change["new"]), names="value")
    ax.plot([0, 1, 2], [0, 2, 1], color="tab:red", lw=3)
    live.update()
    assert len(changes) == 1  # one widget state update: what an Output area passes on
    drawn = _png(live.image.value)
    red = (drawn[..., 0] > 150) & (drawn[..., 1] < 100) & (drawn[..., 2] < 100)
    assert red.sum() > 50 and not ((empty[..., 0] > 150) & (empty[..., 1] < 100)).any()


def test_live_plot_displays_its_image(monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "display", lambda obj: shown.append(obj))
    fig, _ = plt.subplots()
    live = widgets.LivePlot(fig)
    live._ipython_display_()
    assert shown == [live.image]


# --------------------------------------------------------------------------- figures a run shows


def test_a_run_keeps_the_figures_it_showed_and_a_refusal_keeps_none(monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "display", lambda obj: shown.append(obj))

    def on_run(values):
        if values["n"] > 5:
            raise ValueError(f"n={values['n']} must be at most 5.")
        for _ in range(values["n"]):
            fig, ax = plt.subplots()
            ax.set_title(f"n={values['n']}")
            panel.show(fig)

    panel = widgets.Panel("t", {"n": widgets.int_slider("n", 2, 0, 10)}, on_run)
    assert panel.run() and len(panel.figures) == 2 and shown == panel.figures
    assert not set(plt.get_fignums()) & {
        f.number for f in panel.figures
    }  # closed in pyplot once shown
    panel.controls["n"].value = 1
    assert panel.run() and [f.axes[0].get_title() for f in panel.figures] == [
        "n=1"
    ]  # only this run's
    panel.controls["n"].value = 9
    assert not panel.run() and panel.figures == []  # its output is cleared too


def test_live_plot_of_a_panel_is_displayed_and_kept(monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "display", lambda obj: shown.append(obj))
    fig, _ = plt.subplots()
    panel, _ = _panel()
    live = panel.live_plot(fig)
    assert isinstance(live, widgets.LivePlot) and live.figure is fig
    assert shown == [live] and panel.figures == [fig]
