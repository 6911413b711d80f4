"""Each process's link to the shared breakers, and the merged `/health/circuits` view.

The breakers' state lives in Redis and is enforced by `shared.platform.resilience` (one Lua step before each
call). Every process (each Gunicorn worker and the arq worker) runs one `CircuitSync`, which:

- attaches the process's `Resilience` to Redis (`share_state`), through a client of its own with short
  timeouts and no retries (the queue's client retries for ~5 s; a breaker must never wait that long);
- listens to the transitions the script publishes and copies each into this process's view at once, for
  `is_open` (the sync hint that picks a mode; admission itself is decided in Redis);
- every `interval_s` (and at once on a transition) re-reads the shared state, so a missed message is
  repaired within a second, and publishes this process's row `lectern:circuit:proc:<host>:<role>:<pid>`
  (JSON, TTL `ttl_s`) indexed in a sorted set scored by its expiry, so a dead process drops out within
  `ttl_s` (a stopped one deletes its row at once). The rows are observability, not enforcement. `host` is
  the container's host name (`HOSTNAME`): containers sharing one Redis list every process of every
  container, and two containers' processes with the same pid stay apart.

`merged_circuits()` answers API.md's shape: a breaker's top-level state, failure count, `opened_at` and
`last_error` are the shared state's; `processes` lists every live process's row (with the additive field
`host`). It answers the same
whichever process serves it. Without Redis it falls back to this process's own view (same shape).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

import shared.platform.metrics as metrics
from shared.platform.breaker import SharedRecord
from shared.platform.constants import CIRCUIT_PROCESS_KEY, CIRCUIT_STATE_PREFIX
from shared.platform.logging import get_logger
from shared.platform.readiness import log_startup_report
from shared.platform.resilience import Resilience
from shared.platform.upstreams import Upstream

if TYPE_CHECKING:
    from shared.platform.clients import Services
    from shared.platform.config import Settings

__all__ = ["CircuitSync", "breaker_redis", "merge_processes", "merged_circuits", "start_process_observers"]

log = get_logger(__name__)

INDEX_KEY = CIRCUIT_STATE_PREFIX + "processes"
HEARTBEAT_S = 1.0
TTL_S = 5.0
#: Timeouts of the breakers' own Redis client (a loopback or managed Redis answers in well under this).
REDIS_TIMEOUT_S = 0.2
REDIS_CONNECT_TIMEOUT_S = 0.5

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


def breaker_redis(settings: Settings) -> Redis:
    """A Redis client for the breakers: same server as the queue, short timeouts, no retries."""
    client: Redis = Redis.from_url(
        settings.effective_redis_url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
    )
    return client


class CircuitSync:
    """Links a process's breakers to the shared state and publishes its row for /health/circuits."""

    def __init__(
        self,
        *,
        resilience: Resilience,
        redis: Redis,
        role: str,
        pid: int | None = None,
        host: str = "",
        interval_s: float = HEARTBEAT_S,
        ttl_s: float = TTL_S,
        prefix: str = CIRCUIT_STATE_PREFIX,
        owns_redis: bool = False,
    ) -> None:
        self.resilience = resilience
        self.redis = redis
        self.role = role
        self.pid = pid or os.getpid()
        self.host = host or socket.gethostname()
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.owns_redis = owns_redis
        self.key = CIRCUIT_PROCESS_KEY.format(host=self.host, role=role, pid=self.pid)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._redis_ok = True
        self._stopping = False
        self.channel = ""

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> CircuitSync:
        """Share the breakers' state and start the listener and the heartbeat (inside the event loop)."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.channel = self.resilience.share_state(self.redis, prefix=self.prefix)
        self.resilience.add_transition_listener(lambda *_: self._wake.set() if self._wake else None)
        self._tasks = [
            loop.create_task(self._listen(), name=f"circuit-listen-{self.pid}"),
            loop.create_task(self._heartbeat(), name=f"circuit-heartbeat-{self.pid}"),
        ]
        return self

    async def aclose(self) -> None:
        """Stop, leave the shared view, and fall back to local breakers (this client closes)."""
        self._stopping = True  # a cancel lost in a race with a timeout (Python 3.11) still ends the loops
        if self._wake is not None:
            self._wake.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2 * REDIS_CONNECT_TIMEOUT_S)
        self._tasks = []
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._forget(), 1.0)
        if self.resilience.redis is self.redis:
            self.resilience.share_state(None)
        if self.owns_redis:
            with contextlib.suppress(Exception):
                await self.redis.aclose()  # type: ignore[attr-defined]  # (types-redis predates aclose)

    async def _forget(self) -> None:
        await self.redis.delete(self.key)
        await self.redis.zrem(INDEX_KEY, self.key)
        if not await self.redis.zcount(INDEX_KEY, time.time(), "+inf"):
            await self.resilience.forget_shared()  # the last one out: a later start begins closed

    # -- transitions made by any process ----------------------------------------------------------
    async def _listen(self) -> None:
        """Copy every published transition into this process's view; resubscribe after a Redis outage."""
        while not self._stopping:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    await self.resilience.refresh_shared()  # whatever happened while not subscribed
                    while not self._stopping:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.interval_s)
                        if message is not None and message.get("type") == "message":
                            self.resilience.adopt_published(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("circuits.listen_failed", error=type(exc).__name__)
                await asyncio.sleep(self.interval_s)

    async def _heartbeat(self) -> None:
        assert self._wake is not None
        while not self._stopping:
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

    # -- this process's row ----------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        """This process's row: pid, role, host, updated_at and every breaker as this process sees it."""
        breakers: dict[str, Any] = {}
        for upstream, breaker in self.resilience.breakers.items():
            snap = breaker.snapshot()
            metrics.set_breaker_state(upstream.value, snap.state)
            breakers[upstream.value] = snap.as_dict() | {
                "last_error_at": breaker.last_error_at.isoformat() if breaker.last_error_at else None,
                "misconfigured": self.resilience.misconfigured.get(upstream),
            }
        return {
            "pid": self.pid,
            "role": self.role,
            "host": self.host,
            "updated_at": _now().isoformat(),
            "breakers": breakers,
        }

    async def publish(self) -> None:
        """Write this process's row with its TTL and index it."""
        body = json.dumps(self.payload())
        expires = time.time() + self.ttl_s
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.key, body, px=int(self.ttl_s * 1000))
            pipe.zadd(INDEX_KEY, {self.key: expires})
            pipe.zremrangebyscore(INDEX_KEY, "-inf", time.time())
            await pipe.execute()

    async def tick(self) -> None:
        """Re-read the shared state, then publish this process's row."""
        await self.resilience.refresh_shared()
        await self.publish()


async def read_processes(redis: Redis) -> list[dict[str, Any]]:
    """Every live process's published row (expired or unreadable ones are skipped)."""
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


def _identity(process: dict[str, Any]) -> tuple[Any, Any, Any]:
    return process.get("host"), process.get("role"), process.get("pid")


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
    processes: list[dict[str, Any]],
    *,
    failure_threshold: int,
    recovery_timeout_s: float,
    shared: dict[Upstream, SharedRecord] | None = None,
) -> dict[str, dict[str, Any]]:
    """API.md's `/health/circuits` body: top-level fields from the `shared` state when it could be read
    (else the worst over the live processes' rows), and one row per process."""
    now = _now()
    ordered = sorted(processes, key=lambda p: (str(p.get("host") or ""), str(p.get("role")), int(p.get("pid") or 0)))
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
                    "host": proc.get("host"),
                    "state": effective,
                    "failure_count": int(entry.get("failure_count") or 0),
                    "updated_at": proc.get("updated_at"),
                    "opened_at": entry.get("opened_at") if effective != "closed" else None,
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
        top: dict[str, Any] = {
            "state": state,
            "failure_count": failure_count,
            "opened_at": min(opened).isoformat() if opened else None,
            "last_error": last_error[1] if last_error else None,
        }
        if shared is not None and upstream in shared:
            top = shared[upstream].as_view(recovery_timeout_s)
        merged[upstream.value] = {
            "state": top["state"],
            "failure_count": top["failure_count"],
            "failure_threshold": failure_threshold,
            "recovery_timeout_s": recovery_timeout_s,
            "opened_at": top["opened_at"],
            "last_error": top["last_error"],
            "processes": rows,
        }
    return merged


async def merged_circuits(*, resilience: Resilience, redis: Redis, sync: CircuitSync | None) -> dict[str, Any]:
    """The shared state with every live process's row; this process's own row is taken live.

    When Redis cannot be read, the answer is this process's view alone (still the same shape).
    """
    shared = await resilience.refresh_shared()
    own = sync.payload() if sync is not None else None
    try:
        processes = await asyncio.wait_for(read_processes(redis), 2.0)
    except Exception as exc:
        log.warning("circuits.read_failed", error=type(exc).__name__)
        processes = []
    if own is not None:
        processes = [p for p in processes if _identity(p) != _identity(own)]
        processes.append(own)
    settings = resilience.settings
    return merge_processes(
        processes,
        failure_threshold=settings.circuit_failure_threshold,
        recovery_timeout_s=float(settings.circuit_recovery_timeout),
        shared=shared,
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
    """Per process: shared breaker state and the startup check log."""
    sync = CircuitSync(
        resilience=services.resilience,
        redis=breaker_redis(services.settings),
        role=services.role,
        host=services.settings.hostname,
        owns_redis=True,
    ).start()
    report = asyncio.get_running_loop().create_task(log_startup_report(services), name="startup-report")
    return ProcessObservers(sync, [report])
