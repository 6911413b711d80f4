"""A real browser against the real stack: Debian's headless Chromium, driven over the DevTools pipe.

A page served from an allowed loopback origin signs up with `fetch(..., {credentials: "include"})`, then
reads the session through the cookie and asks a question: all of it works. The same page served from a
disallowed origin is blocked by the browser (the preflight fails, so the sign-up never reaches the API).
Chromium is driven with `--remote-debugging-pipe` (CDP as NUL-separated JSON on fds 3/4), so no
browser download and no websocket library are needed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.fakes.openai_server import free_port
from tests.utils.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAGES = Path(__file__).resolve().parent / "browser_cors"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)


class DevToolsPipe:
    """A minimal Chrome DevTools Protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, *, user_data_dir: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:
            keep_r, keep_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(keep_r, 3)
            os.dup2(keep_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds,  # the child needs the pipe ends on fds 3 and 4
            close_fds=False,
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._buffer = b""

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> Any:
        """Send one command and return its result (events in between are ignored)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    def run_page(self, url: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """Open `url` in a new tab and return the JSON its `window.__done` promise resolves to."""
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self.call(
                "Runtime.evaluate",
                {"expression": "document.readyState === 'complete' && !!window.__done", "returnByValue": True},
                session=session,
            )
            if ready["result"].get("value") is True:
                break
            time.sleep(0.1)
        result = self.call(
            "Runtime.evaluate",
            {"expression": "window.__done", "awaitPromise": True, "returnByValue": True, "timeout": timeout * 1000},
            session=session,
        )
        self.call("Target.closeTarget", {"targetId": target})
        value: dict[str, Any] = json.loads(result["result"]["value"])
        return value

    def close(self) -> None:
        """Ask the browser to quit; kill it if it lingers."""
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=5)
        os.close(self._to_browser)
        os.close(self._from_browser)


@contextlib.contextmanager
def serve_pages(host: str, port: int) -> Iterator[str]:
    """Serve the probe page on host:port from a thread; yields the origin."""
    handler = functools.partial(_QuietHandler, directory=str(PAGES))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def page_port() -> int:
    """The port of the allowed page origin (chosen before the stack starts, to configure CORS)."""
    return free_port()


@pytest.fixture(scope="module")
def stack(page_port: int, fake_openai: Any) -> Iterator[Stack]:
    """A stack that allows exactly http://127.0.0.1:<page_port> (and nothing on localhost)."""
    fake_openai.reset()
    env = {
        "CORS_ORIGINS": f"http://127.0.0.1:{page_port}",
        "OPENAI_API_KEY": "sk-browser-test-key",
        "OPENAI_BASE_URL": fake_openai.url,
    }
    with Stack(env=env) as running:
        # The chat answers from the worker's embedded store: until the worker serves it, a question is a
        # fast 503 (as API.md says), which this test must not race against.
        running.wait_worker(timeout=60)
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[DevToolsPipe]:
    """Headless Chromium with a fresh profile."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (apt-get install chromium)")
        pytest.skip("chromium not installed")
    profile = Path(tempfile.mkdtemp(prefix="lectern-chromium-"))
    pipe = DevToolsPipe(user_data_dir=profile)
    pipe.call("Browser.getVersion")
    yield pipe
    pipe.close()
    shutil.rmtree(profile, ignore_errors=True)


def _page_url(origin: str, stack: Stack, email: str) -> str:
    return f"{origin}/page.html?" + urlencode({"api": stack.base_url, "email": email})


def test_allowed_origin_works_with_cookies(stack: Stack, browser: DevToolsPipe, page_port: int) -> None:
    """From the allowed origin: sign-up, cookie-authenticated session read and chat all succeed."""
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
    with serve_pages("127.0.0.1", page_port) as origin:
        result = browser.run_page(_page_url(origin, stack, email))
    assert "error" not in result, result
    assert result["signup"] == 200
    assert result["requestId"]
    assert result["session"]["user"]["email"] == email
    assert result["chat"] == 200
    assert isinstance(result["chatBody"]["response"], str)
    assert result["chatBody"]["session_id"]


def test_disallowed_origin_is_blocked_by_the_browser(stack: Stack, browser: DevToolsPipe) -> None:
    """From another origin (localhost, other port) the browser refuses: the sign-up never reaches the API."""
    email = f"blocked-{uuid.uuid4().hex[:8]}@example.com"
    with serve_pages("localhost", free_port()) as origin:
        result = browser.run_page(_page_url(origin, stack, email))
    assert "Failed to fetch" in result.get("error", ""), result
    assert "signup" not in result
    signin = httpx.post(stack.url("/api/auth/sign-in/email"), json={"email": email, "password": "browser-password-1"})
    assert signin.status_code == 401
