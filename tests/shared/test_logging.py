"""structlog set-up: JSON in production, console locally, bound ids, X-Request-ID, secrets never logged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from api.main import create_app
from shared.platform.config import Settings
from shared.platform.logging import (
    Redactor,
    bind_context,
    clear_context,
    configure_logging,
    get_logger,
    scrub_token_patterns,
)

DB_PASSWORD = "pgLogMarker8842"
OPENAI_KEY = "sk-logMarker5519abc"
ADMIN_KEY = "adminLogMarker7731"


def make(**values: Any) -> Settings:
    """Settings from explicit values only."""
    return Settings(_env_file=None, **values)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every JSON object line of captured output."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


@pytest.fixture(autouse=True)
def _fresh_context() -> Iterator[None]:
    clear_context()
    yield
    clear_context()


def test_production_logs_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    """APP_ENV=production: one JSON object per line with event, level, timestamp, role and pid."""
    configure_logging(make(app_env="production"), role="api")
    get_logger("t").info("unit.json_event", answer=42)
    events = [e for e in json_lines(capsys.readouterr().err) if e.get("event") == "unit.json_event"]
    assert len(events) == 1
    event = events[0]
    assert event["answer"] == 42
    assert event["level"] == "info"
    assert event["role"] == "api"
    assert isinstance(event["pid"], int)
    assert event["timestamp"].endswith("Z")


def test_development_logs_are_console(capsys: pytest.CaptureFixture[str]) -> None:
    """Development: human-readable console lines, not JSON."""
    configure_logging(make(), role="worker")
    get_logger("t").warning("unit.console_event", answer=42)
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "unit.console_event" in line)
    assert not line.startswith("{")
    assert "answer=42" in line
    assert "warning" in line


def test_log_format_override(capsys: pytest.CaptureFixture[str]) -> None:
    """LOG_FORMAT=json forces JSON in development (what the e2e stacks use)."""
    configure_logging(make(log_format="json"), role="api")
    get_logger("t").info("unit.forced_json")
    assert any(e.get("event") == "unit.forced_json" for e in json_lines(capsys.readouterr().err))


def test_bound_request_and_job_ids(capsys: pytest.CaptureFixture[str]) -> None:
    """Values bound with bind_context travel with every event until cleared."""
    configure_logging(make(log_format="json"), role="worker")
    bind_context(job_id="job-123", request_id="req-456")
    get_logger("t").info("unit.bound")
    clear_context()
    get_logger("t").info("unit.unbound")
    events = {e["event"]: e for e in json_lines(capsys.readouterr().err)}
    assert events["unit.bound"]["job_id"] == "job-123"
    assert events["unit.bound"]["request_id"] == "req-456"
    assert "job_id" not in events["unit.unbound"]


def test_secrets_never_reach_the_output(capsys: pytest.CaptureFixture[str]) -> None:
    """Configured secrets, DB passwords in URLs, bearer tokens and exception texts are scrubbed."""
    settings = make(
        app_env="production",
        database_url=f"postgresql://neon:{DB_PASSWORD}@ep-x.neon.tech/db?sslmode=require",
        openai_api_key=OPENAI_KEY,
        admin_api_key=ADMIN_KEY,
    )
    configure_logging(settings, role="api")
    log = get_logger("t")
    log.info("unit.leaky", url=settings.sqlalchemy_url, header=f"Bearer {OPENAI_KEY}", nested={"k": [ADMIN_KEY]})
    log.info(f"unit.leaky_message with {ADMIN_KEY}")
    try:
        raise RuntimeError(f"connect failed for postgresql://neon:{DB_PASSWORD}@ep-x.neon.tech/db")
    except RuntimeError:
        log.exception("unit.leaky_exception")
    import logging

    logging.getLogger("uvicorn.error").error("stdlib line with %s", OPENAI_KEY)
    err = capsys.readouterr().err
    assert "unit.leaky" in err
    assert "unit.leaky_exception" in err
    for secret in (DB_PASSWORD, OPENAI_KEY, ADMIN_KEY):
        assert secret not in err
    assert "ep-x.neon.tech" in err  # the host stays visible: only credentials go


TOKEN_LOOKING = [
    "Authorization: BEARER abcdefghijkl",
    "redis://:hunter2222@localhost:6379/0",
    "postgresql+psycopg://neon:pw123456@ep-x.neon.tech/db",
    "key SK-abcdefgh123 in a sentence",
    "X-Api-Key: abcdef123",
    "ACCESS_TOKEN=abcdefgh",
    "{'Password': 'hunter2222'}",
    "cookie session_token=xyz123; Path=/",
    "\u017fk-abcdefgh123",  # long s: re.IGNORECASE folds it onto "s"
    "api\u212aey=abcdefgh",  # Kelvin sign: folded onto "k"
]


@pytest.mark.parametrize("text", TOKEN_LOOKING)
def test_scrub_shortcut_never_skips_a_token(text: str) -> None:
    """The substring shortcut in `scrub` lets through nothing the token patterns would replace."""
    expected = scrub_token_patterns(text)
    assert expected != text  # each sample is one the patterns catch
    assert Redactor().scrub(text) == expected


_FRAGMENTS = [
    *("bearer ", "Bearer\t", "session_token=", "Session_Token=", "postgresql://", "redis://", "user:", ":pw", "@"),
    *("sk-", "SK-", "x-api-key", "api_key", "Api-Key", "apikey", "token", "TOKEN", "access_token", "password"),
    *("secret", ":", "=", " ", '"', "'", ";", ",", "/", "abcdefgh", "12345678", "first_token_ms", "\u017f", "\u212a"),
]


@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=14).map("".join))
@settings(max_examples=400, deadline=None)
def test_scrub_runs_only_the_patterns_that_can_match(text: str) -> None:
    """Skipping the patterns whose hints are absent changes nothing: the result is the full scrub's."""
    assert Redactor().scrub(text) == scrub_token_patterns(text)


@pytest.mark.parametrize(
    "text", ["retrieval.done", "2026-11-26T16:00:00.123Z", "info", "shared.answers.retrieval", "caf\u00e9"]
)
def test_scrub_leaves_plain_values_alone(text: str) -> None:
    """Values without any token hint come back unchanged."""
    assert Redactor(["sk-notinthere1"]).scrub(text) == text


@pytest.fixture
def app_client(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[TestClient]:
    """The in-process app (JSON logs to the captured stderr) against the machine's Redis and a temp SQLite."""
    settings = make(redis_url=redis_url, data_dir=tmp_path, log_format="json", admin_api_key=ADMIN_KEY)
    with TestClient(create_app(settings)) as client:
        yield client


def test_request_id_echoed_when_sane(app_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """A sane incoming X-Request-ID comes back unchanged and is on the access log event."""
    response = app_client.get("/", headers={"X-Request-ID": "frontend-abc.123:9"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "frontend-abc.123:9"
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "http.request"]
    assert any(e.get("request_id") == "frontend-abc.123:9" and e.get("path") == "/" for e in events), events


@pytest.mark.parametrize("bad", ["has space", "x" * 300, "semi;colon", "new\u2028line"])
def test_insane_request_id_replaced(app_client: TestClient, bad: str) -> None:
    """An unsafe or oversized X-Request-ID is replaced by a generated one."""
    response = app_client.get("/health", headers={"X-Request-ID": bad.encode("utf-8")})
    assert response.status_code == 200
    rid = response.headers["x-request-id"]
    assert rid != bad
    assert 8 <= len(rid) <= 128
    assert rid.isalnum()


def test_request_id_generated_and_in_error_body(app_client: TestClient) -> None:
    """No incoming id: one is generated; an error body carries the same id as the header."""
    first = app_client.get("/health").headers["x-request-id"]
    second = app_client.get("/health").headers["x-request-id"]
    assert first != second
    response = app_client.get("/no/such/path")
    assert response.status_code == 404
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert isinstance(body["detail"], str)


def test_health_is_exact_and_quiet(app_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """/health answers exactly {"status": "healthy"} and does not write an access line per probe."""
    response = app_client.get("/health")
    assert response.json() == {"status": "healthy"}
    app_client.get("/")
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "http.request"]
    assert [e.get("path") for e in events] == ["/"]
