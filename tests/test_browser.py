"""Every notebook in a real browser: JupyterLab + Chromium, Run All, then one turn of its panel.

What a student sees is checked where the student sees it. For each ``notebooks/NN_*.ipynb`` the
test serves a copy with ``QUICK = True`` from this checkout's JupyterLab, opens it in Debian's
Chromium (driven by Playwright, headless), runs all cells from the menu and waits until no cell
is running. Then it asserts that no output is a traceback, an error, a TensorFlow log line or
"Error displaying widget", and that the panel (a :class:`helpers.widgets.Panel`) ends Run All in
a clean state with every label readable. Finally it moves one slider of the panel, presses the
panel's button, waits for the kernel and asserts that the panel's plot changed and is not blank.

Screenshots of each panel land in ``build/browser/`` (``<stem>-run-all.png`` after Run All,
``<stem>.png`` after the slider); the Run All and slider round-trip times are printed per
notebook and written to ``build/browser/timings.json``.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and Playwright for Python; without
them the test is skipped, unless ``METALEARN_REQUIRE_BROWSER=1`` (CI) makes that a failure.
Deselect it with ``-m "not browser"``.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "build" / "browser"

SERVER_START_TIMEOUT = 120  # seconds until JupyterLab answers
KERNEL_START_TIMEOUT = 180  # seconds until a fresh kernel is idle
RUN_ALL_TIMEOUT = 900  # seconds for Run All of one QUICK notebook on a busy 2-core machine
PANEL_RUN_TIMEOUT = 300  # seconds for one press of a panel's button

#: Settings a test user starts with: no news pop-up, no "would you like to receive news" prompt.
SETTINGS_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}

#: Output types that must never appear after Run All.
ERROR_SELECTOR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
STDERR_SELECTOR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
EXCEPTION_LINE = re.compile(r"^\s*\w*(Error|Exception)\b", re.MULTILINE)
#: Log lines that belong in a terminal, not in a notebook (absl's C++ format and TensorFlow's).
LOG_LINE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d|tensorflow|oneDNN|absl|cuda", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True)
class Interaction:
    """Which slider of a notebook's panel to move (by its label), and with which key."""

    slider: str
    key: str = "ArrowRight"


#: The slider each panel gets moved; chosen so that the plot must change and the run stays short.
#: A notebook missing here gets its panel's first slider moved one step to the right.
INTERACTIONS = {
    "01": Interaction("queries"),
    "02": Interaction("images/class"),
    "03": Interaction("draw #"),
    "04": Interaction("episodes"),
    "05": Interaction("epochs"),
    "06": Interaction("episodes"),
    "07": Interaction("meta-steps"),
    "08": Interaction("meta-iters"),  # 0 -> 1 draws the live meta-training plot too
    "09": Interaction("N"),
}

TIMINGS: dict[str, dict[str, float]] = {}


# --------------------------------------------------------------------------- requirements


def _missing_browser() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -r requirements.txt)"
    return None


def require_browser() -> None:
    """Skip (one line) without Chromium or Playwright; fail instead if METALEARN_REQUIRE_BROWSER=1."""
    missing = _missing_browser()
    if missing is None:
        return
    if os.environ.get("METALEARN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"METALEARN_REQUIRE_BROWSER=1 but {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="module")
def browser_available() -> None:
    require_browser()


# --------------------------------------------------------------------------- JupyterLab


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quick_copy(path: Path, folder: Path) -> Path:
    """Write ``path`` to ``folder`` with ``QUICK = True`` in its cell tagged ``parameters``."""
    notebook = json.loads(path.read_text())
    tagged = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    quick, count = re.subn(r"^QUICK = False\b", "QUICK = True", source, flags=re.MULTILINE)
    assert count == 1, f"{path.name}: the parameters cell has no line starting 'QUICK = False'"
    tagged[0]["source"] = quick.splitlines(keepends=True)
    copy = folder / path.name
    copy.write_text(json.dumps(notebook, indent=1) + "\n")
    return copy


class JupyterLab:
    """This checkout's JupyterLab on 127.0.0.1 with a token, settings and state in a temp dir."""

    def __init__(self, state: Path) -> None:
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        settings = state / "app-settings"
        settings.mkdir(parents=True)
        (settings / "overrides.json").write_text(json.dumps(SETTINGS_OVERRIDES, indent=1))
        env = dict(os.environ)
        # conftest.py sets these for papermill; a student's server has neither (plots must show).
        env.pop("MPLBACKEND", None)
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
        for name, sub in [
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),  # no user kernelspec can replace this venv's python3
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("JUPYTERLAB_SETTINGS_DIR", "user-settings"),
            ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
        ]:
            (state / sub).mkdir()
            env[name] = str(state / sub)
        command = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={ROOT}",
            f"--LabApp.app_settings_dir={settings}",
        ]  # fmt: skip
        self.log = (state / "jupyterlab.log").open("w")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with {self.process.returncode}; see {self.log.name}"
                )
            try:
                self.api("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(
            f"JupyterLab did not answer within {SERVER_START_TIMEOUT} s; see {self.log.name}"
        )

    def api(self, method: str, path: str) -> object:
        request = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def notebook_url(self, path: Path) -> str:
        """The notebook alone in a fresh workspace: no tab of an earlier notebook comes back."""
        relative = urllib.parse.quote(path.relative_to(ROOT).as_posix())
        workspace = f"{path.stem}-{secrets.token_hex(4)}"
        return f"{self.url}/lab/workspaces/{workspace}/tree/{relative}?reset&token={self.token}"

    def kernel_idle(self, path: Path) -> bool:
        """Whether the server knows a kernel for ``path`` and that kernel says it is idle."""
        relative = path.relative_to(ROOT).as_posix()
        for session in self.api("GET", "/api/sessions"):
            if session.get("path") == relative and session.get("kernel"):
                return session["kernel"].get("execution_state") == "idle"
        return False

    def shut_down_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def copies() -> Iterator[Path]:
    """Where the QUICK copies live; notebooks find data and checkpoints through helpers, not ``../``."""
    folder = SCREENSHOTS / "notebooks"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(browser_available: None, copies: Path) -> Iterator[JupyterLab]:
    with tempfile.TemporaryDirectory(prefix="metalearn-lab-") as state:
        server = JupyterLab(Path(state))
        try:
            yield server
        finally:
            server.stop()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            # Kept for reading after a failure.
            shutil.copy(server.log.name, SCREENSHOTS / "jupyterlab.log")


@pytest.fixture(scope="module")
def browser(browser_available: None) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()
    _print_timings()


def _print_timings() -> None:
    if not TIMINGS:
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "timings.json").write_text(json.dumps(TIMINGS, indent=1) + "\n")
    print(
        f"\n{'browser timings (s)':<34} {'Run All':>8} {'slider round trip':>18} {'button to plot':>15}"
    )
    for stem, t in TIMINGS.items():
        cells = [
            t.get(key, float("nan")) for key in ("run_all_s", "slider_round_trip_s", "button_run_s")
        ]
        print(f"  {stem:<32} {cells[0]:8.1f} {cells[1]:18.1f} {cells[2]:15.1f}")


# --------------------------------------------------------------------------- the page


def _kernel_status(page) -> str:
    indicator = page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator")
    return (indicator.first.get_attribute("data-status") or "") if indicator.count() else ""


_PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell')).map(
    cell => (cell.querySelector('.jp-InputArea-prompt') || {textContent: ''}).textContent.trim())"""


def _wait_for_kernel(page, lab: JupyterLab, copy: Path, timeout: float) -> None:
    """Wait until the page and the server agree that the notebook's kernel is up and idle.

    The page's indicator alone says "idle" for a moment before the kernel starts.
    """
    deadline = time.monotonic() + timeout
    idle_since = None
    while True:
        if _kernel_status(page) == "idle" and lab.kernel_idle(copy):
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 2:
                return
        else:
            idle_since = None
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the kernel was not idle within {timeout} s (status {_kernel_status(page)!r})"
            )
        time.sleep(0.25)


def _run_all(page, n_code_cells: int) -> float:
    """Run → Run All Cells from the menu; return the seconds until no cell is running."""
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    start = time.monotonic()
    stopped_since = None
    while True:
        prompts = page.evaluate(_PROMPTS_JS)
        idle = _kernel_status(page) == "idle"
        running = any(p == "[*]:" for p in prompts)
        done = [p for p in prompts if re.fullmatch(r"\[\d+\]:", p)]
        if idle and not running and len(done) == n_code_cells == len(prompts):
            return time.monotonic() - start
        # Run All stops at the first exception: idle, nothing running, some cells never ran.
        if idle and not running and time.monotonic() - start > 5:
            stopped_since = stopped_since or time.monotonic()
            if time.monotonic() - stopped_since > 10:
                first = next(
                    (i for i, p in enumerate(prompts) if not re.fullmatch(r"\[\d+\]:", p)), 0
                )
                cells = page.locator(".jp-Notebook .jp-CodeCell")
                before = (
                    cells.nth(first - 1).locator(".jp-OutputArea").inner_text()[-800:]
                    if first
                    else ""
                )
                raise AssertionError(
                    f"Run All stopped: {len(done)} of {n_code_cells} code cells ran; code cell {first}"
                    f" (prompt {prompts[first]!r}) did not, starting {cells.nth(first).locator('.jp-InputArea-editor').inner_text()[:200]!r};"
                    f" the cell before it output {before!r}\n" + _problems_text(page)
                )
        else:
            stopped_since = None
        if time.monotonic() - start > RUN_ALL_TIMEOUT:
            raise AssertionError(
                f"Run All still running after {RUN_ALL_TIMEOUT} s ({len(done)} cells done)"
            )
        time.sleep(0.5)


# The widget manager writes this text straight into an output's node when a view cannot be made.
# It says "Loading widget..." first, while it waits (seconds) for a model that may never come.
_OUTPUT_TEXTS_JS = """needle => {
    const found = [];
    for (const area of document.querySelectorAll('.jp-Notebook .jp-Cell-outputArea')) {
        const walker = document.createTreeWalker(area, NodeFilter.SHOW_TEXT);
        while (walker.nextNode()) {
            if (walker.currentNode.textContent.includes(needle)) {
                found.push(walker.currentNode.parentElement.textContent.trim());
            }
        }
    }
    return found;
}"""
WIDGET_LOAD_TIMEOUT = 60  # seconds


def _wait_for_widget_views(page) -> list[str]:
    """Wait until no widget view says "Loading widget..."; return those that never loaded."""
    deadline = time.monotonic() + WIDGET_LOAD_TIMEOUT
    while (
        loading := page.evaluate(_OUTPUT_TEXTS_JS, "Loading widget")
    ) and time.monotonic() < deadline:
        time.sleep(0.25)
    return loading


def _problems(page) -> list[str]:
    """Every error a reader would see in the outputs: tracebacks, errors, widget failures, logs."""
    found = []
    for output in page.locator(ERROR_SELECTOR).all():
        found.append("error output: " + output.inner_text()[-1500:])
    for output in page.locator(STDERR_SELECTOR).all():
        text = output.inner_text()
        if "Traceback" in text or EXCEPTION_LINE.search(text):
            found.append("traceback in stderr: " + text[-1500:])
        elif LOG_LINE.search(text):
            found.append("log lines in a stderr box: " + text[:600])
    for failure in _wait_for_widget_views(page):
        found.append(f"a widget view still loading after {WIDGET_LOAD_TIMEOUT} s: {failure[:300]}")
    for failure in page.evaluate(_OUTPUT_TEXTS_JS, "Error displaying widget"):
        found.append("widget failure: " + failure[:300])
    return found


def _problems_text(page) -> str:
    return "\n".join(_problems(page)) or "(no error output found)"


def _other_stderr(page) -> list[str]:
    return [o.inner_text()[:300] for o in page.locator(STDERR_SELECTOR).all()]


# --------------------------------------------------------------------------- the panel


@dataclass
class PanelState:
    text: str
    message: str
    images: list[np.ndarray] = field(default_factory=list)


def _as_array(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def is_blank(image: np.ndarray) -> bool:
    """True for a plot with nothing drawn in colour: an empty figure, or axes without data.

    Every panel draws in colour (lines, bars, green and red frames), while an empty figure is one
    flat colour and empty axes are only black, grey and white.
    """
    coloured = (image.max(axis=2) - image.min(axis=2)) > 60
    return image.std() < 2 or coloured.mean() < 0.0005


def _panel_state(panel) -> PanelState:
    output = panel.locator(".metalearn-panel-output")
    images = [
        _as_array(img.screenshot()) for img in output.locator("img").all() if img.is_visible()
    ]
    message = panel.locator(".metalearn-panel-message").inner_text().strip()
    return PanelState(output.inner_text(), message, images)


def _images_differ(before: list[np.ndarray], after: list[np.ndarray]) -> bool:
    if len(before) != len(after):
        return True
    return any(a.shape != b.shape or np.abs(a - b).mean() > 0.01 for a, b in zip(before, after))


_CUT_LABELS_JS = """panel => Array.from(panel.querySelectorAll('.widget-label, .widget-label-basic'))
    .filter(label => label.offsetParent !== null && label.scrollWidth > label.clientWidth + 1)
    .map(label => label.textContent)"""


def _wait_until_quiet(page, button) -> None:
    """Wait until the kernel is idle and the panel's button enabled, for a few polls in a row."""
    deadline = time.monotonic() + PANEL_RUN_TIMEOUT
    quiet = 0
    while quiet < 4:
        if time.monotonic() > deadline:
            raise AssertionError(f"the panel was still running after {PANEL_RUN_TIMEOUT} s")
        quiet = quiet + 1 if _kernel_status(page) == "idle" and not button.is_disabled() else 0
        time.sleep(0.1)


def _click_and_wait(page, button) -> None:
    """Click the panel's button; wait until the kernel has taken the click up and finished it."""
    button.click()
    deadline = time.monotonic() + 20
    while (
        _kernel_status(page) != "busy" and not button.is_disabled() and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    _wait_until_quiet(page, button)


def _move_slider_and_run(page, panel, interaction: Interaction, timings: dict[str, float]) -> None:
    """Move the slider, press the panel's button and wait for its run; record the times."""
    label = page.locator(".widget-label", has_text=re.compile(f"^{re.escape(interaction.slider)}$"))
    slider = (
        panel.locator(".widget-slider", has=label)
        if interaction.slider
        else panel.locator(".widget-slider")
    )
    assert slider.count(), f"the panel has no slider labelled {interaction.slider!r}"
    slider = slider.first
    readout = slider.locator(".widget-readout")
    old_value = readout.inner_text().strip()
    button = panel.locator(".metalearn-panel-button")
    start = time.monotonic()
    slider.locator(".noUi-handle").press(interaction.key)
    page.wait_for_function(
        "([el, old]) => el.textContent.trim() !== old",
        arg=[readout.element_handle(), old_value],
        timeout=10_000,
    )
    # An auto-running panel (01) starts on the slider alone; let that run finish first.
    page.wait_for_timeout(500)
    _wait_until_quiet(page, button)
    clicked = time.monotonic()
    _click_and_wait(page, button)
    page.wait_for_timeout(300)  # the last widget updates reach the views
    timings["slider_round_trip_s"] = time.monotonic() - start
    timings["button_run_s"] = time.monotonic() - clicked
    print(f"  slider {interaction.slider!r}: {old_value} -> {readout.inner_text().strip()}")


# --------------------------------------------------------------------------- the test


@pytest.mark.browser
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_browser(
    path: Path, lab: JupyterLab, browser, copies: Path, needs_data: None
) -> None:
    stem = path.stem
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    copy = quick_copy(path, copies)
    n_code_cells = sum(c["cell_type"] == "code" for c in json.loads(copy.read_text())["cells"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    timings = TIMINGS.setdefault(stem, {})
    failures: list[str] = []  # everything wrong with this notebook, reported together
    try:
        page.goto(lab.notebook_url(copy))
        page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
        _wait_for_kernel(page, lab, copy, KERNEL_START_TIMEOUT)
        dialogs = page.locator(".jp-Dialog")
        assert not dialogs.count(), (
            f"{stem}: a dialog is open before Run All: {dialogs.first.inner_text()}"
        )

        timings["run_all_s"] = _run_all(page, n_code_cells)
        print(f"\n{stem}: Run All {timings['run_all_s']:.1f} s")
        panel = page.locator(".metalearn-panel").last
        panel.wait_for(timeout=30_000)
        panel.scroll_into_view_if_needed()
        failures += [f"after Run All, {problem}" for problem in _problems(page)]
        panel.screenshot(path=str(SCREENSHOTS / f"{stem}-run-all.png"))
        for text in _other_stderr(page):
            print(f"  note, stderr output: {text[:200]!r}")
        before = _panel_state(panel)
        if before.message:
            failures.append(f"after Run All the panel still says {before.message!r}")
        cut = panel.evaluate(_CUT_LABELS_JS)
        if cut:
            failures.append(f"labels cut off in the panel: {cut}")
        if not before.images:
            failures.append("after Run All the panel shows no plot")
        elif any(is_blank(image) for image in before.images):
            failures.append(
                f"after Run All a plot of the panel is blank ({len(before.images)} plots)"
            )

        interaction = INTERACTIONS.get(stem[:2], Interaction(""))
        _move_slider_and_run(page, panel, interaction, timings)
        trip, run = timings["slider_round_trip_s"], timings["button_run_s"]
        print(f"  slider round trip {trip:.1f} s (button to plot {run:.1f} s)")
        panel.screenshot(path=str(SCREENSHOTS / f"{stem}.png"))
        after = _panel_state(panel)
        if after.message:
            failures.append(f"the panel refused the moved slider: {after.message!r}")
        failures += [f"after the panel ran, {problem}" for problem in _problems(page)]
        if not after.images:
            failures.append("the panel shows no plot after its run")
        elif any(is_blank(image) for image in after.images):
            failures.append(
                f"after its run a plot of the panel is blank ({len(after.images)} plots)"
            )
        if not _images_differ(before.images, after.images):
            failures.append("the panel's plot did not change when the slider moved")
        if page_errors:
            print(f"  note, page errors: {page_errors[:3]}")
    except Exception:
        page.screenshot(path=str(SCREENSHOTS / f"{stem}-failure.png"))
        raise
    finally:
        page.close()
        lab.shut_down_kernels()
    assert not failures, f"{stem}:\n  " + "\n  ".join(failures)


# --------------------------------------------------------------------------- the test's own logic
# (fast, no browser: these run with -m "not browser" too)


def test_without_a_browser_the_test_skips_unless_it_is_required(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.delenv("METALEARN_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium at /nonexistent/chromium"):
        require_browser()
    monkeypatch.setenv("METALEARN_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="METALEARN_REQUIRE_BROWSER=1 but no Chromium"):
        require_browser()


def test_quick_copy_sets_quick_in_the_parameters_cell_only(tmp_path):
    cells = [
        {"cell_type": "code", "metadata": {}, "source": "QUICK = False  # not this one\n"},
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "source": ["QUICK = False  # tiny\n", "SEED = 0"],
        },
    ]
    source = tmp_path / "source"
    source.mkdir()
    (source / "01_x.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}}))
    copy = quick_copy(source / "01_x.ipynb", tmp_path)
    written = json.loads(copy.read_text())["cells"]
    assert written[0]["source"] == "QUICK = False  # not this one\n"
    assert "".join(written[1]["source"]) == "QUICK = True  # tiny\nSEED = 0"


def test_a_plot_with_nothing_drawn_in_colour_is_blank():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def render(draw) -> np.ndarray:
        fig, ax = plt.subplots(figsize=(3, 2))
        draw(ax)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        return _as_array(buffer.getvalue())

    white = np.full((50, 80, 3), 255, dtype=np.int16)
    assert is_blank(white)
    assert is_blank(render(lambda ax: None))  # empty axes: frame and ticks only
    assert not is_blank(render(lambda ax: ax.plot([0, 1, 2], [0, 2, 1])))
    assert not is_blank(render(lambda ax: ax.bar(["a", "b"], [1, 2])))
