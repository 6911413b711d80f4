"""Breakers, retries and error classification (`shared.platform.resilience`), in-process and fast.

The breaker tests run twice: `local` (a process alone, as when Redis is out of reach) and `shared` (the
state in Redis under a key prefix of the test's own), so both keep the same rules.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.platform.config import Settings
from shared.platform.errors import NotFound, UpstreamMisconfigured, UpstreamUnavailable
from shared.platform.resilience import Resilience, RetryPolicy
from shared.platform.upstreams import ErrorKind, Upstream, classify_error
from tests.utils.metrics import retries_counted

FAST = RetryPolicy(max_tries=3, max_time_s=5, base_s=0.01, cap_s=0.02)


class StatusError(Exception):
    """An HTTP error shaped like the SDKs' (status_code + optional Retry-After)."""

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        if retry_after is not None:
            self.retry_after = retry_after


class OperationalError(Exception):
    """Named like psycopg's / SQLAlchemy's connection-level error."""


def make_local(threshold: int = 3, recovery: float = 0.5) -> Resilience:
    """A registry with a small threshold and recovery timeout and fast retries."""
    settings = Settings(_env_file=None, circuit_failure_threshold=threshold, circuit_recovery_timeout=recovery)
    return Resilience(settings, policies=dict.fromkeys(Upstream, FAST))


Make = Callable[..., Resilience]


@pytest.fixture(params=["local", "shared"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """`make_local`, or the same with its breakers' state in Redis (one key prefix per test)."""
    if request.param == "local":
        yield make_local
        return
    redis = Redis.from_url(request.getfixturevalue("redis_url"), socket_timeout=0.2, socket_connect_timeout=0.5)
    prefix = f"lectern:test:{uuid.uuid4().hex[:8]}:"
    built: list[Resilience] = []

    def make_shared(threshold: int = 3, recovery: float = 0.5) -> Resilience:
        res = make_local(threshold, recovery)
        res.share_state(redis, prefix=prefix)
        built.append(res)
        return res

    yield make_shared
    await redis.aclose()  # type: ignore[attr-defined]  # (types-redis predates aclose)


class Upstreamish:
    """A scripted upstream: pops outcomes (exceptions raised, values returned) and counts calls."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest.mark.parametrize(
    ("upstream", "exc", "kind"),
    [
        (Upstream.OPENAI, StatusError(401), ErrorKind.CREDENTIALS),
        (Upstream.QDRANT, StatusError(403), ErrorKind.CREDENTIALS),
        (Upstream.OPENAI, StatusError(400), ErrorKind.CALLER),
        (Upstream.OPENAI, StatusError(404), ErrorKind.CALLER),
        (Upstream.OPENAI, StatusError(429), ErrorKind.TRANSIENT),
        (Upstream.OPENAI, StatusError(500), ErrorKind.TRANSIENT),
        (Upstream.OPENAI, StatusError(503), ErrorKind.TRANSIENT),
        (Upstream.OPENAI, TimeoutError(), ErrorKind.TRANSIENT),
        (Upstream.QDRANT, ConnectionRefusedError(), ErrorKind.TRANSIENT),
        (Upstream.DATABASE, OperationalError('password authentication failed for user "x"'), ErrorKind.CREDENTIALS),
        (Upstream.DATABASE, OperationalError("connection refused"), ErrorKind.TRANSIENT),
        (Upstream.DATABASE, ValueError("bad query"), ErrorKind.CALLER),
        (Upstream.OPENAI, UpstreamUnavailable("nested breaker"), ErrorKind.CALLER),
        (Upstream.OPENAI, NotFound("no"), ErrorKind.CALLER),
    ],
)
def test_classify_error(upstream: Upstream, exc: BaseException, kind: ErrorKind) -> None:
    """Caller errors, rejected credentials and transient failures are told apart."""
    assert classify_error(upstream, exc) is kind


async def test_transient_errors_are_retried_then_succeed(make: Make) -> None:
    """Two 500s then success: one call returns, two retries counted, breaker stays closed."""
    res = make()
    retries_before = retries_counted(Upstream.OPENAI)
    fn = Upstreamish(StatusError(500), StatusError(500), "done")
    assert await res.call(Upstream.OPENAI, fn) == "done"
    assert fn.calls == 3
    assert retries_counted(Upstream.OPENAI) - retries_before == 2
    assert res.breaker(Upstream.OPENAI).state == "closed"


async def test_retry_after_is_honoured(make: Make) -> None:
    """A 429 with Retry-After waits that long before the retry."""
    res = make()
    fn = Upstreamish(StatusError(429, retry_after=0.3), "done")
    started = time.monotonic()
    assert await res.call(Upstream.OPENAI, fn) == "done"
    assert time.monotonic() - started >= 0.29


async def test_non_idempotent_calls_are_not_retried(make: Make) -> None:
    """retry=False makes exactly one attempt and still counts the failure."""
    res = make()
    fn = Upstreamish(OperationalError("server closed the connection"), "never")
    with pytest.raises(UpstreamUnavailable):
        await res.call(Upstream.DATABASE, fn, retry=False)
    assert fn.calls == 1
    assert res.breaker(Upstream.DATABASE).failure_count == 1


async def test_breaker_opens_at_threshold_and_fails_fast(make: Make) -> None:
    """After `threshold` failed calls the breaker is open: 503 with Retry-After, no upstream call."""
    res = make(threshold=2, recovery=5)
    fn = Upstreamish(*[StatusError(500)] * 10)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await res.call(Upstream.OPENAI, fn, retry=False)
    assert res.breaker(Upstream.OPENAI).state == "open"
    assert res.is_open(Upstream.OPENAI)
    calls = fn.calls
    started = time.perf_counter()
    with pytest.raises(UpstreamUnavailable) as info:
        await res.call(Upstream.OPENAI, fn)
    assert time.perf_counter() - started < 0.05
    assert fn.calls == calls
    assert info.value.code == "upstream_unavailable"
    assert 1 <= int(info.value.headers["Retry-After"]) <= 5
    assert res.snapshot()["openai"].opened_at is not None
    assert "HTTP 500" in (res.snapshot()["openai"].last_error or "")


async def test_half_open_admits_one_trial_then_closes(make: Make) -> None:
    """After the recovery timeout one trial goes through (others refused); its success closes the breaker."""
    res = make(threshold=1, recovery=0.3)
    with pytest.raises(UpstreamUnavailable):
        await res.call(Upstream.QDRANT, Upstreamish(StatusError(502)), retry=False)
    await asyncio.sleep(0.35)
    assert res.breaker(Upstream.QDRANT).refresh() == "half_open"
    gate = asyncio.Event()

    async def slow_ok() -> str:
        await gate.wait()
        return "ok"

    trial = asyncio.create_task(res.call(Upstream.QDRANT, slow_ok))
    await asyncio.sleep(0.01)
    assert res.is_open(Upstream.QDRANT)  # the trial holds the lease
    with pytest.raises(UpstreamUnavailable):
        await res.call(Upstream.QDRANT, Upstreamish("second"))
    gate.set()
    assert await trial == "ok"
    assert res.breaker(Upstream.QDRANT).state == "closed"
    assert await res.call(Upstream.QDRANT, Upstreamish("again")) == "again"


async def test_failed_trial_reopens_without_retrying(make: Make) -> None:
    """A half-open trial is a single attempt: its failure re-opens the breaker at once."""
    res = make(threshold=1, recovery=0.2)
    with pytest.raises(UpstreamUnavailable):
        await res.call(Upstream.OPENAI, Upstreamish(StatusError(500)), retry=False)
    await asyncio.sleep(0.25)
    fn = Upstreamish(StatusError(500), StatusError(500), "ok")
    with pytest.raises(UpstreamUnavailable):
        await res.call(Upstream.OPENAI, fn)
    assert fn.calls == 1
    assert res.breaker(Upstream.OPENAI).state == "open"


async def test_rejected_credentials_do_not_flap_the_breaker(make: Make) -> None:
    """401s raise UpstreamMisconfigured naming OPENAI_API_KEY and never count as failures."""
    res = make(threshold=2)
    for _ in range(5):
        with pytest.raises(UpstreamMisconfigured) as info:
            await res.call(Upstream.OPENAI, Upstreamish(StatusError(401)))
        assert "OPENAI_API_KEY" in info.value.detail
    breaker = res.breaker(Upstream.OPENAI)
    assert breaker.state == "closed"
    assert breaker.failure_count == 0
    assert res.misconfigured[Upstream.OPENAI] == "OPENAI_API_KEY was rejected by openai"
    await res.call(Upstream.OPENAI, Upstreamish("ok"))
    assert Upstream.OPENAI not in res.misconfigured


async def test_caller_errors_pass_through_uncounted(make: Make) -> None:
    """A 400 is the caller's problem: re-raised unchanged, not retried, not counted."""
    res = make(threshold=1)
    fn = Upstreamish(StatusError(400))
    with pytest.raises(StatusError):
        await res.call(Upstream.OPENAI, fn)
    assert fn.calls == 1
    assert res.breaker(Upstream.OPENAI).state == "closed"


async def test_record_failure_for_streams(make: Make) -> None:
    """record_failure/record_success (used around streams) drive the same breaker."""
    res = make(threshold=2)
    err = await res.record_failure(Upstream.OPENAI, TimeoutError())
    assert isinstance(err, UpstreamUnavailable)
    await res.record_failure(Upstream.OPENAI, TimeoutError())
    assert res.is_open(Upstream.OPENAI)
    await res.record_success(Upstream.OPENAI)
    assert not res.is_open(Upstream.OPENAI)


async def test_transitions_reach_listeners_and_reset_closes() -> None:
    """Listeners see closed->open; reset() closes every breaker and forgets errors."""
    res = make_local(threshold=1)
    seen: list[tuple[str, str, str]] = []
    res.add_transition_listener(lambda u, a, b: seen.append((u.value, a, b)))
    await res.record_failure(Upstream.DATABASE, ConnectionError("down"))
    assert seen == [("database", "closed", "open")]
    await res.reset()
    assert seen[-1] == ("database", "open", "closed")
    assert res.snapshot()["database"].last_error is None


async def test_trial_lease_is_reentrant_for_its_task(make: Make) -> None:
    """In half-open the task holding the trial passes nested admissions (call -> engine connect); others wait."""
    res = make(threshold=1, recovery=0.2)
    await res.record_failure(Upstream.DATABASE, ConnectionError("down"))
    await asyncio.sleep(0.25)

    async def nested() -> str:
        return await res.call(Upstream.DATABASE, lambda: asyncio.sleep(0, "ok"), retry=False)  # the pool's connect

    async def other_task() -> bool:
        try:
            await res.check(Upstream.DATABASE)
        except UpstreamUnavailable:
            return False
        return True

    await res.check(Upstream.DATABASE)  # this task takes the lease
    assert not await asyncio.create_task(other_task())
    assert await res.call(Upstream.DATABASE, nested) == "ok"
    assert res.breaker(Upstream.DATABASE).state == "closed"


def test_database_conninfo_from_the_url() -> None:
    """The engine's connect string: the URL's parts (a password with reserved characters intact) and
    parameters, with a 5 s connect timeout and TCP keepalives unless the URL sets its own."""
    from psycopg.conninfo import conninfo_to_dict

    from shared.stores.db_resilience import conninfo

    url = "postgres://u:p%40s%20s%2Fw@db.example:6543/lectern?ssl=require&connect_timeout=9"
    params = conninfo_to_dict(conninfo(Settings(_env_file=None, database_url=url)))
    assert params == {
        "host": "db.example",
        "port": "6543",
        "user": "u",
        "password": "p@s s/w",
        "dbname": "lectern",
        "sslmode": "require",
        "connect_timeout": "9",
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
    }
