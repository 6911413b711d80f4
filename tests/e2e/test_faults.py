"""Fault injection on the whole supervisord stack (loopback only, bounded): OpenAI, PostgreSQL, the vector
store, Redis and a frozen worker.

One stack serves the module (two Gunicorn workers + the arq worker + the watchdog), with a small breaker
(threshold 3, recovery 3 s), the fake OpenAI server as the LLM and PostgreSQL behind a TCP proxy the
tests cut and restore. A background thread polls `/health` for the whole module; the last test asserts
it never saw anything but 200.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import statistics
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.utils.stack import Stack, wait_for
from tests.utils.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

THRESHOLD = 3
RECOVERY_S = 3.0
OPENAI_KEY = "sk-fault-test-" + "k3y" * 6
API_PROCESSES = 2
QUESTION = "What is a ROS 2 topic?"
SEED_DOCS = [
    {
        "source": "faults/ros2-topics.md",
        "title": "ROS 2 topics",
        "content": "# ROS 2 topics\n\nA ROS 2 topic is a named channel: nodes publish messages to a topic and "
        "other nodes subscribe to the topic to receive them. What is a topic? A typed message bus.",
    },
    {
        "source": "faults/ros2-services.md",
        "title": "ROS 2 services",
        "content": "# ROS 2 services\n\nA ROS 2 service is a request and response call between two nodes.",
    },
]


class HealthMonitor:
    """Polls GET /health every 0.25 s on its own thread and keeps every non-200 outcome."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples = 0
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HealthMonitor:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                response = httpx.get(self.url, timeout=2)
                outcome = (
                    "200"
                    if response.status_code == 200 and response.json() == {"status": "healthy"}
                    else str(response.status_code)
                )
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            self.samples += 1
            if outcome != "200":
                self.failures.append((time.time(), outcome))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def pg_proxy(pg_database_factory: Callable[[], str]) -> Iterator[tuple[TcpProxy, str]]:
    """A fresh PostgreSQL database reached through a loopback TCP proxy; yields (proxy, DATABASE_URL)."""
    url = pg_database_factory()
    parts = urlsplit(url)
    with TcpProxy(parts.port or 5432) as proxy:
        yield proxy, url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")


@pytest.fixture(scope="module")
def stack(fake_openai: FakeOpenAI, pg_proxy: tuple[TcpProxy, str]) -> Iterator[Stack]:
    """The whole stack, shared by the module's tests (each test clears the faults it set)."""
    fake_openai.reset()
    _, database_url = pg_proxy
    env = {
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": fake_openai.url,
        "OPENAI_TIMEOUT": "2",
        "DATABASE_URL": database_url,
        "CIRCUIT_FAILURE_THRESHOLD": str(THRESHOLD),
        "CIRCUIT_RECOVERY_TIMEOUT": str(RECOVERY_S),
        "VECTOR_RPC_TIMEOUT": "1",
        "WATCHDOG_STALE_S": "4",
        "RATE_LIMIT_CHAT": "100000/minute",
        "AUTO_INGEST": "false",
    }
    stack = Stack(env=env)
    try:
        stack.start(timeout=120)
        stack.wait_worker(timeout=60)
        job = wait_job(stack, ingest(stack, SEED_DOCS), timeout=60)
        assert job["status"] == "succeeded", job
        monitor = HealthMonitor(stack.url("/health")).start()
        stack.monitor = monitor  # type: ignore[attr-defined]
        yield stack
        monitor.stop()
        if dump := os.environ.get("LECTERN_FAULTS_OUTPUT"):
            Path(dump).write_text(stack.output())
    finally:
        stack.cleanup()
        fake_openai.reset()


# -- helpers -------------------------------------------------------------------------------------
def fresh_client(stack: Stack) -> httpx.Client:
    """A client that opens a new connection per request, so requests spread over the API workers."""
    return httpx.Client(base_url=stack.base_url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def circuits_by_pid(stack: Stack, *, rounds: int = 40) -> dict[int, dict[str, Any]]:
    """/health/circuits as answered by each API worker (asks until every worker has answered)."""
    seen: dict[int, dict[str, Any]] = {}
    with fresh_client(stack) as client:
        for _ in range(rounds):
            response = client.get("/health/circuits")
            assert response.status_code == 200
            seen[int(response.headers["x-served-by"])] = response.json()
            if len(seen) >= API_PROCESSES and _ > 8:
                break
    return seen


def wait_state_everywhere(stack: Stack, upstream: str, state: str, *, timeout: float) -> dict[int, dict[str, Any]]:
    """Wait until every answering worker reports `state` for `upstream`, with every API process in it."""

    def agreed() -> dict[int, dict[str, Any]] | None:
        views = circuits_by_pid(stack)
        if len(views) < API_PROCESSES:
            return None
        for view in views.values():
            entry = view[upstream]
            api_rows = [p for p in entry["processes"] if p["role"] == "api"]
            if entry["state"] != state or len(api_rows) != API_PROCESSES:
                return None
            if any(p["state"] != state for p in api_rows):
                return None
        return views

    result: dict[int, dict[str, Any]] = wait_for(agreed, timeout=timeout, interval=0.2, message=f"{upstream} {state}")
    return result


def p95(values: list[float]) -> float:
    """95th percentile."""
    return statistics.quantiles(values, n=20)[-1]


def fail_fast(stack: Stack, request: Callable[[httpx.Client], httpx.Response], *, count: int = 30) -> list[float]:
    """Send `count` requests that must be refused at once: 503 upstream_unavailable + Retry-After."""
    latencies: list[float] = []
    with fresh_client(stack) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = request(client)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "upstream_unavailable"
            assert int(response.headers["retry-after"]) >= 1
    return latencies


def assert_fails_fast(stack: Stack, request: Callable[[httpx.Client], httpx.Response], *, count: int = 40) -> float:
    """Every request is refused at once; p95 < 50 ms (one re-measure allowed: the 2-core machine can
    be busy with other work for a moment). Returns the p95 in seconds."""
    best = float("inf")
    for _ in range(2):
        best = min(best, p95(fail_fast(stack, request, count=count)))
        if best < 0.05:
            break
    print(f"\nfail-fast p95: {best * 1000:.1f} ms")
    assert best < 0.05, f"fail-fast p95 {best * 1000:.1f} ms"
    return best


def translate(client: httpx.Client) -> httpx.Response:
    """POST /translate with a text never seen before (no cache hit)."""
    return client.post("/translate", json={"text": f"ROS 2 nodes talk over topics {uuid.uuid4().hex}"})


def ready(stack: Stack) -> dict[str, Any]:
    """A fresh /health/ready (waits out the readiness cache)."""
    time.sleep(3.1)
    body: dict[str, Any] = httpx.get(stack.url("/health/ready"), timeout=10).json()
    return body


def ingest(stack: Stack, documents: list[dict[str, str]]) -> str:
    """Queue documents; returns the job id."""
    response = httpx.post(stack.url("/api/ingest"), json={"documents": documents}, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def wait_job(stack: Stack, job_id: str, *, timeout: float) -> dict[str, Any]:
    """Poll a job until it is succeeded or failed."""

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(stack.url(f"/api/ingest/jobs/{job_id}"), timeout=5).json()
        return body if body.get("status") in {"succeeded", "failed"} else None

    result: dict[str, Any] = wait_for(finished, timeout=timeout, interval=0.5, message=f"job {job_id}")
    return result


def documents(prefix: str, count: int) -> list[dict[str, str]]:
    """`count` short one-chunk documents."""
    return [
        {
            "source": f"faults/{prefix}-{i}.md",
            "title": f"Fault drill {i}",
            "content": f"# Fault drill {i}\n\nActuators and sensors of humanoid robot number {i} in drill {prefix}.",
        }
        for i in range(count)
    ]


# -- 7. wrong key --------------------------------------------------------------------------------
def test_rejected_openai_key_is_named_never_shown(stack: Stack, fake_openai: FakeOpenAI) -> None:
    """The fake answers 401: readiness names OPENAI_API_KEY, /chat answers 503 clearly, the breaker stays closed."""
    fake_openai.configure(fault="401")
    try:
        body = ready(stack)
        llm = body["checks"]["llm"]
        assert llm["status"] == "down"
        assert llm["error"] == "misconfigured"
        assert llm["variable"] == "OPENAI_API_KEY"
        assert "OPENAI_API_KEY" in llm["detail"]
        with fresh_client(stack) as client:
            responses = [client.post("/chat", json={"query": QUESTION}) for _ in range(THRESHOLD + 2)]
            circuits = client.get("/health/circuits")
        for response in responses:
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "upstream_unavailable"
            assert "OPENAI_API_KEY" in response.json()["detail"]
            assert OPENAI_KEY not in response.text
        assert circuits.json()["openai"]["state"] == "closed"
        assert circuits.json()["openai"]["failure_count"] == 0
        time.sleep(0.5)
        assert OPENAI_KEY not in stack.output()
        assert OPENAI_KEY not in httpx.get(stack.url("/metrics")).text
    finally:
        fake_openai.reset()
    time.sleep(3.1)  # readiness cache
    assert httpx.get(stack.url("/health/ready"), timeout=10).json()["checks"]["llm"]["status"] == "up"


# -- OpenAI: 429 + Retry-After and a stall are bounded ---------------------------------------------
def test_openai_429_honours_retry_after_and_stall_is_bounded(stack: Stack, fake_openai: FakeOpenAI) -> None:
    """429 with Retry-After: retries spaced by it; a stalled upstream answers 503 well before 30 s."""
    fake_openai.configure(fault="429", retry_after=1)
    try:
        with fresh_client(stack) as client:
            response = translate(client)
        assert response.status_code == 503
        stamps = [r["at"] for r in fake_openai.requests_to("/chat/completions")]
        assert len(stamps) >= 2
        assert min(b - a for a, b in itertools.pairwise(stamps)) >= 0.9
        fake_openai.reset()
        fake_openai.configure(fault="stall")
        started = time.monotonic()
        with fresh_client(stack) as client:
            response = client.post("/translate", json={"text": f"stalled {uuid.uuid4().hex}"})
        assert response.status_code == 503
        assert time.monotonic() - started < 29
    finally:
        fake_openai.reset()
    # clear the failures counted above so the next test starts closed everywhere
    with fresh_client(stack) as client:
        for _ in range(6):
            assert translate(client).status_code == 200


# -- 1-3: OpenAI outage ----------------------------------------------------------------------------
def test_openai_outage_opens_everywhere_fails_fast_and_recovers(stack: Stack, fake_openai: FakeOpenAI) -> None:
    """500s: open in every worker's view, 503 + Retry-After in ms without calling OpenAI, then recovery."""
    fake_openai.configure(fault="500")
    try:
        with fresh_client(stack) as client:
            for _ in range(THRESHOLD):
                assert translate(client).status_code == 503
        views = wait_state_everywhere(stack, "openai", "open", timeout=10)
        for view in views.values():
            assert view["openai"]["last_error"]
            assert view["openai"]["opened_at"]
            assert view["openai"]["failure_threshold"] == THRESHOLD
        assert len({tuple(sorted(p["pid"] for p in v["openai"]["processes"])) for v in views.values()}) == 1
        upstream_calls = len(fake_openai.requests_to("/chat/completions"))
        assert_fails_fast(stack, translate)
        assert len(fake_openai.requests_to("/chat/completions")) == upstream_calls, "an open breaker called OpenAI"
        body = ready(stack)
        assert body["status"] == "degraded"
        assert body["checks"]["llm"]["status"] == "down"
        # open: reported without a call; or, past the recovery timeout, the probe was the failed trial
        assert body["checks"]["llm"]["error"] in {"circuit_open", "unreachable"}
        chat = httpx.post(stack.url("/chat"), json={"query": QUESTION}, timeout=10)
        assert chat.status_code == 200
        assert chat.json()["mode"] == "extractive"  # the LLM alone down: /chat falls back
    finally:
        fake_openai.reset()
    restored = time.monotonic()
    with fresh_client(stack) as client:
        # no traffic yet: every breaker sits open, then half_open once the recovery timeout has passed
        wait_for(
            lambda: client.get("/health/circuits").json()["openai"]["state"] == "half_open",
            timeout=RECOVERY_S + 2,
            interval=0.1,
            message="openai half_open",
        )
        # the next call is the trial: it succeeds and closes the breaker
        wait_for(lambda: translate(client).status_code == 200, timeout=5, interval=0.1, message="translate 200")
    recovered_in = time.monotonic() - restored
    print(f"\nopenai: success again {recovered_in:.1f} s after the upstream returned")
    assert recovered_in < RECOVERY_S + 5
    wait_state_everywhere(stack, "openai", "closed", timeout=5)
    metrics = httpx.get(stack.url("/metrics")).text
    assert 'lectern_circuit_transitions_total{from_state="closed",to_state="open",upstream="openai"}' in metrics
    assert 'lectern_upstream_retries_total{upstream="openai"}' in metrics
    assert 'route="/translate",status="503"' in metrics


# -- 1-3: PostgreSQL outage -------------------------------------------------------------------------
def test_database_outage_through_cut_proxy(stack: Stack, pg_proxy: tuple[TcpProxy, str]) -> None:
    """Cut PostgreSQL: ready `unavailable` naming the database, breaker open everywhere, fail fast, recover."""
    proxy, _ = pg_proxy
    proxy.cut()
    try:
        with fresh_client(stack) as client:
            for _ in range(THRESHOLD + 2):
                response = client.get("/api/ingest/jobs?limit=1")
                assert response.status_code == 503, response.text
        wait_state_everywhere(stack, "database", "open", timeout=10)
        assert_fails_fast(stack, lambda c: c.get("/api/ingest/jobs?limit=1"))
        response = httpx.get(stack.url("/health/ready"), timeout=10)
        time.sleep(3.1)
        response = httpx.get(stack.url("/health/ready"), timeout=10)
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert response.json()["checks"]["database"]["status"] == "down"
    finally:
        proxy.restore()
    restored = time.monotonic()
    with fresh_client(stack) as client:
        wait_for(
            lambda: client.get("/api/ingest/jobs?limit=1").status_code == 200,
            timeout=RECOVERY_S + 5,
            interval=0.2,
            message="database recovery",
        )
    recovered_in = time.monotonic() - restored
    print(f"\ndatabase: success again {recovered_in:.1f} s after the proxy was restored")
    assert recovered_in < RECOVERY_S + 5
    wait_state_everywhere(stack, "database", "closed", timeout=RECOVERY_S + 5)


# -- 4: ingestion through a 20 s OpenAI outage --------------------------------------------------------
def test_ingestion_survives_a_20s_openai_outage(stack: Stack, fake_openai: FakeOpenAI) -> None:
    """A job started during a 20 s outage waits (arq Retry) and ends succeeded with one point per document."""
    docs = documents(f"outage-{uuid.uuid4().hex[:6]}", 8)
    fake_openai.configure(fault="500", fault_seconds=20)
    started = time.monotonic()
    outage_ends = time.time() + 20
    try:
        job_id = ingest(stack, docs)
        job = wait_job(stack, job_id, timeout=120)
        refused = fake_openai.state.fault_responses
        stamps = [r["at"] for r in fake_openai.requests_to("/embeddings")]
    finally:
        fake_openai.reset()
    assert job["status"] == "succeeded", job
    assert time.monotonic() - started >= 19  # it really waited for the outage to end
    assert job["documents_done"] == len(docs)
    assert job["chunks_upserted"] == len(docs)
    assert job["errors"] == []
    listed = httpx.get(stack.url("/api/documents"), timeout=10).json()["documents"]
    mine = {d["source"]: d["chunks"] for d in listed if d["source"].startswith(docs[0]["source"].rsplit("-", 1)[0])}
    assert mine == {d["source"]: 1 for d in docs}
    assert refused >= 1  # the job really met the outage
    assert min(stamps) < outage_ends - 5  # it tried during the outage
    assert max(stamps) >= outage_ends  # and embedded after it ended


# -- 1-3 (+6): vector store unreachable (embedded) and the worker frozen -------------------------------
def test_frozen_worker_opens_qdrant_breaker_and_watchdog_restarts_it(stack: Stack) -> None:
    """SIGSTOP the worker: store RPCs time out -> qdrant breaker open everywhere -> /chat 503 fast; the
    watchdog restarts the worker within its window; the store answers again and the breaker closes."""
    _, old_pid = stack.program_states()["worker"]
    assert old_pid
    os.kill(old_pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        with fresh_client(stack) as client:
            for _ in range(THRESHOLD):
                assert client.post("/chat", json={"query": QUESTION}).status_code == 503
        views = wait_state_everywhere(stack, "qdrant", "open", timeout=5)
        assert all(v["qdrant"]["state"] == "open" for v in views.values())
        assert_fails_fast(stack, lambda c: c.post("/chat", json={"query": QUESTION}), count=20)
        body = httpx.get(stack.url("/health/ready"), timeout=10).json()
        assert body["checks"]["vector_store"]["status"] == "down"

        def restarted() -> bool:
            state, pid = stack.program_states()["worker"]
            return state == "RUNNING" and pid is not None and pid != old_pid

        wait_for(restarted, timeout=45, interval=0.5, message="watchdog restart")
        restart_s = time.monotonic() - frozen
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old_pid, signal.SIGCONT)
    assert restart_s < 45
    print(f"\nworker frozen -> restarted by the watchdog in {restart_s:.1f} s")
    assert "watchdog.worker_hung" in stack.output()
    stack.wait_worker(timeout=30)
    with fresh_client(stack) as client:
        wait_for(
            lambda: client.post("/chat", json={"query": QUESTION}).status_code == 200,
            timeout=RECOVERY_S + 10,
            interval=0.3,
            message="chat after the worker restart",
        )
    wait_state_everywhere(stack, "qdrant", "closed", timeout=RECOVERY_S + 5)


# -- 5: Redis restarted under the stack ------------------------------------------------------------------
def test_redis_restart_keeps_queued_jobs_and_everyone_reconnects(stack: Stack) -> None:
    """A job queued while the worker is stopped survives `supervisorctl restart redis` and runs; a second
    restart with the worker running: the API and the worker reconnect (a new job and /chat work)."""
    stack.supervisorctl("stop", "worker")
    docs = documents(f"redis-{uuid.uuid4().hex[:6]}", 2)
    try:
        job_id = ingest(stack, docs)
        result = stack.supervisorctl("restart", "redis")
        assert result.returncode == 0, result.stdout + result.stderr
        for _ in range(10):
            assert httpx.get(stack.url("/health"), timeout=2).status_code == 200
            time.sleep(0.1)
    finally:
        stack.supervisorctl("start", "worker")
    assert wait_job(stack, job_id, timeout=60)["status"] == "succeeded"

    worker_pid = stack.program_states()["worker"][1]
    assert stack.supervisorctl("restart", "redis").returncode == 0
    assert httpx.get(stack.url("/health"), timeout=2).status_code == 200
    second = wait_for(
        lambda: _try_ingest(stack, documents(f"redis2-{uuid.uuid4().hex[:6]}", 1)),
        timeout=20,
        interval=0.5,
        message="enqueue after the Redis restart",
    )
    assert wait_job(stack, second, timeout=60)["status"] == "succeeded"
    with fresh_client(stack) as client:
        wait_for(
            lambda: client.post("/chat", json={"query": QUESTION}).status_code == 200,
            timeout=20,
            interval=0.5,
            message="/chat (store RPC over Redis) after the restart",
        )
    # In whole-suite runs the worker was seen restarted by supervisord once after the live Redis restart
    # (state STARTING at this point; cause not found yet): the requirement is that it serves again.
    wait_for(lambda: stack.program_states()["worker"][0] == "RUNNING", timeout=30, message="worker RUNNING")
    pid = stack.program_states()["worker"][1]
    print(f"worker pid before/after the live Redis restart: {worker_pid}/{pid}")
    if pid != worker_pid:  # keep the evidence of why it restarted (seen in whole-suite runs only)
        lines = [line for line in stack.output().splitlines() if '"role": "worker"' in line or "worker" in line]
        # A warning, so that the evidence reaches the summary of a passing CI run too.
        warnings.warn(
            "the worker restarted after the live Redis restart; its last lines:\n" + "\n".join(lines[-40:]),
            stacklevel=1,
        )


def _try_ingest(stack: Stack, docs: list[dict[str, str]]) -> str | None:
    response = httpx.post(stack.url("/api/ingest"), json={"documents": docs}, timeout=10)
    return str(response.json()["job_id"]) if response.status_code == 202 else None


def test_health_stayed_200_throughout(stack: Stack) -> None:
    """Liveness never failed during any of the faults above."""
    monitor: HealthMonitor = stack.monitor  # type: ignore[attr-defined]
    assert monitor.samples > 20
    assert monitor.failures == []
