"""The reader playground (`/`) and the operator console (`/admin`) in a real headless Chromium, against the
whole supervisord stack with the fake model (generative mode) and the sample docs auto-ingested.

Every test records what its pages do (tests/utils/browser.py): each request must stay on the stack's
origin, and no dialog, CSP violation, uncaught exception or console error may appear. The framing test
maps https://huggingface.co onto a local TLS server, so the Space page really is the parent.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shared.ingestion.chunking import docs_url, heading_slug
from tests.fakes.openai_server import FakeOpenAI, free_port
from tests.utils.browser import CHROMIUM, Browser, Page, browser, chromium
from tests.utils.stack import Stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
__all__ = ["browser"]  # the shared Chromium fixture, used by the tests below

ADMIN_KEY = "pages-admin-" + uuid.uuid4().hex[:12]
ADMIN = {"X-API-Key": ADMIN_KEY}
SITE_URL = "https://book.example.org"
QUESTION = "How does an ultrasonic sensor measure distance?"
LAST_ANSWER = "[...document.querySelectorAll('#messages .answer')].pop()"


@pytest.fixture(scope="module")
def frame_port() -> int:
    """A port for a parent page that FRAME_ANCESTORS allows (chosen before the stack starts)."""
    return free_port()


@pytest.fixture(scope="module")
def stack(fake_openai: FakeOpenAI, frame_port: int) -> Iterator[Stack]:
    """The whole service: fake model, admin key, one extra frame ancestor, sample docs ingested."""
    fake_openai.reset()
    env = {
        "OPENAI_API_KEY": "sk-pages-test-key",
        "OPENAI_BASE_URL": fake_openai.url,
        "ADMIN_API_KEY": ADMIN_KEY,
        "RATE_LIMIT_CHAT": "10000/minute",
        "SITE_URL": SITE_URL,
        "FRAME_ANCESTORS": f"http://localhost:{frame_port}",
    }
    with Stack(env=env) as running:
        running.wait_worker(timeout=60)
        with running.client() as client:

            def sample_docs_ingested() -> bool:
                jobs = client.get("/api/ingest/jobs?limit=5", headers=ADMIN).json()["jobs"]
                return bool(jobs) and all(job["status"] == "succeeded" for job in jobs)

            wait_for(sample_docs_ingested, timeout=90, interval=0.5, message="the sample docs auto-ingest")
        yield running


@contextlib.contextmanager
def opened(browser: Browser, stack: Stack, path: str, *, refused: tuple[int, ...] = ()) -> Iterator[Page]:
    """A recording tab on `path`; on exit, proves it stayed on the stack's origin and showed no problem
    (`refused`: HTTP statuses the test expects, which Chromium logs as failed resources)."""
    page = browser.open(stack.url(path))
    try:
        yield page
        assert_clean(page, stack, refused=refused)
    finally:
        page.close()


def assert_clean(page: Page, stack: Stack, *, refused: tuple[int, ...] = ()) -> None:
    """No request left the origin; no dialog, CSP violation, exception or console error."""
    requests = page.requests()
    assert requests, "no request was recorded"
    strays = [r["url"] for r in requests if not r["url"].startswith(stack.base_url + "/")]
    assert strays == [], f"requests left the Space's origin: {strays}"
    problems = page.problems()
    expected = tuple(f"status of {status}" for status in refused)
    problems["log_errors"] = [
        e
        for e in problems["log_errors"]
        if not (expected and e.get("source") == "network" and any(x in e.get("text", "") for x in expected))
    ]
    assert problems == {"dialogs": [], "csp": [], "exceptions": [], "console_errors": [], "log_errors": []}, problems


def ask(page: Page, question: str, *, timeout: float = 60) -> dict[str, Any]:
    """Type a question, press Ctrl+Enter, wait for the answer to finish; returns what the page shows."""
    answers = "document.querySelectorAll('#messages .answer').length"
    before = page.eval(answers)
    page.type("#question", question)
    page.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Enter", "code": "Enter", "modifiers": 2})
    page.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Enter", "code": "Enter", "modifiers": 2})
    page.wait_for(f"{answers} > {before} && ['done', 'error'].includes({LAST_ANSWER}.dataset.state)", timeout=timeout)
    shown: dict[str, Any] = page.eval(
        f"""(() => {{
        const a = {LAST_ANSWER};
        return {{
          state: a.dataset.state,
          text: a.querySelector('.answer-text').textContent,
          mode: a.querySelector('.mode').dataset.mode || null,
          notice: a.querySelector('.notice').hidden ? null : a.querySelector('.notice').textContent,
          citations: [...a.querySelectorAll('.citations li')].map(li => ({{
            source: li.dataset.source,
            label: li.querySelector('.cite-link').textContent,
            href: li.querySelector('a.cite-link')?.href ?? null,
            id: li.id,
          }})),
          markers: [...a.querySelectorAll('a.marker')].map(m => m.getAttribute('href')),
        }};
      }})()"""
    )
    return shown


def sign_up(page: Page, email: str) -> None:
    """Create an account through the sign-up form."""
    page.click("#show-sign-up")
    page.type("#sign-up-name", "Page Tester")
    page.type("#sign-up-email", email)
    page.type("#sign-up-password", "page-tester-password")
    page.select("#sign-up-level", "beginner")
    page.click("#sign-up-form button[type=submit]")
    page.wait_for("!document.getElementById('signed-in').hidden", timeout=30)


def unlock_console(page: Page, key: str) -> None:
    """Type the admin key and submit it."""
    page.type("#admin-key", key)
    page.click("#key-form button[type=submit]")


def test_reader_streams_an_answer_with_linked_citations(
    stack: Stack, browser: Browser, fake_openai: FakeOpenAI
) -> None:
    """Ask on `/`: the answer streams in (partial text first), the mode shows, citations are numbered and
    link to the book's section anchors; the same citations as the API gives for the question."""
    fake_openai.reset()
    reply = "An ultrasonic sensor times the echo of a short chirp [1]. Sound travels about 343 m/s [1]."
    fake_openai.configure(reply=reply, tokens=8, token_delay_ms=150)
    with opened(browser, stack, "/") as page:
        page.type("#question", QUESTION)
        page.click("#ask")
        partial = page.wait_for(
            f"{LAST_ANSWER}?.dataset.state === 'streaming' && {LAST_ANSWER}.querySelector('.answer-text').textContent",
            timeout=30,
            interval=0.02,
        )
        page.wait_for(f"{LAST_ANSWER}?.dataset.state === 'done'", timeout=30)
        shown = page.eval(f"{LAST_ANSWER}.querySelector('.answer-text').textContent")
        mode = page.eval(f"{LAST_ANSWER}.querySelector('.mode').dataset.mode")
        links = page.eval(
            f"[...{LAST_ANSWER}.querySelectorAll('.citations li')].map(li => "
            "({source: li.dataset.source, href: li.querySelector('a.cite-link').href, "
            "label: li.querySelector('a.cite-link').textContent, id: li.id}))"
        )
        markers = page.eval(f"[...{LAST_ANSWER}.querySelectorAll('a.marker')].map(m => m.getAttribute('href'))")
        streamed = [r for r in page.requests() if r["url"].endswith("/api/chat/stream")]
    assert 0 < len(partial) < len(reply)  # seen before the last token arrived
    assert shown == reply
    assert mode == "generative"
    assert [r["method"] for r in streamed] == ["POST"]
    with stack.client() as client:
        api = client.post("/chat", json={"query": QUESTION}).json()
    assert [link["source"] for link in links] == [c["source"] for c in api["citations"]]
    assert [link["label"] for link in links] == api["sources"]
    assert links[0]["source"] == "module-1/sensors.md"
    for link, citation in zip(links, api["citations"], strict=True):
        assert link["href"] == citation["url"]
        page_url, _, anchor = citation["url"].partition("#")
        assert page_url == docs_url(SITE_URL, citation["source"], {})
        # A section's anchor; a passage under the page's own H1 links to the page itself.
        assert anchor == heading_slug(citation["heading"]) if anchor else citation["heading"] == citation["title"]
    assert links[0]["href"] == f"{SITE_URL}/docs/module-1/sensors#ultrasonic-range-finders"
    assert markers == [f"#{links[0]['id']}", f"#{links[0]['id']}"]


def test_reader_says_not_covered_rate_limited_and_unavailable(stack: Stack, browser: Browser) -> None:
    """Clear words for an off-topic question (real), a 429 with its Retry-After wait (Ask waits it out) and
    an outage (503 before the stream, or an `error` event inside it); the last two answered in the browser."""
    with opened(browser, stack, "/", refused=(429, 503)) as page:
        off_topic = ask(page, "What is the best pizza in Naples?")
        assert off_topic["state"] == "done"
        assert off_topic["citations"] == []
        assert off_topic["notice"] == "The book does not cover this question, so no sources are cited."

        envelope = {
            "detail": "Too many requests: the limit is 20/minute. Please wait a moment.",
            "code": "rate_limited",
        }
        page.fake_response(
            "/api/chat/stream", 429, {"Content-Type": "application/json", "Retry-After": "2"}, json.dumps(envelope)
        )
        limited = ask(page, "Another question?")
        assert limited["state"] == "error"
        assert limited["notice"] == "You are asking faster than the limit allows. You can ask again in 2 s."
        assert page.text("#ask-status").startswith("Rate limited: you can ask again in")
        assert page.eval("document.getElementById('ask').disabled") is True
        page.wait_for("!document.getElementById('ask').disabled", timeout=5)  # the wait is over
        assert page.text("#ask-status") == ""

        outage = {"detail": "The search index is not available yet.", "code": "upstream_unavailable"}
        page.fake_response(
            "/api/chat/stream", 503, {"Content-Type": "application/json", "Retry-After": "5"}, json.dumps(outage)
        )
        page.eval("document.getElementById('ask-form').requestSubmit()")  # an empty question: refused in the page
        assert page.text("#ask-status") == "Type a question first."
        unavailable = ask(page, "And now?")
        assert unavailable["notice"] == (
            "Lectern cannot answer right now: a service it depends on is unavailable. "
            "The search index is not available yet. Try again in 5 s."
        )

        stream = (
            'event: meta\ndata: {"session_id": null, "mode": "generative"}\n\n'
            + 'event: error\ndata: {"code": "upstream_unavailable", "detail": "The model stopped answering."}\n\n'
        )
        page.fake_response("/api/chat/stream", 200, {"Content-Type": "text/event-stream"}, stream)
        broken = ask(page, "One more?")
        assert broken["state"] == "error"
        assert broken["notice"].endswith("The model stopped answering.")


def test_account_history_reload_reopen_and_delete(stack: Stack, browser: Browser, fake_openai: FakeOpenAI) -> None:
    """Sign up, ask twice (the follow-up joins the same session), reload, reopen the session: both turns
    are there; delete it: gone from the page and from the API. Then pick a reading level, sign out (the
    session is revoked) and sign in again."""
    fake_openai.reset()
    email = f"pages-{uuid.uuid4().hex[:8]}@example.com"
    with opened(browser, stack, "/") as page:
        sign_up(page, email)
        assert page.text("#user-email") == f"({email})"
        assert page.eval("document.getElementById('level').value") == "beginner"
        first = ask(page, QUESTION)
        second = ask(page, "And how do infrared sensors differ?")
        assert first["state"] == second["state"] == "done"
        page.wait_for("document.querySelectorAll('#session-list li').length === 1")
        assert "4 messages" in page.text("#session-list li")
        token = page.eval("sessionStorage.getItem('lectern.session')")
        assert token
        assert page.eval("document.cookie") == ""

        page.reload()
        page.wait_for("document.querySelectorAll('#session-list li').length === 1")
        assert page.eval("document.querySelectorAll('#messages > li').length") == 0
        page.click("#session-list .session-open")
        page.wait_for("document.querySelectorAll('#messages > li').length === 4")
        questions = page.eval("[...document.querySelectorAll('#messages .question .text')].map(p => p.textContent)")
        assert questions == [QUESTION, "And how do infrared sensors differ?"]
        answers = page.eval("[...document.querySelectorAll('#messages .answer')].map(a => a.dataset.state)")
        assert answers == ["done", "done"]
        assert page.eval("document.querySelectorAll('#messages .answer .citations a').length") > 0

        page.click("#session-list button.danger")  # arms the button
        assert page.text("#session-list button.danger") == "Confirm delete"
        page.click("#session-list button.danger")
        page.wait_for("document.querySelectorAll('#session-list li').length === 0")
        assert page.eval("document.querySelectorAll('#messages > li').length") == 0
        assert page.text("#sessions-status") == "Conversation deleted."
        with stack.client(headers={"Authorization": f"Bearer {token}"}) as client:
            assert client.get("/api/chat/sessions").json()["total"] == 0

        page.select("#level", "pro")  # the reading level of later answers lives on the account
        page.wait_for("document.getElementById('account-status').textContent.includes('a pro reader')")
        page.click("#sign-out")
        page.wait_for("!document.getElementById('signed-out').hidden")
        assert page.eval("sessionStorage.getItem('lectern.session')") is None
        page.type("#sign-in-email", email)
        page.type("#sign-in-password", "page-tester-password")
        page.click("#sign-in-form button[type=submit]")
        page.wait_for("!document.getElementById('signed-in').hidden")
        assert page.eval("document.getElementById('level').value") == "pro"
        page.wait_for("document.getElementById('sessions-status').textContent.startsWith('No conversations yet')")
    with stack.client(headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/api/auth/get-session").json()["user"] is None  # signing out revoked it


def test_console_uploads_follows_the_job_lists_and_deletes(stack: Stack, browser: Browser, tmp_path: Path) -> None:
    """`/admin` with the key: upload a markdown file, watch its job reach `succeeded`, find the document
    listed, delete it; the key stays in sessionStorage (never a URL or a cookie); health panels fill in."""
    name = f"pages-upload-{uuid.uuid4().hex[:8]}.md"
    upload = tmp_path / name
    upload.write_text(
        "# Lantern drones\n\n## Battery care\n\nLantern drones carry two cells; charge them below 40 degrees.\n",
        encoding="utf-8",
    )
    with opened(browser, stack, "/admin") as page:
        assert page.eval("document.getElementById('console').hidden") is True
        unlock_console(page, ADMIN_KEY)
        page.wait_for("!document.getElementById('console').hidden")
        page.set_files("#files", [upload])
        page.click("#upload-form button[type=submit]")
        page.wait_for("document.getElementById('job-status').textContent === 'succeeded'", timeout=90)
        assert page.text("#job-counts").startswith("1 of 1 documents done")
        assert "0 errors" in page.text("#job-counts")
        row = f"#docs-table tr[data-source='{name}']"
        page.wait_for(f'!!document.querySelector("{row}")', timeout=30)
        assert page.text(f"{row} td:nth-child(3)") == "1"  # chunks
        page.wait_for("document.querySelectorAll('#ready-table tbody tr').length === 5")
        page.wait_for("document.querySelectorAll('#circuits-table tbody tr').length === 3")
        page.wait_for("document.querySelectorAll('#metrics dt').length > 3")
        assert page.text("#ready-status") in {"ready", "degraded"}

        page.click(f"{row} button.danger")
        page.click(f"{row} button.danger")
        page.wait_for(f'!document.querySelector("{row}")', timeout=30)
        page.wait_for(f"document.getElementById('docs-status').textContent === 'Deleted {name} (1 chunks).'")
        assert page.eval("sessionStorage.getItem('lectern.adminKey')") == ADMIN_KEY
        assert page.eval("localStorage.length") == 0
        assert page.eval("document.cookie") == ""
        requests = page.requests()
    assert all(ADMIN_KEY not in r["url"] for r in requests)
    admin_calls = [r for r in requests if "/api/" in r["url"] or r["url"].endswith("/ingest")]
    assert admin_calls
    sent = [{k.lower(): v for k, v in r["headers"].items()}.get("x-api-key") for r in admin_calls]
    assert sent == [ADMIN_KEY] * len(admin_calls)
    with stack.client(headers=ADMIN) as client:
        assert name not in {d["source"] for d in client.get("/api/documents").json()["documents"]}


def test_console_with_a_wrong_key_says_so_and_nothing_succeeds(stack: Stack, browser: Browser) -> None:
    """A wrong key: a clear message, the console stays hidden, and every API request the page made was 401."""
    with opened(browser, stack, "/admin", refused=(401,)) as page:
        unlock_console(page, "not-the-admin-key")
        page.wait_for("document.getElementById('key-status').dataset.kind === 'error'")
        message = page.text("#key-status")
        assert "refused" in message
        assert "ADMIN_API_KEY" in message
        assert page.eval("document.getElementById('console').hidden") is True
        assert page.eval("sessionStorage.getItem('lectern.adminKey')") is None
        requests = page.requests()
    api = [r for r in requests if not r["url"].startswith((stack.url("/static/"), stack.url("/admin")))]
    assert api
    assert all(r["status"] == 401 for r in api), api


HOSTILE_TITLE = "<img src=x onerror=alert('title')>"
HOSTILE_DOC = """# <script>alert('h1')</script>Quasar beacons

## Quasar beacon calibration <img src=x onerror=alert('heading')>

Quasar beacons <b onmouseover="alert('b')">blink</b> twice per second. <script>alert('body')</script>
To calibrate a quasar beacon, hold it level and press the <a href="javascript:alert('link')">reset</a> key.
"""
HOSTILE_REPLY = "Quasar beacons <script>alert('answer')</script><img src=x onerror=alert('img')> blink [1]."


def test_hostile_document_and_answer_render_as_text(stack: Stack, browser: Browser, fake_openai: FakeOpenAI) -> None:
    """Script and HTML in an ingested document and in a model answer show as text on both pages: no
    element is created from them, no dialog opens, no script runs, no CSP violation is reported."""
    source = f"hostile/quasar-{uuid.uuid4().hex[:6]}.md"
    with stack.client(headers=ADMIN) as client:
        body = {
            "documents": [
                {"source": source, "title": HOSTILE_TITLE, "content": HOSTILE_DOC, "url": "javascript:alert(1)"}
            ]
        }
        job = client.post("/api/ingest", json=body).json()["job_id"]
        wait_for(
            lambda: client.get(f"/api/ingest/jobs/{job}").json()["status"] == "succeeded", timeout=60, interval=0.3
        )
    fake_openai.reset()
    fake_openai.configure(reply=HOSTILE_REPLY)
    try:
        with opened(browser, stack, "/") as page:
            shown = ask(page, "How do I calibrate a quasar beacon?")
            injected = page.eval("document.querySelectorAll('#messages script, #messages img, #messages b').length")
            javascript_links = page.eval(
                "[...document.querySelectorAll('a')].filter(a => a.protocol === 'javascript:').length"
            )
        assert shown["state"] == "done"
        assert shown["text"] == HOSTILE_REPLY
        hostile = next(c for c in shown["citations"] if c["source"] == source)
        assert hostile["label"].startswith(HOSTILE_TITLE)
        assert hostile["href"] is None  # a javascript: URL is not made a link
        assert injected == 0
        assert javascript_links == 0

        with opened(browser, stack, "/admin") as page:
            unlock_console(page, ADMIN_KEY)
            row = f"#docs-table tr[data-source='{source}']"
            page.wait_for(f'!!document.querySelector("{row}")', timeout=30)
            assert page.text(f"{row} td:nth-child(2)") == HOSTILE_TITLE
            assert page.eval("document.querySelectorAll('#docs-table img, #docs-table script').length") == 0
    finally:
        fake_openai.reset()
        with stack.client(headers=ADMIN) as client:
            client.delete(f"/api/documents/{source}")


class _ParentPage(BaseHTTPRequestHandler):
    """Serves one page that frames the reader, the console and a JSON endpoint of the stack."""

    frames: tuple[str, ...] = ()

    def do_GET(self) -> None:
        body = "<!doctype html><title>parent</title>" + "".join(f'<iframe src="{src}"></iframe>' for src in self.frames)
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def parent_server(
    frames: tuple[str, ...], *, port: int, host: str = "127.0.0.1", tls_dir: Path | None = None
) -> Iterator[int]:
    """A parent page on host:port (HTTPS with the certificate in `tls_dir`, if given)."""
    handler = type("Parent", (_ParentPage,), {"frames": frames})
    server = ThreadingHTTPServer((host, port), handler)
    if tls_dir is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def _self_signed(directory: Path, *hosts: str) -> Path:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed (needed for the HTTPS parent page)")
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={hosts[0]}"),
            *("-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")),
            *("-addext", "subjectAltName=" + ",".join(f"DNS:{h}" for h in hosts)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory


def test_pages_are_framed_by_the_space_page_and_nobody_else(stack: Stack, frame_port: int, tmp_path: Path) -> None:
    """Real framing: https://huggingface.co (mapped onto a local TLS server) and the FRAME_ANCESTORS origin
    draw `/` and `/admin` in an iframe; https://<space>.hf.space and another origin cannot; the JSON API
    is drawn by nobody."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed")
    pages = (stack.url("/"), stack.url("/admin"))
    api = stack.url("/health")
    frames = (*pages, api)
    blocked = "chrome-error://chromewebdata/"
    tls = _self_signed(tmp_path, "huggingface.co", "lectern-demo.hf.space", "evil.example")
    tls_port = free_port()
    mapping = ", ".join(
        f"MAP {host} 127.0.0.1:{tls_port}" for host in ("huggingface.co", "lectern-demo.hf.space", "evil.example")
    )
    flags = (f"--host-resolver-rules={mapping}", "--ignore-certificate-errors")
    with parent_server(frames, port=tls_port, tls_dir=tls), chromium(flags=flags) as browser:
        space_page = browser.framed("https://huggingface.co/spaces/owner/lectern", frames=3)
        hf_space = browser.framed("https://lectern-demo.hf.space/", frames=3)
        other = browser.framed("https://evil.example/", frames=3)
    assert space_page == {pages[0]: pages[0], pages[1]: pages[1], api: blocked}, space_page
    assert hf_space == dict.fromkeys(frames, blocked), hf_space
    assert other == dict.fromkeys(frames, blocked), other

    with (
        parent_server(frames, port=frame_port),
        # Another site than the stack's 127.0.0.1, so its frames are cross-site as on the web.
        parent_server(frames, port=free_port(), host="127.0.0.2") as stranger,
        chromium() as browser,
    ):
        configured = browser.framed(f"http://localhost:{frame_port}/", frames=3)
        unknown = browser.framed(f"http://127.0.0.2:{stranger}/", frames=3)
    assert configured == {pages[0]: pages[0], pages[1]: pages[1], api: blocked}, configured
    assert unknown == dict.fromkeys(frames, blocked), unknown


def test_head_and_negotiation_through_gunicorn(stack: Stack) -> None:
    """Through the real server: HEAD answers like GET with no body; `/` is JSON unless HTML is preferred."""
    with stack.client() as client:
        for path in ("/", "/health", "/health/ready"):
            get, head = client.get(path), client.head(path)
            assert head.status_code == get.status_code == 200
            assert head.content == b""
            assert head.headers["content-type"] == get.headers["content-type"]
            assert head.headers["content-length"] == str(len(get.content))
        banner = client.get("/", headers={"Accept": "application/json"})
        assert json.loads(banner.content)["service"] == "lectern"
        assert banner.headers["x-frame-options"] == "DENY"
        page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert page.headers["content-type"].startswith("text/html")
        assert "x-frame-options" not in page.headers
