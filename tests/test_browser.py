"""The series in JupyterLab, in a real browser: every notebook shows its stored outputs (figures,
tables, and no "Error displaying widget"), and notebooks 01 and 08 run from the Run menu, 08's
search panels answering typing and clicks.

One JupyterLab server for the module, started from this interpreter on 127.0.0.1 over a copy of
``notebooks/``: the kernels find the repository through ``SIAMESE_REPO`` and write their runs under
the test's temporary folder, so nothing is written into the checkout. Its settings folder is the
test's own: windowing off (every cell is in the page, off-screen ones included), news, update checks
and autosave off. The copies are signed in the server's own data folder, so JupyterLab renders them
as a reader who trusts them sees them: widget views included (an untrusted notebook falls back to
their ``text/plain`` form). One headless Chromium, Debian's (never a downloaded one), that may reach
127.0.0.1 only: every other request is refused (the notebooks' "Open in Colab" badge among them).

Notebook 08 loads chapter 05's default model; the test puts an untrained one, saved with the recipe of
08's short setting, in the run folder, so the run takes seconds instead of its training.
``SIAMESE_BROWSER_TRAIN=1`` leaves it out: 08 then trains, as for a reader without chapter 05's run.

Skipped without playwright or Chromium, unless ``SIAMESE_BROWSER_TESTS=1`` (CI sets it), where that
is a failure. Screenshots (each notebook whole, as stored and as run, and 08's panels): into
``$SIAMESE_SCREENSHOTS``, else a temporary folder that the run names at its end (under ``-n 0``: a
pytest-xdist worker cannot print) and a failure names too.
"""

from __future__ import annotations

import contextlib
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
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import nbformat
import pytest
from nbformat.sign import NotebookNotary

from siamese_utils.tools.notebooks import OFFLINE_ENV, SMOKE_VARIABLE

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REQUIRED = os.environ.get("SIAMESE_BROWSER_TESTS") == "1"
VIEWPORT = {"width": 1280, "height": 900}
TALLEST = 30_000  # px: a full-notebook screenshot is cut there
SERVER_START_S = 120
OPEN_MS = 60_000  # a notebook opening, its outputs rendering
KERNEL_MS = 120_000  # a kernel starting
RUN_S = 600  # Run All Cells, until every cell has run (08 with its short training: under a minute on 2 cores)
WIDGET_MS = 30_000  # a panel answering
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-proxy-server", "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no name resolves: nothing leaves the machine
]
# JupyterLab's own settings for the test's server (its user settings folder is the test's).
LAB_SETTINGS = {
    # Every cell attached to the page, so off-screen outputs are counted and screenshotted too.
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "scrollPastEnd": False},
    # No "get notified about Jupyter news?" toast, no update check (both would fetch from the web).
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    # The copies change only when a test saves them.
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}
PANELS = re.compile(r"^(TextSearchPanel|ImageSearchPanel|EmbeddingExplorer|SearchPanel) ")  # their text forms


def _chromium() -> str | None:
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")


try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright, PlaywrightError = None, Exception

MISSING = ("playwright is not installed (python -m pip install -e \".[dev]\")" if sync_playwright is None else
           "Chromium is not installed (Debian: apt-get install chromium)" if _chromium() is None else None)
if MISSING and not REQUIRED:
    pytest.skip(f"{MISSING}; SIAMESE_BROWSER_TESTS=1 makes that a failure", allow_module_level=True)


def _require_browser() -> None:
    if MISSING:
        pytest.fail(f"SIAMESE_BROWSER_TESTS=1 but {MISSING}; playwright drives Debian's Chromium "
                    "(/usr/bin/chromium), never a downloaded browser", pytrace=False)


# ----------------------------------------------------------------------------- the server


class Lab:
    """The running JupyterLab: its address, its log, and its REST API (token in a header, no proxy)."""

    def __init__(self, root: Path, port: int, token: str, log: Path, proc: subprocess.Popen):
        self.root, self.port, self.token, self.log, self.proc = root, port, token, log, proc
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def doc(self, name: str) -> str:
        # Single-document mode (no file browser), the workspace reset so only this notebook opens.
        return self.url(f"doc/tree/{quote(name)}?reset&token={self.token}")

    def api(self, method: str, path: str, timeout: float = 15):
        request = urllib.request.Request(self.url(path), method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with self._http.open(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, what: str) -> None:
        if self.proc.poll() is not None:
            what += f" (JupyterLab itself exited with code {self.proc.returncode})"
        pytest.fail(f"{what}\n--- the last 30 lines of the JupyterLab log, {self.log} ---\n{self.tail()}",
                    pytrace=False)

    def shutdown_sessions(self) -> None:
        """Shut down every kernel the page left running (the server keeps them after the page goes)."""
        try:
            for session in self.api("GET", "api/sessions"):
                self.api("DELETE", f"api/sessions/{session['id']}", timeout=30)
        except (urllib.error.URLError, OSError) as e:
            self.fail(f"JupyterLab did not answer while shutting kernels down: {e}")

    def kernel_states(self) -> str:
        try:
            return ", ".join(f"{k['id'][:8]}: {k['execution_state']}" for k in self.api("GET", "api/kernels")) or "none"
        except (urllib.error.URLError, OSError) as e:
            return f"unknown ({e})"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed_chapter_05(runs: Path) -> None:
    # An untrained default model where notebook 08 looks for chapter 05's, with the recipe 08 asks for in its
    # short setting (2 epochs, seed 0), so that 08 loads it instead of training.
    import dataclasses

    import torch

    from siamese_utils import build_model
    from siamese_utils.chapters.composition import COMPOSITION_MODEL, COMPOSITION_TRAIN
    from siamese_utils.core.train import save_checkpoint

    torch.manual_seed(0)
    folder = runs / "05_composition" / "default"
    folder.mkdir(parents=True)
    save_checkpoint(folder / "model.pt", build_model(COMPOSITION_MODEL),
                    dataclasses.replace(COMPOSITION_TRAIN, num_epochs=2, seed=0))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _require_browser()
    for name in (SMOKE_VARIABLE, *OFFLINE_ENV):  # the root conftest.py's; the server is given them anyway
        assert os.environ.get(name) == "1", f"{name} is not 1 in the test's environment (conftest.py sets it)"
    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    for name, values in LAB_SETTINGS.items():
        path = base / "settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")
    data_dir = base / "jupyter-data"
    data_dir.mkdir()
    notary = NotebookNotary(data_dir=str(data_dir))
    for path in root.glob("[0-9][0-9]_*.ipynb"):
        notary.sign(nbformat.read(path, as_version=4))
    runs = base / "runs"
    runs.mkdir()

    env = {**os.environ, **OFFLINE_ENV, SMOKE_VARIABLE: "1", "SIAMESE_REPO": str(REPO), "SIAMESE_RUNS": str(runs),
           "JUPYTER_CONFIG_DIR": str(base / "jupyter-config"), "JUPYTER_DATA_DIR": str(data_dir),
           "JUPYTER_RUNTIME_DIR": str(base / "jupyter-runtime"), "IPYTHONDIR": str(base / "ipython")}
    env.pop("MPLBACKEND", None)  # conftest.py's Agg; a reader's kernel draws inline
    port, token = _free_port(), secrets.token_hex(16)
    log = base / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0",  # a port taken meanwhile is an error, not another port
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
        f"--LabApp.user_settings_dir={base / 'settings'}", f"--LabApp.workspaces_dir={base / 'workspaces'}",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # the default one searches PyPI
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=base, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(root, port, token, log, proc)
    try:
        if os.environ.get("SIAMESE_BROWSER_TRAIN") != "1":
            _seed_chapter_05(runs)  # while the server starts
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                server.fail(f"JupyterLab stopped before answering on 127.0.0.1:{port}")
            try:
                server.api("GET", "api/status", timeout=5)
                break
            except (urllib.error.URLError, OSError) as e:
                if time.monotonic() > deadline:
                    server.fail(f"JupyterLab did not answer on 127.0.0.1:{port} within {SERVER_START_S} s ({e})")
                time.sleep(0.25)
        yield server
    finally:
        _stop(server)


def _stop(server: Lab) -> None:
    proc = server.proc
    if proc.poll() is None:
        try:
            server.api("POST", "api/shutdown", timeout=10)  # shuts its kernels down too
        except (urllib.error.URLError, OSError):
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the server's own process group: it and its kernels
                proc.wait(timeout=10)


# ----------------------------------------------------------------------------- the browser


def _say(request, line: str) -> None:
    """A line on the terminal, past pytest's output capture (the screenshots' folder, say)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line(line)


@pytest.fixture(scope="module")
def shots(tmp_path_factory, request):
    folder = os.environ.get("SIAMESE_SCREENSHOTS")
    folder = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    _say(request, f"browser test screenshots: {folder}")


@pytest.fixture(scope="module")
def page(lab, request):
    local = (f"http://127.0.0.1:{lab.port}/", "data:", "blob:")
    refused: list[str] = []

    def only_local(route):
        if route.request.url.startswith(local):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        context = browser.new_context(viewport=VIEWPORT)
        context.route("**/*", only_local)
        tab = context.new_page()
        tab.set_default_timeout(OPEN_MS)
        tab.on("dialog", lambda dialog: dialog.accept())  # "leave the page?" when a run notebook is left
        try:
            yield tab
        finally:
            context.close()
            browser.close()
    if refused:
        refused = ", ".join(sorted(set(refused)))
        _say(request, f"browser test: refused the requests off 127.0.0.1 (to {refused})")


# ----------------------------------------------------------------------------- what the page shows

# The open notebook's panel; prompts and outputs of its code cells.
_JS_HELPERS = r"""
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
const cells = panel ? [...panel.querySelectorAll('.jp-Notebook .jp-Cell')] : [];
// A code cell whose source is collapsed (a grader's check) shows a placeholder with an empty prompt instead of
// its input area: its prompts are left out, and counted.
const codeCells = panel ? [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')] : [];
const collapsed = codeCells.filter(c => c.querySelector('.jp-InputPlaceholder')).length;
const prompts = codeCells.filter(c => !c.querySelector('.jp-InputPlaceholder'))
    .map(c => (c.querySelector('.jp-InputArea .jp-InputPrompt') || {textContent: ''}).textContent.trim());
const images = panel ? [...panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="image/png"] img')] : [];
// JupyterLab renders a traceback with the stderr MIME type; IPython's always names the cell ("Cell In[3], line 1").
const stderr = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]';
const errors = panel ? [...panel.querySelectorAll(stderr)]
    .filter(e => /Traceback \(most recent call last\)|Cell In\[\d+\], line \d+/.test(e.innerText))
    .map(e => ({cell: cells.indexOf(e.closest('.jp-Cell')) + 1, text: e.innerText})) : [];
const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
const status = indicator ? indicator.dataset.status : null;
const kernel = (document.querySelector('.jp-Toolbar-kernelName') || {}).innerText || '';
const dialogs = [...document.querySelectorAll('.jp-Dialog')].map(e => e.innerText.replace(/\s+/g, ' ').trim());
const text = document.body.innerText;
const state = {
    cells: cells.length, prompts, collapsed, status, kernel, dialogs,
    images: images.length, decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: panel ? panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="text/html"] table').length : 0,
    widgets: panel ? panel.querySelectorAll('.jp-OutputArea-output > .jupyter-widgets').length : 0,
    errors, loading: text.includes('Loading widget'),
    widgetError: (text.match(/[^\n]*(Error displaying widget|model not found)[^\n]*/) || [null])[0],
};
"""


def _state(page) -> dict:
    return page.evaluate(f"() => {{ {_JS_HELPERS} return state; }}")


def _wait(page, condition: str, timeout_ms: float, arg=None, polling: int = 250) -> bool:
    """Wait until the JS expression ``condition`` (over ``state`` and ``arg``) holds; False at the timeout."""
    try:
        page.wait_for_function(f"(arg) => {{ {_JS_HELPERS} return {condition}; }}", arg=arg,
                               timeout=timeout_ms, polling=polling)
        return True
    except PlaywrightError:  # a timeout; the caller reports what the page shows
        return False


def _stored(path: Path) -> dict:
    """What the committed notebook holds: cells, code cells (collapsed ones too), figures, tables, panels' text."""
    nb = nbformat.read(path, as_version=4)
    counts = {"cells": len(nb.cells), "code": 0, "collapsed": 0, "images": 0, "tables": 0, "panels": 0}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        counts["code"] += 1
        counts["collapsed"] += bool(cell.metadata.get("jupyter", {}).get("source_hidden"))
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            counts["images"] += "image/png" in data
            html = data.get("text/html", "")
            counts["tables"] += ("".join(html) if isinstance(html, list) else html).count("<table")
            counts["panels"] += bool(PANELS.match("".join(data.get("text/plain", ""))))
    return counts


def _open(page, lab: Lab, name: str) -> None:
    page.goto("about:blank")
    lab.shutdown_sessions()  # the previous notebook's kernel
    page.set_viewport_size(VIEWPORT)
    try:
        page.goto(lab.doc(name))
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=OPEN_MS)
    except PlaywrightError as e:
        lab.fail(f"{name} did not open in JupyterLab: {str(e).splitlines()[0]}; dialogs: {_state(page)['dialogs']}")


def _screenshot(page, path: Path) -> None:
    """The whole notebook: the window made as tall as the notebook (up to TALLEST px), then put back."""
    measure = """() => {
        const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
        return s ? [s.scrollHeight, s.clientHeight] : [0, 0]; }"""
    for _ in range(3):  # the notebook's height may change a little with the window's
        scroll, client = page.evaluate(measure)
        height = min(scroll + page.viewport_size["height"] - client, TALLEST)
        if scroll <= client or height <= page.viewport_size["height"]:
            break
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        page.wait_for_function("""(want) => {
            const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
            return !s || s.clientHeight >= want; }""", arg=client + 1, timeout=10_000)
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)


def _assert_no_widget_error(state: dict, name: str) -> None:
    assert not state["widgetError"], f"{name}: the page says {state['widgetError']!r}"


# ----------------------------------------------------------------------------- stored outputs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_shows_its_stored_outputs(lab, page, shots, path):
    want = _stored(path)
    _open(page, lab, path.name)
    settled = _wait(page, "state.cells === arg.cells && state.images >= arg.images && "
                          "state.decoded === state.images && !state.loading", OPEN_MS, want)
    state = _state(page)
    shot = shots / f"{path.stem}.png"
    _screenshot(page, shot)
    name = f"{path.name} (screenshot: {shot})"
    assert settled, f"{name} did not finish rendering within {OPEN_MS / 1000:.0f} s: {state} (stored: {want})"
    assert state["images"] == want["images"] == state["decoded"], (
        f"{name}: {state['images']} figures on the page ({state['decoded']} decoded), "
        f"{want['images']} PNG outputs in the file")
    assert state["tables"] == want["tables"], (
        f"{name}: {state['tables']} HTML tables on the page, {want['tables']} in the file's outputs")
    assert not state["errors"], f"{name}: a stored traceback is shown: {state['errors'][0]}"
    _assert_no_widget_error(state, name)


# ----------------------------------------------------------------------------- running


def _menu(page, lab: Lab, menu: str, item: str, name: str) -> None:
    """Menu > item, once the item is enabled (a notebook's commands are, once it is the current widget)."""
    page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()
    top = page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(f"^{re.escape(menu)}$"))
    label = page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(f"^{re.escape(item)}$"))
    entry = page.locator(".lm-Menu-item:not(.lm-mod-disabled)").filter(has=label)
    for _ in range(3):
        top.click()
        try:
            entry.wait_for(state="visible", timeout=5_000)
        except PlaywrightError:
            page.keyboard.press("Escape")  # open again: a menu's items are enabled or not as it opens
            continue
        entry.click()
        return
    lab.fail(f"{name}: {menu} > {item} stayed disabled")


def _wait_for_kernel(page, lab: Lab, name: str) -> None:
    """Until the notebook's kernel has started and is idle: a run asked for before that is lost.

    The page says "idle" before the kernel exists too (with "No Kernel" as its name), so the server's
    word is waited for as well.
    """
    deadline = time.monotonic() + KERNEL_MS / 1000
    while True:
        ready = _wait(page, "state.status === 'idle' && state.kernel !== '' && !/no kernel/i.test(state.kernel)",
                      max(1, deadline - time.monotonic()) * 1000)
        try:
            sessions = [s for s in lab.api("GET", "api/sessions") if s.get("path") == name]
        except (urllib.error.URLError, OSError) as e:
            lab.fail(f"{name}: JupyterLab did not answer while its kernel started: {e}")
        if ready and sessions and sessions[0]["kernel"]["execution_state"] == "idle":
            return
        if time.monotonic() > deadline:
            state = _state(page)
            lab.fail(f"{name}: no idle kernel within {KERNEL_MS / 1000:.0f} s of opening (the page: "
                     f"{state['kernel']!r}, {state['status']}; kernels: {lab.kernel_states()})")
        time.sleep(0.25)


def _run_all(page, lab: Lab, name: str, shot: Path) -> dict:
    """Clear every output, Run > Run All Cells, wait until the kernel is idle again; fail on errors.

    On a failure the page is photographed into ``shot`` first.
    """
    try:
        return _run_all_cells(page, lab, name)
    except BaseException:
        try:
            _screenshot(page, shot)
        except PlaywrightError:
            pass
        raise


def _run_all_cells(page, lab: Lab, name: str) -> dict:
    _wait_for_kernel(page, lab, name)
    _menu(page, lab, "Edit", "Clear Outputs of All Cells", name)
    if not _wait(page, "state.prompts.every(p => p === '[ ]:')", 10_000):
        lab.fail(f"{name}: Clear Outputs of All Cells left prompts {_state(page)['prompts']}")
    _menu(page, lab, "Run", "Run All Cells", name)
    if not _wait(page, "state.prompts.some(p => p !== '[ ]:')", 30_000):
        lab.fail(f"{name}: Run All Cells started nothing within 30 s (status {_state(page)['status']})")
    done = ("['dead', 'autorestarting', 'restarting', 'terminating'].includes(state.status) || "
            "state.dialogs.some(d => /died|restart/i.test(d)) || "
            "(state.status === 'idle' && !state.prompts.some(p => p.includes('*')) && "
            " (state.prompts.every(p => /^\\[\\d+\\]:$/.test(p)) || state.errors.length > 0))")
    finished = _wait(page, done, RUN_S * 1000, polling=500)
    state = _state(page)
    if not finished:
        running = [i + 1 for i, p in enumerate(state["prompts"]) if "*" in p]
        lab.fail(f"{name}: still running after {RUN_S} s (code cells {running[:3]} busy; kernels: "
                 f"{lab.kernel_states()})")
    if state["status"] != "idle" or any(re.search("died|restart", d, re.I) for d in state["dialogs"]):
        lab.fail(f"{name}: the kernel died (status {state['status']}; dialogs: {state['dialogs']}; "
                 f"kernels: {lab.kernel_states()})")
    if state["errors"]:
        error = state["errors"][0]
        pytest.fail(f"{name}: cell {error['cell']} of {state['cells']} failed:\n"
                    + "\n".join(error["text"].splitlines()[-25:]), pytrace=False)
    counts = [int(p[1:-2]) for p in state["prompts"]]
    assert counts == sorted(set(counts)), f"{name}: cells ran out of order: {state['prompts']}"
    return state


def test_01_runs_from_the_run_menu(lab, page, shots):
    name = "01_preprocessing.ipynb"
    _open(page, lab, name)
    _run_all(page, lab, name, shots / "01_preprocessing.run.png")
    want = _stored(REPO / "notebooks" / name)
    _wait(page, "state.images >= arg && state.decoded === state.images", WIDGET_MS, want["images"])
    state = _state(page)
    _screenshot(page, shots / "01_preprocessing.run.png")
    assert (len(state["prompts"]), state["collapsed"]) == (want["code"] - want["collapsed"], want["collapsed"])
    assert state["images"] == state["decoded"] == want["images"], (
        f"{name}: the run shows {state['images']} figures ({state['decoded']} decoded), the committed notebook "
        f"{want['images']}")
    assert state["tables"] == want["tables"]
    _assert_no_widget_error(state, name)


def _cards(panel) -> list[str]:
    """The result cards of a caption → images panel: each thumbnail's caption and image data."""
    return panel.locator("img").evaluate_all("imgs => imgs.map(i => i.title + ' | ' + i.src.slice(-64))")


def test_08_runs_and_its_panels_answer(lab, page, shots):
    name = "08_interactive_search.ipynb"
    want = _stored(REPO / "notebooks" / name)
    _open(page, lab, name)
    _run_all(page, lab, name, shots / "08_interactive_search.run.png")
    if not _wait(page, "state.widgets >= arg && !state.loading", WIDGET_MS, want["panels"]):
        state = _state(page)
        pytest.fail(f"{name}: {state['widgets']} live widgets after the run, {want['panels']} panels in the "
                    f"committed notebook; {state['widgetError'] or ''}", pytrace=False)
    state = _state(page)
    assert state["widgets"] == want["panels"]
    assert state["images"] == state["decoded"] == want["images"], (
        f"{name}: {state['images']} snapshots on the page ({state['decoded']} decoded), {want['images']} stored")
    _assert_no_widget_error(state, name)

    # Caption → images (the first panel, shown by cell "text_panel.show()"): type a caption, press Enter.
    panel = page.locator(".jp-OutputArea-output > .widget-vbox").filter(
        has=page.locator(".widget-html-content", has_text="Caption → images. Type a caption")).first
    box = panel.locator(".widget-text input").first
    query, caption = box.input_value(), "a large yellow disc on a plain background"
    assert query and query != caption, f"{name}: the panel's caption box holds {query!r}"
    before = _cards(panel)
    assert len(before) == 5, f"{name}: {len(before)} result cards for {query!r}, K = 5"
    box.fill(caption)
    box.press("Enter")
    try:
        page.wait_for_function(
            "([el, old]) => { const now = [...el.querySelectorAll('img')].map(i => i.title + ' | ' + i.src.slice(-64));"
            " return now.length === old.length && now.join('\\n') !== old.join('\\n'); }",
            arg=[panel.element_handle(), before], timeout=WIDGET_MS, polling=250)
    except PlaywrightError:
        pytest.fail(f"{name}: the result cards did not change within {WIDGET_MS / 1000:.0f} s of a new caption "
                    f"and Enter: {_cards(panel)}", pytrace=False)
    panel.screenshot(path=str(shots / "08_interactive_search.caption_typed.png"))

    # The SearchPanel (the last cell): three tabs, each click shows its own panel and hides the others.
    search = page.locator(".jp-OutputArea-output > .widget-tab").last
    labels = search.locator(".lm-TabBar-tab .lm-TabBar-tabLabel").all_inner_texts()
    assert labels == ["Caption → images", "Image → captions", "Shared space"]
    pages = search.locator(".widget-tab-contents > .jupyter-widgets")
    assert pages.count() == 3
    expect = {1: ("Image → captions.", "table"), 2: ("The shared space.", "svg circle"),
              0: ("Caption → images.", "img")}
    for index, (heading, content) in expect.items():  # away from the first tab and back
        search.locator(".lm-TabBar-tab").nth(index).click()
        shown = pages.nth(index)
        try:
            shown.wait_for(state="visible", timeout=WIDGET_MS)
        except PlaywrightError:
            pytest.fail(f"{name}: clicking the tab {labels[index]!r} did not show its panel", pytrace=False)
        assert heading in shown.inner_text()
        assert shown.locator(content).count() > 0, f"{name}: the {labels[index]!r} tab shows no {content}"
        also = [labels[i] for i in range(3) if i != index and pages.nth(i).is_visible()]
        assert not also, f"{name}: with {labels[index]!r} chosen, {also} show too"
        search.screenshot(path=str(shots / f"08_interactive_search.tab{index + 1}.png"))
    _screenshot(page, shots / "08_interactive_search.run.png")
    _assert_no_widget_error(_state(page), name)
