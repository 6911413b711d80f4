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
left before the trial call. `reset()` is the test hook.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import backoff
from circuitbreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker

from shared.config import Settings
from shared.errors import UpstreamMisconfigured, UpstreamUnavailable

T = TypeVar("T")

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


def classify_error(upstream: Upstream, exc: BaseException) -> ErrorKind:
    """Decide whether an upstream error is the caller's fault, a credential problem or transient."""
    if isinstance(exc, UpstreamMisconfigured):
        return ErrorKind.CREDENTIALS
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | ConnectionError | OSError):
        return ErrorKind.TRANSIENT
    status = _status_of(exc)
    if upstream is Upstream.DATABASE:
        text = str(exc).lower()
        if "password authentication failed" in text or "authentication failed" in text:
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


class Breaker(CircuitBreaker):
    """A circuit breaker that remembers when it opened and the last error, and reports transitions."""

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
        self._on_transition = on_transition
        self._reported_state = STATE_CLOSED

    def _notify(self) -> None:
        state = self.state
        if state != self._reported_state:
            previous, self._reported_state = self._reported_state, state
            if state == STATE_OPEN:
                self.opened_at = datetime.now(UTC)
            if self._on_transition is not None:
                self._on_transition(self.upstream, previous, state)

    def record_success(self) -> None:
        """A call succeeded: close the breaker."""
        if self._failure_count or self._state != STATE_CLOSED:
            self.reset()
        self._notify()

    def record_failure(self, exc: BaseException) -> None:
        """A call failed transiently: count it (opens at the threshold)."""
        self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        with self:  # reuse the library's own failure accounting
            raise _Transient(exc)

    def __exit__(self, exc_type: Any, exc_value: Any, _traceback: Any) -> bool:
        super().__exit__(exc_type, exc_value, _traceback)
        self._notify()
        return True  # swallow: record_failure only records

    def refresh(self) -> str:
        """Current state, reporting an open -> half_open transition that happened by time passing."""
        self._notify()
        return str(self.state)

    def snapshot(self) -> BreakerSnapshot:
        """State for /health/circuits."""
        state = self.refresh()
        return BreakerSnapshot(
            state=state,
            failure_count=self.failure_count,
            failure_threshold=self._failure_threshold,
            recovery_timeout_s=self.recovery_timeout_s,
            opened_at=self.opened_at.isoformat() if self.opened_at and state != STATE_CLOSED else None,
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

    def breaker(self, upstream: Upstream) -> Breaker:
        """The breaker of one upstream."""
        return self.breakers[upstream]

    def is_open(self, upstream: Upstream) -> bool:
        """True while calls to `upstream` are refused without trying."""
        return self.breakers[upstream].refresh() == STATE_OPEN

    def ensure_available(self, upstream: Upstream) -> None:
        """Raise `UpstreamUnavailable` at once when the breaker is open."""
        breaker = self.breakers[upstream]
        if breaker.refresh() == STATE_OPEN:
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
            return self._misconfigured(upstream)
        if kind is ErrorKind.TRANSIENT:
            self.breakers[upstream].record_failure(exc)
        return self._unavailable(upstream)

    def _misconfigured(self, upstream: Upstream) -> UpstreamMisconfigured:
        variable = CREDENTIAL_VARIABLE[upstream]
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

        `retry=False` is for non-idempotent work: one attempt, still counted by the breaker.
        """
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
            if self._on_retry is not None:
                self._on_retry(upstream, float(details.get("wait", 0.0)))

        runner: Callable[[], Awaitable[T]] = attempt
        if retry and chosen.max_tries > 1:
            runner = backoff.on_exception(
                lambda: _wait_gen(chosen),
                _Transient,
                max_tries=chosen.max_tries,
                max_time=chosen.max_time_s,
                jitter=None,
                on_backoff=on_backoff,
                giveup=lambda _exc: self.breakers[upstream].refresh() == STATE_OPEN,
                raise_on_giveup=True,
            )(attempt)
        started = time.monotonic()
        try:
            result = await runner()
        except _Transient as exc:
            self.breakers[upstream].record_failure(exc.original)
            raise self._unavailable(upstream) from exc.original
        except Exception as exc:
            if classify_error(upstream, exc) is ErrorKind.CREDENTIALS:
                raise self._misconfigured(upstream) from exc
            raise
        self.record_success(upstream)
        self.last_latency_s = time.monotonic() - started
        return result

    def snapshot(self) -> dict[str, BreakerSnapshot]:
        """Every breaker's state, keyed by upstream name."""
        return {u.value: b.snapshot() for u, b in self.breakers.items()}

    def reset(self) -> None:
        """Close every breaker and forget errors (test hook)."""
        for breaker in self.breakers.values():
            breaker.reset()
            breaker.last_error = None
            breaker.opened_at = None
            breaker.refresh()
        self.misconfigured.clear()


STATES = (STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN)
