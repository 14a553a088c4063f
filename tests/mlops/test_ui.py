"""The MLflow UI (`make ui`) renders a study and the registry, checked in a real headless Chromium.

A small store is built with the real code: a 5-trial study through `deepdram.learn.search.study.tune`
(one parent run, one nested child run per trial) and the three registered models, each a tiny
Keras model logged with the project's pyfunc logging, registered (`registry.register`) and made
champion (`registry.promote`); a second forward version is a pending challenger. `mlflow ui` is
started with the command line of `make ui` (on a free port) in its own process group, and
Chromium (`/usr/bin/chromium`, Debian package; `scripts/setup_services.sh` installs it) is driven
over the DevTools protocol: the experiment page must list the parent run and, expanded, its
children; the registry page must show each model's champion alias and the challenger. The
screenshots are kept in outputs/ui/ (or $DEEPDRAM_UI_ARTIFACTS): study-runs.png, registry.png,
registered-model.png.

Skipped when Chromium is not installed; a failure instead under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("optuna")
pytest.importorskip("keras")

from deepdram.mlops import catalogue, pyfuncs, registry, tracking  # noqa: E402
from deepdram.paths import REPO_ROOT  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1600,1000"]
UI_START_TIMEOUT = 240.0  # `mlflow ui` starts 4 uvicorn workers: a minute on 2 busy cores
PAGE_TIMEOUT = 90.0
TRIALS = 5


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing(msg: str):
    """Skip for a missing dependency; under CI=true that is a failure (a skip would hide the test)."""
    if _ci():
        pytest.fail(f"{msg} (CI=true: this test must run)")
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    for exe in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if exe and os.access(exe, os.X_OK):
            return exe
    _missing("Chromium not installed (apt-get install -y chromium; scripts/setup_services.sh does it)")


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group, SIGKILL after `grace` s; wait until the whole group is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 20.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    proc.wait(timeout=10)


# --- a minimal DevTools-protocol client (WebSocket, standard library only) ------------------------------


class DevTools:
    """Headless Chromium with one page, driven over the DevTools protocol (no Python deps)."""

    def __init__(self, exe: str, profile: Path, log: Path):
        self.profile = profile
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                          "--remote-debugging-port=0", "about:blank"],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Chromium did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
        ws = urllib.parse.urlparse(pages[0]["webSocketDebuggerUrl"])
        self.sock = socket.create_connection((ws.hostname, ws.port), timeout=PAGE_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {ws.path} HTTP/1.1\r\nHost: {ws.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv_some()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        self.next_id = 0
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)

    def _recv_some(self) -> bytes:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("DevTools connection closed")
        return chunk

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._recv_some()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode: int, data: bytes) -> None:
        n = len(data)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                         bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        body = (np.frombuffer(data, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(head + mask + body)

    def _message(self) -> dict:
        parts = []
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            payload = self._recv_exact(n)
            opcode = b0 & 0x0F
            if opcode == 8:
                raise ConnectionError("DevTools connection closed by Chromium")
            if opcode == 9:  # ping
                self._send(10, payload)
                continue
            parts.append(payload)
            if b0 & 0x80:
                return json.loads(b"".join(parts))

    def call(self, method: str, **params):
        self.next_id += 1
        self._send(1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expression[:80]}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def text(self) -> str:
        """The page's rendered text, whitespace collapsed."""
        return " ".join((self.js("document.body ? document.body.innerText : ''") or "").split())

    def rows(self) -> list[str]:
        """The rendered text of every table row (ag-grid, antd and role=row tables)."""
        return [" ".join(t.split()) for t in self.js(
            "Array.from(document.querySelectorAll('[role=row], tr')).map(r => r.innerText)") or []]

    def tidy(self) -> None:
        """Close what covers the page: the assistant side panel and a promotion dialog."""
        self.js("""document.querySelectorAll('[data-component-id="mlflow.assistant.chat_panel.close"], '
                + '[role=dialog] button[aria-label=Close]').forEach(b => b.click())""")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_text(self, *needles: str, timeout: float = PAGE_TIMEOUT) -> str:
        """The page's rendered text once it holds every needle (AssertionError with the text if not)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(n in text for n in needles):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"missing {[n for n in needles if n not in text]} in the rendered page:\n"
                                     f"{text[:3000]}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        time.sleep(1.0)  # let the last layout settle
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            _stop_group(self.proc, grace=5.0)


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file (AssertionError if it is not one)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _artifacts() -> Path:
    return Path(os.environ.get("DEEPDRAM_UI_ARTIFACTS") or REPO_ROOT / "outputs" / "ui")


# --- the store: a study and the registry, made by the real code -------------------------------------------


def _study(store: Path, tuning_kit) -> dict:
    """A TRIALS-trial forward study (tiny cells, 2 folds, 1 epoch) run by `tune`; its summary."""
    from deepdram.learn.search.study import tune
    from deepdram.learn.training import xy
    from deepdram.spaces.lattice.space import LatticeSpace

    space = {k: v for k, v in tuning_kit.space.items() if k != "resampling"}
    paper = {k: v for k, v in tuning_kit.paper.items() if k != "resampling"}
    params = tuning_kit.params(trials=TRIALS, folds=2, rows=120, space=space, paper=paper,
                               fit={**tuning_kit.fit, "epochs": 1})
    cfg = tuning_kit.config(params, "forward", store / "tuning")
    lattice = LatticeSpace()
    data = {"": xy(lattice, tuning_kit.cells(24))}
    return tune(cfg, data, progress=False, space=lattice)


def _registry(store: Path, tiny_keras) -> dict[str, int]:
    """The three lattice models registered and promoted to champion; a pending forward challenger.
    Returns {name: challenger version} of the pending one."""
    import mlflow

    shapes = {"forward": (42, 4), "size_agnostic": (44, 4), "generator": (4 + 8, 42)}

    def version(model, r2: float) -> int:
        tracking.experiment(model.experiment)
        n_in, n_out = shapes[model.kind]
        keras_path = tiny_keras(store / f"{model.key}-{r2}.keras", n_in, n_out,
                                output_activation="sigmoid" if model.kind == "generator" else None)
        with mlflow.start_run(run_name=f"train_{model.key}") as run:
            tracking.log_tags({tracking.TEST_SET_TAG: "md5-of-the-test-split"})
            mlflow.log_metrics({model.metric: r2})
            pyfuncs.log_model(model.kind, keras_path)
        return registry.register(run.info.run_id, model.name)

    for model in catalogue.LATTICE_MODELS:
        version(model, 0.9)
        result = registry.promote(model.name, metric=model.metric)
        assert result["decision"] == "promoted", result
    pending = version(catalogue.FORWARD, 0.95)  # registered, not promoted: the challenger
    return {catalogue.FORWARD.name: pending}


@pytest.fixture(scope="module")
def ui_store(mlflow_store, tuning_kit, tiny_keras):
    """The module's sqlite store with the study and the registry; (folder, uri, study summary, pending)."""
    _chromium()  # nothing to build without a browser
    out = _study(mlflow_store, tuning_kit)
    pending = _registry(mlflow_store, tiny_keras)
    return mlflow_store, tracking.configure(), out, pending


def _make_ui_command(uri: str, port: int) -> list[str]:
    """The command `make ui` runs (its recipe, printed by `make -n`), on store `uri` and `port`."""
    if not shutil.which("make"):
        _missing("make not installed")
    dry = subprocess.run(["make", "--no-print-directory", "-n", "ui", f"TRACKING_URI={uri}", f"UI_PORT={port}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in dry.splitlines() if " ui " in f" {ln} " and "mlflow" in ln]
    assert len(lines) == 1, f"`make -n ui` printed no single mlflow ui line:\n{dry}"
    cmd = shlex.split(lines[0])
    cmd[0] = str((REPO_ROOT / cmd[0]).resolve()) if not os.path.isabs(cmd[0]) else cmd[0]
    if not Path(cmd[0]).exists():  # not in the project's .venv: this interpreter's mlflow
        cmd[0] = str(Path(sys.executable).with_name("mlflow"))
    return cmd


@pytest.fixture(scope="module")
def ui(ui_store, tmp_path_factory):
    """`mlflow ui` (the `make ui` command line) on the store, in its own process group; its URL."""
    _folder, uri, _out, _pending = ui_store
    port = _free_port()
    cmd = _make_ui_command(uri, port)
    assert cmd[1:3] == ["ui", "--backend-store-uri"] and uri in cmd and "127.0.0.1" in cmd, cmd
    log = tmp_path_factory.mktemp("ui") / "mlflow-ui.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    env["PATH"] = os.pathsep.join([str(Path(cmd[0]).parent), env.get("PATH", "")])
    with open(log, "wb") as out_file:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + UI_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow ui not ready after {UI_START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(proc)


@pytest.fixture()
def browser(tmp_path):
    """Headless Chromium with a fresh profile (closed after the test)."""
    exe = _chromium()
    profile = Path(tempfile.mkdtemp(prefix="deepdram-chromium-"))
    b = DevTools(exe, profile, tmp_path / "chromium.log")
    try:
        yield b
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


# --- the checks ---------------------------------------------------------------------------------------------


def _row(rows: list[str], name: str) -> str:
    found = [r for r in rows if r.startswith(name + " ") or f" {name} " in f" {r} "]
    assert found, f"no row for {name} in {rows}"
    return found[0]


def test_experiment_page_lists_the_study_and_its_trials(ui, ui_store, browser):
    from deepdram.learn.search.trials import experiment_name

    _folder, _uri, out, _pending = ui_store
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment_name()).experiment_id
    parent = c.get_run(out["parent_run_id"])
    children = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = sorted(r.info.run_name for r in children)
    assert len(names) == out["trials_total"] >= TRIALS

    browser.goto(f"{ui}/#/experiments/{exp}/runs")
    text = browser.wait_text(parent.info.run_name, f"{len(names) + 1} matching runs")
    browser.tidy()
    assert not any(n in text for n in names), "the children are listed before their parent is expanded"
    # expand the parent's row: its children are listed under it
    clicked = browser.js(f"""(() => {{
        const link = document.querySelector('a[href$="/runs/{parent.info.run_id}"]');
        const cell = link && link.closest('.ag-cell');
        const button = cell && cell.querySelector('button');
        if (!button) return 'no expander in the parent row';
        button.click();
        return 'clicked';
    }})()""")
    assert clicked == "clicked", clicked
    browser.wait_text(*names)
    # on screen, top to bottom: the parent, then its children (newest first), indented under it
    links = browser.js("""Array.from(document.querySelectorAll('a[href*="/runs/"]')).map(a => {
        const r = a.getBoundingClientRect(); return [r.top, r.left, a.innerText.trim()]; })""")
    shown = sorted((top, left, name) for top, left, name in links if name in (parent.info.run_name, *names))
    assert [name for _, _, name in shown] == [parent.info.run_name, *names[::-1]], shown
    assert all(left > shown[0][1] for _, left, _ in shown[1:]), shown
    png = browser.screenshot(_artifacts() / "study-runs.png")
    assert _png_size(png) == (1600, 1000) and png.stat().st_size > 30_000

    # the parent's own page: the study's summary (best trial, the best trials' table) and its children
    best = parent.data.tags["deepdram.best_run"]
    browser.goto(f"{ui}/#/experiments/{exp}/runs/{parent.info.run_id}")
    newest = names[::-1][:10]  # the page lists the ten newest children
    text = browser.wait_text(f"optuna study {out['study']}", f"best {best}", "best_cv_r2", f"deepdram.best_run : {best}",
                             "Child runs " + ", ".join(newest))
    browser.tidy()
    assert f"| 1 | {best} |" not in text and f"1 {best}" in text  # the Markdown table is rendered
    browser.js("""Array.from(document.querySelectorAll('button, a')).filter(e => e.innerText.trim() === 'Show more')
                  .slice(0, 1).forEach(e => e.click())""")  # the whole description
    browser.screenshot(_artifacts() / "study-parent.png")


def test_registry_page_shows_champions_and_the_pending_challenger(ui, ui_store, browser):
    _folder, _uri, _out, pending = ui_store
    (pending_name, pending_version), = pending.items()
    browser.goto(f"{ui}/#/models")
    browser.wait_text(*[m.name for m in catalogue.LATTICE_MODELS], "Aliased versions")
    browser.tidy()
    rows = browser.rows()
    for model in catalogue.LATTICE_MODELS:
        row = _row(rows, model.name)
        if model.name == pending_name:  # the list shows one alias and "+1" (the champion); the model's page all
            assert f"@ challenger : Version {pending_version}" in row and ("+1" in row or "@ champion" in row), row
        else:
            assert "@ champion : Version 1" in row, row
    png = browser.screenshot(_artifacts() / "registry.png")
    assert _png_size(png) == (1600, 1000) and png.stat().st_size > 20_000

    browser.goto(f"{ui}/#/models/{pending_name}")
    browser.wait_text(pending_name, f"Version {pending_version}", "Version 1", "@ champion", "@ challenger")
    browser.tidy()
    rows = browser.rows()
    assert "@ challenger" in _row(rows, f"Version {pending_version}")
    champion = _row(rows, "Version 1")
    assert "@ champion" in champion and "promotion.decision : promoted" in champion, champion
    png = browser.screenshot(_artifacts() / "registered-model.png")
    assert _png_size(png) == (1600, 1000)
