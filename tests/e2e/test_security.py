"""The whole stack under hostile input: rate limits across Gunicorn workers, bad requests, secret leaks.

One supervisord stack for the module (two Gunicorn workers, PostgreSQL with a password-protected role,
the fake OpenAI server), with every secret set to a unique marker. The leak test runs last and checks the
output of the whole module, so every request the other tests made is covered too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.stack import Stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TAG = uuid.uuid4().hex[:8]
MARKERS = {
    "OPENAI_API_KEY": f"oaiLeakMarker{TAG}",
    "ADMIN_API_KEY": f"adminLeakMarker{TAG}",
    "BETTER_AUTH_SECRET": f"authLeakMarker{TAG}",
    "QDRANT_API_KEY": f"qdrantLeakMarker{TAG}",
    "DB_PASSWORD": f"dbLeakMarker{TAG}",
}
LIMIT = 5


@pytest.fixture(scope="module")
def pg_with_password() -> Iterator[str]:
    """A PostgreSQL role with a password (the marker) owning a fresh database; dropped afterwards."""
    role, db = f"lectern_leak_{TAG}", f"lectern_leak_{TAG}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 not reachable")
    admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{MARKERS['DB_PASSWORD']}'")
    admin.execute(f'CREATE DATABASE "{db}" OWNER {role}')
    yield f"postgresql://{role}:{MARKERS['DB_PASSWORD']}@127.0.0.1:5432/{db}"
    admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    admin.execute(f"DROP ROLE IF EXISTS {role}")
    admin.close()


@pytest.fixture(scope="module")
def stack(fake_openai: FakeOpenAI, pg_with_password: str) -> Iterator[Stack]:
    """The stack with every secret set to a marker, RATE_LIMIT_CHAT=5/minute, one trusted proxy hop."""
    fake_openai.reset()
    env = {
        "OPENAI_API_KEY": MARKERS["OPENAI_API_KEY"],
        "OPENAI_BASE_URL": fake_openai.url,
        "ADMIN_API_KEY": MARKERS["ADMIN_API_KEY"],
        "BETTER_AUTH_SECRET": MARKERS["BETTER_AUTH_SECRET"],
        "QDRANT_API_KEY": MARKERS["QDRANT_API_KEY"],
        "DATABASE_URL": pg_with_password,
        "RATE_LIMIT_CHAT": f"{LIMIT}/minute",
        "TRUSTED_PROXY_HOPS": "1",
        "CIRCUIT_RECOVERY_TIMEOUT": "2",
        "WEB_CONCURRENCY": "2",
    }
    with Stack(env=env) as running:
        yield running
    fake_openai.reset()


def _ip() -> str:
    return f"198.51.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


def _log_events(stack: Stack) -> list[dict[str, Any]]:
    events = []
    for line in stack.output().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def test_no_server_banner_through_gunicorn(stack: Stack) -> None:
    """Gunicorn+Uvicorn answers without a `server` header, with nosniff and a request id, errors included."""
    for path in ("/health", "/no/such/page", "/openapi.json"):
        response = httpx.get(stack.url(path))
        assert "server" not in response.headers
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-request-id"]


def test_rate_limit_across_two_workers(stack: Stack) -> None:
    """N+1 requests in one window, served by both Gunicorn workers: exactly one 429 with Retry-After."""
    for _attempt in range(5):
        ip, run = _ip(), uuid.uuid4().hex[:8]

        def call(i: int, ip: str = ip, run: str = run) -> httpx.Response:
            headers = {"X-Forwarded-For": ip, "X-Request-ID": f"rl-{run}-{i}", "Connection": "close"}
            return httpx.post(stack.url("/translate"), json={"text": "ROS 2 nodes"}, headers=headers, timeout=30)

        with ThreadPoolExecutor(max_workers=LIMIT + 1) as pool:
            responses = list(pool.map(call, range(LIMIT + 1)))
        statuses = [r.status_code for r in responses]
        refused = [r for r in responses if r.status_code == 429]
        assert len(refused) == 1, statuses
        assert all(s < 500 or s == 503 for s in statuses), statuses
        assert 1 <= int(refused[0].headers["retry-after"]) <= 60
        assert refused[0].json()["code"] == "rate_limited"
        time.sleep(0.5)
        pids = {
            e["pid"]
            for e in _log_events(stack)
            if e.get("event") == "http.request" and str(e.get("request_id", "")).startswith(f"rl-{run}-")
        }
        if len(pids) == 2:
            return
    pytest.fail(f"the burst never spread over both workers (pids seen: {pids})")


def _raw(stack: Stack, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as conn:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(payload)
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def test_bad_input_is_4xx_and_health_stays_fast(stack: Stack) -> None:
    """Oversized, nested, non-UTF-8, mistyped, header-bloated requests: all 4xx; /health fast throughout."""
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=5) as client:
            while not stop.is_set():
                started = time.perf_counter()
                assert client.get("/health").json() == {"status": "healthy"}
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    admin = {"X-API-Key": MARKERS["ADMIN_API_KEY"]}
    json_ct = {"content-type": "application/json"}
    nested = b"[" * 400_000 + b"]" * 400_000

    def chunked(total: int) -> Iterator[bytes]:
        for _ in range(total // 65536 + 1):
            yield b"z" * 65536

    results: list[tuple[str, httpx.Response]] = []
    with httpx.Client(base_url=stack.base_url, timeout=30, headers={"X-Forwarded-For": _ip()}) as client:
        cases: list[tuple[str, Any]] = [
            ("5 MiB with Content-Length", lambda: client.post("/chat", content=b"a" * (5 << 20), headers=json_ct)),
            ("3 MiB chunked", lambda: client.post("/chat", content=chunked(3 << 20), headers=json_ct)),
            (
                "25 MiB ingestion",
                lambda: client.post("/api/ingest", content=b"a" * (25 << 20), headers={**admin, **json_ct}),
            ),
            ("deeply nested JSON", lambda: client.post("/chat", content=nested, headers=json_ct)),
            ("invalid UTF-8", lambda: client.post("/chat", content=b'{"query": "\xff\xfe"}', headers=json_ct)),
            (
                "text/plain",
                lambda: client.post("/chat", content=b'{"query": "hi"}', headers={"content-type": "text/plain"}),
            ),
            ("form body", lambda: client.post("/translate", data={"text": "hi"})),
            (
                "XML",
                lambda: client.post(
                    "/translate", content=b"<text>hi</text>", headers={"content-type": "application/xml"}
                ),
            ),
            ("JSON array", lambda: client.post("/chat", json=[1, 2, 3])),
            ("20 KiB header", lambda: client.get("/health/circuits", headers={"X-Pad": "p" * 20_000})),
            (
                "bad bearer",
                lambda: client.get("/api/chat/sessions", headers={"Authorization": "Bearer \x7f" + "x" * 300}),
            ),
            ("query too long", lambda: client.post("/chat", json={"query": "q" * 4001})),
        ]
        for name, send in cases:
            results.append((name, send()))
    raw_huge = _raw(stack, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (1 << 20) + b"\r\n\r\n")
    raw_garbage = _raw(stack, b"\x16\x03\x01\x02\x00garbage not http\r\n\r\n")
    stop.set()
    prober.join(timeout=10)

    for name, response in results:
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:200])
        body = response.json()
        assert body["code"], name
        assert isinstance(body["detail"], str), name
    # A header block h11 cannot buffer (over 16 KiB before it ends) is refused by uvicorn's own 400.
    assert raw_huge.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), raw_huge[:80]
    assert raw_garbage.startswith(b"HTTP/1.1 400"), raw_garbage[:80]
    assert latencies
    assert max(latencies) < 1.0, f"/health took {max(latencies):.3f}s during the abuse"
    after = []
    for _ in range(20):
        started = time.perf_counter()
        assert httpx.get(stack.url("/health")).status_code == 200
        after.append(time.perf_counter() - started)
    assert max(after) < 1.0


class Recorder:
    """An httpx client that keeps every response's status line, headers and body as text."""

    def __init__(self, stack: Stack) -> None:
        self.seen: list[str] = []
        self.client = httpx.Client(
            base_url=stack.base_url,
            timeout=60,
            event_hooks={"response": [self._keep]},
            headers={"X-Forwarded-For": _ip()},
        )

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
        self.seen.append(f"{response.status_code} {response.request.url}\n{headers}\n{response.text}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_no_secret_in_any_response_or_log_line(stack: Stack, fake_openai: FakeOpenAI) -> None:
    """Sign-in, chat, ingestion, failing upstreams, malformed requests: no secret marker or session token leaks."""
    http = Recorder(stack)
    admin = {"X-API-Key": MARKERS["ADMIN_API_KEY"]}
    email = f"leak-{TAG}@example.com"
    up = http.post("/api/auth/sign-up", json={"email": email, "name": "Leak", "password": "correct horse battery"})
    assert up.status_code == 200, up.text
    signin = http.post("/api/auth/sign-in/email", json={"email": email, "password": "correct horse battery"})
    assert signin.status_code == 200, signin.text
    token = signin.json()["token"]
    cookie_values = [c.value for c in http.client.cookies.jar]
    bearer = {"Authorization": f"Bearer {token}"}
    assert http.get("/api/auth/get-session").json()["user"]["email"] == email
    http.get("/api/auth/verify", headers=bearer)
    http.post("/api/auth/profile/update", json={"learning_goals": "humanoids"}, headers=bearer)
    http.get("/api/auth/profile", headers=bearer)
    http.post("/api/auth/sign-in/email", json={"email": email, "password": "wrong password!"})

    docs = [
        {
            "source": f"leak/{TAG}.md",
            "title": "Leak test",
            "content": "# Joints\n\nA humanoid joint has torque sensors.",
        }
    ]
    queued = http.post("/api/ingest", json={"documents": docs}, headers=admin)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]
    wait_for(
        lambda: http.get(f"/api/ingest/jobs/{job_id}", headers=admin).json()["status"] in {"succeeded", "failed"},
        timeout=60,
        interval=0.5,
        message="ingest job",
    )
    http.get("/api/documents", headers=admin)
    assert http.get("/api/documents", headers={"X-API-Key": "wrong"}).status_code == 401
    assert http.post("/ingest").status_code == 401

    http.post("/chat", json={"query": "What sensors does a humanoid joint have?"})
    http.post("/chat", json={"query": "torque sensors?", "session_id": None}, headers=bearer)
    with http.client.stream("POST", "/api/chat/stream", json={"query": "joint torque"}, headers=bearer) as streamed:
        streamed.read()
    http.post("/translate", json={"text": "Torque sensors"})
    http.post("/adjust-content", json={"text": "Torque sensors", "target_level": "beginner"})
    http.post("/v1/chat/completions", json={"model": "lectern", "messages": [{"role": "user", "content": "joints?"}]})
    http.get("/api/chat/sessions", headers=bearer)

    for fault in ("401", "500", "429", "drop"):
        fake_openai.configure(fault=fault, fault_seconds=5, retry_after=1)
        http.post("/chat", json={"query": f"fault {fault} torque"}, headers=bearer)
        http.post("/translate", json={"text": f"fault {fault} text"})
        with http.client.stream("POST", "/api/chat/stream", json={"query": f"stream {fault}"}) as streamed:
            streamed.read()
        fake_openai.reset()

    http.post("/chat", content=b'{"query": ', headers={"content-type": "application/json"})
    http.post("/chat", content=b'{"query": "\xff"}', headers={"content-type": "application/json"})
    http.get("/api/chat/sessions", headers={"Authorization": f"Bearer {MARKERS['OPENAI_API_KEY']}"})
    http.get("/api/chat/sessions/' OR 1=1 --", headers=bearer)
    http.get("/api/auth/get-session", headers={"Cookie": "better-auth.session_token=forged.value"})
    http.delete("/health")
    http.get("/nope")
    for path in ("/", "/health/ready", "/health/circuits", "/metrics", "/openapi.json", "/docs"):
        http.get(path)
    http.post("/api/auth/sign-out", headers=bearer)
    http.client.close()
    time.sleep(1.0)

    responses = "\n".join(http.seen)
    assert len(http.seen) > 40
    statuses = [int(entry.split(" ", 1)[0]) for entry in http.seen]
    assert 500 not in statuses, [e.split("\n", 1)[0] for e in http.seen if e.startswith("500")]
    assert {200, 202, 401, 404, 422} <= set(statuses), sorted(set(statuses))
    for name, marker in MARKERS.items():
        assert marker not in responses, f"{name} marker in a response"
    output = stack.output()
    assert len(output.splitlines()) > 50
    secrets = {**MARKERS, "session token": token, **{f"cookie {i}": v for i, v in enumerate(cookie_values)}}
    leaked = {name: line for name, value in secrets.items() for line in output.splitlines() if value in line}
    assert leaked == {}
