"""In-process app runner for the auth tests: migrate, run the lifespan, talk over httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync
from fastapi import FastAPI

from api.main import create_app
from shared.platform.config import Settings
from shared.stores.db.migrate import upgrade

REDIS_TEST_URL = os.environ.get("LECTERN_TEST_REDIS", "redis://127.0.0.1:6379")
BACKENDS = ("sqlite", "postgresql")


def fresh_redis_url() -> str:
    """A database of the machine's Redis (not flushed: the auth tests' keys are random per run)."""
    db = 1 + (uuid.uuid4().int % 15)
    url = f"{REDIS_TEST_URL}/{db}"
    client = redis_sync.Redis.from_url(url, socket_connect_timeout=2)
    client.ping()
    client.close()
    return url


def auth_settings(backend: str, pg_factory: Callable[[], str] | None, **overrides: Any) -> Settings:
    """Settings for an in-process app on SQLite (temp DATA_DIR) or a fresh PostgreSQL database."""
    data_dir = Path(tempfile.mkdtemp(prefix="lectern-auth-"))
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "redis_url": fresh_redis_url(),
        "better_auth_secret": "test-secret-" + uuid.uuid4().hex,
        "log_format": "console",
        # The counters live in a shared Redis database for an hour: tests that sign many readers up from
        # 127.0.0.1 must not trip the default limit (test_auth_limits checks the limit itself).
        "rate_limit_sign_up": "100000/hour",
    }
    if backend == "postgresql":
        assert pg_factory is not None
        values["database_url"] = pg_factory()
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Migrate the database, start the app's lifespan and yield (app, client)."""
    await asyncio.to_thread(upgrade, settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client
