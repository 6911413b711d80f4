"""Readiness checks for /health/ready: each upstream with a short timeout, cached for a few seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

from shared.clients import Services
from shared.constants import HEALTH_CHECK_KEY
from shared.resilience import Upstream

CHECK_TIMEOUT_S = 2.0
CACHE_TTL_S = 3.0
WORKER_STALE_S = 30.0

#: Checks whose failure makes the whole service unavailable (nothing works without them).
CRITICAL = frozenset({"database", "redis"})

Check = Callable[[Services], Awaitable[dict[str, Any]]]


async def check_database(services: Services) -> dict[str, Any]:
    """SELECT 1 on the database."""
    async with services.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return {"status": "up"}


async def check_redis(services: Services) -> dict[str, Any]:
    """PING the Redis that holds the queue and caches."""
    await services.redis.ping()
    return {"status": "up"}


async def check_vector_store(services: Services) -> dict[str, Any]:
    """Ask the vector store adapter for its health."""
    store = services.vectorstore
    if store is None or not hasattr(store, "health"):
        return {"status": "down", "detail": "vector store not initialised"}
    result: dict[str, Any] = await store.health()
    return result


async def check_llm(services: Services) -> dict[str, Any]:
    """OpenAI reachability: disabled offline; misconfigured or open breaker reported without a call."""
    if services.openai is None:
        return {"status": "disabled", "detail": "offline mode (no OPENAI_API_KEY): extractive answers"}
    if Upstream.OPENAI in services.resilience.misconfigured:
        return {"status": "down", "detail": services.resilience.misconfigured[Upstream.OPENAI]}
    if services.resilience.is_open(Upstream.OPENAI):
        return {"status": "down", "detail": "circuit open"}
    await services.resilience.call(Upstream.OPENAI, lambda: services.openai.models.list(), retry=False)  # type: ignore[union-attr]
    return {"status": "up"}


async def check_worker(services: Services) -> dict[str, Any]:
    """The arq worker's health-check key exists (it is refreshed every few seconds)."""
    value = await services.redis.get(HEALTH_CHECK_KEY)
    if value is None:
        return {"status": "down", "detail": "no recent heartbeat from the ingestion worker"}
    return {"status": "up"}


CHECKS: dict[str, Check] = {
    "database": check_database,
    "vector_store": check_vector_store,
    "redis": check_redis,
    "llm": check_llm,
    "worker": check_worker,
}


async def _timed(name: str, check: Check, services: Services) -> tuple[str, dict[str, Any]]:
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(check(services), CHECK_TIMEOUT_S)
    except TimeoutError:
        result = {"status": "down", "detail": f"no answer within {CHECK_TIMEOUT_S:.0f} s"}
    except Exception as exc:
        detail = getattr(exc, "detail", None) or type(exc).__name__
        result = {"status": "down", "detail": str(detail)[:200]}
    result.setdefault("latency_ms", round((time.perf_counter() - started) * 1000, 1))
    return name, result


def overall_status(checks: dict[str, dict[str, Any]]) -> str:
    """ready / degraded / unavailable from the individual checks."""
    down = {name for name, check in checks.items() if check.get("status") == "down"}
    if down & CRITICAL:
        return "unavailable"
    return "degraded" if down else "ready"


class ReadinessProbe:
    """Runs every check concurrently; answers from a short cache so monitors cannot stampede upstreams."""

    def __init__(self, checks: dict[str, Check] | None = None, *, ttl_s: float = CACHE_TTL_S) -> None:
        self.checks = checks or CHECKS
        self.ttl_s = ttl_s
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def run(self, services: Services) -> dict[str, Any]:
        """The readiness report: {"status", "checks"}."""
        now = time.monotonic()
        if self._cached and now - self._cached[0] < self.ttl_s:
            return self._cached[1]
        async with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.ttl_s:
                return self._cached[1]
            pairs = await asyncio.gather(*(_timed(n, c, services) for n, c in self.checks.items()))
            checks = dict(pairs)
            report = {"status": overall_status(checks), "checks": checks}
            self._cached = (time.monotonic(), report)
            return report
