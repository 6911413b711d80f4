"""Circuit breakers and retry policies, one per upstream, one state for every process (kept in Redis).

`Resilience` is built from settings once per process and holds a breaker and a retry policy (`backoff`
package, exponential with full jitter, honouring `Retry-After`) for each upstream: `openai`, `qdrant`,
`database`. Callers wrap an upstream call in `await resilience.call(...)`; errors are classified into:

- caller errors (4xx other than 401/403/429): re-raised unchanged, never counted against the breaker;
- credential errors (401/403, PostgreSQL auth failure): `UpstreamMisconfigured`, not counted (a wrong
  secret is a configuration error, not an outage);
- transient errors (timeouts, connection errors, 5xx, 429): retried while tries and time remain, then
  counted as one breaker failure and raised as `UpstreamUnavailable`.

Shared state. Once `share_state(redis)` is called (`shared.platform.circuit_state` does it in every process), a
breaker's state lives in Redis: a hash `<prefix>{<upstream>}:state` (state closed|open, failures,
opened_at, failed_at, last_error, last_error_at, version, epoch; times in ms of the Redis clock) changed only by
one Lua script, so each step is atomic across processes and costs one round trip. `call` runs it before
its attempt, so an opening made by any process holds here before this process's next call. Failures are
counted across processes: `threshold` consecutive failures of the service open the breaker (a count idle
for 60 s starts again); any success closes it. Half-open is derived (open, and the recovery time has
passed); its one trial is `SET <prefix>{<upstream>}:trial <token> NX PX <lease>`, so exactly one caller
in one process gets it; the trial is a single attempt, its success closes and its failure re-opens.

The sync checks (`is_open`, `ensure_available`: the engine's connect hook cannot wait for Redis) read
this process's copy of the shared state: it is refreshed by every script answer, by the transitions the
script PUBLISHes (`shared.platform.circuit_state` listens) and by a re-read every second. In half-open a sync
check cannot take the trial in Redis, so it refuses once and reserves the trial for this process in the
background; the next check here is the trial.

The state expires a few seconds after the last process stops reading it (and the last process to leave
deletes it), so, as when breakers lived in each process's memory, a stack started again starts closed.

Redis down: every step falls back to this process's copy with the same rules (its own count and trial)
and Redis is tried again a second later; nothing waits on it (its client has short timeouts). When it
answers again, the shared state is taken as it is there.

`reset()` is the test hook. `add_transition_listener(fn)` sees every state change of this process's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import backoff

import shared.platform.metrics as metrics
from shared.platform.config import Settings
from shared.platform.constants import CIRCUIT_STATE_PREFIX
from shared.platform.errors import LecternError, UpstreamMisconfigured, UpstreamUnavailable
from shared.platform.logging import get_logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

log = get_logger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
#: How long a half-open trial call holds its lease before another caller may try.
TRIAL_LEASE_S = 5.0
#: A shared failure count with no new failure for this long starts again from zero.
FAILURE_WINDOW_S = 60.0
#: The shared state outlives the last process that read or wrote it by this long (heartbeats re-read it
#: every second), so a stack started again later starts closed, as one whose processes kept it in memory.
SHARED_STATE_TTL_S = 5.0
#: After a Redis error, breakers use this process's copy for this long before trying Redis again.
REDIS_RETRY_S = 1.0

__all__ = [
    "BreakerSnapshot",
    "ErrorKind",
    "Resilience",
    "RetryPolicy",
    "SharedRecord",
    "Upstream",
    "classify_error",
]


class Upstream(StrEnum):
    """The external services the breakers guard."""

    OPENAI = "openai"
    QDRANT = "qdrant"
    DATABASE = "database"


#: The variable an operator fixes when an upstream rejects our credentials.
CREDENTIAL_VARIABLE = {
    Upstream.OPENAI: "OPENAI_API_KEY",
    Upstream.QDRANT: "QDRANT_API_KEY",
    Upstream.DATABASE: "DATABASE_URL",
}

FRIENDLY_NAME = {
    Upstream.OPENAI: "The language model service",
    Upstream.QDRANT: "The search index",
    Upstream.DATABASE: "The database",
}


class ErrorKind(StrEnum):
    """How an upstream error is treated."""

    CALLER = "caller"
    CREDENTIALS = "credentials"
    TRANSIENT = "transient"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped by tries and total time."""

    max_tries: int = 4
    max_time_s: float = 20.0
    base_s: float = 0.5
    cap_s: float = 8.0
    max_retry_after_s: float = 30.0


@dataclass
class BreakerSnapshot:
    """A breaker's state as reported by /health/circuits."""

    state: str
    failure_count: int
    failure_threshold: int
    recovery_timeout_s: float
    opened_at: str | None
    last_error: str | None
    updated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return dict(self.__dict__)


def _status_of(exc: BaseException) -> int | None:
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def retry_after_of(exc: BaseException | None) -> float | None:
    """Seconds from a `Retry-After` (or `retry-after-ms`) header on the error's response, if any."""
    if exc is None:
        return None
    explicit = getattr(exc, "retry_after", None)
    if isinstance(explicit, int | float):
        return float(explicit)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000.0
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        return None
    return None


#: PostgreSQL connection errors that mean DATABASE_URL is wrong (credentials, role, database, pg_hba).
_DB_CONFIG_MARKERS = (
    "authentication failed",
    "password authentication",
    "no password supplied",
    "no pg_hba.conf entry",
    "permission denied for database",
)


#: `role "x" does not exist` / `database "x" does not exist` (not `relation ... does not exist`).
_DB_MISSING = re.compile(r'\b(role|database) "[^"]*" does not exist')


def classify_error(upstream: Upstream, exc: BaseException) -> ErrorKind:
    """Decide whether an upstream error is the caller's fault, a credential problem or transient."""
    if isinstance(exc, UpstreamMisconfigured):
        return ErrorKind.CREDENTIALS
    if isinstance(exc, LecternError):
        return ErrorKind.CALLER  # our own domain error (e.g. a nested breaker's 503): already accounted for
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | ConnectionError | OSError):
        return ErrorKind.TRANSIENT
    status = _status_of(exc)
    if upstream is Upstream.DATABASE:
        text = str(exc).lower()
        if any(marker in text for marker in _DB_CONFIG_MARKERS) or _DB_MISSING.search(text):
            return ErrorKind.CREDENTIALS
        name = type(exc).__name__
        if name in {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"}:
            return ErrorKind.TRANSIENT
        if getattr(exc, "connection_invalidated", False):
            return ErrorKind.TRANSIENT
        return ErrorKind.CALLER
    if status is not None:
        if status in (401, 403):
            return ErrorKind.CREDENTIALS
        if status == 429 or status >= 500 or status == 408:
            return ErrorKind.TRANSIENT
        return ErrorKind.CALLER
    name = type(exc).__name__
    if name in {"APIConnectionError", "APITimeoutError", "ResponseHandlingException", "RpcError", "AioRpcError"}:
        return ErrorKind.TRANSIENT
    if upstream is Upstream.QDRANT:
        # qdrant-client wraps transport errors in several types; anything else from the store is an outage.
        return ErrorKind.TRANSIENT if not isinstance(exc, ValueError | TypeError | KeyError) else ErrorKind.CALLER
    return (
        ErrorKind.TRANSIENT
        if name.endswith(("ConnectError", "ReadTimeout", "RemoteProtocolError"))
        else ErrorKind.CALLER
    )


class _Transient(Exception):
    """Internal marker: a transient upstream error eligible for a retry."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(str(original))


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of an error for /health/circuits (type and status only)."""
    status = _status_of(exc)
    name = type(exc).__name__
    if status is not None:
        return f"{name}: HTTP {status}"
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    # Connection errors can quote a DSN; never show anything that looks like credentials.
    if "@" in text or "password" in text.lower() or "key" in text.lower():
        text = ""
    return f"{name}: {text}" if text else name


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _from_ms(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms > 0 else None


# One step of one breaker, atomically. KEYS: the state hash, the trial lock. ARGV: op (read | acquire |
# failure | success | release | reset), threshold, recovery_ms, lease_ms, window_ms, token, error,
# channel, upstream name, ttl_ms (each step, a re-read included, keeps the state alive that long). Returns (and PUBLISHes on a transition) the state after the step, with the
# Redis clock, the trial lock's PTTL, the verdict (acquire: ok | trial | refused) and the state before.
_BREAKER_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, threshold, recovery = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened_at', 'failed_at',
                     'last_error', 'last_error_at', 'version', 'epoch')
local state, failures, opened_at = f[1] or 'closed', tonumber(f[2]) or 0, tonumber(f[3]) or 0
local failed_at, last_error, last_error_at = tonumber(f[4]) or 0, f[5] or '', tonumber(f[6]) or 0
local version, epoch = tonumber(f[7]) or 0, tonumber(f[8]) or 0
local function effective()
  if state == 'open' and now >= opened_at + recovery then return 'half_open' end
  return state
end
local before, verdict, write = effective(), 'ok', false
if op == 'acquire' then
  if before == 'open' then
    verdict = 'refused'
  elseif before == 'half_open' then
    verdict = redis.call('SET', KEYS[2], ARGV[6], 'NX', 'PX', ARGV[4]) and 'trial' or 'refused'
  end
elseif op == 'failure' then
  if state == 'closed' and now - failed_at > tonumber(ARGV[5]) then failures = 0 end
  failures, failed_at, last_error, last_error_at, write = failures + 1, now, ARGV[7], now, true
  if before == 'half_open' or (state == 'closed' and failures >= threshold) then
    state, opened_at = 'open', now
    redis.call('DEL', KEYS[2])
  end
elseif op == 'success' then
  if state ~= 'closed' or failures > 0 then
    state, failures, opened_at, write = 'closed', 0, 0, true
    redis.call('DEL', KEYS[2])
  end
elseif op == 'release' then
  if redis.call('GET', KEYS[2]) == ARGV[6] then redis.call('DEL', KEYS[2]) end
elseif op == 'reset' then
  redis.call('DEL', KEYS[2])
  state, failures, opened_at, failed_at, last_error, last_error_at, write = 'closed', 0, 0, 0, '', 0, true
end
if write then
  if epoch == 0 then epoch = now end
  version = version + 1
  redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'opened_at', opened_at, 'failed_at', failed_at,
             'last_error', last_error, 'last_error_at', last_error_at, 'version', version, 'epoch', epoch)
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[10]) end
local out = {state, failures, opened_at, last_error, last_error_at, version, now, redis.call('PTTL', KEYS[2]),
             verdict, before, epoch}
if write and (effective() ~= before or op == 'reset') then
  redis.call('PUBLISH', ARGV[8], cjson.encode({ARGV[9], unpack(out)}))
end
return out
"""


@dataclass(frozen=True)
class SharedRecord:
    """A breaker's shared state as the script returned (or published) it; times in Redis-clock ms."""

    state: str
    failures: int
    opened_at_ms: int
    last_error: str
    last_error_at_ms: int
    version: int
    now_ms: int
    trial_pttl_ms: int
    verdict: str
    before: str
    epoch: int  # when the hash was created (a flushed or lost hash starts a new epoch)

    @classmethod
    def parse(cls, raw: Sequence[Any]) -> SharedRecord:
        """From the script's reply (bytes or str items)."""
        v = [item.decode() if isinstance(item, bytes) else item for item in raw]
        numbers = [int(v[i]) for i in (1, 2, 4, 5, 6, 7, 10)]
        failures, opened_at, last_error_at, version, now, pttl, epoch = numbers
        return cls(
            str(v[0]), failures, opened_at, str(v[3]), last_error_at, version, now, pttl, str(v[8]), str(v[9]), epoch
        )

    def as_view(self, recovery_s: float) -> dict[str, Any]:
        """Top-level fields of /health/circuits for this breaker."""
        state = self.state
        if state == OPEN and self.now_ms >= self.opened_at_ms + recovery_s * 1000:
            state = HALF_OPEN
        opened = _from_ms(self.opened_at_ms) if self.state == OPEN else None
        return {
            "state": state,
            "failure_count": self.failures,
            "opened_at": opened.isoformat() if opened else None,
            "last_error": self.last_error or None,
        }


class Breaker:
    """One upstream's breaker as this process sees it: its copy of the shared state (or, while Redis is
    out of reach, the state itself, kept by the same rules). Transitions are logged, counted in /metrics
    and sent to listeners."""

    def __init__(self, upstream: Upstream, *, failure_threshold: int, recovery_timeout: float) -> None:
        self.upstream = upstream
        self.failure_threshold = failure_threshold
        self.recovery_timeout_s = float(recovery_timeout)
        self.lease_s = max(0.001, min(TRIAL_LEASE_S, self.recovery_timeout_s))
        self.stored_state = CLOSED  # closed | open; half_open is open once the recovery time has passed
        self.failure_count = 0
        self.opened_at: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.version = (0, 0)  # (epoch, version) of the shared state last adopted
        self.pending = 0  # writes sent to Redis whose answers have not been adopted yet
        self.reserving = False  # a background trial reservation is in flight
        self._reopen_at = 0.0  # monotonic: when open turns half_open
        self._failed_at = 0.0  # monotonic: the last counted failure
        self._trial_busy_until = 0.0  # monotonic: some caller (any process) holds the trial lease
        self._trial_owner: asyncio.Task[Any] | None = None  # this process's trial: its task, token, end
        self._trial_token = ""
        self._trial_until = 0.0
        self._owns_trial = False
        self._grant: tuple[str, float] | None = None  # a trial reserved in Redis for the next check here
        self._listeners: list[Callable[[Upstream, str, str], None]] = []
        self._reported = CLOSED

    # -- reading -------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """closed, open, or half_open (open and the recovery time has passed)."""
        if self.stored_state == OPEN and time.monotonic() >= self._reopen_at:
            return HALF_OPEN
        return self.stored_state

    @property
    def open_remaining(self) -> int:
        """Whole seconds until the trial call may go (0 or less once half-open)."""
        remaining = self._reopen_at - time.monotonic()
        return math.ceil(remaining) if remaining > 0 else math.floor(remaining)

    def refresh(self) -> str:
        """Current state, reporting an open -> half_open transition that happened by time passing."""
        self._notify()
        return self.state

    def is_clean(self) -> bool:
        """Closed with no failure counted (a success has nothing to write)."""
        return self.stored_state == CLOSED and self.failure_count == 0

    def holds_trial(self) -> bool:
        """True in the task running this process's half-open trial (re-entrant: call -> engine connect)."""
        owner = _current_task()
        return (
            self._owns_trial
            and owner is not None
            and owner is self._trial_owner
            and time.monotonic() < self._trial_until
        )

    def trial_busy(self) -> bool:
        """True while a trial call is in flight elsewhere (another task here, or another process)."""
        if self._grant is not None or self.holds_trial():
            return False
        return time.monotonic() < self._trial_busy_until

    def snapshot(self) -> BreakerSnapshot:
        """State for /health/circuits."""
        state = self.refresh()
        return BreakerSnapshot(
            state=state,
            failure_count=self.failure_count,
            failure_threshold=self.failure_threshold,
            recovery_timeout_s=self.recovery_timeout_s,
            opened_at=self.opened_at.isoformat() if self.opened_at and state != CLOSED else None,
            last_error=self.last_error,
        )

    # -- the trial -----------------------------------------------------------------------------
    def take_trial(self, token: str, until: float | None = None) -> None:
        """This task now runs the trial (`token` is its lock in Redis, "" for a local trial)."""
        self._owns_trial, self._trial_owner, self._trial_token = True, _current_task(), token
        self._trial_until = until if until is not None else time.monotonic() + self.lease_s
        self._trial_busy_until = max(self._trial_busy_until, self._trial_until)
        self._grant = None

    def claim_grant(self) -> bool:
        """Take the trial reserved in Redis for this process, if there is one and it is still valid."""
        grant, self._grant = self._grant, None
        if grant is None or time.monotonic() >= grant[1] or self.state != HALF_OPEN:
            return False
        self.take_trial(grant[0], grant[1])
        return True

    def grant(self, token: str) -> None:
        """Keep a trial reserved in Redis for the next check in this process."""
        self._grant = (token, time.monotonic() + self.lease_s)

    def end_trial(self) -> str:
        """End this process's trial when the current task runs it (or no task does); its Redis token."""
        if not self._owns_trial or self._trial_owner not in (None, _current_task()):
            return ""
        token = self._trial_token
        self._owns_trial, self._trial_owner, self._trial_token, self._trial_until = False, None, "", 0.0
        self._trial_busy_until = 0.0
        return token

    # -- the rules, on this process's copy (Redis out of reach, or before its answer arrives) --------
    def local_acquire(self) -> str:
        """ok (closed), trial (the half-open lease was free) or refused."""
        state = self.state
        if state == CLOSED:
            return "ok"
        if state == OPEN or time.monotonic() < self._trial_busy_until:
            return "refused"
        self._trial_busy_until = time.monotonic() + self.lease_s
        return "trial"

    def local_failure(self, error: str) -> None:
        """Count a failure; open at the threshold, re-open from half-open."""
        now, half_open = time.monotonic(), self.state == HALF_OPEN
        if self.stored_state == CLOSED and now - self._failed_at > FAILURE_WINDOW_S:
            self.failure_count = 0
        self.failure_count += 1
        self._failed_at = now
        self.last_error, self.last_error_at = error, datetime.now(UTC)
        if half_open or (self.stored_state == CLOSED and self.failure_count >= self.failure_threshold):
            self.stored_state, self.opened_at = OPEN, datetime.now(UTC)
            self._reopen_at, self._trial_busy_until, self._grant = now + self.recovery_timeout_s, 0.0, None
        self._notify()

    def local_success(self) -> None:
        """Close (a success anywhere is proof the upstream answers)."""
        if not self.is_clean():
            self.stored_state, self.failure_count, self.opened_at = CLOSED, 0, None
            self._trial_busy_until, self._grant = 0.0, None
        self._notify()

    def local_reset(self) -> None:
        """Closed, nothing counted, no error remembered."""
        self.end_trial()
        self.stored_state, self.failure_count, self.opened_at = CLOSED, 0, None
        self.last_error = self.last_error_at = None
        self._trial_busy_until, self._grant, self._reopen_at = 0.0, None, 0.0
        self._notify()

    def adopt(self, record: SharedRecord) -> None:
        """Take the shared state (unless it is older than the copy already held)."""
        if record.epoch == self.version[0] and record.version < self.version[1]:
            return
        now = time.monotonic()
        self.version = (record.epoch, record.version)
        self.stored_state, self.failure_count = record.state, record.failures
        self.opened_at = _from_ms(record.opened_at_ms) if record.state == OPEN else None
        self._reopen_at = now + (record.opened_at_ms + self.recovery_timeout_s * 1000 - record.now_ms) / 1000
        self._trial_busy_until = now + record.trial_pttl_ms / 1000 if record.trial_pttl_ms > 0 else 0.0
        if record.failures:
            self._failed_at = now
        self.last_error = record.last_error or None
        self.last_error_at = _from_ms(record.last_error_at_ms)
        if record.state != OPEN:
            self._grant = None
        self._notify()

    # -- transitions ---------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[Upstream, str, str], None]) -> None:
        """Call `listener(upstream, old_state, new_state)` on every transition."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        state = self.state
        if state == self._reported:
            return
        previous, self._reported = self._reported, state
        metrics.record_breaker_transition(self.upstream.value, previous, state)
        log.warning(
            "circuit.transition",
            upstream=self.upstream.value,
            previous=previous,
            state=state,
            failure_count=self.failure_count,
            last_error=self.last_error,
        )
        for listener in list(self._listeners):
            try:
                listener(self.upstream, previous, state)
            except Exception as exc:  # pragma: no cover - observers must never break a call
                log.warning("circuit.listener_failed", error=type(exc).__name__)


def _wait_gen(policy: RetryPolicy) -> Generator[float, BaseException | None, None]:
    """Full-jitter exponential waits; a `Retry-After` from the error takes precedence."""
    attempt = 0
    exc: BaseException | None = yield 0.0  # primed by backoff
    while True:
        original = exc.original if isinstance(exc, _Transient) else exc
        hinted = retry_after_of(original)
        if hinted is not None:
            delay = min(max(hinted, 0.0), policy.max_retry_after_s)
        else:
            delay = random.uniform(0, min(policy.cap_s, policy.base_s * (2**attempt)))
        attempt += 1
        exc = yield delay


class Resilience:
    """The per-process registry of breakers (state shared through Redis) and retry policies."""

    def __init__(
        self,
        settings: Settings,
        *,
        policies: dict[Upstream, RetryPolicy] | None = None,
        on_transition: Callable[[Upstream, str, str], None] | None = None,
        on_retry: Callable[[Upstream, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.policies = {u: RetryPolicy() for u in Upstream} | dict(policies or {})
        self._on_retry = on_retry
        self.breakers: dict[Upstream, Breaker] = {
            upstream: Breaker(
                upstream,
                failure_threshold=settings.circuit_failure_threshold,
                recovery_timeout=settings.circuit_recovery_timeout,
            )
            for upstream in Upstream
        }
        if on_transition is not None:
            self.add_transition_listener(on_transition)
        self.misconfigured: dict[Upstream, str] = {}
        #: Retries performed and calls that failed after retrying, per upstream (also in /metrics).
        self.retries: dict[Upstream, int] = dict.fromkeys(Upstream, 0)
        self.failed_calls: dict[Upstream, int] = dict.fromkeys(Upstream, 0)
        self.last_latency_s = 0.0
        self.redis: Redis | None = None
        self.channel = ""
        self._script: Any = None
        self._prefix = CIRCUIT_STATE_PREFIX
        self._retry_redis_at = 0.0
        self._redis_down = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tail: asyncio.Task[None] | None = None  # the last background write (they run in order)
        self._background: set[asyncio.Task[None]] = set()

    def breaker(self, upstream: Upstream) -> Breaker:
        """The breaker of one upstream."""
        return self.breakers[upstream]

    def add_transition_listener(self, listener: Callable[[Upstream, str, str], None]) -> None:
        """Observe every breaker's transitions (`listener(upstream, old, new)`)."""
        for breaker in self.breakers.values():
            breaker.add_listener(listener)

    # -- the shared state ------------------------------------------------------------------------
    def share_state(self, redis: Redis | None, *, prefix: str = CIRCUIT_STATE_PREFIX) -> str:
        """Keep the breakers' state in `redis` (None: this process alone); returns the transitions channel.

        Give it a client with short timeouts and no retries: a breaker step never waits long on Redis.
        """
        self.redis, self._prefix, self._retry_redis_at = redis, prefix, 0.0
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        if redis is None:
            self._script, self.channel = None, ""
            return ""
        self._script = redis.register_script(_BREAKER_LUA)
        db = redis.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"{prefix}events:{db}"  # pub/sub ignores the db number: name it
        return self.channel

    def _shared_ready(self) -> bool:
        return self._script is not None and time.monotonic() >= self._retry_redis_at

    async def _shared(self, upstream: Upstream, op: str, *, token: str = "", error: str = "") -> SharedRecord | None:
        """Run one step of the script; None when there is no shared state or Redis failed (then local)."""
        if not self._shared_ready():
            return None
        breaker = self.breakers[upstream]
        keys = [f"{self._prefix}{{{upstream.value}}}:state", f"{self._prefix}{{{upstream.value}}}:trial"]
        args = [
            op,
            breaker.failure_threshold,
            int(breaker.recovery_timeout_s * 1000),
            max(1, int(breaker.lease_s * 1000)),
            int(FAILURE_WINDOW_S * 1000),
            token,
            error,
            self.channel,
            upstream.value,
            int(SHARED_STATE_TTL_S * 1000),
        ]
        try:
            raw = await self._script(keys=keys, args=args)
        except Exception as exc:  # any Redis trouble: this process's copy takes over for a moment
            if not self._redis_down:
                log.warning("circuit.shared_state_unreachable", error=type(exc).__name__, op=op)
            self._redis_down, self._retry_redis_at = True, time.monotonic() + REDIS_RETRY_S
            return None
        if self._redis_down:
            self._redis_down = False
            log.info("circuit.shared_state_resumed")
        return SharedRecord.parse(raw)

    def _adopt(self, upstream: Upstream, record: SharedRecord) -> None:
        breaker = self.breakers[upstream]
        if breaker.pending == 0:  # else a write of ours is on its way; its answer is newer
            breaker.adopt(record)

    def adopt_published(self, data: bytes | str) -> None:
        """Apply a transition PUBLISHed by the script (any process); unknown payloads are ignored."""
        try:
            name, *rest = json.loads(data)
            upstream, record = Upstream(name), SharedRecord.parse(rest)
        except (ValueError, TypeError, IndexError):
            return
        self._adopt(upstream, record)

    async def forget_shared(self) -> None:
        """Delete the shared state (the last process leaving: a later start begins closed)."""
        if self.redis is not None:
            names = [f"{self._prefix}{{{u.value}}}:{part}" for u in Upstream for part in ("state", "trial")]
            with contextlib.suppress(Exception):
                await self.redis.delete(*names)

    async def refresh_shared(self) -> dict[Upstream, SharedRecord] | None:
        """Re-read every breaker's shared state into this process's copy; None without Redis."""
        records: dict[Upstream, SharedRecord] = {}
        for upstream in Upstream:
            record = await self._shared(upstream, "read")
            if record is None:
                return None
            self._adopt(upstream, record)
            records[upstream] = record
        return records

    def _in_background(
        self,
        upstream: Upstream,
        op: str,
        *,
        token: str = "",
        error: str = "",
        then: Callable[[SharedRecord | None], None] | None = None,
    ) -> bool:
        """Send a step made by sync code to Redis, in order after the earlier ones; its answer is adopted
        (and given to `then`) when it is back. False when there is no shared state to send it to."""
        loop = self._loop
        if self._script is None or loop is None or loop.is_closed():
            return False  # this process's copy already holds the step
        breaker = self.breakers[upstream]
        breaker.pending += 1

        def start() -> None:
            previous = self._tail

            async def send() -> None:
                if previous is not None and not previous.done():
                    await asyncio.wait([previous])
                record = None
                try:
                    record = await self._shared(upstream, op, token=token, error=error)
                finally:
                    breaker.pending -= 1
                    if record is not None:
                        self._adopt(upstream, record)
                    if then is not None:
                        then(record)

            self._tail = task = loop.create_task(send())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            start()
        else:  # sync code outside the loop (a test fixture, another thread): queued before what runs next
            loop.call_soon_threadsafe(start)
        return True

    async def drain(self) -> None:
        """Wait for the steps sync code sent to Redis, so this call sees them."""
        tail = self._tail
        if tail is not None and not tail.done() and tail.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([tail])

    # -- checks ----------------------------------------------------------------------------------
    def is_open(self, upstream: Upstream) -> bool:
        """True while calls to `upstream` are refused without trying (open, or half-open mid-trial)."""
        breaker = self.breakers[upstream]
        state = breaker.refresh()
        return state == OPEN or (state == HALF_OPEN and breaker.trial_busy())

    def ensure_available(self, upstream: Upstream) -> None:
        """Raise `UpstreamUnavailable` at once when the breaker refuses calls (sync: this process's copy).

        In half-open the caller that gets the trial goes ahead and must then report `record_success` /
        `record_failure` (`call` does so itself). With shared state a sync check cannot take the trial in
        Redis: it refuses and reserves it for this process; the next check here gets it.
        """
        breaker = self.breakers[upstream]
        state = breaker.refresh()
        if state == CLOSED or breaker.holds_trial():
            return
        if state == HALF_OPEN:
            if breaker.claim_grant():
                return
            if not self._shared_ready():
                if breaker.local_acquire() == "trial":
                    breaker.take_trial("")
                    return
            elif not breaker.reserving and not breaker.trial_busy():
                self._reserve_trial(upstream)
        metrics.record_rejected(upstream.value)
        raise self._refused(upstream)

    def _reserve_trial(self, upstream: Upstream) -> None:
        breaker, token = self.breakers[upstream], uuid.uuid4().hex

        def granted(record: SharedRecord | None) -> None:
            breaker.reserving = False
            if record is not None and record.verdict == "trial":
                breaker.grant(token)

        breaker.reserving = self._in_background(upstream, "acquire", token=token, then=granted)

    async def _admit(self, upstream: Upstream) -> bool:
        """Let a call go (True when it is the half-open trial) or raise `UpstreamUnavailable`."""
        breaker = self.breakers[upstream]
        if breaker.holds_trial() or breaker.claim_grant():
            return True
        await self.drain()
        token = uuid.uuid4().hex
        record = await self._shared(upstream, "acquire", token=token)
        if record is None:
            verdict, token = breaker.local_acquire(), ""
        else:
            verdict = record.verdict
            self._adopt(upstream, record)
        if verdict == "refused":
            metrics.record_rejected(upstream.value)
            raise self._refused(upstream)
        if verdict == "trial":
            breaker.take_trial(token)
        return verdict == "trial"

    # -- outcomes --------------------------------------------------------------------------------
    async def _report(self, upstream: Upstream, op: str, error: str = "") -> None:
        """Record a call's outcome (failure / success) in the shared state, or locally without Redis."""
        breaker = self.breakers[upstream]
        if op == "success" and breaker.is_clean() and not breaker.holds_trial():
            return  # nothing to write: the admission just read a clean state
        await self.drain()
        record = await self._shared(upstream, op, error=error)
        breaker.end_trial()
        if record is not None:
            self._adopt(upstream, record)
        elif op == "failure":
            breaker.local_failure(error)
        else:
            breaker.local_success()

    def record_success(self, upstream: Upstream) -> None:
        """Report a successful call made outside `call` (e.g. a finished stream)."""
        breaker = self.breakers[upstream]
        if not breaker.is_clean() or breaker.holds_trial():
            breaker.end_trial()
            breaker.local_success()
            self._in_background(upstream, "success")
        self.misconfigured.pop(upstream, None)

    def record_failure(self, upstream: Upstream, exc: BaseException) -> UpstreamUnavailable:
        """Classify and count a failure made outside `call`; return the error to raise."""
        kind = classify_error(upstream, exc)
        if kind is ErrorKind.CREDENTIALS:
            self.release_trial(upstream)
            return self._misconfigured(upstream)
        if kind is ErrorKind.TRANSIENT:
            breaker, error = self.breakers[upstream], _describe(exc)
            breaker.end_trial()
            breaker.local_failure(error)
            self._in_background(upstream, "failure", error=error)
        else:
            self.release_trial(upstream)
        return self._unavailable(upstream)

    def release_trial(self, upstream: Upstream) -> None:
        """End this task's trial without a verdict (a caller error, a cancelled call): others may try."""
        token = self.breakers[upstream].end_trial()
        if token:
            self._in_background(upstream, "release", token=token)

    def mark_misconfigured(self, upstream: Upstream) -> UpstreamMisconfigured:
        """Record that `upstream` rejected our credentials (without touching the breaker)."""
        return self._misconfigured(upstream)

    def _misconfigured(self, upstream: Upstream) -> UpstreamMisconfigured:
        variable = CREDENTIAL_VARIABLE[upstream]
        if upstream not in self.misconfigured:
            log.error(
                "upstream.credentials_rejected",
                upstream=upstream.value,
                variable=variable,
                hint=f"{variable} was rejected; fix the configuration (this is not an outage)",
            )
        self.misconfigured[upstream] = f"{variable} was rejected by {upstream.value}"
        return UpstreamMisconfigured(
            f"{FRIENDLY_NAME[upstream]} rejected this server's credentials ({variable}). "
            "The operator needs to fix the configuration.",
            upstream=upstream.value,
            retry_after=60,
        )

    def _refused(self, upstream: Upstream) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"{FRIENDLY_NAME[upstream]} is temporarily unavailable. Please try again shortly.",
            upstream=upstream.value,
            retry_after=max(1.0, self.breakers[upstream].open_remaining),
        )

    def _unavailable(self, upstream: Upstream) -> UpstreamUnavailable:
        breaker = self.breakers[upstream]
        retry_after = breaker.open_remaining if breaker.refresh() == OPEN else 5.0
        return UpstreamUnavailable(
            f"{FRIENDLY_NAME[upstream]} is temporarily unavailable. Please try again shortly.",
            upstream=upstream.value,
            retry_after=max(1.0, retry_after),
        )

    async def call(
        self,
        upstream: Upstream,
        fn: Callable[[], Awaitable[T]],
        *,
        retry: bool = True,
        policy: RetryPolicy | None = None,
    ) -> T:
        """Run `fn` behind the upstream's breaker with retries; raise domain errors on failure.

        `retry=False` is for non-idempotent work: one attempt, still counted by the breaker. A
        half-open trial is always a single attempt.
        """
        breaker = self.breakers[upstream]
        trial = await self._admit(upstream)
        chosen = policy or self.policies[upstream]

        async def attempt() -> T:
            try:
                return await fn()
            except Exception as exc:
                if classify_error(upstream, exc) is ErrorKind.TRANSIENT:
                    raise _Transient(exc) from exc
                raise

        def on_backoff(details: Any) -> None:
            wait = float(details.get("wait", 0.0))
            self.retries[upstream] += 1
            metrics.record_retry(upstream.value)
            exc = details.get("exception")
            log.info(
                "upstream.retry",
                upstream=upstream.value,
                attempt=details.get("tries"),
                wait_s=round(wait, 3),
                error=_describe(exc.original) if isinstance(exc, _Transient) else None,
            )
            if self._on_retry is not None:
                self._on_retry(upstream, wait)

        runner: Callable[[], Awaitable[T]] = attempt
        if retry and not trial and chosen.max_tries > 1:
            runner = backoff.on_exception(
                lambda: _wait_gen(chosen),
                _Transient,
                max_tries=chosen.max_tries,
                max_time=chosen.max_time_s,
                jitter=None,
                on_backoff=on_backoff,
                logger=None,  # ours: upstream.retry (backoff's own lines would repeat upstream error text)
                giveup=lambda _exc: breaker.refresh() == OPEN,  # opened meanwhile (here or by a peer)
                raise_on_giveup=True,
            )(attempt)
        started = time.monotonic()
        try:
            result = await runner()
        except _Transient as exc:
            metrics.observe_upstream(upstream.value, "failure", time.monotonic() - started)
            self.failed_calls[upstream] += 1
            await self._report(upstream, "failure", _describe(exc.original))
            raise self._unavailable(upstream) from exc.original
        except BaseException as exc:
            self.release_trial(upstream)
            if isinstance(exc, Exception) and classify_error(upstream, exc) is ErrorKind.CREDENTIALS:
                metrics.observe_upstream(upstream.value, "rejected", time.monotonic() - started)
                raise self._misconfigured(upstream) from exc
            raise
        self.last_latency_s = time.monotonic() - started
        metrics.observe_upstream(upstream.value, "success", self.last_latency_s)
        await self._report(upstream, "success")
        self.misconfigured.pop(upstream, None)
        return result

    def snapshot(self) -> dict[str, BreakerSnapshot]:
        """Every breaker's state (this process's copy), keyed by upstream name."""
        return {u.value: b.snapshot() for u, b in self.breakers.items()}

    def reset(self) -> None:
        """Close every breaker and forget errors, in Redis too (test hook)."""
        for upstream, breaker in self.breakers.items():
            breaker.local_reset()
            self._in_background(upstream, "reset")
        self.misconfigured.clear()
        self.retries = dict.fromkeys(Upstream, 0)
        self.failed_calls = dict.fromkeys(Upstream, 0)
