"""Drive JupyterLab in headless Chromium the way a person uses a notebook: open it, Run All, look, move.

Used by ``tests/test_browser.py``. No browser download and no extra package: Chromium is Debian's
(``.ci/run`` installs it) and is driven through its DevTools protocol over a WebSocket
(``websocket-client``, which jupyter-server itself requires).

* :class:`Lab` starts ``jupyter lab`` on a free loopback port with a token, private settings,
  workspace, config and runtime folders, and without ``ADVCL_HEADLESS`` (so widgets are real), and
  optionally with the ipywidgets frontend extension disabled (the negative control).
* :class:`Browser` starts Chromium headless with a fresh profile and speaks the DevTools protocol.
* :func:`run_all_and_check` opens one notebook, runs every cell through JupyterLab's own
  "Run All Cells" command, and returns what a person would see as wrong: error or stderr outputs,
  images that did not load, widgets shown as text or as "Error displaying widget".
* :func:`move_and_wait` presses keys on a slider or dropdown (or clicks a button) through Chromium's
  input events, as a person would, and waits for the figure of that widget to change.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import websocket

WIDGET_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000", "--remote-allow-origins=*"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Lab:
    """A JupyterLab server over ``root`` (a scratch folder), private to this test."""

    def __init__(self, root: Path, private: Path, widgets: bool = True):
        self.root, self.port, self.token = Path(root), free_port(), "advcl-browser-test"
        config = private / "config"
        (config / "labconfig").mkdir(parents=True, exist_ok=True)
        if not widgets:   # what `jupyter labextension disable` writes, in this server's own config folder
            (config / "labconfig" / "page_config.json").write_text(
                json.dumps({"disabledExtensions": {WIDGET_EXTENSION: True}}))
        notify = private / "settings" / "@jupyterlab" / "apputils-extension"
        notify.mkdir(parents=True, exist_ok=True)   # no "official Jupyter news?" question: nothing to fetch offline
        (notify / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        docs = private / "settings" / "@jupyterlab" / "docmanager-extension"
        docs.mkdir(parents=True, exist_ok=True)     # the scratch copy is never saved behind the test's back
        (docs / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
        env = {k: v for k, v in os.environ.items() if k not in ("ADVCL_HEADLESS", "MPLBACKEND", "ADVCL_PROGRESS")}
        env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(private / "runtime"),
                   IPYTHONDIR=str(private / "ipython"), JUPYTER_PLATFORM_DIRS="1")
        self.log = open(private / "lab.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={self.root}",
             f"--IdentityProvider.token={self.token}", "--LabApp.expose_app_in_browser=True",
             f"--LabApp.user_settings_dir={private / 'settings'}", f"--LabApp.workspaces_dir={private / 'workspaces'}",
             "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else [])],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        _wait(self._up, 90, "JupyterLab to answer")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}; see {self.log.name}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status?token={self.token}", timeout=2)
            return True
        except OSError:
            return False

    def url(self, notebook: str) -> str:
        return f"http://127.0.0.1:{self.port}/lab/tree/{notebook}?reset&token={self.token}"

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Browser:
    """Headless Chromium with a fresh profile, one page, driven over the DevTools protocol."""

    def __init__(self, executable: str, profile: Path):
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        port = int(_wait(lambda: port_file.exists() and port_file.read_text().split("\n")[0], 30,
                         "Chromium's DevTools port"))
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=300, suppress_origin=True)
        self._id = 0
        self.send("Emulation.setFocusEmulationEnabled", enabled=True)   # focus as in a window in front
        self.send("Page.enable")                                         # dialog events reach send()

    def send(self, method: str, **params):
        self._id += 1
        want = self._id
        self.ws.send(json.dumps({"id": want, "method": method, "params": params}))
        while True:   # events arrive in between; only the answer to this call matters
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Page.javascriptDialogOpening":   # "leave this page?": yes, as a person would
                self._id += 1
                self.ws.send(json.dumps({"id": self._id, "method": "Page.handleJavaScriptDialog",
                                         "params": {"accept": True}}))
                continue
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def key(self, key: str, code: int):
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

    def type(self, char: str):
        """One printable key, e.g. the first letter of an option in a focused dropdown (type-ahead)."""
        self.send("Input.dispatchKeyEvent", type="keyDown", key=char, text=char)
        self.send("Input.dispatchKeyEvent", type="keyUp", key=char)

    def click(self, x: float, y: float):
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# The open notebook's panel (shell.currentWidget follows focus, which a headless page may lack)
_NOTEBOOK = ("var NOTEBOOK = () => [...window.jupyterapp.shell.widgets('main')]"
             ".find(w => w.content && w.sessionContext && w.content.widgets);\n")
# The state of the open notebook, read from JupyterLab's own models and from the rendered page.
STATE = _NOTEBOOK + r"""(() => {
  const w = window.jupyterapp && NOTEBOOK();
  if (!w) return null;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.widgets;
  const code = cells.filter(c => c.model.type === 'code');
  const problems = [];
  let errors = 0;
  code.forEach((c, i) => {
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') { errors++; problems.push(`code cell ${i}: ${o.ename}: ${o.evalue}`); }
      if (o.output_type === 'stream' && o.name === 'stderr') problems.push(`code cell ${i}: stderr: ${String(o.text).slice(0, 300)}`);
    }
  });
  const node = w.content.node;
  const outputs = [...node.querySelectorAll('.jp-OutputArea')].map(o => o.textContent).join('\n');
  if (outputs.includes('Error displaying widget')) problems.push('"Error displaying widget" in an output');
  const imgs = [...node.querySelectorAll('.jp-OutputArea-output img')];
  imgs.forEach((im, i) => { if (!(im.complete && im.naturalWidth > 0)) problems.push(`output image ${i} did not load`); });
  [...node.querySelectorAll('.jp-OutputArea-output pre')].forEach(p => {
    if (/^\s*interactive\(children=/.test(p.textContent)) problems.push('a widget shown as its text repr: ' + p.textContent.slice(0, 80));
  });
  return {kernel: kernel ? kernel.status : 'none', errors,
          cells: code.length, executed: code.filter(c => c.model.executionCount !== null).length,
          running: [...node.querySelectorAll('.jp-InputPrompt')].filter(p => p.textContent.includes('*')).length,
          images: imgs.length, controls: node.querySelectorAll('.widget-interact').length, problems};
})()"""


def open_notebook(browser: Browser, lab: Lab, notebook: str, timeout: float = 90) -> dict:
    browser.send("Page.navigate", url=lab.url(notebook))
    return _wait(lambda: (s := browser.js(STATE)) and s["kernel"] == "idle" and s, timeout,
                 f"{notebook} to open with an idle kernel")


def run_all_and_check(browser: Browser, lab: Lab, notebook: str, timeout: float = 240) -> dict:
    """Open ``notebook``, Run All Cells, wait for every code cell to finish; the final state, with
    ``problems`` (errors, stderr, broken images, widgets that did not render as controls)."""
    open_notebook(browser, lab, notebook)
    t0 = time.monotonic()
    # the menu's Run > Run All Cells, on this notebook made the current one
    browser.js(_NOTEBOOK + "window.jupyterapp.shell.activateById(NOTEBOOK().id);"
               "window.jupyterapp.commands.execute('notebook:run-all-cells'); true")   # not awaited: polled below

    def done():
        s = browser.js(STATE)
        finished = s and s["executed"] == s["cells"] and s["running"] == 0 and s["kernel"] == "idle"
        return s if (finished or (s and s["errors"])) else None     # Run All stops at a cell's error

    state = _wait(done, timeout, f"Run All in {notebook}", every=0.5)
    time.sleep(1.0)                      # let the last figures decode and the widgets render
    state = browser.js(STATE)
    state["seconds"] = round(time.monotonic() - t0, 1)
    return state


_WIDGET = _NOTEBOOK + r"""((i) => {
  const node = NOTEBOOK().content.node;
  const box = node.querySelectorAll('.widget-interact')[i];
  if (!box) return null;
  const img = box.querySelector('.widget-output img, .jp-OutputArea-output img');
  const controls = [...box.querySelectorAll('.widget-slider, .widget-dropdown, .widget-button')].map(el => {
    const label = el.querySelector('.widget-label');
    const r = (el.querySelector('.noUi-handle, select, button') || el).getBoundingClientRect();
    return {kind: el.classList.contains('widget-slider') ? 'slider' : el.classList.contains('widget-dropdown') ? 'dropdown' : 'button',
            label: label ? label.textContent.trim() : el.textContent.trim(), x: r.x + r.width / 2, y: r.y + r.height / 2,
            value: (el.querySelector('.widget-readout') || el.querySelector('select') || {}).value
                   || (el.querySelector('.widget-readout') || {}).textContent || null};
  });
  return {image: img ? img.src.slice(-120) + ':' + img.src.length : null, controls};
})"""


def widget_state(browser: Browser, index: int) -> dict | None:
    return browser.js(f"{_WIDGET}({index})")


def _focus(browser: Browser, index: int, kind: str, label: str | None):
    sel = {"slider": ".noUi-handle", "dropdown": "select", "button": "button"}[kind]
    found = browser.js(_NOTEBOOK + f"""(() => {{
      const box = NOTEBOOK().content.node.querySelectorAll('.widget-interact')[{index}];
      const els = [...box.querySelectorAll('.widget-{ 'slider' if kind == 'slider' else kind }')]
        .filter(el => {json.dumps(label)} === null || (el.querySelector('.widget-label') || el).textContent.trim() === {json.dumps(label)});
      if (!els.length) return false;
      const target = els[0].matches('{sel}') ? els[0] : els[0].querySelector('{sel}');
      target.scrollIntoView({{block: 'center'}});
      target.focus();
      return true;
    }})()""")
    if not found:
        raise AssertionError(f"widget {index}: no {kind} labelled {label!r}")


def move_and_wait(browser: Browser, index: int, kind: str, label: str | None = None, presses: int = 1,
                  text: str | None = None, click_after: bool = False, timeout: float = 120) -> tuple[dict, dict]:
    """Move one control of interact number ``index`` as a person would (``presses`` right-arrow keys on a
    focused slider; on a focused dropdown, ``text`` typed to pick the option it starts; a mouse click on a
    button; ``click_after``: then click the interact's button, as ``interact_manual`` needs) and wait
    until the interact's figure changes. (before, after) states."""
    before = widget_state(browser, index)
    if kind == "button":
        _click_button(browser, index)
    else:
        _focus(browser, index, kind, label)
        if kind == "slider":
            for _ in range(presses):
                browser.key("ArrowRight", 39)
        else:   # headless Chromium ignores arrow keys on a closed <select>; type-ahead works as in a window
            browser.type(text)
        if click_after:
            _click_button(browser, index)
    after = _wait(lambda: (s := widget_state(browser, index)) and s["image"] and s["image"] != before["image"] and s,
                  timeout, f"the figure of widget {index} to change after moving its {kind} {label or ''}")
    return before, after


def _click_button(browser: Browser, index: int):
    _focus(browser, index, "button", None)
    pos = browser.js(_NOTEBOOK + f"""(() => {{
      const b = NOTEBOOK().content.node.querySelectorAll('.widget-interact')[{index}]
                 .querySelector('button');
      const r = b.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];
    }})()""")
    browser.click(*pos)
