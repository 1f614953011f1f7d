"""The course in a real browser: JupyterLab driven through Debian's chromium by Playwright (`make test-browser`).

A JupyterLab of its own (a free local port, a random token, a temporary copy of notebooks/ and
exercises/ so nothing is saved into the repository) serves the course. Each lecture that uses a widget
(found by searching for ``helpers.widgets`` or ``ipywidgets``) is run top to bottom; every control of
every widget is moved and the widget's output must change; a screenshot of each widget lands in
_build/browser/ (git-ignored). One exercise is run as a learner opens it, and the learner must see the
check's message. The server and its kernels are stopped however the test ends.

Needs chromium (``apt-get install chromium``; found as $CHROMIUM, then ``chromium``, ``chromium-browser``
or ``google-chrome`` on PATH) and the pinned ``playwright`` package; Playwright's own browser download
is never used. Without them the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

SCREENSHOTS = ROOT / "_build" / "browser"
USES_WIDGETS = re.compile(
    r"\bhelpers\.widgets\b|^\s*from helpers import [^\n]*\bwidgets\b|^\s*(import ipywidgets|from ipywidgets\b)", re.MULTILINE)
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip
# JupyterLab settings for the test's own server: no autosave, every cell in the page (no windowing), no news.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}
RUN_TIMEOUT_MS = 600_000


def widget_cells(path: Path) -> list[int]:
    """Indices (among all cells) of the code cells of ``path`` that use a widget."""
    nb = nbformat.read(path, as_version=4)
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and USES_WIDGETS.search(c.source)]


WIDGET_LECTURES = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if widget_cells(p)]
EXERCISES = sorted((ROOT / "exercises").glob("*_lab.ipynb"))


def find_chromium() -> str | None:
    """The chromium executable to drive: $CHROMIUM, else the first of chromium / chromium-browser / google-chrome on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"] if Path(os.environ["CHROMIUM"]).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    root: Path

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


def test_widget_lectures_are_found_by_search() -> None:
    names = [p.name[:2] for p in WIDGET_LECTURES]
    assert {"00", "01", "03", "07", "08"} <= set(names), names
    assert "02" not in names, "chapter 02 has no widget"


def test_widget_use_is_recognised() -> None:
    for source in ("from helpers.widgets import low_rank_explorer", "from helpers import metrics, widgets", "import ipywidgets as widgets",
                   "  from ipywidgets import interact", "helpers.widgets.pruning_explorer(m, d)"):
        assert USES_WIDGETS.search(source), source
    for source in ("from helpers import metrics", "# ipywidgets are not used here", "x = 'no widgets'"):
        assert not USES_WIDGETS.search(source), source


def test_find_chromium_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-chromium"
    fake.write_text("")
    monkeypatch.setenv("CHROMIUM", str(fake))
    assert find_chromium() == str(fake)
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "missing"))
    assert find_chromium() is None


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the browser test needs the pinned playwright package (requirements.txt): run `make setup`")
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium found: install Debian's (`apt-get install chromium`) or set CHROMIUM=/path/to/chromium")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Iterator[Lab]:
    """A JupyterLab of the test's own on a free local port, serving a temporary copy of the course; stopped at the end."""
    base = tmp_path_factory.mktemp("browser")
    course = base / "course"
    for folder in ("notebooks", "exercises"):
        (course / folder).mkdir(parents=True)
        for path in (ROOT / folder).glob("*.ipynb"):
            shutil.copy(path, course / folder / path.name)
    settings = base / "settings"
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # kernels draw inline, as for a learner
    env.update(JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"), JUPYTER_RUNTIME_DIR=str(base / "runtime"))
    port, token = free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={course}",
               "--LabApp.expose_app_in_browser=True", "--allow-root", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    log_path = SCREENSHOTS / "jupyterlab.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(command, env=env, cwd=course, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, course)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                lab.api("/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; its log:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield lab
    finally:
        try:
            for kernel in lab.api("/api/kernels") or []:  # type: ignore[union-attr]
                lab.api(f"/api/kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser(lab: Lab, chromium: str, tmp_path_factory: pytest.TempPathFactory):
    """A headless chromium (a fresh profile) driven by Playwright; closed at the end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


PANEL = """(path) => Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === path)"""
NOTEBOOK_STATE = """(path) => {
    const panel = (PANEL)(path);
    const cells = panel.content.model.cells;
    const state = {pending: 0, errors: []};
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        if (cell.executionCount === null) state.pending++;
        for (const o of cell.outputs.toJSON()) {
            if (o.output_type === 'error') state.errors.push({cell: i, ename: o.ename, evalue: o.evalue});
        }
    }
    return state;
}""".replace("(PANEL)", f"({PANEL})")
KERNEL_IDLE = """(path) => {
    const panel = window.jupyterapp && (PANEL)(path);
    return !!panel && panel.sessionContext.session?.kernel?.status === 'idle';
}""".replace("(PANEL)", f"({PANEL})")
RUN_ALL = """async (path) => {
    const panel = (PANEL)(path);
    window.jupyterapp.shell.activateById(panel.id);
    await window.jupyterapp.commands.execute('notebook:run-all-cells');
}""".replace("(PANEL)", f"({PANEL})")
RUN_CELL = """async ([path, index]) => {
    const panel = (PANEL)(path);
    window.jupyterapp.shell.activateById(panel.id);
    panel.content.activeCellIndex = index;
    await window.jupyterapp.commands.execute('notebook:run-cell');
}""".replace("(PANEL)", f"({PANEL})")


SHUTDOWN = """async (path) => { const panel = (PANEL)(path); if (panel) await panel.sessionContext.shutdown(); }""".replace(
    "(PANEL)", f"({PANEL})")


def close(page, relative: str) -> None:
    """Stop the notebook's kernel (the fixture stops any left over) and close the page."""
    try:
        page.evaluate(SHUTDOWN, relative)
    finally:
        page.close()


def open_and_run_all(page, lab: Lab, relative: str) -> dict:
    """Open ``relative`` in JupyterLab (a fresh workspace: only this notebook open), wait for its kernel, run every
    cell (the way a learner's Run All does) and return the notebook's state: cells not run and errors."""
    workspace = f"test-{secrets.token_hex(4)}"
    page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{relative}?reset&token={lab.token}")
    page.wait_for_function(KERNEL_IDLE, arg=relative, timeout=120_000, polling=500)
    page.wait_for_timeout(500)
    page.evaluate(RUN_ALL, relative)
    page.wait_for_function(KERNEL_IDLE, arg=relative, timeout=RUN_TIMEOUT_MS, polling=500)
    return page.evaluate(NOTEBOOK_STATE, relative)


def snapshot(widget) -> str:
    """What a widget's outputs show: the text and the image data of its output areas."""
    return widget.evaluate("""(w) => Array.from(w.querySelectorAll('.widget-output, .jupyter-widgets-output-area')).map(
        o => o.innerText + Array.from(o.querySelectorAll('img')).map(i => i.src.slice(-2000)).join('|')).join('||')""")


def wait_for_change(page, widget, before: str, what: str) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        now = snapshot(widget)
        if now != before and now.strip():
            page.wait_for_timeout(300)  # let the redraw finish before the next move
            settled = snapshot(widget)
            if settled == now:
                return now
    raise AssertionError(f"{what}: the widget's output did not change within 120 s")


def move(page, control, kind: str) -> str:
    """Move one control the way a learner would (keyboard on a slider, a click, a menu choice); returns what was done."""
    if kind == "slider":
        handle = control.locator(".noUi-handle").first
        readout = control.locator(".widget-readout").first
        before = readout.inner_text()
        handle.focus()
        for key in ("ArrowLeft", "ArrowRight"):
            for _ in range(3):
                page.keyboard.press(key)
            page.wait_for_timeout(300)
            if readout.inner_text() != before:
                return f"{before} -> {readout.inner_text()}"
        raise AssertionError(f"the slider did not move from {before}")
    if kind == "dropdown":
        select = control.locator("select").first
        options = select.locator("option").all_inner_texts()
        current = select.evaluate("(s) => s.options[s.selectedIndex].text")
        choice = next(o for o in options if o != current)
        select.select_option(label=choice)
        return f"{current} -> {choice}"
    if kind == "checkbox":
        box = control.locator("input[type=checkbox]").first
        box.click()
        return f"ticked: {box.is_checked()}"
    if kind == "toggle-buttons":
        button = control.locator("button:not(.mod-active)").first
        button.click()
        return f"pressed {button.inner_text()!r}"
    if kind == "radio":
        choice = control.locator("input[type=radio]:not(:checked)").first
        choice.click()
        return f"chose {choice.get_attribute('value')!r}"
    raise ValueError(kind)


CONTROLS = {"slider": ".widget-slider", "dropdown": ".widget-dropdown", "checkbox": ".widget-checkbox",
            "toggle-buttons": ".widget-toggle-buttons", "radio": ".widget-radio-box"}
# Controls the test does not know how to move: a widget with one fails the test, so that it gets taught, not skipped.
UNKNOWN_CONTROLS = (".widget-text, .widget-textarea, .widget-button, .widget-toggle-button, .widget-play, .widget-select, "
                    ".widget-select-multiple, .widget-colorpicker, .widget-datepicker, .widget-tagsinput, .widget-upload")
COUNT_UNKNOWN = "(w, sel) => Array.from(w.querySelectorAll(sel)).filter(e => !e.closest('.widget-toggle-buttons')).length"


@pytest.mark.parametrize("path", WIDGET_LECTURES, ids=lambda p: p.name)
def test_every_widget_control_changes_what_the_lecture_shows(browser, lab: Lab, path: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page, relative = browser.new_page(), f"notebooks/{path.name}"
    try:
        state = open_and_run_all(page, lab, relative)
        assert not state["errors"] and state["pending"] == 0, f"{path.name} did not run cleanly in JupyterLab: {state}"
        moved = 0
        for index in widget_cells(path):
            cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
            widget = cell.locator(".jp-OutputArea-output .jupyter-widgets.widget-container, .jp-OutputArea-output .widget-interact").first
            widget.wait_for(state="visible", timeout=60_000)
            widget.scroll_into_view_if_needed()
            unknown = widget.evaluate(COUNT_UNKNOWN, UNKNOWN_CONTROLS)
            assert unknown == 0, f"{path.name} cell {index}: {unknown} control(s) this test cannot move yet (see CONTROLS)"
            shown = wait_for_change(page, widget, "", f"{path.name} cell {index}: first drawing")
            widget.screenshot(path=str(SCREENSHOTS / f"{path.stem}_cell{index}_initial.png"))
            for kind, selector in CONTROLS.items():
                for n, control in enumerate(widget.locator(selector).all()):
                    done = move(page, control, kind)
                    shown = wait_for_change(page, widget, shown, f"{path.name} cell {index}: {kind} {n} ({done})")
                    widget.screenshot(path=str(SCREENSHOTS / f"{path.stem}_cell{index}_{kind}{n}.png"))
                    moved += 1
        assert moved >= 1, f"{path.name} uses a widget but no control was found to move"
    finally:
        close(page, relative)


def first_function_exercise(paths: list[Path]) -> tuple[Path, int, str] | None:
    """(exercise notebook, index of its first blank function cell, that cell's source with the blank line replaced by
    ``return None``): a wrong answer a learner could run, whose check must then say what it expected."""
    blank = re.compile(r"^(?P<indent>[ \t]+)raise NotImplementedError\(.*\)\s*$", re.MULTILINE)
    for path in paths:
        cells = nbformat.read(path, as_version=4).cells
        for i, cell in enumerate(cells[:-1]):
            after = cells[i + 1]
            if cell.cell_type == "code" and blank.search(cell.source) and "check" in after.metadata.get("tags", []):
                return path, i, blank.sub(lambda m: f"{m['indent']}return None", cell.source, count=1)
    return None


def error_on_screen(page, index: int) -> str:
    """The error text the learner sees under cell ``index``."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.scroll_into_view_if_needed()
    return cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").first.inner_text()


@pytest.mark.skipif(first_function_exercise(EXERCISES) is None, reason="no exercise with a blank function and a check after it")
def test_a_learner_sees_the_check_message_in_an_exercise(browser, lab: Lab) -> None:
    path, index, wrong = first_function_exercise(EXERCISES)  # type: ignore[misc]
    page, relative = browser.new_page(), f"exercises/{path.name}"
    try:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        state = open_and_run_all(page, lab, relative)  # the learner's Run All on the blank lab
        # As handed out: Run All stops at the first check, which reports the blank exercise by name.
        assert state["errors"], f"the blank exercise {path.name} ran without an error: its checks are vacuous"
        first = state["errors"][0]
        assert first["ename"] in {"NotImplementedError", "CheckFailure"}, first
        assert first["cell"] in (index, index + 1), f"the first error is not at the first exercise (cell {index}): {first}"
        text = error_on_screen(page, first["cell"])
        assert first["ename"] in text and first["evalue"].splitlines()[0] in text, f"on screen: {text!r}, expected {first}"
        assert "not done yet" in text, f"the learner is not told which exercise to do: {text!r}"
        page.locator(".jp-Notebook .jp-Cell").nth(first["cell"]).screenshot(path=str(SCREENSHOTS / f"{path.stem}_blank.png"))
        # A wrong answer: the check names what it expected and what it got, with a hint, and hides its own source.
        set_source = f"([path, i, text]) => ({PANEL})(path).content.model.cells.get(i).sharedModel.setSource(text)"
        page.evaluate(set_source, [relative, index, wrong])
        page.evaluate(RUN_CELL, [relative, index])
        page.evaluate(RUN_CELL, [relative, index + 1])
        errors = [e for e in page.evaluate(NOTEBOOK_STATE, relative)["errors"] if e["cell"] == index + 1]
        assert errors and errors[0]["ename"] == "CheckFailure", f"a wrong answer (return None) did not fail its check: {errors}"
        text = error_on_screen(page, index + 1)
        for word in ("CheckFailure", "expected", "got", "hint"):
            assert word in text, f"{word!r} missing from what the learner sees: {text!r}"
        assert "Traceback" not in text and "checks.py" not in text, f"a check's failure shows its message alone: {text!r}"
        page.locator(".jp-Notebook .jp-Cell").nth(index + 1).screenshot(path=str(SCREENSHOTS / f"{path.stem}_wrong_answer.png"))
    finally:
        close(page, relative)
