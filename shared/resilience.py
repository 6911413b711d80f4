"""Circuit breakers and retry policies, one per upstream, shared by the API and the worker.

`Resilience` is built from settings once per process and holds a breaker (`circuitbreaker` package)
and a retry policy (`backoff` package, exponential with full jitter, honouring `Retry-After`) for each
upstream: `openai`, `qdrant`, `database`. Callers wrap an upstream call in `await resilience.call(...)`;
errors are classified into:

- caller errors (4xx other than 401/403/429): re-raised unchanged, never counted against the breaker;
- credential errors (401/403, PostgreSQL auth failure): `UpstreamMisconfigured`, not counted (a wrong
  secret is a configuration error, not an outage);
- transient errors (timeouts, connection errors, 5xx, 429): retried while tries and time remain, then
  counted as one breaker failure and raised as `UpstreamUnavailable`.

While a breaker is open, `call` raises `UpstreamUnavailable` at once with `Retry-After` set to the time
left before the trial call. Half-open admits ONE trial call at a time (a short lease), made without
retries, so a dead upstream re-opens the breaker after one attempt instead of after a retry ladder.
`reset()` is the test hook.

Observers: `add_transition_listener(fn)` (called `fn(upstream, old, new)` on every state change; the
cross-process publisher in `shared.circuit_state` uses it) and Prometheus metrics (`shared.metrics`).
`adopt_open(...)` lets a process open its breaker because another process saw the outage (see
docs/notes/resilience.md for why).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import backoff
from circuitbreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker

import shared.metrics as metrics
from shared.config import Settings
from shared.errors import LecternError, UpstreamMisconfigured, UpstreamUnavailable
from shared.logging import get_logger

T = TypeVar("T")

log = get_logger(__name__)

#: How long a half-open trial call holds its lease before another caller may try.
TRIAL_LEASE_S = 5.0

__all__ = [
    "BreakerSnapshot",
    "ErrorKind",
    "Resilience",
    "RetryPolicy",
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


class Breaker(CircuitBreaker):
    """A circuit breaker that remembers when it opened and the last error, and reports transitions."""

    _state: str
    _failure_count: int
    _failure_threshold: int
    _opened: float

    def __init__(
        self,
        upstream: Upstream,
        *,
        failure_threshold: int,
        recovery_timeout: float,
        on_transition: Callable[[Upstream, str, str], None] | None = None,
    ) -> None:
        super().__init__(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            expected_exception=_Transient,
            name=upstream.value,
        )
        self.upstream = upstream
        self.recovery_timeout_s = float(recovery_timeout)
        self.opened_at: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.last_success_at: datetime | None = None
        self.adopted_from: int | None = None
        self._listeners: list[Callable[[Upstream, str, str], None]] = [on_transition] if on_transition else []
        self._failure_listeners: list[Callable[[Upstream], None]] = []
        self._success_listeners: list[Callable[[Upstream], None]] = []
        self._reported_state = STATE_CLOSED
        self._trial_until = 0.0
        self._trial_owner: asyncio.Task[Any] | None = None

    # -- state changes -------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[Upstream, str, str], None]) -> None:
        """Call `listener(upstream, old_state, new_state)` on every transition."""
        self._listeners.append(listener)

    def add_outcome_listeners(
        self, *, on_failure: Callable[[Upstream], None], on_success: Callable[[Upstream], None]
    ) -> None:
        """Call `on_failure(upstream)` after each counted failure and `on_success(upstream)` after each success."""
        self._failure_listeners.append(on_failure)
        self._success_listeners.append(on_success)

    def _emit(self, listeners: list[Callable[[Upstream], None]]) -> None:
        for listener in list(listeners):
            try:
                listener(self.upstream)
            except Exception as exc:  # pragma: no cover - observers must never break a call
                log.warning("circuit.listener_failed", error=type(exc).__name__)

    def trip(self) -> bool:
        """Open now, whatever the local count (the failures counted by every process reached the threshold)."""
        if self.state == STATE_OPEN:
            return False
        self._state = STATE_OPEN
        self._failure_count = max(self._failure_count, self._failure_threshold)
        self._opened = time.monotonic()
        self._trial_until = 0.0
        self._notify()
        return True

    def _opened_wall(self) -> datetime:
        """Wall-clock time of the last opening (the library keeps a monotonic stamp)."""
        return datetime.now(UTC) - timedelta(seconds=time.monotonic() - self._opened)

    def _notify(self) -> None:
        state = self.state
        if state != self._reported_state:
            previous, self._reported_state = self._reported_state, state
            if state == STATE_OPEN:
                self.opened_at = self._opened_wall()
            if state == STATE_CLOSED:
                self.adopted_from = None
            metrics.record_breaker_transition(self.upstream.value, previous, state)
            log.warning(
                "circuit.transition",
                upstream=self.upstream.value,
                previous=previous,
                state=state,
                failure_count=self._failure_count,
                last_error=self.last_error,
            )
            for listener in list(self._listeners):
                try:
                    listener(self.upstream, previous, state)
                except Exception as exc:  # pragma: no cover - observers must never break a call
                    log.warning("circuit.listener_failed", error=type(exc).__name__)
        elif state == STATE_OPEN and self.opened_at is not None:
            # Re-opened after a failed trial that nobody observed as half_open: keep opened_at exact.
            self.opened_at = self._opened_wall()

    def record_success(self) -> None:
        """A call succeeded: close the breaker."""
        self._trial_until = 0.0
        self.last_success_at = datetime.now(UTC)
        if self._failure_count or self._state != STATE_CLOSED:
            self.reset()
        self._notify()
        self._emit(self._success_listeners)

    def record_failure(self, exc: BaseException) -> None:
        """A call failed transiently: count it (opens at the threshold)."""
        self._trial_until = 0.0
        self.last_error = _describe(exc)
        self.last_error_at = datetime.now(UTC)
        with self:  # reuse the library's own failure accounting
            raise _Transient(exc)
        self._emit(self._failure_listeners)

    def __exit__(self, exc_type: Any, exc_value: Any, _traceback: Any) -> bool:
        super().__exit__(exc_type, exc_value, _traceback)
        self._notify()
        return True  # swallow: record_failure only records

    def adopt_open(self, *, opened_at: datetime, last_error: str | None, source_pid: int) -> bool:
        """Open because another process opened at `opened_at`; False when that is stale or already known.

        Adopted only when it is newer than this process's own last opening and last success, and
        while some of its recovery window remains; the local timer then runs out at the same moment.
        """
        if self._state == STATE_OPEN and self.state == STATE_OPEN:
            return False
        remaining = (opened_at - datetime.now(UTC)).total_seconds() + self.recovery_timeout_s
        if remaining <= 0.2:
            return False
        if self.last_success_at is not None and self.last_success_at >= opened_at:
            return False
        if self._state == STATE_OPEN and self._opened_wall() >= opened_at - timedelta(milliseconds=1):
            return False
        self._state = STATE_OPEN
        self._failure_count = max(self._failure_count, self._failure_threshold)
        self._opened = time.monotonic() - (datetime.now(UTC) - opened_at).total_seconds()
        self._trial_until = 0.0
        self.adopted_from = source_pid
        if last_error:
            self.last_error = last_error
        self._notify()
        self.opened_at = opened_at
        return True

    def adopt_close(self, *, succeeded_at: datetime) -> bool:
        """Close a half-open breaker because another process succeeded after this one opened.

        Only from half_open (the recovery window has passed here too): the peer's successful trial is
        the proof this process would otherwise have to collect itself, and an idle process (the worker
        between jobs) would never collect it, staying half_open forever.
        """
        if self.state != STATE_HALF_OPEN or succeeded_at <= self._opened_wall():
            return False
        self.record_success()
        self.last_success_at = succeeded_at
        return True

    # -- reading -------------------------------------------------------------------------------
    def refresh(self) -> str:
        """Current state, reporting an open -> half_open transition that happened by time passing."""
        self._notify()
        return str(self.state)

    @property
    def failure_threshold(self) -> int:
        """Consecutive failures that open this breaker."""
        return self._failure_threshold

    def acquire_trial(self) -> bool:
        """In half_open, take the single trial lease; False while another caller holds it.

        Re-entrant for the task that holds it (a `call` whose function opens a database connection
        passes both `call`'s check and the engine's `do_connect` check).
        """
        now = time.monotonic()
        owner = _current_task()
        if now < self._trial_until:
            return owner is not None and owner is self._trial_owner
        self._trial_until = now + min(TRIAL_LEASE_S, self.recovery_timeout_s)
        self._trial_owner = owner
        return True

    def trial_busy(self) -> bool:
        """True while a half-open trial call is in flight."""
        return time.monotonic() < self._trial_until

    def release_trial(self) -> None:
        """End a trial that neither proved nor disproved the upstream (e.g. a caller error)."""
        self._trial_until = 0.0

    def snapshot(self) -> BreakerSnapshot:
        """State for /health/circuits."""
        state = self.refresh()
        opened_at = self._opened_wall() if state != STATE_CLOSED else None
        return BreakerSnapshot(
            state=state,
            failure_count=self.failure_count,
            failure_threshold=self._failure_threshold,
            recovery_timeout_s=self.recovery_timeout_s,
            opened_at=opened_at.isoformat() if opened_at else None,
            last_error=self.last_error,
        )


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
    """The per-process registry of breakers and retry policies."""

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
                on_transition=on_transition,
            )
            for upstream in Upstream
        }
        self.misconfigured: dict[Upstream, str] = {}
        #: Retries performed and calls that failed after retrying, per upstream (also in /metrics).
        self.retries: dict[Upstream, int] = dict.fromkeys(Upstream, 0)
        self.failed_calls: dict[Upstream, int] = dict.fromkeys(Upstream, 0)
        self.last_latency_s = 0.0

    def breaker(self, upstream: Upstream) -> Breaker:
        """The breaker of one upstream."""
        return self.breakers[upstream]

    def add_transition_listener(self, listener: Callable[[Upstream, str, str], None]) -> None:
        """Observe every breaker's transitions (`listener(upstream, old, new)`)."""
        for breaker in self.breakers.values():
            breaker.add_listener(listener)

    def add_outcome_listeners(
        self, *, on_failure: Callable[[Upstream], None], on_success: Callable[[Upstream], None]
    ) -> None:
        """Observe every breaker's counted failures and successes (the cross-process failure count)."""
        for breaker in self.breakers.values():
            breaker.add_outcome_listeners(on_failure=on_failure, on_success=on_success)

    def is_open(self, upstream: Upstream) -> bool:
        """True while calls to `upstream` are refused without trying (open, or half-open mid-trial)."""
        breaker = self.breakers[upstream]
        state = breaker.refresh()
        return state == STATE_OPEN or (state == STATE_HALF_OPEN and breaker.trial_busy())

    def ensure_available(self, upstream: Upstream) -> None:
        """Raise `UpstreamUnavailable` at once when the breaker refuses calls.

        In half-open the first caller takes the trial lease and goes ahead; it must then report
        `record_success` / `record_failure` (`call` does so itself).
        """
        breaker = self.breakers[upstream]
        state = breaker.refresh()
        if state == STATE_OPEN or (state == STATE_HALF_OPEN and not breaker.acquire_trial()):
            metrics.record_rejected(upstream.value)
            raise UpstreamUnavailable(
                f"{FRIENDLY_NAME[upstream]} is temporarily unavailable. Please try again shortly.",
                upstream=upstream.value,
                retry_after=max(1.0, breaker.open_remaining),
            )

    def record_success(self, upstream: Upstream) -> None:
        """Report a successful call made outside `call` (e.g. a finished stream)."""
        self.breakers[upstream].record_success()
        self.misconfigured.pop(upstream, None)

    def record_failure(self, upstream: Upstream, exc: BaseException) -> UpstreamUnavailable:
        """Classify and count a failure made outside `call`; return the error to raise."""
        kind = classify_error(upstream, exc)
        if kind is ErrorKind.CREDENTIALS:
            self.breakers[upstream].release_trial()
            return self._misconfigured(upstream)
        if kind is ErrorKind.TRANSIENT:
            self.breakers[upstream].record_failure(exc)
        else:
            self.breakers[upstream].release_trial()
        return self._unavailable(upstream)

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

    def _unavailable(self, upstream: Upstream) -> UpstreamUnavailable:
        breaker = self.breakers[upstream]
        retry_after = breaker.open_remaining if breaker.refresh() == STATE_OPEN else 5.0
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
        trial = breaker.refresh() == STATE_HALF_OPEN
        self.ensure_available(upstream)
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
                giveup=lambda _exc: breaker.refresh() == STATE_OPEN,
                raise_on_giveup=True,
            )(attempt)
        started = time.monotonic()
        try:
            result = await runner()
        except _Transient as exc:
            metrics.observe_upstream(upstream.value, "failure", time.monotonic() - started)
            self.failed_calls[upstream] += 1
            breaker.record_failure(exc.original)
            raise self._unavailable(upstream) from exc.original
        except BaseException as exc:
            breaker.release_trial()
            if isinstance(exc, Exception) and classify_error(upstream, exc) is ErrorKind.CREDENTIALS:
                metrics.observe_upstream(upstream.value, "rejected", time.monotonic() - started)
                raise self._misconfigured(upstream) from exc
            raise
        self.last_latency_s = time.monotonic() - started
        metrics.observe_upstream(upstream.value, "success", self.last_latency_s)
        self.record_success(upstream)
        return result

    def snapshot(self) -> dict[str, BreakerSnapshot]:
        """Every breaker's state, keyed by upstream name."""
        return {u.value: b.snapshot() for u, b in self.breakers.items()}

    def reset(self) -> None:
        """Close every breaker and forget errors (test hook)."""
        for breaker in self.breakers.values():
            breaker.reset()
            breaker._emit(breaker._success_listeners)  # clears the count shared with other processes too
            breaker.last_success_at = datetime.now(UTC)  # peers' earlier openings are not re-adopted
            breaker.last_error = None
            breaker.last_error_at = None
            breaker.opened_at = None
            breaker.adopted_from = None
            breaker.release_trial()
            breaker.refresh()
        self.misconfigured.clear()
        self.retries = dict.fromkeys(Upstream, 0)
        self.failed_calls = dict.fromkeys(Upstream, 0)


STATES = (STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN)
