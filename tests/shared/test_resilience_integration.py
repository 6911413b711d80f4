"""Resilience against real components: breaker state shared through Redis, the database breaker over a
TCP proxy to PostgreSQL, readiness with a rejected key (fake OpenAI), metrics, deadline, watchdog logic."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import shared.platform.metrics as metrics
from api.observability import DeadlineMiddleware
from shared.platform.circuit_state import CircuitSync, merge_processes, merged_circuits, read_processes
from shared.platform.config import Settings
from shared.platform.errors import UpstreamMisconfigured, UpstreamUnavailable
from shared.platform.resilience import Resilience
from shared.platform.upstreams import Upstream
from shared.stores.db.engine import create_engine, create_session_factory
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.tcp_proxy import TcpProxy
from worker.watchdog import RUNNING, Watchdog


def settings_for(**kwargs: Any) -> Settings:
    """Settings with a small threshold and recovery timeout."""
    base: dict[str, Any] = {"circuit_failure_threshold": 2, "circuit_recovery_timeout": 2.0}
    return Settings(_env_file=None, **(base | kwargs))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio Redis client on a flushed test database."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()  # type: ignore[attr-defined]  # (types-redis predates aclose)


async def test_breaker_state_is_shared_and_merged(redis: Redis) -> None:
    """Process A opens; B sees it at once (the published transition); the merged view lists both; after
    the recovery timeout both are half_open and A's successful trial closes B too."""
    prefix = f"lectern:test:{uuid.uuid4().hex[:8]}:"
    a, b = Resilience(settings_for()), Resilience(settings_for())
    sync_a = CircuitSync(resilience=a, redis=redis, role="api", pid=1001, interval_s=0.2, prefix=prefix).start()
    sync_b = CircuitSync(resilience=b, redis=redis, role="worker", pid=1002, interval_s=0.2, prefix=prefix).start()
    try:
        await asyncio.sleep(0.3)
        for _ in range(2):
            await a.record_failure(Upstream.OPENAI, TimeoutError())
        assert a.is_open(Upstream.OPENAI)
        deadline = time.monotonic() + 0.5
        while not b.is_open(Upstream.OPENAI) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert b.is_open(Upstream.OPENAI), "the opening did not reach the other process"
        await asyncio.sleep(0.3)  # one heartbeat: both rows published
        view = await merged_circuits(resilience=b, redis=redis, sync=sync_b)
        assert view["openai"]["state"] == "open"
        # (other processes may share this Redis database on a busy test machine: look at ours)
        rows = {(p["pid"], p["role"]): p["state"] for p in view["openai"]["processes"]}
        assert rows[(1001, "api")] == rows[(1002, "worker")] == "open"
        assert view["qdrant"]["state"] == "closed"
        assert view["openai"]["failure_threshold"] == 2
        assert view["openai"]["opened_at"] is not None
        # after the recovery timeout both are half_open; A's successful trial closes B too
        await asyncio.sleep(2.1)
        assert b.breaker(Upstream.OPENAI).refresh() == "half_open"
        assert (await merged_circuits(resilience=a, redis=redis, sync=sync_a))["openai"]["state"] == "half_open"
        assert await a.call(Upstream.OPENAI, lambda: asyncio.sleep(0, "ok")) == "ok"
        deadline = time.monotonic() + 0.5
        while b.breaker(Upstream.OPENAI).refresh() != "closed" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert b.breaker(Upstream.OPENAI).refresh() == "closed"
        await asyncio.sleep(0.3)
        view = await merged_circuits(resilience=a, redis=redis, sync=sync_a)
        states = {p["pid"]: p["state"] for p in view["openai"]["processes"]}
        assert view["openai"]["state"] == states[1001] == states[1002] == "closed"
    finally:
        await sync_a.aclose()
        await sync_b.aclose()
    assert not {1001, 1002} & {p["pid"] for p in await read_processes(redis)}  # a stopped process leaves at once


async def test_failures_are_counted_across_processes(redis: Redis) -> None:
    """Threshold 2, one failure in each of two processes: the breaker opens (the count is shared); a
    success anywhere starts the count again."""
    prefix = f"lectern:test:{uuid.uuid4().hex[:8]}:"
    a, b = Resilience(settings_for()), Resilience(settings_for())
    sync_a = CircuitSync(resilience=a, redis=redis, role="api", pid=3001, interval_s=0.2, prefix=prefix).start()
    sync_b = CircuitSync(resilience=b, redis=redis, role="api", pid=3002, interval_s=0.2, prefix=prefix).start()
    try:
        await a.record_failure(Upstream.QDRANT, TimeoutError())
        await asyncio.sleep(0.1)
        await b.record_failure(Upstream.QDRANT, TimeoutError())
        deadline = time.monotonic() + 2
        while not (a.is_open(Upstream.QDRANT) and b.is_open(Upstream.QDRANT)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert b.is_open(Upstream.QDRANT)
        assert a.is_open(Upstream.QDRANT)
        await a.reset()
        await asyncio.sleep(0.1)
        assert not b.is_open(Upstream.QDRANT)  # the reset was shared too
        await a.record_failure(Upstream.QDRANT, TimeoutError())
        await asyncio.sleep(0.1)
        assert await b.call(Upstream.QDRANT, lambda: asyncio.sleep(0, "ok")) == "ok"  # resets the shared count
        await a.record_failure(Upstream.QDRANT, TimeoutError())
        await asyncio.sleep(0.1)
        shared = await a.refresh_shared()
        assert shared is not None
        assert (shared[Upstream.QDRANT].state, shared[Upstream.QDRANT].failures) == ("closed", 1)
    finally:
        await sync_a.aclose()
        await sync_b.aclose()


async def test_dead_process_drops_out(redis: Redis) -> None:
    """A process that stops heartbeating disappears from the view after its TTL."""
    res = Resilience(settings_for())
    sync = CircuitSync(resilience=res, redis=redis, role="api", pid=2001, interval_s=0.1, ttl_s=0.5)
    await sync.publish()
    assert 2001 in [p["pid"] for p in await read_processes(redis)]
    await asyncio.sleep(0.7)
    assert 2001 not in [p["pid"] for p in await read_processes(redis)]


def test_merge_reports_expired_open_as_half_open() -> None:
    """A published `open` whose recovery window has passed counts as half_open; last_error is the latest."""
    old = (datetime.now(UTC) - timedelta(seconds=10)).isoformat()
    fresh = datetime.now(UTC).isoformat()
    entry = {"failure_threshold": 5, "recovery_timeout_s": 3.0}
    procs = [
        {
            "pid": 1,
            "role": "api",
            "updated_at": fresh,
            "breakers": {
                "openai": entry
                | {"state": "open", "failure_count": 5, "opened_at": old, "last_error": "A", "last_error_at": old}
            },
        },
        {
            "pid": 2,
            "role": "api",
            "updated_at": fresh,
            "breakers": {
                "openai": entry | {"state": "closed", "failure_count": 1, "last_error": "B", "last_error_at": fresh}
            },
        },
    ]
    view = merge_processes(procs, failure_threshold=5, recovery_timeout_s=3.0)
    assert view["openai"]["state"] == "half_open"
    assert view["openai"]["failure_count"] == 5
    assert view["openai"]["last_error"] == "B"
    assert view["database"]["processes"] == []


async def test_database_breaker_over_a_cut_proxy(pg_url: str) -> None:
    """Cut the proxy: 503-type errors, then fail-fast without connecting; restore: closes again."""
    target = urlsplit(pg_url)
    with TcpProxy(target.port or 5432) as proxy:
        url = pg_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
        settings = settings_for(database_url=url, circuit_recovery_timeout=1.0)
        res = Resilience(settings)
        engine = create_engine(settings, res)
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            proxy.cut()
            for _ in range(2):
                with pytest.raises(UpstreamUnavailable):
                    async with engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
            assert res.is_open(Upstream.DATABASE)
            accepted = proxy.connections_accepted
            started = time.perf_counter()
            with pytest.raises(UpstreamUnavailable):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            assert time.perf_counter() - started < 0.05
            assert proxy.connections_accepted == accepted
            proxy.restore()
            await asyncio.sleep(1.1)
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            assert res.breaker(Upstream.DATABASE).state == "closed"
        finally:
            await engine.dispose()


async def test_database_trial_of_a_route_call_is_reentrant_through_the_engine(pg_url: str, redis: Redis) -> None:
    """Half-open, state in Redis: a route's `call(DATABASE, fn)` takes the trial and `fn`'s session opens
    its pool connection through the breaker again (SQLAlchemy awaits the connect from its greenlet, in the
    same task): that connect goes ahead as part of the trial and closes the breaker, while a call in
    another task meanwhile is refused without connecting."""
    target = urlsplit(pg_url)
    with TcpProxy(target.port or 5432) as proxy:
        url = pg_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
        settings = settings_for(database_url=url, circuit_recovery_timeout=1.0)
        res = Resilience(settings)
        res.share_state(redis, prefix=f"lectern:test:{uuid.uuid4().hex[:8]}:")
        engine = create_engine(settings, res)
        sessions = create_session_factory(engine)

        async def route(delay: float) -> int:
            await asyncio.sleep(delay)  # the trial is in flight before its session connects
            async with sessions() as session:
                return int(await session.scalar(text("SELECT 1")))

        try:
            proxy.cut()
            for _ in range(2):
                with pytest.raises(UpstreamUnavailable):
                    await res.call(Upstream.DATABASE, lambda: route(0), retry=False)
            assert res.is_open(Upstream.DATABASE)
            proxy.restore()
            await asyncio.sleep(1.1)
            accepted = proxy.connections_accepted
            trial = asyncio.create_task(res.call(Upstream.DATABASE, lambda: route(0.3)))
            await asyncio.sleep(0.1)
            with pytest.raises(UpstreamUnavailable):
                await res.call(Upstream.DATABASE, lambda: route(0))
            assert await trial == 1
            assert proxy.connections_accepted == accepted + 1
            assert res.breaker(Upstream.DATABASE).state == "closed"
            assert (await res.refresh_shared() or {})[Upstream.DATABASE].state == "closed"
        finally:
            await engine.dispose()


async def test_database_auth_failure_is_misconfiguration(pg_url: str) -> None:
    """A rejected PostgreSQL password names DATABASE_URL and does not count against the breaker."""
    target = urlsplit(pg_url)
    bad = f"postgresql://lectern_nobody:wrong-secret-pw@127.0.0.1:{target.port or 5432}{target.path}"
    settings = settings_for(database_url=bad)
    res = Resilience(settings)
    engine = create_engine(settings, res)
    try:
        for _ in range(3):
            with pytest.raises(UpstreamMisconfigured) as info:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            assert "DATABASE_URL" in info.value.detail
            assert "wrong-secret-pw" not in info.value.detail
        assert res.breaker(Upstream.DATABASE).failure_count == 0
        assert res.misconfigured[Upstream.DATABASE] == "DATABASE_URL was rejected by database"
    finally:
        await engine.dispose()


async def test_ready_names_a_rejected_openai_key(fake_openai: FakeOpenAI, redis_url: str, tmp_path: Path) -> None:
    """OpenAI answering 401: /health/ready says OPENAI_API_KEY was rejected, never shows the key."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    key = "sk-wrong-key-0123456789abcdef"
    fake_openai.reset()
    fake_openai.configure(fault="401")
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        redis_url=redis_url,
        openai_api_key=key,
        openai_base_url=fake_openai.url,
        circuit_failure_threshold=2,
    )
    try:
        with TestClient(create_app(settings)) as client:
            for _ in range(3):
                client.app.state.readiness = None  # type: ignore[attr-defined]
                response = client.get("/health/ready")
            body = response.json()
            llm = body["checks"]["llm"]
            assert llm["status"] == "down"
            assert llm["error"] == "misconfigured"
            assert llm["variable"] == "OPENAI_API_KEY"
            assert body["status"] == "degraded"
            assert key not in response.text
            circuits = client.get("/health/circuits").json()
            assert circuits["openai"]["state"] == "closed"
            assert circuits["openai"]["failure_count"] == 0
    finally:
        fake_openai.reset()


async def test_deadline_answers_503_instead_of_hanging() -> None:
    """A handler that never answers is cut at the deadline with the 503 envelope and Retry-After."""

    async def hang(_request: Any) -> JSONResponse:
        await asyncio.sleep(30)
        return JSONResponse({})

    app = DeadlineMiddleware(Starlette(routes=[Route("/hang", hang)]), deadline_s=0.2)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        started = time.perf_counter()
        response = await client.get("/hang")
    assert time.perf_counter() - started < 2
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"
    assert response.headers["retry-after"] == "5"


async def test_deadline_ignores_time_waiting_for_the_client_body() -> None:
    """A slow upload is not cut: only time spent on our side counts against the deadline."""

    async def echo(request: Any) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    async def slow_body() -> Any:
        for _ in range(3):
            await asyncio.sleep(0.15)
            yield b"x" * 10

    app = DeadlineMiddleware(Starlette(routes=[Route("/upload", echo, methods=["POST"])]), deadline_s=0.2)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/upload", content=slow_body())
    assert response.status_code == 200
    assert response.json() == {"bytes": 30}


async def test_metrics_record_breakers_retries_and_jobs() -> None:
    """Retries, transitions and job outcomes show up in the Prometheus text."""
    from arq import Retry
    from arq.worker import func

    res = Resilience(settings_for(circuit_failure_threshold=1))
    await res.record_failure(Upstream.QDRANT, TimeoutError())

    async def ok(ctx: dict[str, Any]) -> str:
        return "ok"

    async def later(ctx: dict[str, Any]) -> str:
        raise Retry(defer=1)

    [wrapped_ok, wrapped_later] = metrics.instrument_jobs([func(ok, name="ok"), func(later, name="later")])
    assert wrapped_ok.name == "ok"
    assert await wrapped_ok.coroutine({}) == "ok"
    with pytest.raises(Retry):
        await wrapped_later.coroutine({})
    body, content_type = metrics.render()
    text_body = body.decode()
    assert content_type.startswith("text/plain")
    assert 'lectern_circuit_transitions_total{from_state="closed",to_state="open",upstream="qdrant"}' in text_body
    assert 'lectern_jobs_total{job="ok",status="succeeded"}' in text_body
    assert 'lectern_jobs_total{job="later",status="retried"}' in text_body


def test_watchdog_decision() -> None:
    """Kill a RUNNING worker whose key has been missing for stale_s after it was seen alive, or that
    never wrote it within the start-up grace; never when Redis cannot be read."""
    dog = Watchdog(stale_s=10, startup_grace_s=20)
    t0 = 1000.0
    assert not dog.decide(now=t0 + 5, state=RUNNING, pid=7, started_at=t0, key_present=False)  # starting
    assert not dog.decide(now=t0 + 25, state=RUNNING, pid=7, started_at=t0, key_present=True)  # alive
    assert not dog.decide(now=t0 + 30, state=RUNNING, pid=7, started_at=t0, key_present=False)
    assert not dog.decide(now=t0 + 35, state=RUNNING, pid=7, started_at=t0, key_present=None)  # Redis unreadable
    assert not dog.decide(now=t0 + 36, state=RUNNING, pid=7, started_at=t0, key_present=False)
    assert dog.decide(now=t0 + 41, state=RUNNING, pid=7, started_at=t0, key_present=False)  # stale 11 s
    assert not dog.decide(now=t0 + 47, state=RUNNING, pid=8, started_at=t0 + 47, key_present=False)  # new pid
    assert not dog.decide(now=t0 + 60, state=RUNNING, pid=8, started_at=t0 + 47, key_present=False)
    assert dog.decide(now=t0 + 68, state=RUNNING, pid=8, started_at=t0 + 47, key_present=False)  # never started
    assert not dog.decide(now=t0 + 80, state=10, pid=0, started_at=t0, key_present=False)  # not RUNNING


def test_circuit_payload_is_json(redis_url: str) -> None:
    """The published entry is plain JSON with every breaker."""
    sync = CircuitSync(resilience=Resilience(settings_for()), redis=Redis.from_url(redis_url), role="api", pid=5)
    payload = json.loads(json.dumps(sync.payload()))
    assert set(payload["breakers"]) == {"openai", "qdrant", "database"}
