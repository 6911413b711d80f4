"""Readiness checks for /health/ready: each upstream with a short timeout, cached for a few seconds.

Each check answers `{"status": "up"|"down"|"disabled", "latency_ms", "detail"?}`. Two things are read
before any probe, so an open breaker or a rejected secret is reported without hammering the upstream:

- a rejected credential (OpenAI 401, Qdrant 401/403, PostgreSQL authentication failure) is reported as
  `"error": "misconfigured"` with `"variable"` naming what to fix (never its value);
- an open breaker is reported as `"error": "circuit_open"` with the breaker's last error.

Database or Redis down makes the service `unavailable` (503); anything else down makes it `degraded`.
`log_startup_report` runs the same checks once at process start and logs the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from shared.platform.constants import HEALTH_CHECK_KEY
from shared.platform.logging import get_logger
from shared.platform.upstreams import CREDENTIAL_VARIABLE, FRIENDLY_NAME, ErrorKind, Upstream, classify_error

if TYPE_CHECKING:  # type only: shared.platform.clients starts the observers that import this module
    from shared.platform.clients import Services

log = get_logger(__name__)

CHECK_TIMEOUT_S = 2.0
CACHE_TTL_S = 3.0

#: Checks whose failure makes the whole service unavailable (nothing works without them).
CRITICAL = frozenset({"database", "redis"})

#: The breaker behind each check (Redis and the worker have none).
UPSTREAM_OF = {"database": Upstream.DATABASE, "vector_store": Upstream.QDRANT, "llm": Upstream.OPENAI}

Check = Callable[["Services"], Awaitable[dict[str, Any]]]


def misconfigured_result(upstream: Upstream) -> dict[str, Any]:
    """A check result for an upstream that rejected our credentials (names the variable, never the value)."""
    variable = CREDENTIAL_VARIABLE[upstream]
    return {
        "status": "down",
        "error": "misconfigured",
        "variable": variable,
        "detail": f"{variable} was rejected by {upstream.value}: fix the configuration (not an outage)",
    }


def breaker_verdict(services: Services, upstream: Upstream) -> dict[str, Any] | None:
    """The result to report without probing (the breaker is open), or None to probe.

    A rejected credential is probed again every time (cheaply: the answer is cached for a few seconds,
    and a 401 never counts against the breaker), so a fixed secret is noticed at once.
    """
    breaker = services.resilience.breaker(upstream)
    if breaker.refresh() == "open":
        detail = f"circuit open: {FRIENDLY_NAME[upstream].lower()} is failing; next trial in {max(0, breaker.open_remaining)} s"
        if breaker.last_error:
            detail += f" (last error: {breaker.last_error})"
        return {"status": "down", "error": "circuit_open", "detail": detail}
    return None


async def check_database(services: Services) -> dict[str, Any]:
    """SELECT 1 on the database."""
    async with services.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return {"status": "up", "mode": "sqlite" if services.settings.uses_sqlite else "postgresql"}


async def check_redis(services: Services) -> dict[str, Any]:
    """PING the Redis that holds the queue and caches."""
    await services.redis.ping()
    return {"status": "up"}


async def check_vector_store(services: Services) -> dict[str, Any]:
    """Ask the vector store adapter for its health."""
    store = services.vectorstore
    if store is None or not hasattr(store, "health"):
        return {"status": "down", "detail": "vector store not initialised"}
    result: dict[str, Any] = dict(await store.health())
    if Upstream.QDRANT in services.resilience.misconfigured:
        return misconfigured_result(Upstream.QDRANT)
    return result


async def check_llm(services: Services) -> dict[str, Any]:
    """OpenAI reachability: disabled offline; misconfigured or open breaker reported without a call."""
    client = services.openai
    if client is None:
        return {"status": "disabled", "detail": "offline mode (no OPENAI_API_KEY): extractive answers"}
    await services.resilience.call(Upstream.OPENAI, lambda: client.models.list(), retry=False)
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
    upstream = UPSTREAM_OF.get(name)
    verdict = breaker_verdict(services, upstream) if upstream is not None else None
    if verdict is not None and not (name == "llm" and services.openai is None):
        result = verdict
    else:
        try:
            result = await asyncio.wait_for(check(services), CHECK_TIMEOUT_S)
        except TimeoutError:
            result = {"status": "down", "error": "timeout", "detail": f"no answer within {CHECK_TIMEOUT_S:.0f} s"}
        except Exception as exc:
            result = _failure(upstream, exc, services)
        if upstream is Upstream.QDRANT and result.get("status") == "down":
            if upstream in services.resilience.misconfigured:
                result = misconfigured_result(upstream)
            else:
                result = breaker_verdict(services, upstream) or result
    result.setdefault("latency_ms", round((time.perf_counter() - started) * 1000, 1))
    return name, result


def _failure(upstream: Upstream | None, exc: Exception, services: Services) -> dict[str, Any]:
    """A failed probe: credentials named by variable, otherwise the error's type and safe detail."""
    # What this probe saw wins over an earlier rejection remembered by this process: after a key was
    # rejected and then fixed, a later outage must read as an outage, not as the old misconfiguration.
    if upstream is not None and classify_error(upstream, exc) is ErrorKind.CREDENTIALS:
        services.resilience.mark_misconfigured(upstream)
        return misconfigured_result(upstream)
    detail = getattr(exc, "detail", None) or type(exc).__name__
    return {"status": "down", "error": "unreachable", "detail": str(detail)[:200]}


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


async def log_startup_report(services: Services, *, delay_s: float = 3.0) -> dict[str, Any]:
    """Run the checks once shortly after start and log each problem (a rejected secret by its variable).

    The short delay lets the sibling programs (the worker's store, its heartbeat) come up first; the
    worker skips the check of its own heartbeat.
    """
    await asyncio.sleep(delay_s)
    checks_to_run = {n: c for n, c in CHECKS.items() if not (n == "worker" and services.role == "worker")}
    pairs = await asyncio.gather(*(_timed(n, c, services) for n, c in checks_to_run.items()))
    checks = dict(pairs)
    status = overall_status(checks)
    for name, check in checks.items():
        if check.get("error") == "misconfigured":
            log.error(
                "startup.credentials_rejected", check=name, variable=check.get("variable"), detail=check.get("detail")
            )
        elif check.get("status") == "down":
            log.warning("startup.upstream_down", check=name, detail=check.get("detail"))
    log.info("startup.readiness", status=status, role=services.role)
    return {"status": status, "checks": checks}
