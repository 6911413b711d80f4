"""CORS: exact origins, SPACE_HOST, the optional regex, credentials, preflight caching, refusal of '*'."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from shared.platform.config import DEFAULT_CORS_ORIGINS, ConfigError, Settings, load_settings
from tests.utils.inprocess import make_settings, running_app

ALLOWED = "https://physical-ai-textbook.vercel.app"
SPACE_ORIGIN = "https://lectern-demo.hf.space"
PREVIEW = "https://physical-ai-textbook-git-feature-x-team.vercel.app"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app with default origins, SPACE_HOST set and a Vercel-preview regex."""
    settings = make_settings(
        tmp_path_factory.mktemp("cors"),
        SPACE_HOST="lectern-demo.hf.space",
        CORS_ORIGIN_REGEX=r"https://physical-ai-textbook-git-[a-z0-9-]+\.vercel\.app",
    )
    with running_app(settings) as (_app, test_client):
        yield test_client


def preflight(client: TestClient, origin: str, method: str = "POST", headers: str = "content-type,authorization"):
    """Send a CORS preflight for POST /chat."""
    return client.options(
        "/chat",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:3000", True),
        ("http://localhost:3001", True),
        (ALLOWED, True),
        (SPACE_ORIGIN, True),
        (PREVIEW, True),
        ("https://evil.example", False),
        ("https://physical-ai-textbook.vercel.app.evil.example", False),
        ("http://physical-ai-textbook.vercel.app", False),
        ("https://evil-physical-ai-textbook-git-x.vercel.app", False),
        ("https://old-deployment.up.railway" + ".app", False),
        ("null", False),
    ],
)
def test_preflight_table(client: TestClient, origin: str, allowed: bool) -> None:
    """Allowed origins get the exact origin echoed with credentials and a cached preflight; others nothing."""
    response = preflight(client, origin)
    assert "x-request-id" in response.headers
    if allowed:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["access-control-allow-credentials"] == "true"
        assert int(response.headers["access-control-max-age"]) > 0
        allowed_headers = response.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers
        assert "content-type" in allowed_headers
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "origin" in response.headers.get("vary", "").lower()
    else:
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-credentials" not in response.headers
        assert response.json()["code"] == "cors_rejected"
        assert response.json()["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("origin", "allowed"), [(ALLOWED, True), (SPACE_ORIGIN, True), ("https://evil.example", False)]
)
def test_simple_request_headers(client: TestClient, origin: str, allowed: bool) -> None:
    """Actual requests: ACAO + credentials only for allowed origins; the response itself is unchanged."""
    response = client.get("/", headers={"Origin": origin})
    assert response.status_code == 200
    assert response.json()["status"] == "online"
    if allowed:
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["access-control-allow-credentials"] == "true"
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    else:
        assert "access-control-allow-origin" not in response.headers


def test_error_responses_carry_cors_headers(client: TestClient) -> None:
    """Errors (404, 413) from an allowed origin still carry CORS headers, so the browser can read them."""
    for response in (
        client.get("/nope", headers={"Origin": ALLOWED}),
        client.post(
            "/chat", content=b"x" * (2 * 1024 * 1024), headers={"Origin": ALLOWED, "content-type": "application/json"}
        ),
    ):
        assert response.status_code in {404, 413}
        assert response.headers["access-control-allow-origin"] == ALLOWED


def test_disallowed_header_fails_preflight(client: TestClient) -> None:
    """A preflight asking for a header outside the list fails even from an allowed origin."""
    response = preflight(client, ALLOWED, headers="x-evil-header")
    assert response.status_code == 400


def test_star_with_credentials_refused_at_load() -> None:
    """CORS_ORIGINS='*' stops start-up with a clear error naming the variable (credentials are allowed)."""
    with pytest.raises(ConfigError, match=r"CORS_ORIGINS: '\*' cannot be used"):
        load_settings(_env_file=None, CORS_ORIGINS="*")
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        load_settings(_env_file=None, CORS_ORIGINS="https://ok.example, *")


def test_origin_must_be_exact() -> None:
    """An origin without a scheme is refused at load; a malformed regex too."""
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        load_settings(_env_file=None, CORS_ORIGINS="physical-ai-textbook.vercel.app")
    with pytest.raises(ConfigError, match="CORS_ORIGIN_REGEX"):
        load_settings(_env_file=None, CORS_ORIGIN_REGEX="https://(unclosed")


def test_origins_aliases_and_defaults() -> None:
    """CORS_ALLOWED_ORIGINS is an alias; a list replaces the defaults; SPACE_HOST is always added."""
    assert Settings(_env_file=None).allowed_origins == list(DEFAULT_CORS_ORIGINS)
    aliased = Settings(_env_file=None, CORS_ALLOWED_ORIGINS="https://a.example/, https://b.example")
    assert aliased.allowed_origins == ["https://a.example", "https://b.example"]
    spaced = Settings(_env_file=None, CORS_ORIGINS="https://a.example", SPACE_HOST="me-lectern.hf.space")
    assert spaced.allowed_origins == ["https://a.example", "https://me-lectern.hf.space"]
