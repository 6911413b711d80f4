"""One breaker state for every process (Redis): an opening holds everywhere before the next call, half-open
lets exactly one trial through across processes, and a Redis outage leaves every process its own breaker.

"Processes" are separately built `Resilience` objects on one Redis database (as two API workers have) and,
for the headline cases, a real second Python process (`tests/shared/breaker_peer.py`). The upstream is the
fake OpenAI server, reached with the real SDK; it counts every request it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI
from redis.asyncio import Redis

from shared.platform.circuit_state import CircuitSync, merged_circuits
from shared.platform.config import Settings
from shared.platform.errors import UpstreamUnavailable
from shared.platform.resilience import Resilience, RetryPolicy
from shared.platform.upstreams import Upstream
from tests.fakes.openai_server import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
THRESHOLD = 3
FAST = RetryPolicy(max_tries=2, max_time_s=2, base_s=0.01, cap_s=0.02)


def settings_for(recovery: float) -> Settings:
    """Settings with a small threshold and the given recovery timeout."""
    return Settings(_env_file=None, circuit_failure_threshold=THRESHOLD, circuit_recovery_timeout=recovery)


def chat(client: AsyncOpenAI) -> Callable[[], Any]:
    """One chat completion (what shared.inference.llm sends), as a thunk for `Resilience.call`."""
    return lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


class Peer:
    """A second process (`python -m tests.shared.breaker_peer`) driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, prefix: str, timeout: float = 60) -> str:
        """The next stdout line starting with `prefix` (other output, e.g. logs, is skipped)."""
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not raw:
                raise RuntimeError(f"peer exited with {await self.proc.wait()}")
            text = raw.decode().strip()
            if text.startswith(prefix):
                return text[len(prefix) :].strip()

    async def ask(self, **command: Any) -> dict[str, Any]:
        """Send one command; its RESULT."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        answer: dict[str, Any] = json.loads(await self.line("RESULT"))
        return answer


@contextlib.asynccontextmanager
async def peer_process(**config: Any) -> AsyncIterator[Peer]:
    """Start a peer process and wait until its breakers are linked to Redis."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.shared.breaker_peer",
        json.dumps(config),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    peer = Peer(proc)
    try:
        await peer.line("READY")
        yield peer
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(peer.ask(op="exit"), 0.5)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A breaker-style client (short timeouts) on a flushed test database."""
    client = Redis.from_url(redis_url, socket_timeout=0.2, socket_connect_timeout=0.5)
    yield client
    await client.aclose()  # type: ignore[attr-defined]  # (types-redis predates aclose)


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own (other test sessions may share the machine's Redis)."""
    return f"lectern:test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def openai_client(fake_openai: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    """The real SDK pointed at the fake server (no SDK retries: ours are what is tested)."""
    fake_openai.reset()
    client = AsyncOpenAI(api_key="sk-test-shared", base_url=fake_openai.url, max_retries=0, timeout=5)
    yield client
    await client.close()
    fake_openai.reset()


def shared(redis: Redis, prefix: str, recovery: float) -> Resilience:
    """A Resilience whose breakers live in Redis, without a listener: only the check before each call."""
    res = Resilience(settings_for(recovery), policies={Upstream.OPENAI: FAST})
    res.share_state(redis, prefix=prefix)
    return res


async def open_breaker(res: Resilience, client: AsyncOpenAI) -> None:
    """THRESHOLD failed calls (the fake answers 500) from one process."""
    for _ in range(THRESHOLD):
        with pytest.raises(UpstreamUnavailable):
            await res.call(Upstream.OPENAI, chat(client), retry=False)
    assert res.is_open(Upstream.OPENAI)


async def test_an_opening_holds_in_every_process_before_its_next_call(
    fake_openai: FakeOpenAI, openai_client: AsyncOpenAI, redis: Redis, redis_url: str, prefix: str
) -> None:
    """Process A opens the breaker against a failing upstream; the next calls of process B (another
    Resilience here, which has no listener) and of process C (a real second process, started before the
    opening) fail fast, and the upstream receives no request from either."""
    a, b = shared(redis, prefix, 30), shared(redis, prefix, 30)
    config = {"redis_url": redis_url, "prefix": prefix, "base_url": fake_openai.url}
    async with peer_process(**config, threshold=THRESHOLD, recovery=30) as c:
        assert (await c.ask(op="state"))["state"] == "closed"
        assert await b.call(Upstream.OPENAI, chat(openai_client)) is not None  # B: closed, and it works
        fake_openai.configure(fault="500")
        await open_breaker(a, openai_client)
        seen = len(fake_openai.requests)
        assert b.breaker(Upstream.OPENAI).stored_state == "closed"  # B's copy has not been told anything

        started = time.perf_counter()
        with pytest.raises(UpstreamUnavailable) as refused:
            await b.call(Upstream.OPENAI, chat(openai_client))
        assert time.perf_counter() - started < 0.05
        assert int(refused.value.headers["Retry-After"]) >= 20
        assert b.is_open(Upstream.OPENAI)

        result = await c.ask(op="calls", count=20)
        assert result["outcomes"] == ["unavailable"] * 20
        assert len(fake_openai.requests) == seen, "a process called the upstream while the breaker was open"
        latencies = result["latencies_ms"]
        p50, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[-1]
        print(f"\nsecond process, 20 calls after the opening: p50 {p50:.2f} ms, p95 {p95:.2f} ms, 0 upstream requests")
        assert p95 < 50


async def test_half_open_lets_exactly_one_trial_through_across_processes(
    fake_openai: FakeOpenAI, openai_client: AsyncOpenAI, redis: Redis, redis_url: str, prefix: str
) -> None:
    """After the recovery time, 4 concurrent callers here and 4 in another process try at the same moment:
    one request reaches the (slow, recovered) upstream; the rest are refused; its success closes the
    breaker for both processes."""
    recovery = 1.0
    here = shared(redis, prefix, recovery)
    config = {"redis_url": redis_url, "prefix": prefix, "base_url": fake_openai.url}
    async with peer_process(**config, threshold=THRESHOLD, recovery=recovery) as other:
        fake_openai.configure(fault="500")
        await open_breaker(here, openai_client)
        fake_openai.reset()
        fake_openai.configure(latency_ms=400)  # recovered, but slow: the trial is in flight while others try
        await asyncio.sleep(recovery + 0.1)
        at = time.time() + 0.5
        there = asyncio.create_task(other.ask(op="calls", count=4, concurrency=4, at=at))
        await asyncio.sleep(max(0.0, at - time.time()))
        mine = await asyncio.gather(
            *(here.call(Upstream.OPENAI, chat(openai_client)) for _ in range(4)), return_exceptions=True
        )
        theirs = (await there)["outcomes"]
        successes = sum(1 for r in mine if not isinstance(r, BaseException)) + theirs.count("ok")
        refused = sum(1 for r in mine if isinstance(r, UpstreamUnavailable)) + theirs.count("unavailable")
        assert len(fake_openai.requests_to("/chat/completions")) == 1
        assert (successes, refused) == (1, 7)
        await here.refresh_shared()  # (this Resilience has no listener)
        assert here.breaker(Upstream.OPENAI).refresh() == "closed"
        assert (await other.ask(op="calls", count=1))["outcomes"] == ["ok"]
        assert (await other.ask(op="state"))["state"] == "closed"


async def test_is_open_learns_an_opening_from_the_published_transition(
    fake_openai: FakeOpenAI, openai_client: AsyncOpenAI, redis: Redis, prefix: str
) -> None:
    """`is_open` (the sync hint that picks a mode, read from this process's copy) sees another process's
    opening within milliseconds, not a heartbeat later; so does its closing."""
    a = shared(redis, prefix, 30)
    b = Resilience(settings_for(30))
    sync_b = CircuitSync(resilience=b, redis=redis, role="api", pid=4002, prefix=prefix, interval_s=30).start()
    try:
        await asyncio.sleep(0.2)  # subscribed
        fake_openai.configure(fault="500")
        await open_breaker(a, openai_client)
        deadline = time.perf_counter() + 0.5
        while not b.is_open(Upstream.OPENAI) and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        assert b.is_open(Upstream.OPENAI)
        with pytest.raises(UpstreamUnavailable):
            await b.check(Upstream.OPENAI)
        await a.record_success(Upstream.OPENAI)  # any process closing closes it here too
        deadline = time.perf_counter() + 0.5
        while b.is_open(Upstream.OPENAI) and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        assert not b.is_open(Upstream.OPENAI)
    finally:
        await sync_b.aclose()


async def test_a_check_in_half_open_takes_the_single_trial(redis: Redis, prefix: str) -> None:
    """A check in half-open takes the trial in Redis for its task (re-entrant there: call -> engine
    connect), while every other process is refused until the trial ends."""
    a, b = shared(redis, prefix, 0.3), shared(redis, prefix, 0.3)
    for _ in range(THRESHOLD):
        await a.record_failure(Upstream.DATABASE, ConnectionError("down"))
    await asyncio.sleep(0.4)
    await b.refresh_shared()  # B's copy: open, recovery time passed (its listener would have told it)
    assert b.breaker(Upstream.DATABASE).state == "half_open"
    await b.check(Upstream.DATABASE)  # this task now runs the trial
    await b.check(Upstream.DATABASE)  # re-entrant (call -> engine connect)
    with pytest.raises(UpstreamUnavailable):
        await a.call(Upstream.DATABASE, lambda: asyncio.sleep(0))
    await b.record_success(Upstream.DATABASE)
    assert await a.call(Upstream.DATABASE, lambda: asyncio.sleep(0, "ok")) == "ok"
    assert a.breaker(Upstream.DATABASE).state == "closed"


async def test_failures_are_counted_across_processes(redis: Redis, prefix: str) -> None:
    """Threshold 3 with one failure in each of three processes opens it for all: the count is the service's."""
    processes = [shared(redis, prefix, 30) for _ in range(3)]
    for res in processes:
        with pytest.raises(UpstreamUnavailable):
            await res.call(Upstream.QDRANT, _failing(TimeoutError()), retry=False)
    assert all(res.breaker(Upstream.QDRANT).failure_count >= 1 for res in processes)
    for res in processes:
        with pytest.raises(UpstreamUnavailable):
            await res.call(Upstream.QDRANT, lambda: asyncio.sleep(0))
    view = (await processes[0].refresh_shared() or {})[Upstream.QDRANT]
    assert (view.state, view.failures) == ("open", 3)
    assert "TimeoutError" in view.last_error


def _failing(exc: BaseException) -> Callable[[], Any]:
    async def fail() -> None:
        raise exc

    return fail


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Any:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.parametrize("redis_trouble", ["refused", "hung"])
async def test_redis_down_leaves_each_process_its_own_breaker(redis_trouble: str) -> None:
    """Redis unreachable (nothing listening, or a server that never answers): calls are not held up, and
    the breaker still opens at the threshold in this process and fails fast there."""
    with contextlib.ExitStack() as stack:
        port = _closed_port() if redis_trouble == "refused" else stack.enter_context(silent_server())
        client = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2, socket_connect_timeout=0.2)
        res = Resilience(settings_for(30), policies={Upstream.OPENAI: FAST})
        res.share_state(client)
        try:
            started = time.perf_counter()
            for _ in range(20):
                assert await res.call(Upstream.OPENAI, lambda: asyncio.sleep(0, "ok")) == "ok"
            assert time.perf_counter() - started < 0.6  # at most one Redis timeout, then the local copy
            for _ in range(THRESHOLD):
                with pytest.raises(UpstreamUnavailable):
                    await res.call(Upstream.OPENAI, _failing(ConnectionError("down")), retry=False)
            assert res.is_open(Upstream.OPENAI)
            calls = 0

            async def counted() -> str:
                nonlocal calls
                calls += 1
                return "ok"

            with pytest.raises(UpstreamUnavailable):
                await res.call(Upstream.OPENAI, counted)
            assert calls == 0
            own = CircuitSync(resilience=res, redis=client, role="api", pid=6001)  # its row, not started
            view = await merged_circuits(resilience=res, redis=client, sync=own)
            assert view["openai"]["state"] == "open"  # this process's own view when Redis is out of reach
            assert [p["pid"] for p in view["openai"]["processes"]] == [6001]
        finally:
            await client.aclose()  # type: ignore[attr-defined]


async def test_health_circuits_top_level_is_the_shared_state(redis: Redis, prefix: str) -> None:
    """/health/circuits' top level is read from the shared state, at once (rows follow on the heartbeat)."""
    a, b = Resilience(settings_for(30)), Resilience(settings_for(30))
    sync_a = CircuitSync(resilience=a, redis=redis, role="api", pid=5001, prefix=prefix, interval_s=30).start()
    sync_b = CircuitSync(resilience=b, redis=redis, role="worker", pid=5002, prefix=prefix, interval_s=30).start()
    try:
        await asyncio.sleep(0.2)
        for _ in range(THRESHOLD):
            await a.record_failure(Upstream.OPENAI, TimeoutError())
        await asyncio.sleep(0.05)
        view = await merged_circuits(resilience=b, redis=redis, sync=sync_b)
        entry = view["openai"]
        assert set(entry) == {
            "state",
            "failure_count",
            "failure_threshold",
            "recovery_timeout_s",
            "opened_at",
            "last_error",
            "processes",
        }
        assert (entry["state"], entry["failure_count"], entry["failure_threshold"]) == ("open", THRESHOLD, THRESHOLD)
        assert entry["opened_at"] is not None
        assert entry["last_error"] == "TimeoutError"
        rows = {(p["pid"], p["role"]): p for p in entry["processes"]}
        assert rows[(5002, "worker")]["state"] == "open"
        for row in rows.values():
            assert {"pid", "role", "state", "failure_count", "updated_at"} <= set(row)
        assert view["qdrant"]["state"] == "closed"
    finally:
        await sync_a.aclose()
        await sync_b.aclose()
