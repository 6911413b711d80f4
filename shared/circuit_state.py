"""Breaker state shared across processes through Redis, and the merged `/health/circuits` view.

Every process (each Gunicorn worker and the arq worker) runs one `CircuitSync`:

- it publishes its breakers to `lectern:circuit:proc:<role>:<pid>` (JSON, TTL `ttl_s`) on every
  transition and on a heartbeat every `interval_s`, and indexes the key in a sorted set scored by its
  expiry, so a dead process drops out within `ttl_s` (a stopped one deletes its key at once);
- on the same heartbeat it reads its peers and *adopts* an opening it has not seen yet (see
  `Breaker.adopt_open`): an outage observed by one process opens the breaker in all of them within
  about `interval_s`, instead of every process paying `failure_threshold` slow failures itself.
  Half-open trials stay local: each process probes once and closes on its own success.

`merged_circuits()` reads every live process and merges them into API.md's shape: the top-level state is
the worst over live processes, with one entry per process in `processes`. It answers the same whichever
process serves it (each reads the same Redis keys; its own entry is taken live).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import shared.metrics as metrics
from shared.constants import CIRCUIT_STATE_PREFIX
from shared.logging import get_logger
from shared.resilience import Resilience, Upstream

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.clients import Services

__all__ = ["CircuitSync", "merge_processes", "merged_circuits", "start_process_observers"]

log = get_logger(__name__)

INDEX_KEY = CIRCUIT_STATE_PREFIX + "processes"
FAILURES_KEY_PREFIX = CIRCUIT_STATE_PREFIX + "failures:"
#: Consecutive failures counted by all processes expire after this long without a new one.
FAILURE_WINDOW_S = 60
PROCESS_KEY_PREFIX = CIRCUIT_STATE_PREFIX + "proc:"
HEARTBEAT_S = 1.0
TTL_S = 5.0

_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


def _now() -> datetime:
    return datetime.now(UTC)


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class CircuitSync:
    """Publishes this process's breakers to Redis and adopts openings seen by its peers."""

    def __init__(
        self,
        *,
        resilience: Resilience,
        redis: Redis,
        role: str,
        pid: int | None = None,
        interval_s: float = HEARTBEAT_S,
        ttl_s: float = TTL_S,
        adopt: bool = True,
    ) -> None:
        self.resilience = resilience
        self.redis = redis
        self.role = role
        self.pid = pid or os.getpid()
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.adopt = adopt
        self.key = f"{PROCESS_KEY_PREFIX}{role}:{self.pid}"
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis_ok = True
        self._shared_nonzero: dict[Upstream, bool] = dict.fromkeys(Upstream, False)
        self._pending: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> CircuitSync:
        """Start the heartbeat task and publish on every transition (call inside the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.resilience.add_transition_listener(self._on_transition)
        self.resilience.add_outcome_listeners(on_failure=self._on_failure, on_success=self._on_success)
        self._task = self._loop.create_task(self._run(), name=f"circuit-sync-{self.pid}")
        return self

    async def aclose(self) -> None:
        """Stop the heartbeat and remove this process from the shared view."""
        for task in list(self._pending):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._forget(), 1.0)

    async def _forget(self) -> None:
        await self.redis.delete(self.key)
        await self.redis.zrem(INDEX_KEY, self.key)

    # -- the failure count shared by every process ------------------------------------------------
    def _spawn(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a coroutine on the process loop from sync code (a breaker hook), keeping a reference."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def schedule() -> None:
            task = loop.create_task(make())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            schedule()
        else:
            loop.call_soon_threadsafe(schedule)

    def _on_failure(self, upstream: Upstream) -> None:
        self._shared_nonzero[upstream] = True  # now, so a success right after clears it (tasks run in order)
        self._spawn(lambda: self._count_failure(upstream))

    def _on_success(self, upstream: Upstream) -> None:
        if self._shared_nonzero[upstream]:
            self._shared_nonzero[upstream] = False
            self._spawn(lambda: self._clear_failures(upstream))

    async def _count_failure(self, upstream: Upstream) -> None:
        """Add one failure to the count shared by every process; trip the breaker at the threshold.

        So the threshold holds for the service as a whole: with N workers, `threshold` failures open
        the breaker, not up to N x (threshold - 1) + 1 of them.
        """
        key = FAILURES_KEY_PREFIX + upstream.value
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, FAILURE_WINDOW_S)
                count, _ = await pipe.execute()
        except Exception:
            return
        self._shared_nonzero[upstream] = True
        breaker = self.resilience.breaker(upstream)
        if int(count) >= breaker.failure_threshold and breaker.trip():
            log.warning("circuit.shared_threshold", upstream=upstream.value, failures=int(count))

    async def _clear_failures(self, upstream: Upstream) -> None:
        with contextlib.suppress(Exception):
            await self.redis.delete(FAILURES_KEY_PREFIX + upstream.value)

    async def _read_shared_counts(self) -> None:
        keys = [FAILURES_KEY_PREFIX + u.value for u in Upstream]
        values = await self.redis.mget(keys)
        for upstream, value in zip(Upstream, values, strict=True):
            self._shared_nonzero[upstream] = bool(value and int(value) > 0)

    def _on_transition(self, _upstream: Upstream, _old: str, _new: str) -> None:
        if self._loop is None or self._wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._redis_ok:
                    log.warning("circuits.publish_failed", error=type(exc).__name__)
                self._redis_ok = False
            else:
                if not self._redis_ok:
                    log.info("circuits.publish_resumed")
                self._redis_ok = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()

    # -- one heartbeat -------------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        """This process's entry: pid, role, updated_at and every breaker's state."""
        breakers: dict[str, Any] = {}
        for upstream, breaker in self.resilience.breakers.items():
            snap = breaker.snapshot()
            metrics.set_breaker_state(upstream.value, snap.state)
            breakers[upstream.value] = {
                "state": snap.state,
                "failure_count": snap.failure_count,
                "failure_threshold": snap.failure_threshold,
                "recovery_timeout_s": snap.recovery_timeout_s,
                "opened_at": snap.opened_at,
                "last_error": snap.last_error,
                "last_error_at": breaker.last_error_at.isoformat() if breaker.last_error_at else None,
                "adopted_from": breaker.adopted_from,
                "last_success_at": breaker.last_success_at.isoformat() if breaker.last_success_at else None,
                "misconfigured": self.resilience.misconfigured.get(upstream),
            }
        return {"pid": self.pid, "role": self.role, "updated_at": _now().isoformat(), "breakers": breakers}

    async def publish(self) -> None:
        """Write this process's entry with its TTL and index it."""
        body = json.dumps(self.payload())
        expires = time.time() + self.ttl_s
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.key, body, px=int(self.ttl_s * 1000))
            pipe.zadd(INDEX_KEY, {self.key: expires})
            pipe.zremrangebyscore(INDEX_KEY, "-inf", time.time())
            await pipe.execute()

    async def tick(self) -> None:
        """Publish, then adopt any new opening published by a peer (and publish again if one was)."""
        await self.publish()
        await self._read_shared_counts()
        if self.adopt and self.sync_peers(await read_processes(self.redis)):
            await self.publish()

    def sync_peers(self, processes: list[dict[str, Any]]) -> bool:
        """Adopt peers' openings (and, when half-open here, their later successes); True on a change."""
        adopted = False
        for proc in processes:
            if proc.get("pid") == self.pid and proc.get("role") == self.role:
                continue
            for name, entry in (proc.get("breakers") or {}).items():
                try:
                    breaker = self.resilience.breakers[Upstream(name)]
                except (ValueError, KeyError):
                    continue
                succeeded_at = _parse(entry.get("last_success_at"))
                if entry.get("state") == "closed" and succeeded_at is not None:
                    if breaker.adopt_close(succeeded_at=succeeded_at):
                        adopted = True
                        log.info("circuit.adopted_close", upstream=name, from_pid=proc.get("pid"))
                    continue
                if entry.get("state") != "open":
                    continue
                opened_at = _parse(entry.get("opened_at"))
                if opened_at is not None and breaker.adopt_open(
                    opened_at=opened_at, last_error=entry.get("last_error"), source_pid=int(proc.get("pid", 0))
                ):
                    adopted = True
                    log.warning("circuit.adopted_open", upstream=name, from_pid=proc.get("pid"), role=proc.get("role"))
        return adopted


async def read_processes(redis: Redis) -> list[dict[str, Any]]:
    """Every live process's published entry (expired or unreadable ones are skipped)."""
    keys = await redis.zrangebyscore(INDEX_KEY, time.time(), "+inf")
    if not keys:
        return []
    values = await redis.mget(keys)
    processes: list[dict[str, Any]] = []
    for raw in values:
        if raw is None:
            continue
        with contextlib.suppress(ValueError, TypeError):
            processes.append(json.loads(raw))
    return processes


def _effective_state(entry: dict[str, Any], now: datetime) -> str:
    """A published `open` whose recovery window has passed is `half_open` by now."""
    state = str(entry.get("state") or "closed")
    if state == "open":
        opened_at = _parse(entry.get("opened_at"))
        recovery = float(entry.get("recovery_timeout_s") or 0)
        if opened_at is not None and opened_at + timedelta(seconds=recovery) <= now:
            return "half_open"
    return state


def merge_processes(
    processes: list[dict[str, Any]], *, failure_threshold: int, recovery_timeout_s: float
) -> dict[str, dict[str, Any]]:
    """API.md's `/health/circuits` body from the live processes' entries."""
    now = _now()
    ordered = sorted(processes, key=lambda p: (str(p.get("role")), int(p.get("pid") or 0)))
    merged: dict[str, dict[str, Any]] = {}
    for upstream in Upstream:
        rows: list[dict[str, Any]] = []
        state = "closed"
        failure_count = 0
        opened: list[datetime] = []
        last_error: tuple[datetime, str] | None = None
        for proc in ordered:
            entry = (proc.get("breakers") or {}).get(upstream.value)
            if not entry:
                continue
            effective = _effective_state(entry, now)
            rows.append(
                {
                    "pid": int(proc.get("pid") or 0),
                    "role": proc.get("role"),
                    "state": effective,
                    "failure_count": int(entry.get("failure_count") or 0),
                    "updated_at": proc.get("updated_at"),
                    "opened_at": entry.get("opened_at") if effective != "closed" else None,
                    "adopted_from": entry.get("adopted_from"),
                }
            )
            if _SEVERITY.get(effective, 0) > _SEVERITY[state]:
                state = effective
            failure_count = max(failure_count, int(entry.get("failure_count") or 0))
            if effective != "closed" and (stamp := _parse(entry.get("opened_at"))) is not None:
                opened.append(stamp)
            error_at = _parse(entry.get("last_error_at"))
            if entry.get("last_error") and error_at and (last_error is None or error_at > last_error[0]):
                last_error = (error_at, str(entry["last_error"]))
        merged[upstream.value] = {
            "state": state,
            "failure_count": failure_count,
            "failure_threshold": failure_threshold,
            "recovery_timeout_s": recovery_timeout_s,
            "opened_at": min(opened).isoformat() if opened else None,
            "last_error": last_error[1] if last_error else None,
            "processes": rows,
        }
    return merged


async def merged_circuits(*, resilience: Resilience, redis: Redis, sync: CircuitSync | None) -> dict[str, Any]:
    """The merged view over every live process; this process's own entry is taken live.

    When Redis cannot be read, the answer is this process's view alone (still the same shape).
    """
    own = sync.payload() if sync is not None else None
    try:
        processes = await asyncio.wait_for(read_processes(redis), 2.0)
    except Exception as exc:
        log.warning("circuits.read_failed", error=type(exc).__name__)
        processes = []
    if own is not None:
        processes = [p for p in processes if not (p.get("pid") == own["pid"] and p.get("role") == own["role"])]
        processes.append(own)
    settings = resilience.settings
    return merge_processes(
        processes,
        failure_threshold=settings.circuit_failure_threshold,
        recovery_timeout_s=float(settings.circuit_recovery_timeout),
    )


class ProcessObservers:
    """What `start_process_observers` started for one process; `aclose()` stops it."""

    def __init__(self, sync: CircuitSync, tasks: list[asyncio.Task[Any]]) -> None:
        self.sync = sync
        self.tasks = tasks

    async def aclose(self) -> None:
        """Stop the background tasks and leave the shared circuit view."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.sync.aclose()


def start_process_observers(services: Services) -> ProcessObservers:
    """Per process: cross-process breaker sync, the database breaker hooks and the startup check log."""
    from shared.db_resilience import attach_database_breaker
    from shared.readiness import log_startup_report

    attach_database_breaker(services.engine, services.resilience, settings=services.settings)
    sync = CircuitSync(resilience=services.resilience, redis=services.redis, role=services.role).start()
    report = asyncio.get_running_loop().create_task(log_startup_report(services), name="startup-report")
    return ProcessObservers(sync, [report])
