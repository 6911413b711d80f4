"""Readiness: real SQLite/PostgreSQL and Redis, short timeouts, a short cache, 503 only when unavailable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.platform.clients import Services, build_services
from shared.platform.config import Settings
from shared.platform.constants import HEALTH_CHECK_KEY
from shared.platform.readiness import CHECK_TIMEOUT_S, ReadinessProbe, overall_status
from shared.stores.db.migrate import upgrade
from tests.fakes.openai_server import free_port

PASSWORD = "readyPwMarker4412"


@pytest.fixture
async def services(redis_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    """Services on a migrated temp SQLite and the machine's Redis (offline mode)."""
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=redis_url)
    await asyncio.to_thread(upgrade, settings)
    built = await build_services(settings, role="api")
    yield built
    await built.aclose()


async def test_embedded_database_and_redis_up(services: Services) -> None:
    """SQLite and Redis up, LLM disabled offline; no worker heartbeat -> degraded, not unavailable."""
    report = await ReadinessProbe(ttl_s=0).run(services)
    checks = report["checks"]
    assert set(checks) == {"database", "vector_store", "redis", "llm", "worker"}
    assert checks["database"]["status"] == "up"
    assert checks["redis"]["status"] == "up"
    assert checks["llm"]["status"] == "disabled"
    assert checks["worker"]["status"] == "down"
    assert all("latency_ms" in check for check in checks.values())
    assert report["status"] == "degraded"


async def test_worker_heartbeat_counts(services: Services) -> None:
    """The arq health-check key present -> worker up."""
    await services.redis.set(HEALTH_CHECK_KEY, b"alive", ex=10)
    report = await ReadinessProbe(ttl_s=0).run(services)
    assert report["checks"]["worker"]["status"] == "up"


async def test_answers_are_cached_briefly(services: Services) -> None:
    """Within the TTL the same report is served (monitors cannot stampede the upstreams)."""
    probe = ReadinessProbe(ttl_s=30)
    first = await probe.run(services)
    await services.redis.set(HEALTH_CHECK_KEY, b"alive", ex=10)
    assert await probe.run(services) is first
    fresh = await ReadinessProbe(ttl_s=0).run(services)
    assert fresh["checks"]["worker"]["status"] == "up"


async def test_unreachable_database_is_unavailable(redis_url: str, tmp_path: Path) -> None:
    """DATABASE_URL at a closed port: database down, overall unavailable, no credential in the report."""
    url = f"postgresql://lectern:{PASSWORD}@127.0.0.1:{free_port()}/lectern"
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=redis_url, database_url=url)
    built = await build_services(settings, role="api")
    try:
        report = await ReadinessProbe(ttl_s=0).run(built)
    finally:
        await built.aclose()
    assert report["checks"]["database"]["status"] == "down"
    assert report["status"] == "unavailable"
    assert PASSWORD not in str(report)


async def test_postgres_up(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """The machine's PostgreSQL (postgres:// form) after migrations: database up."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path, redis_url=redis_url, database_url=pg_url.replace("postgresql", "postgres", 1)
    )
    await asyncio.to_thread(upgrade, settings)
    built = await build_services(settings, role="api")
    try:
        report = await ReadinessProbe(ttl_s=0).run(built)
    finally:
        await built.aclose()
    assert report["checks"]["database"]["status"] == "up"
    assert report["status"] in {"ready", "degraded"}


async def test_hanging_check_is_cut_short(services: Services) -> None:
    """A check that never answers is reported down after the short timeout instead of hanging."""

    async def hang(_services: Services) -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"status": "up"}

    started = time.monotonic()
    report = await ReadinessProbe(checks={"worker": hang}, ttl_s=0).run(services)
    assert report["checks"]["worker"]["status"] == "down"
    assert time.monotonic() - started < CHECK_TIMEOUT_S + 5


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({"database": "up", "redis": "up", "llm": "disabled", "worker": "up", "vector_store": "up"}, "ready"),
        ({"database": "up", "redis": "up", "llm": "down", "worker": "up", "vector_store": "up"}, "degraded"),
        ({"database": "up", "redis": "up", "llm": "up", "worker": "down", "vector_store": "down"}, "degraded"),
        ({"database": "down", "redis": "up", "llm": "up", "worker": "up", "vector_store": "up"}, "unavailable"),
        ({"database": "up", "redis": "down", "llm": "up", "worker": "up", "vector_store": "up"}, "unavailable"),
    ],
)
def test_overall_status(statuses: dict[str, str], expected: str) -> None:
    """Database or Redis down -> unavailable; anything else down -> degraded; disabled is fine."""
    assert overall_status({name: {"status": s} for name, s in statuses.items()}) == expected


def test_http_ready_503_only_when_unavailable(redis_url: str, tmp_path: Path) -> None:
    """/health/ready is 503 with `unavailable` when the database is down, while /health stays 200."""
    url = f"postgresql://lectern:{PASSWORD}@127.0.0.1:{free_port()}/lectern"
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=redis_url, database_url=url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json() == {"status": "healthy"}
        response = client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert PASSWORD not in response.text


async def test_an_outage_after_a_fixed_key_reads_as_an_outage(redis_url: str, tmp_path: Path, fake_openai: Any) -> None:
    """A 401 makes the llm check `misconfigured`; once the key is accepted again, a later 500 is an outage
    (`unreachable`), not the rejection this process remembers."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        redis_url=redis_url,
        openai_api_key="sk-test-readiness-key",
        openai_base_url=fake_openai.url,
    )
    await asyncio.to_thread(upgrade, settings)
    built = await build_services(settings, role="api")
    try:
        fake_openai.configure(fault="401")
        rejected = (await ReadinessProbe(ttl_s=0).run(built))["checks"]["llm"]
        assert rejected["error"] == "misconfigured"
        assert rejected["variable"] == "OPENAI_API_KEY"
        fake_openai.configure(fault="500")
        outage = (await ReadinessProbe(ttl_s=0).run(built))["checks"]["llm"]
        assert outage["status"] == "down"
        assert outage["error"] == "unreachable"
        assert "variable" not in outage
    finally:
        fake_openai.reset()
        await built.aclose()
