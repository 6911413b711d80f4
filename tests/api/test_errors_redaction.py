"""Secret hygiene in logs and settings: configured secrets and tokens never reach a log line."""

from __future__ import annotations

import json
import logging

import pytest

from shared.platform.clients import describe_upstreams
from shared.platform.config import Settings, redact_url
from shared.platform.logging import REDACTED, Redactor, configure_logging, get_logger
from tests.utils.inprocess import captured_log

OPENAI = "oaiRedactMarker1a2b3c"
ADMIN = 'admin"Redact\\Marker'  # needs JSON escaping
AUTH = "authRedactMarker4d5e6f"
QDRANT = "qdrantRedactMarker7a8b"
DB_PASSWORD = "dbRedactMarker9c0d"
TOKEN = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"


def _settings(log_format: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        OPENAI_API_KEY=OPENAI,
        ADMIN_API_KEY=ADMIN,
        BETTER_AUTH_SECRET=AUTH,
        QDRANT_API_KEY=QDRANT,
        DATABASE_URL=f"postgresql://lectern:{DB_PASSWORD}@db.example:5432/lectern?sslmode=require",
        LOG_FORMAT=log_format,
    )


SECRETS = (OPENAI, ADMIN, AUTH, QDRANT, DB_PASSWORD, TOKEN)


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_no_secret_in_any_log_line(log_format: str) -> None:
    """structlog events, stdlib/uvicorn/gunicorn lines and tracebacks are all scrubbed."""
    configure_logging(_settings(log_format), role="api")
    log = get_logger("tests.redaction")
    with captured_log() as out:
        log.info("event.with_values", key=OPENAI, nested={"x": [ADMIN, f"Bearer {TOKEN}"]}, password="hunter2hunter2")
        log.warning("event.token_header", authorization=f"Bearer {TOKEN}", cookie=f"better-auth.session_token={TOKEN}")
        logging.getLogger("uvicorn.error").error("uvicorn says %s and %s", AUTH, QDRANT)
        logging.getLogger("gunicorn.error").info("gunicorn connect postgresql://lectern:%s@db/x", DB_PASSWORD)
        logging.getLogger("arq.worker").warning("job failed: token=%s", TOKEN)
        try:
            raise RuntimeError(f"upstream refused key {OPENAI} for {ADMIN}")
        except RuntimeError as exc:
            log.error("event.failed", exc_info=exc)
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    text = out.getvalue()
    assert text.count("\n") >= 7
    assert "Traceback" in text
    assert "RuntimeError" in text
    for secret in SECRETS:
        assert secret not in text, secret
        assert json.dumps(secret)[1:-1] not in text, secret
    assert "hunter2hunter2" not in text
    assert REDACTED in text


def test_structlog_exception_keeps_traceback_but_not_secret() -> None:
    """The redactor leaves exc_info for the renderer: the JSON line has a real traceback, scrubbed."""
    configure_logging(_settings("json"), role="worker")
    with captured_log() as out:
        try:
            {}["missing"]
        except KeyError:
            get_logger("t").exception("event.keyerror", detail=f"db {DB_PASSWORD}")
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert "KeyError" in line["exception"]
    assert "Traceback (most recent call last)" in line["exception"]
    assert DB_PASSWORD not in line["detail"]


def test_redactor_patterns() -> None:
    """Token-shaped strings are scrubbed even when not configured: bearer, cookies, URL passwords, sk- keys."""
    redactor = Redactor(["configuredSecret1"])
    cases = {
        f"Authorization: Bearer {TOKEN}": TOKEN,
        f"Cookie: __Secure-better-auth.session_token={TOKEN}; other=1": TOKEN,
        "postgresql+psycopg://user:pa55w0rd@host/db": "pa55w0rd",
        "redis://:redispass99@cache:6379/0": "redispass99",
        "key sk-proj-abcdef123456": "abcdef123456",
        '{"api_key": "zzzzzzzzzz"}': "zzzzzzzzzz",
        "x-api-key=adminadmin1": "adminadmin1",
        "the configuredSecret1 leaked": "configuredSecret1",
        "url-encoded configuredSecret1%21": "configuredSecret1",
    }
    for text, secret in cases.items():
        assert secret not in redactor.scrub(text), text
    assert redactor.scrub("nothing secret here, 42 tokens") == "nothing secret here, 42 tokens"


def test_settings_repr_hides_secrets() -> None:
    """repr/str of Settings and its JSON dump never show a secret or the database password."""
    settings = _settings("json")
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        for secret in (OPENAI, ADMIN, AUTH, QDRANT, DB_PASSWORD):
            assert secret not in text
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == OPENAI


def test_database_url_logged_without_password() -> None:
    """The upstream description and redact_url keep host and db, drop the password."""
    settings = _settings("json")
    described = json.dumps(describe_upstreams(settings))
    assert DB_PASSWORD not in described
    assert "db.example" in described
    assert redact_url("postgresql://u:p%40ss@h:5432/d") == "postgresql://u:***@h:5432/d"
