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
    CLOSED,
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
        self._script = redis.register_script(BREAKER_LUA)
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
            breaker, error = self.breakers[upstream], describe_error(exc)
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
            raise self._unavailable(upstream) from exc.original
        except BaseException as exc:
            self.release_trial(upstream)
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

    def reset(self) -> None:
        """Close every breaker and forget errors, in Redis too (test hook)."""
        for upstream, breaker in self.breakers.items():
            breaker.local_reset()
            self._in_background(upstream, "reset")
        self.misconfigured.clear()
