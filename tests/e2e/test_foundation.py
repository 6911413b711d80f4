"""The whole service the way the README runs it: scripts/run -> scripts/start -> supervisord, as uid 1000.

Each stack runs from a copy of the repo owned by uid 1000, with stdout and stderr being pipes created by
this (root) process, exactly the condition Docker gives a container.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.fakes.openai_server import FakeOpenAI, free_port
from tests.utils.stack import NONROOT_UID, Stack, copy_repo, runtime_python, wait_for
from tests.utils.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts the stack as uid 1000 (the Space's user): run as root"),
]

PROGRAMS = ("redis", "api", "worker")
# Unique markers standing in for secrets: none may appear anywhere in the output.
MARKERS = {
    "OPENAI_API_KEY": "sk-openaiMarker7f3a9c",
    "ADMIN_API_KEY": "adminMarker5b2e8d",
    "QDRANT_API_KEY": "qdrantMarker1c4f6a",
    "BETTER_AUTH_SECRET": "authSecretMarker9d0b3e",
    "DB_PASSWORD": "dbPassMarker3e7a1f",
}


@pytest.fixture(scope="module")
def nonroot_repo() -> Iterator[Path]:
    """A copy of the repo owned by uid 1000 in a world-traversable temp dir."""
    root = Path(tempfile.mkdtemp(prefix="lectern-e2e-"))
    root.chmod(0o755)
    yield copy_repo(root / "repo", owner_uid=NONROOT_UID)
    subprocess.run(["rm", "-rf", str(root)], check=False)


def _venv_dir() -> str:
    """A world-readable venv with requirements.txt (scripts/setup finds it satisfied and skips pip)."""
    return str(Path(runtime_python()).parent.parent)


def _session_leftovers(sid: int, marker: str) -> list[str]:
    """Processes of uid 1000 still in the stack's session, or mentioning its directories."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != NONROOT_UID:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            in_session = os.getsid(int(entry.name)) == sid
        except (OSError, ProcessLookupError):
            continue
        if in_session or marker in cmdline or marker in environ:
            left.append(f"{entry.name}: {cmdline}")
    return left


def _json_events(stack: Stack) -> list[dict[str, Any]]:
    events = []
    for line in stack.stderr_lines + stack.stdout_lines:
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def _terminate(stack: Stack, *, timeout: float = 15.0) -> tuple[int | None, float]:
    """SIGTERM the start script like `docker stop`; return (exit code, seconds) or (None, timeout)."""
    assert stack.proc is not None
    started = time.monotonic()
    stack.proc.send_signal(signal.SIGTERM)
    try:
        code = stack.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, timeout
    return code, time.monotonic() - started


def test_run_command_as_nonroot_serves_and_stops_cleanly(nonroot_repo: Path) -> None:
    """README run command as uid 1000 with root-made pipes: /health < 30 s, 3 programs RUNNING, clean SIGTERM."""
    stack = Stack(
        repo=nonroot_repo,
        user=NONROOT_UID,
        command=[str(nonroot_repo / "scripts" / "run")],
        env={"VENV_DIR": _venv_dir()},
    )
    try:
        stack.start(wait=False)
        took = stack.wait_healthy(timeout=30)
        assert took < 30
        assert httpx.get(stack.url("/health"), timeout=5).json() == {"status": "healthy"}
        states = wait_for(
            lambda: (s := stack.program_states()) and all(s.get(p, ("?",))[0] == "RUNNING" for p in PROGRAMS) and s,
            timeout=15,
            message="redis, api and worker RUNNING",
        )
        assert {p: states[p][0] for p in PROGRAMS} == dict.fromkeys(PROGRAMS, "RUNNING")
        for program in PROGRAMS:
            pid = states[program][1]
            assert pid is not None
            assert Path(f"/proc/{pid}").stat().st_uid == NONROOT_UID, f"{program} does not run as uid 1000"
        # Output reached the root-created pipes: supervisord's lines and the programs' lines.
        assert any("spawned: 'api'" in line for line in stack.stdout_lines)
        assert any('"startup.migrations_applied"' in line for line in stack.stderr_lines)
        gunicorn_lines = [line for line in stack.stderr_lines if "Booting worker" in line or "Listening at" in line]
        assert gunicorn_lines, "no Gunicorn output reached stderr"
        assert all(line.startswith("{") for line in gunicorn_lines), "Gunicorn lines are not JSON with LOG_FORMAT=json"
        assert "setup: installing" not in stack.output(), "setup reinstalled an already satisfied venv"

        code, seconds = _terminate(stack, timeout=15)
        assert code == 0, f"exit code {code} after SIGTERM\n{stack.output_tail()}"
        assert seconds < 15
        assert _session_leftovers(stack.proc.pid, str(stack.data_dir.parent)) == []  # type: ignore[union-attr]
    finally:
        stack.cleanup()


@pytest.fixture
def slow_llm(fake_openai: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake OpenAI server answering every request after 1.5 s (reset afterwards)."""
    fake_openai.reset()
    fake_openai.configure(latency_ms=1500)
    yield fake_openai
    fake_openai.reset()


def test_postgres_migrations_ready_and_graceful_drain(nonroot_repo: Path, pg_url: str, slow_llm: FakeOpenAI) -> None:
    """Machine PostgreSQL: migrations apply, ready reports database up, no secret logged, SIGTERM drains."""
    # A marker as the password when the server trusts loopback (the default here); CI's own password otherwise.
    db_url = pg_url.replace("postgresql://postgres@", f"postgres://postgres:{MARKERS['DB_PASSWORD']}@")
    env = {
        "DATABASE_URL": db_url,
        "OPENAI_API_KEY": MARKERS["OPENAI_API_KEY"],
        "OPENAI_BASE_URL": slow_llm.url,
        "ADMIN_API_KEY": MARKERS["ADMIN_API_KEY"],
        "QDRANT_API_KEY": MARKERS["QDRANT_API_KEY"],
        "BETTER_AUTH_SECRET": MARKERS["BETTER_AUTH_SECRET"],
    }
    stack = Stack(repo=nonroot_repo, user=NONROOT_UID, env=env)
    try:
        stack.start(timeout=60)
        with psycopg.connect(pg_url) as conn:
            tables = {row[0] for row in conn.execute("SELECT table_name FROM information_schema.tables")}
        assert {"alembic_version", "users", "auth_sessions", "chat_sessions", "documents", "ingest_jobs"} <= tables

        def database_up() -> dict[str, Any] | None:
            body: dict[str, Any] = httpx.get(stack.url("/health/ready"), timeout=10).json()
            return body if body["checks"]["database"]["status"] == "up" else None

        report = wait_for(database_up, timeout=20, interval=0.5, message="database up")
        assert report["status"] in {"ready", "degraded"}

        # Graceful drain: a request in flight when SIGTERM arrives still gets its answer.
        time.sleep(3.5)  # let every worker's readiness cache expire, so the next call waits on the slow LLM
        result: dict[str, Any] = {}

        def slow_request() -> None:
            started = time.monotonic()
            try:
                response = httpx.get(stack.url("/health/ready"), timeout=20)
                result["status"] = response.status_code
            except httpx.HTTPError as exc:
                result["error"] = repr(exc)
            result["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.5)
        code, seconds = _terminate(stack, timeout=15)
        thread.join(timeout=20)
        assert result.get("status") in {200, 503}, f"in-flight request lost: {result}"
        assert result["seconds"] > 1.0, "the request was not in flight during SIGTERM"
        assert code == 0
        assert seconds < 15

        output = stack.output()
        for name, marker in MARKERS.items():
            assert marker not in output, f"{name} value leaked into the output"
        started_events = [e for e in _json_events(stack) if e.get("event") == "startup.upstream"]
        by_upstream = {e["upstream"]: e for e in started_events}
        assert sorted(e["upstream"] for e in started_events) == ["database", "llm", "redis", "vector_store"]
        assert by_upstream["database"]["status"] == "up"
        assert by_upstream["database"]["host"] == "127.0.0.1"
        assert by_upstream["llm"]["status"] == "up"
        assert by_upstream["llm"]["host"] == "127.0.0.1"
        assert by_upstream["redis"]["status"] == "embedded"
    finally:
        stack.cleanup()


def test_unreachable_database_still_serves_liveness_then_migrates(nonroot_repo: Path, pg_url: str) -> None:
    """DATABASE_URL at a refused port: the stack starts, /health 200, ready 503 `unavailable`; once the
    database answers, the migrate program applies the migrations and readiness recovers."""
    target = urlsplit(pg_url)
    with TcpProxy(target.port or 5432) as proxy:
        proxy.cut()  # connection refused, like a closed port
        credentials = f"{target.username}:{target.password or MARKERS['DB_PASSWORD']}"
        url = f"postgresql://{credentials}@127.0.0.1:{proxy.port}{target.path}"
        stack = Stack(repo=nonroot_repo, user=NONROOT_UID, env={"DATABASE_URL": url})
        try:
            stack.start(timeout=60)
            assert httpx.get(stack.url("/health"), timeout=5).json() == {"status": "healthy"}
            response = httpx.get(stack.url("/health/ready"), timeout=10)
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "unavailable"
            assert body["checks"]["database"]["status"] == "down"
            states = wait_for(
                lambda: (s := stack.program_states()) and all(s.get(p, ("?",))[0] == "RUNNING" for p in PROGRAMS) and s,
                timeout=15,
                message="redis, api and worker RUNNING",
            )
            assert states["migrate"][0] in {"RUNNING", "STARTING", "BACKOFF"}, "nobody retries the migrations"
            assert '"startup.database_unreachable"' in stack.output()

            proxy.restore()
            wait_for(
                lambda: stack.program_states().get("migrate", ("?",))[0] == "EXITED",
                timeout=45,
                interval=0.5,
                message="migrate program applied the migrations and exited",
            )
            with psycopg.connect(pg_url) as conn:
                tables = {row[0] for row in conn.execute("SELECT table_name FROM information_schema.tables")}
            assert {"alembic_version", "users", "documents"} <= tables

            def database_up() -> bool:
                ready = httpx.get(stack.url("/health/ready"), timeout=10).json()
                return bool(ready["checks"]["database"]["status"] == "up")

            wait_for(database_up, timeout=20, interval=0.5, message="readiness sees the database")
            assert MARKERS["DB_PASSWORD"] not in stack.output()
            code, _seconds = _terminate(stack, timeout=15)
            assert code == 0
        finally:
            stack.cleanup()


def _run_start(repo: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    data = Path(tempfile.mkdtemp(prefix="lectern-prod-"))
    os.chown(data, NONROOT_UID, NONROOT_UID)
    base = {"PATH": os.environ["PATH"], "HOME": "/tmp", "DATA_DIR": str(data / "data"), "PORT": str(free_port())}
    base["LECTERN_PYTHON"] = runtime_python()
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(repo / "scripts" / "start")],
            cwd=repo,
            env={**base, **env},
            user=NONROOT_UID,
            group=NONROOT_UID,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        seconds = time.monotonic() - started
        assert not (data / "data" / "run" / "supervisord.pid").exists(), "supervisord started anyway"
    finally:
        subprocess.run(["rm", "-rf", str(data)], check=False)
    return done, seconds


def test_production_without_secrets_refuses_to_start(nonroot_repo: Path) -> None:
    """APP_ENV=production with nothing set: non-zero in < 5 s, every missing variable named, no supervisord."""
    done, seconds = _run_start(nonroot_repo, {"APP_ENV": "production"})
    assert done.returncode != 0
    assert seconds < 5
    for name in ("DATABASE_URL", "QDRANT_URL", "OPENAI_API_KEY", "ADMIN_API_KEY", "BETTER_AUTH_SECRET"):
        assert name in done.stderr
    assert "supervisord started" not in done.stdout + done.stderr


def test_production_error_never_shows_secret_values(nonroot_repo: Path) -> None:
    """Some secrets set to markers, others missing or malformed: names only, never a value."""
    env = {
        "APP_ENV": "production",
        "OPENAI_API_KEY": MARKERS["OPENAI_API_KEY"],
        "ADMIN_API_KEY": MARKERS["ADMIN_API_KEY"],
        "QDRANT_API_KEY": MARKERS["QDRANT_API_KEY"],
        "DATABASE_URL": f"postgres://neon:{MARKERS['DB_PASSWORD']}@ep-x.neon.tech/db?sslmode=require",
    }
    done, _ = _run_start(nonroot_repo, env)
    assert done.returncode != 0
    assert "QDRANT_URL" in done.stderr
    assert "BETTER_AUTH_SECRET" in done.stderr
    assert "OPENAI_API_KEY" not in done.stderr.split("not set:", 1)[-1]
    for marker in MARKERS.values():
        assert marker not in done.stdout + done.stderr

    malformed = {**env, "DATABASE_URL": f"mysql://neon:{MARKERS['DB_PASSWORD']}@db.example.com/db"}
    done, _ = _run_start(nonroot_repo, malformed)
    assert done.returncode != 0
    assert "DATABASE_URL" in done.stderr
    assert "postgresql://" in done.stderr  # the expected form
    for marker in MARKERS.values():
        assert marker not in done.stdout + done.stderr


def test_rejected_database_credentials_stop_start_up(nonroot_repo: Path, pg_url: str) -> None:
    """A role the database rejects is a configuration error: exit 2 naming DATABASE_URL, no value shown."""
    target = urlsplit(pg_url)
    url = f"postgresql://no_such_role_x:{MARKERS['DB_PASSWORD']}@{target.hostname}:{target.port}{target.path}"
    done, seconds = _run_start(nonroot_repo, {"DATABASE_URL": url})
    assert done.returncode == 2
    assert seconds < 10
    assert "DATABASE_URL" in done.stderr
    assert MARKERS["DB_PASSWORD"] not in done.stdout + done.stderr
    assert "no_such_role_x" not in done.stderr.split("configuration error", 1)[1]
