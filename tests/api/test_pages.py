"""The front door in process: HEAD and OPTIONS, `/` negotiation, who may frame what, and the pages' rules
(strict CSP, no inline code, no markup from data, small same-origin assets)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import shared
from api.pages import SPACE_PARENT_ORIGIN, WEB_DIR, prefers_html
from shared.platform.config import ConfigError, Settings, load_settings
from tests.utils.inprocess import captured_log, make_settings, running_app

BANNER = b'{"status":"online","service":"lectern","version":"' + shared.__version__.encode() + b'","docs":"/docs"}'
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
EXTRA_ANCESTOR = "https://textbook.example.org"
#: Budget for everything the two pages load (HTML, JS, CSS, icon), in bytes.
ASSET_BUDGET = 80 * 1024


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app with one configured frame ancestor."""
    settings = make_settings(tmp_path_factory.mktemp("pages"), FRAME_ANCESTORS=EXTRA_ANCESTOR)
    with running_app(settings) as (_app, test_client):
        yield test_client


# ---- HEAD and OPTIONS ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/health", "/health/ready", "/health/circuits", "/v1/models", "/admin"])
def test_head_answers_like_get_without_a_body(client: TestClient, path: str) -> None:
    """HEAD on a GET route: GET's status and headers (length included), an empty body."""
    get, head = client.get(path), client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    same = {"content-type", "content-length", "x-frame-options", "content-security-policy", "cache-control", "vary"}
    assert {k: head.headers.get(k) for k in same} == {k: get.headers.get(k) for k in same}
    assert head.headers["x-request-id"]


def test_head_is_logged_and_counted_as_head_with_its_route(client: TestClient) -> None:
    """The access log and the request metrics see HEAD (not the GET it ran as) and the matched route."""
    with captured_log() as out:
        client.head("/v1/models")
    [line] = [json.loads(x) for x in out.getvalue().splitlines() if '"http.request"' in x]
    assert (line["method"], line["route"], line["status"]) == ("HEAD", "/v1/models", 200)
    metrics = client.get("/metrics").text
    assert 'lectern_http_requests_total{method="HEAD",route="/v1/models",status="200"}' in metrics


def test_head_on_static_files_and_unknown_paths(client: TestClient) -> None:
    """HEAD works on the pages' assets, and an unknown path is a body-less 404."""
    asset = client.head("/static/style.css")
    assert asset.status_code == 200
    assert asset.content == b""
    assert int(asset.headers["content-length"]) == (WEB_DIR / "static" / "style.css").stat().st_size
    missing = client.head("/no-such-page")
    assert missing.status_code == 404
    assert missing.content == b""


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/chat", "OPTIONS, POST"),
        ("/health", "GET, HEAD, OPTIONS"),
        ("/", "GET, HEAD, OPTIONS"),
        ("/api/chat/sessions/some-id", "DELETE, GET, HEAD, OPTIONS"),
        ("/api/documents/week1/intro.md", "DELETE, OPTIONS"),
        ("/static/reader.js", "GET, HEAD, OPTIONS"),
    ],
)
def test_options_outside_preflight_lists_the_methods(client: TestClient, path: str, allow: str) -> None:
    """OPTIONS without a CORS preflight: 204 with `Allow` (HEAD wherever GET is), no body."""
    response = client.options(path)
    assert response.status_code == 204
    assert response.headers["allow"] == allow
    assert response.content == b""


def test_options_on_an_unknown_path_is_the_404_envelope(client: TestClient) -> None:
    """No route, no `Allow`: the usual 404 envelope."""
    response = client.options("/no-such-thing")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "allow" not in response.headers


def test_cors_preflight_is_still_answered_by_cors(client: TestClient) -> None:
    """A real preflight (Origin + Access-Control-Request-Method) gets the CORS answer, not `Allow`."""
    origin = "https://physical-ai-textbook.vercel.app"
    response = client.options("/chat", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert "allow" not in response.headers


# ---- GET / negotiation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "text/html;q=0.5, application/json", "text/html, application/json", "text/*"],
)
def test_root_is_todays_banner_unless_html_is_preferred(client: TestClient, accept: str | None) -> None:
    """curl, SDKs, monitors and anything not preferring HTML get the JSON banner, byte for byte."""
    request = client.build_request("GET", "/")
    if accept is None:
        del request.headers["accept"]  # no Accept header at all
    else:
        request.headers["accept"] = accept
    response = client.send(request)
    assert response.status_code == 200
    assert response.content == BANNER
    assert response.headers["content-type"] == "application/json"
    assert "accept" in response.headers["vary"].lower()


@pytest.mark.parametrize("accept", [BROWSER_ACCEPT, "text/html", "application/xhtml+xml", "text/html, */*;q=0.1"])
def test_root_serves_the_reader_page_to_browsers(client: TestClient, accept: str) -> None:
    """A browser's Accept gets the reader playground."""
    response = client.get("/", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="/static/reader.js"></script>' in response.content
    assert "accept" in response.headers["vary"].lower()


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("TEXT/HTML", True),
        ("text/html;q=0", False),
        ("text/html;q=bogus", False),
        ("text/html;q=0.9, */*;q=0.9", False),
        ("application/json;q=0.1, text/html;q=0.2", True),
        ("", False),
        (None, False),
    ],
)
def test_prefers_html(accept: str | None, html: bool) -> None:
    """HTML only when it outranks JSON and */* (ties keep the banner)."""
    assert prefers_html(accept) is html


# ---- framing -------------------------------------------------------------------------------------


def _csp(response_headers: dict[str, str]) -> dict[str, str]:
    policy = response_headers["content-security-policy"]
    return {part.split()[0]: part.strip() for part in policy.split(";") if part.strip()}


@pytest.mark.parametrize("path", ["/", "/admin"])
def test_pages_are_frameable_by_the_space_page_and_configured_origins_only(client: TestClient, path: str) -> None:
    """frame-ancestors names https://huggingface.co and FRAME_ANCESTORS, nothing else; no X-Frame-Options."""
    response = client.get(path, headers={"Accept": BROWSER_ACCEPT})
    directives = _csp(dict(response.headers))
    assert directives["frame-ancestors"] == f"frame-ancestors {SPACE_PARENT_ORIGIN} {EXTRA_ANCESTOR}"
    assert "hf.space" not in response.headers["content-security-policy"]
    assert "x-frame-options" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/", {"Accept": "application/json"}),
        ("GET", "/health", {}),
        ("GET", "/health/ready", {}),
        ("GET", "/openapi.json", {}),
        ("POST", "/chat", {}),
        ("GET", "/api/auth/get-session", {}),
        ("GET", "/static/reader.js", {}),
        ("GET", "/no-such-page", {"Accept": BROWSER_ACCEPT}),
    ],
)
def test_everything_else_still_refuses_to_be_framed(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    """The JSON API (errors included) and the assets keep X-Frame-Options: DENY and state no frame-ancestors."""
    response = client.request(method, path, headers=headers)
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors" not in response.headers.get("content-security-policy", "")


def test_pages_csp_is_strict(client: TestClient) -> None:
    """Same-origin scripts, styles and requests only; no inline code; forms never submit; Trusted Types."""
    directives = _csp(dict(client.get("/admin").headers))
    assert directives["default-src"] == "default-src 'none'"
    assert directives["script-src"] == "script-src 'self'"
    assert directives["style-src"] == "style-src 'self'"
    assert directives["connect-src"] == "connect-src 'self'"
    assert directives["img-src"] == "img-src 'self'"
    assert directives["form-action"] == "form-action 'none'"
    assert directives["base-uri"] == "base-uri 'none'"
    assert directives["require-trusted-types-for"] == "require-trusted-types-for 'script'"
    policy = client.get("/admin").headers["content-security-policy"]
    assert "unsafe" not in policy
    assert "http" not in policy.replace(SPACE_PARENT_ORIGIN, "").replace(EXTRA_ANCESTOR, "")


# ---- FRAME_ANCESTORS -----------------------------------------------------------------------------


def test_frame_ancestors_setting_parses_origins() -> None:
    """Comma-separated origins (a `*.` subdomain wildcard and ports allowed), trailing slashes dropped."""
    settings = Settings(
        _env_file=None, FRAME_ANCESTORS=" https://a.example/, http://localhost:3000,https://*.b.example "
    )  # type: ignore[call-arg]
    assert settings.frame_ancestors == ["https://a.example", "http://localhost:3000", "https://*.b.example"]
    assert Settings(_env_file=None).frame_ancestors == []  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "'self'",
        "https://a.example; script-src *",
        "https://a.example 'unsafe-inline'",
        "javascript:alert(1)",
        "a.example",
        "https://a.example/path",
    ],
)
def test_frame_ancestors_refuses_anything_but_origins(value: str) -> None:
    """Anything that is not an origin is refused at start (it would be written into a CSP header)."""
    with pytest.raises(ConfigError, match="FRAME_ANCESTORS: expected comma-separated origins"):
        load_settings(_env_file=None, FRAME_ANCESTORS=value)


# ---- what the pages are made of ------------------------------------------------------------------


class _Markup(HTMLParser):
    """Collects what CSP and the house rules care about in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_code: list[str] = []
        self.handlers: list[str] = []
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self.handlers += [name for name, _ in attrs if name.startswith("on") or name == "style"]
        self.urls += [value or "" for name, value in attrs if name in {"src", "href", "action"}]
        if tag == "script":
            self.scripts.append(names)
            self._in_script = True
        if tag == "style":
            self.inline_code.append("<style>")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_code.append(data)


@pytest.mark.parametrize("page", ["reader.html", "admin.html"])
def test_pages_have_no_inline_code_and_load_only_from_this_origin(page: str) -> None:
    """External module scripts from /static/ only; no inline script, style element or attribute, or
    event handler; every URL is a path on this origin."""
    markup = _Markup()
    markup.feed((WEB_DIR / page).read_text(encoding="utf-8"))
    assert markup.inline_code == []
    assert markup.handlers == []
    assert markup.scripts
    assert all(s.get("src", "").startswith("/static/") and s.get("type") == "module" for s in markup.scripts)
    assert markup.urls
    assert all(url.startswith(("/", "#")) and not url.startswith("//") for url in markup.urls), markup.urls


def test_scripts_never_turn_data_into_markup() -> None:
    """No HTML sinks in the scripts (Trusted Types would refuse them too): text goes in as text."""
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc")
    for script in sorted((WEB_DIR / "static").glob("*.js")):
        assert not sinks.search(script.read_text(encoding="utf-8")), script.name


def test_assets_are_small_and_local() -> None:
    """Everything the pages load fits the budget; nothing refers to another host."""
    files = [path for path in WEB_DIR.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < ASSET_BUDGET
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(
            r"(?<![\w.])(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text.replace("http://www.w3.org/2000/svg", "")
        ), path.name


def test_assets_are_served_with_their_types_and_revalidated(client: TestClient) -> None:
    """JavaScript as JavaScript (module scripts need it), CSS as CSS, every load revalidated by ETag."""
    script = client.get("/static/reader.js")
    assert script.headers["content-type"].split(";")[0] in {"text/javascript", "application/javascript"}
    assert script.headers["cache-control"] == "no-cache"
    assert client.get("/static/reader.js", headers={"If-None-Match": script.headers["etag"]}).status_code == 304
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../pages.py").status_code == 404


def test_pages_are_listed_in_the_readme_table() -> None:
    """The new variable is documented where operators look for variables."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "| `FRAME_ANCESTORS` |" in readme
