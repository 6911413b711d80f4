"""Headless Chromium driven over the DevTools pipe, with what a page does recorded (for the page tests).

The same approach as `tests/e2e/test_browser_cors.py` (Debian's `chromium`, `--remote-debugging-pipe`:
CDP as NUL-separated JSON on fds 3/4, no browser download, no websocket library), plus a reader thread
so that events are kept while the test waits: every request a page makes and its response status,
console errors, uncaught exceptions, JavaScript dialogs (dismissed at once) and Content-Security-Policy
violations (reported through a CDP binding, so the page's own code cannot hide them).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
#: Reports every CSP violation to the test through the `__lecternCsp` binding (added before any page script).
_CSP_PROBE = """
document.addEventListener("securitypolicyviolation", (e) => {
  globalThis.__lecternCsp(JSON.stringify({directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample}));
});
"""


class Browser:
    """One Chromium process; `open(url)` gives a recording `Page`."""

    def __init__(self, *, user_data_dir: Path, flags: tuple[str, ...] = ()) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:
            keep_r, keep_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(keep_r, 3)
            os.dup2(keep_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, *flags, f"--user-data-dir={user_data_dir}", "about:blank"],
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
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one whole message per write, whichever thread sends it
        self._changed = threading.Condition(self._lock)
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        #: session -> canned responses for requests whose URL ends with the key (see `Page.fake_response`).
        self._canned: dict[str, dict[str, dict[str, Any]]] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read_forever, name="cdp-reader", daemon=True)
        self._reader.start()

    # -- protocol ----------------------------------------------------------------------------
    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> Any:
        """Send one command and wait for its result."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        with self._write_lock:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        with self._changed:
            while ident not in self._replies:
                if self._closed:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                if not self._changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{method}: no reply within 60 s")
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _read_forever(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._changed:
                    self._closed = True
                    self._changed.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._changed:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self._events.append(message)
                    self._changed.notify_all()
                if message.get("method") == "Fetch.requestPaused":
                    threading.Thread(target=self._answer_paused, args=(message,), daemon=True).start()
                if message.get("method") == "Page.javascriptDialogOpening":
                    # Dismissed from another thread: this one must keep reading for the reply.
                    threading.Thread(target=self._dismiss_dialog, args=(message.get("sessionId"),), daemon=True).start()

    def _answer_paused(self, message: dict[str, Any]) -> None:
        session, params = message.get("sessionId"), message["params"]
        canned = next(
            (
                r
                for suffix, r in self._canned.get(session or "", {}).items()
                if params["request"]["url"].endswith(suffix)
            ),
            None,
        )
        with contextlib.suppress(Exception):
            if canned is None:
                self.call("Fetch.continueRequest", {"requestId": params["requestId"]}, session=session)
            else:
                self.call("Fetch.fulfillRequest", {"requestId": params["requestId"], **canned}, session=session)

    def _dismiss_dialog(self, session: str | None) -> None:
        with contextlib.suppress(Exception):
            self.call("Page.handleJavaScriptDialog", {"accept": False}, session=session)

    def can(self, session: str, url_suffix: str, response: dict[str, Any]) -> list[str]:
        """Keep a canned response for one tab; returns every URL suffix that tab has one for."""
        with self._lock:
            self._canned.setdefault(session, {})[url_suffix] = response
            return list(self._canned[session])

    def events(self, session: str, method: str | None = None) -> list[dict[str, Any]]:
        """Events of one page (optionally of one method), oldest first."""
        with self._lock:
            return [
                e for e in self._events if e.get("sessionId") == session and (method is None or e["method"] == method)
            ]

    # -- pages -------------------------------------------------------------------------------
    def open(self, url: str, *, width: int = 1280, height: int = 900, mobile: bool = False) -> Page:
        """A new tab (its own sessionStorage) that records everything, then navigated to `url`."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call("Runtime.addBinding", {"name": "__lecternCsp"}, session=session)
        self.call("Page.addScriptToEvaluateOnNewDocument", {"source": _CSP_PROBE}, session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
            session=session,
        )
        page.goto(url)
        return page

    def framed(self, url: str, *, frames: int, timeout: float = 20.0) -> dict[str, str]:
        """Open `url` (a page with `frames` iframes) and return {iframe src: the location its document shows}.

        A frame the browser refused to draw (frame-ancestors, X-Frame-Options) shows Chromium's error page,
        `chrome-error://chromewebdata/`; a drawn page of ours shows its own URL once its script has run.
        """
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        flags = {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": True}
        self.call("Target.setAutoAttach", flags, session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        probe = "document.readyState === 'complete' ? location.href + ' ' + (document.documentElement.dataset.ready || '') : ''"
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = {}
            for event in self.events(session, "Target.attachedToTarget"):
                info = event["params"]["targetInfo"]
                if info["type"] != "iframe":
                    continue
                with contextlib.suppress(RuntimeError, TimeoutError):
                    answer = self.call(
                        "Runtime.evaluate",
                        {"expression": probe, "returnByValue": True},
                        session=event["params"]["sessionId"],
                    )
                    shown = str(answer["result"].get("value") or "")
                    # The target's URL stays the iframe's src, also when an error page is drawn instead.
                    src = self.call("Target.getTargetInfo", {"targetId": info["targetId"]})["targetInfo"]["url"]
                    if src and (shown.startswith("chrome-error:") or shown.endswith(" 1")):
                        seen[src] = shown.split(" ")[0]
            if len(seen) >= frames:
                break
            time.sleep(0.2)
        self.call("Target.closeTarget", {"targetId": target})
        return seen

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
        self._reader.join(timeout=5)
        os.close(self._from_browser)


class Page:
    """One tab and its recordings."""

    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """A CDP command in this tab."""
        return self.browser.call(method, params, session=self.session)

    def goto(self, url: str, *, timeout: float = 30.0) -> None:
        """Navigate and wait until the page's script has run (`<html data-ready>`)."""
        self.call("Page.navigate", {"url": url})
        self.wait_loaded(timeout=timeout)

    def reload(self, *, timeout: float = 30.0) -> None:
        """Reload the page (sessionStorage survives) and wait for its script."""
        self.eval("document.documentElement.removeAttribute('data-ready')")
        self.call("Page.reload", {"ignoreCache": True})
        self.wait_loaded(timeout=timeout)

    def wait_loaded(self, *, timeout: float = 30.0) -> None:
        """Wait for `document.readyState == complete` and the page's `data-ready` mark."""
        self.wait_for(
            "document.readyState === 'complete' && document.documentElement.dataset.ready === '1'", timeout=timeout
        )

    def eval(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its (JSON) value; promises are awaited."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, timeout: float = 30.0, interval: float = 0.1) -> Any:
        """Poll `expression` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                last = self.eval(expression)
                if last:
                    return last
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout}s waiting for {expression!r} (last value {last!r})")

    def click(self, selector: str) -> None:
        """Click the element (it must exist)."""
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def type(self, selector: str, text: str) -> None:
        """Focus the field, clear it, and type `text` as keyboard input."""
        self.eval(f"(() => {{ const f = document.querySelector({json.dumps(selector)}); f.focus(); f.value = ''; }})()")
        self.call("Input.insertText", {"text": text})

    def select(self, selector: str, value: str) -> None:
        """Choose an option of a <select> (and fire `change`, as a person's choice does)."""
        self.eval(
            f"(() => {{ const s = document.querySelector({json.dumps(selector)}); s.value = {json.dumps(value)};"
            " s.dispatchEvent(new Event('change', {bubbles: true})); })()"
        )

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Put files in an <input type=file>."""
        root = self.call("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.call("DOM.setFileInputFiles", {"nodeId": node, "files": [str(p) for p in paths]})

    def fake_response(self, url_suffix: str, status: int, headers: dict[str, str], body: str) -> None:
        """Answer this tab's requests to URLs ending with `url_suffix` in the browser, as given (how the page
        shows a 429 or an outage without breaking the stack); the request never reaches the network."""
        canned = {
            "responseCode": status,
            "responseHeaders": [{"name": k, "value": v} for k, v in headers.items()],
            "body": base64.b64encode(body.encode()).decode(),
        }
        suffixes = self.browser.can(self.session, url_suffix, canned)
        self.call("Fetch.enable", {"patterns": [{"urlPattern": f"*{suffix}"} for suffix in suffixes]})

    def text(self, selector: str) -> str:
        """The element's textContent ('' when absent)."""
        value = self.eval(f"document.querySelector({json.dumps(selector)})?.textContent ?? ''")
        return str(value)

    def screenshot(self, path: Path) -> None:
        """Save the whole page as a PNG."""
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))

    # -- recordings --------------------------------------------------------------------------
    def requests(self) -> list[dict[str, Any]]:
        """Every request the page made: url, method, and the response status (None if it never came)."""
        statuses = {
            e["params"]["requestId"]: e["params"]["response"]["status"]
            for e in self.browser.events(self.session, "Network.responseReceived")
        }
        return [
            {
                "url": e["params"]["request"]["url"],
                "method": e["params"]["request"]["method"],
                "status": statuses.get(e["params"]["requestId"]),
                "headers": e["params"]["request"].get("headers", {}),
            }
            for e in self.browser.events(self.session, "Network.requestWillBeSent")
        ]

    def problems(self) -> dict[str, list[Any]]:
        """Dialogs opened, CSP violations, uncaught exceptions and console/log errors, so far."""
        events = self.browser.events
        return {
            "dialogs": [e["params"] for e in events(self.session, "Page.javascriptDialogOpening")],
            "csp": [
                json.loads(e["params"]["payload"])
                for e in events(self.session, "Runtime.bindingCalled")
                if e["params"]["name"] == "__lecternCsp"
            ],
            "exceptions": [e["params"]["exceptionDetails"] for e in events(self.session, "Runtime.exceptionThrown")],
            "console_errors": [
                e["params"]
                for e in events(self.session, "Runtime.consoleAPICalled")
                if e["params"].get("type") in {"error", "assert"}
            ],
            "log_errors": [
                e["params"]["entry"]
                for e in events(self.session, "Log.entryAdded")
                if e["params"]["entry"].get("level") == "error"
            ],
        }

    def close(self) -> None:
        """Close the tab."""
        with contextlib.suppress(Exception):
            self.browser.call("Target.closeTarget", {"targetId": self.target})


@contextlib.contextmanager
def chromium(*, flags: tuple[str, ...] = ()) -> Iterator[Browser]:
    """A headless Chromium with a fresh profile, closed (and its profile removed) on exit."""
    profile = Path(tempfile.mkdtemp(prefix="lectern-chromium-"))
    browser = Browser(user_data_dir=profile, flags=flags)
    try:
        browser.call("Browser.getVersion")
        yield browser
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (Debian's package) with a fresh profile, per test module; a failure in CI when it
    is missing (`.ci/run` installs it), a skip elsewhere."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (apt-get install chromium)")
        pytest.skip("chromium not installed")
    with chromium() as running:
        yield running
