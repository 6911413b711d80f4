"""In-process app for fine-grained API tests: real settings, real Redis db, SQLite in a temp DATA_DIR."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis as redis_sync
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from shared.platform.config import Settings
from shared.platform.constants import RATE_LIMIT_PREFIX
from shared.platform.logging import ScrubbingFormatter
from shared.stores.db.migrate import upgrade
from tests.conftest import REDIS_TEST_URL


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an in-process app: a scratch Redis db and SQLite in `data_dir` (migrated)."""
    db = 1 + (uuid.uuid4().int % 15)
    values: dict[str, Any] = {"DATA_DIR": str(data_dir), "REDIS_URL": f"{REDIS_TEST_URL}/{db}", "LOG_FORMAT": "json"}
    values.update(overrides)
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    upgrade(settings)
    return settings


@contextmanager
def running_app(settings: Settings, *, extend: Any = None) -> Iterator[tuple[FastAPI, TestClient]]:
    """`create_app(settings)` with its lifespan running; `extend(app)` may add test-only routes."""
    _forget_rate_limits(settings)
    app = create_app(settings)
    if extend is not None:
        extend(app)
    with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1:7860") as client:
        yield app, client
    _forget_rate_limits(settings)


def _forget_rate_limits(settings: Settings) -> None:
    client = redis_sync.Redis.from_url(settings.effective_redis_url)
    for key in client.scan_iter(match=f"{RATE_LIMIT_PREFIX}:*", count=1000):
        client.delete(key)
    client.close()


@contextmanager
def captured_log() -> Iterator[io.StringIO]:
    """Everything our root log handler writes (formatted, redacted) while the block runs."""
    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, ScrubbingFormatter))
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(previous)
