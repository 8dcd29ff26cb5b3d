"""Browser tests of the web client against a real `emosation serve`.

Each test module gets its own server (the debug binary, a fresh data dir, a
free loopback port); a module may set `SERVER_ARGS` for extra flags. The
browser is Debian's chromium driven by Playwright.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("EMOSATION_BIN", ROOT / "target" / "debug" / "emosation"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DOCS = ROOT / "docs"
PASSWORD = "correct horse battery"

# The machine may be busy building (2 cores shared with cargo): give
# assertions that wait for the page more room than Playwright's 5 s.
expect.set_options(timeout=15_000)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `emosation serve` process; kill() and start() keep port and data."""

    def __init__(self, args=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = tempfile.mkdtemp(prefix="emosation-web-")
        self.args = list(args)
        self.proc = None
        self.log = open(Path(self.data) / "server.log", "ab")

    def start(self):
        env = dict(os.environ, EMOSATION_LOG_LEVEL=os.environ.get("EMOSATION_LOG_LEVEL", "warn"))
        self.proc = subprocess.Popen(
            [str(BINARY), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data, *self.args],
            stdout=self.log,
            stderr=self.log,
            env=env,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.data}/server.log")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def kill(self):
        """SIGKILL: no shutdown, no flush beyond what is already durable."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.data, ignore_errors=True)

    def call(self, method, path, body=None, token=None):
        """A plain HTTP call to the API: (status, parsed JSON or None)."""
        req = urllib.request.Request(self.url + path, method=method)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            req.add_header("content-type", "application/json")
        if token:
            req.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, data, timeout=10) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None

    def signup(self, username, password=PASSWORD):
        status, body = self.call("POST", "/v1/auth/signup", {"username": username, "password": password})
        assert status == 201, body
        return body

    def login(self, username, password=PASSWORD):
        status, body = self.call("POST", "/v1/auth/login", {"username": username, "password": password})
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def server(request):
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `cargo build -p emosation` first")
    s = Server(getattr(request.module, "SERVER_ARGS", ()))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args():
    return {
        "executable_path": CHROMIUM,
        "headless": True,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


# Console noise that is the point of a test (a server killed on purpose).
EXPECTED_CONSOLE = (
    "WebSocket connection to",
    "Failed to load resource: net::ERR_CONNECTION_REFUSED",
    # Requests made while the network is down on purpose (set_offline).
    "Failed to load resource: net::ERR_INTERNET_DISCONNECTED",
    # API errors the page handles (409 room_full, 401 before a refresh).
    "Failed to load resource: the server responded with a status of 4",
)


class Person:
    """A browser context (its own storage) with one page, and what it logged."""

    def __init__(self, browser, server, name, viewport=None, locale="en-US"):
        self.server = server
        self.name = name
        self.context = browser.new_context(
            viewport=viewport or {"width": 1280, "height": 800}, locale=locale, base_url=server.url
        )
        self.page = self.context.new_page()
        self.errors = []
        self.watch(self.page)

    def watch(self, page):
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on(
            "console",
            lambda m: m.type == "error"
            and not any(x in m.text for x in EXPECTED_CONSOLE)
            and self.errors.append(f"console: {m.text}"),
        )

    def signup_via_ui(self, password=PASSWORD):
        p = self.page
        p.goto("/#/signup")
        p.fill("#username", self.name)
        p.fill("#password", password)
        p.fill("#confirm", password)
        p.click(".auth-form button[type=submit]")
        p.wait_for_selector(".sidebar")

    def login_via_ui(self, password=PASSWORD, page=None):
        p = page or self.page
        p.goto("/#/login")
        p.fill("#username", self.name)
        p.fill("#password", password)
        p.click(".auth-form button[type=submit]")
        p.wait_for_selector(".sidebar")

    def close(self):
        self.context.close()


@pytest.fixture
def people(browser, server):
    made = []

    def make(name, **kw):
        person = Person(browser, server, name, **kw)
        made.append(person)
        return person

    yield make
    errors = [f"{p.name}: {e}" for p in made for e in p.errors]
    for p in made:
        p.close()
    assert not errors, "errors in the page:\n" + "\n".join(errors)
