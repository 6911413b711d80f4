"""Circuit breakers and retry policies, one per upstream, one state for every process (kept in Redis).

`Resilience` is built from settings once per process and holds a breaker and a retry policy (`backoff`
package, exponential with full jitter, honouring `Retry-After`) for each upstream: `openai`, `qdrant`,
`database`. Callers wrap an upstream call in `await resilience.call(...)`; errors are classified into:

- caller errors (4xx other than 401/403/429): re-raised unchanged, never counted against the breaker;
- credential errors (401/403, PostgreSQL auth failure): `UpstreamMisconfigured`, not counted (a wrong
  secret is a configuration error, not an outage);
- transient errors (timeouts, connection errors, 5xx, 429): retried while tries and time remain, then
  counted as one breaker failure and raised as `UpstreamUnavailable`.

Every step that takes or changes breaker state is async and awaited: `call`, `check` (admission without
a call), `record_failure` / `record_success` (outcomes of work made outside `call`, e.g. a stream),
`release_trial`, `reset`. Only `is_open` is sync: it reads this process's copy, a hint for choosing a
mode (e.g. an extractive answer while the model is out).

Shared state. Once `share_state(redis)` is called (`shared.platform.circuit_state` does it in every process), a
breaker's state lives in Redis: a hash `<prefix>{<upstream>}:state` (state closed|open, failures,
opened_at, failed_at, last_error, last_error_at, version, epoch; times in ms of the Redis clock) changed only by
one Lua script, so each step is atomic across processes and costs one round trip. `call` runs it before
its attempt, so an opening made by any process holds here before this process's next call. Failures are
counted across processes: `threshold` consecutive failures of the service open the breaker (a count idle
for 60 s starts again); any success closes it. Half-open is derived (open, and the recovery time has
passed); its one trial is `SET <prefix>{<upstream>}:trial <token> NX PX <lease>`, so exactly one caller
in one process gets it; the trial is a single attempt, its success closes and its failure re-opens.
The task holding the trial passes nested admissions of the same upstream (a route's database `call`
whose session opens a pool connection through the breaker again), as part of that trial.

The state expires a few seconds after the last process stops reading it (and the last process to leave
deletes it), so, as when breakers lived in each process's memory, a stack started again starts closed.

Redis down: every step falls back to this process's copy with the same rules (its own count and trial)
and Redis is tried again a second later; nothing waits on it (its client has short timeouts). When it
answers again, the shared state is taken as it is there.

`reset()` is the test hook. `add_transition_listener(fn)` sees every state change of this process's view.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import backoff

import shared.platform.metrics as metrics
from shared.platform.breaker import (
    BREAKER_LUA,
    FAILURE_WINDOW_S,
    HALF_OPEN,
    OPEN,
    REDIS_RETRY_S,
    SHARED_STATE_TTL_S,
    Breaker,
    BreakerSnapshot,
    SharedRecord,
)
from shared.platform.config import Settings
from shared.platform.constants import CIRCUIT_STATE_PREFIX
from shared.platform.errors import UpstreamMisconfigured, UpstreamUnavailable
from shared.platform.logging import get_logger
from shared.platform.upstreams import (
    CREDENTIAL_VARIABLE,
    FRIENDLY_NAME,
    ErrorKind,
    Upstream,
    classify_error,
    describe_error,
    retry_after_of,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

log = get_logger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped by tries and total time."""

    max_tries: int = 4
    max_time_s: float = 20.0
    base_s: float = 0.5
    cap_s: float = 8.0
    max_retry_after_s: float = 30.0


class _Transient(Exception):
    """Internal marker: a transient upstream error eligible for a retry."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(str(original))


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
        self.redis: Redis | None = None
        self.channel = ""
        self._script: Any = None
        self._prefix = CIRCUIT_STATE_PREFIX
        self._retry_redis_at = 0.0
        self._redis_down = False

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
        if redis is None:
            self._script, self.channel = None, ""
            return ""
        self._script = redis.register_script(BREAKER_LUA)
        db = redis.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"{prefix}events:{db}"  # pub/sub ignores the db number: name it
        return self.channel

    async def _shared(self, upstream: Upstream, op: str, *, token: str = "", error: str = "") -> SharedRecord | None:
        """Run one step of the script; None when there is no shared state or Redis failed (then local)."""
        if self._script is None or time.monotonic() < self._retry_redis_at:
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

    def adopt_published(self, data: bytes | str) -> None:
        """Apply a transition PUBLISHed by the script (any process); unknown payloads are ignored."""
        try:
            name, *rest = json.loads(data)
            upstream, record = Upstream(name), SharedRecord.parse(rest)
        except (ValueError, TypeError, IndexError):
            return
        self.breakers[upstream].adopt(record)

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
            self.breakers[upstream].adopt(record)
            records[upstream] = record
        return records

    # -- admission -------------------------------------------------------------------------------
    def is_open(self, upstream: Upstream) -> bool:
        """True while calls to `upstream` are refused without trying (open, or half-open mid-trial).

        A hint from this process's copy (kept fresh by the published transitions and the 1 s re-read),
        for choosing a mode; `call` and `check` decide admission in the shared state.
        """
        breaker = self.breakers[upstream]
        state = breaker.refresh()
        return state == OPEN or (state == HALF_OPEN and breaker.trial_busy())

    async def check(self, upstream: Upstream) -> None:
        """Raise `UpstreamUnavailable` at once when the breaker refuses calls to `upstream`.

        In half-open the caller that passes holds the trial: its next `call` to `upstream` (same task) is
        that trial and reports the outcome; a trial never reported frees itself after its lease.
        """
        await self._admit(upstream)

    async def _admit(self, upstream: Upstream) -> bool:
        """Let a call go (True when it is the half-open trial) or raise `UpstreamUnavailable`."""
        breaker = self.breakers[upstream]
        if breaker.holds_trial():
            return True
        token = uuid.uuid4().hex
        record = await self._shared(upstream, "acquire", token=token)
        if record is None:
            verdict, token = breaker.local_acquire(), ""
        else:
            verdict = record.verdict
            breaker.adopt(record)
        if verdict == "refused":
            metrics.record_rejected(upstream.value)
            raise self._refused(upstream)
        if verdict == "trial":
            breaker.take_trial(token)
        return verdict == "trial"

    # -- outcomes --------------------------------------------------------------------------------
    async def _report(self, upstream: Upstream, op: str, error: str = "") -> None:
        """Record an outcome (failure / success) in the shared state, or locally without Redis."""
        breaker = self.breakers[upstream]
        if op == "success" and breaker.is_clean() and not breaker.holds_trial():
            return  # nothing to write: the admission just read a clean state
        record = await self._shared(upstream, op, error=error)
        breaker.end_trial()
        if record is not None:
            breaker.adopt(record)
        elif op == "failure":
            breaker.local_failure(error)
        else:
            breaker.local_success()

    async def record_success(self, upstream: Upstream) -> None:
        """Report a successful call made outside `call` (e.g. a finished stream)."""
        await self._report(upstream, "success")
        self.misconfigured.pop(upstream, None)

    async def record_failure(self, upstream: Upstream, exc: BaseException) -> UpstreamUnavailable:
        """Classify and count a failure made outside `call`; return the error to raise."""
        kind = classify_error(upstream, exc)
        if kind is ErrorKind.TRANSIENT:
            await self._report(upstream, "failure", describe_error(exc))
            return self.unavailable(upstream)
        await self.release_trial(upstream)
        return self._misconfigured(upstream) if kind is ErrorKind.CREDENTIALS else self.unavailable(upstream)

    async def release_trial(self, upstream: Upstream) -> None:
        """End this task's trial without a verdict (a caller error, a cancelled call): others may try."""
        token = self.breakers[upstream].end_trial()
        if token:
            await self._shared(upstream, "release", token=token)

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

    def unavailable(self, upstream: Upstream) -> UpstreamUnavailable:
        """The 503 for a failed call to `upstream` (Retry-After: the open time left, else 5 s)."""
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
            metrics.record_retry(upstream.value)
            exc = details.get("exception")
            log.info(
                "upstream.retry",
                upstream=upstream.value,
                attempt=details.get("tries"),
                wait_s=round(wait, 3),
                error=describe_error(exc.original) if isinstance(exc, _Transient) else None,
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
            await self._report(upstream, "failure", describe_error(exc.original))
            raise self.unavailable(upstream) from exc.original
        except BaseException as exc:
            await self.release_trial(upstream)
            if isinstance(exc, Exception) and classify_error(upstream, exc) is ErrorKind.CREDENTIALS:
                metrics.observe_upstream(upstream.value, "rejected", time.monotonic() - started)
                raise self._misconfigured(upstream) from exc
            raise
        metrics.observe_upstream(upstream.value, "success", time.monotonic() - started)
        await self._report(upstream, "success")
        self.misconfigured.pop(upstream, None)
        return result

    def snapshot(self) -> dict[str, BreakerSnapshot]:
        """Every breaker's state (this process's copy), keyed by upstream name."""
        return {u.value: b.snapshot() for u, b in self.breakers.items()}

    async def reset(self) -> None:
        """Close every breaker and forget errors, in Redis too (test hook)."""
        for upstream, breaker in self.breakers.items():
            breaker.local_reset()
            record = await self._shared(upstream, "reset")
            if record is not None:
                breaker.adopt(record)
        self.misconfigured.clear()
