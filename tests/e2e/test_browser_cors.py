"""A real browser against the real stack: Debian's headless Chromium, driven over the DevTools pipe.

A page served from an allowed loopback origin signs up with `fetch(..., {credentials: "include"})`, then
reads the session through the cookie and asks a question: all of it works. The same page served from a
disallowed origin is blocked by the browser (the preflight fails, so the sign-up never reaches the API).
Chromium is driven through `tests.utils.browser` (CDP over `--remote-debugging-pipe`), so no browser
download and no websocket library are needed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.fakes.openai_server import free_port
from tests.utils.browser import Browser, Page, browser
from tests.utils.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
__all__ = ["browser"]  # the shared Chromium fixture, used by the tests below

PAGES = Path(__file__).resolve().parent / "browser_cors"


def run_page(browser: Browser, url: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """Open `url` in a new tab and return the JSON its `window.__done` promise resolves to."""
    target = browser.call("Target.createTarget", {"url": url})["targetId"]
    page = Page(
        browser, target, browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    )
    try:
        page.wait_for("document.readyState === 'complete' && !!window.__done", timeout=timeout)
        value: dict[str, Any] = json.loads(page.eval("window.__done"))
        return value
    finally:
        page.close()


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


def _page_url(origin: str, stack: Stack, email: str) -> str:
    return f"{origin}/page.html?" + urlencode({"api": stack.base_url, "email": email})


def test_allowed_origin_works_with_cookies(stack: Stack, browser: Browser, page_port: int) -> None:
    """From the allowed origin: sign-up, cookie-authenticated session read and chat all succeed."""
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
    with serve_pages("127.0.0.1", page_port) as origin:
        result = run_page(browser, _page_url(origin, stack, email))
    assert "error" not in result, result
    assert result["signup"] == 200
    assert result["requestId"]
    assert result["session"]["user"]["email"] == email
    assert result["chat"] == 200
    assert isinstance(result["chatBody"]["response"], str)
    assert result["chatBody"]["session_id"]


def test_disallowed_origin_is_blocked_by_the_browser(stack: Stack, browser: Browser) -> None:
    """From another origin (localhost, other port) the browser refuses: the sign-up never reaches the API."""
    email = f"blocked-{uuid.uuid4().hex[:8]}@example.com"
    with serve_pages("localhost", free_port()) as origin:
        result = run_page(browser, _page_url(origin, stack, email))
    assert "Failed to fetch" in result.get("error", ""), result
    assert "signup" not in result
    signin = httpx.post(stack.url("/api/auth/sign-in/email"), json={"email": email, "password": "browser-password-1"})
    assert signin.status_code == 401
