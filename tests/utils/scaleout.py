"""Several Lectern "containers" on one machine, for the scale-out tests and benchmark.

Each container is its own `scripts/start` (supervisord and its programs) with its own DATA_DIR, port and
host name (`HOSTNAME`, what Docker gives each container), run as uid 1000 when the tests run as root, all
pointed at one shared Redis database and one PostgreSQL database: the README's "N API containers + M
worker containers" topology, with the machine's Redis and PostgreSQL standing in for managed ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync

from shared.ingestion.chunking import chunk_markdown
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.stack import NONROOT_UID, Stack, wait_for

ADMIN_KEY = "scaleout-admin-" + uuid.uuid4().hex[:8]
ADMIN = {"X-API-Key": ADMIN_KEY}
THRESHOLD = 2
CHAT_LIMIT = 10
#: INGEST_JOB_TIMEOUT of the worker containers: arq runs the job of a killed worker again when its
#: in-progress marker expires, INGEST_JOB_TIMEOUT + 10 s grace + 10 s after the try started.
JOB_TIMEOUT_S = 20
REDIS_TEST_URL = os.environ.get("LECTERN_TEST_REDIS", "redis://127.0.0.1:6379")
#: Presence key of the process serving the embedded store (shared.stores.vectorstore.remote.RPC_SERVER_KEY).
STORE_PRESENCE_KEY = "lectern:vectorstore:server"


def container_user() -> int | None:
    """uid 1000 (the Space's user) when the tests run as root, else the current user."""
    return NONROOT_UID if os.geteuid() == 0 else None


@contextlib.contextmanager
def scratch_redis_db() -> Iterator[str]:
    """A URL to an empty database of the machine's Redis, flushed afterwards.

    Prefers a database nobody uses right now (other suites pick one of 1..15 at random and flush it), so
    a concurrent run is unlikely to share it; a marker key says it is taken while the test runs.
    """
    admin = redis_sync.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        admin.ping()
        candidates = list(range(1, 16))
        free = []
        for db in candidates:
            client = redis_sync.Redis.from_url(f"{REDIS_TEST_URL}/{db}", socket_connect_timeout=2)
            try:
                if client.dbsize() == 0:
                    free.append(db)
            finally:
                client.close()
        db = free[uuid.uuid4().int % len(free)] if free else candidates[uuid.uuid4().int % len(candidates)]
    finally:
        admin.close()
    url = f"{REDIS_TEST_URL}/{db}"
    client = redis_sync.Redis.from_url(url)
    client.flushdb()
    client.set("lectern:test:scaleout-owner", str(os.getpid()))
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


class Container(Stack):
    """One simulated container: `scripts/start` with LECTERN_ROLES, its own DATA_DIR, port and HOSTNAME."""

    def __init__(self, name: str, roles: str, *, env: dict[str, str], **kwargs: Any) -> None:
        self.name = name
        self.roles = roles
        merged = {"HOSTNAME": name, "LECTERN_ROLES": roles, "WEB_CONCURRENCY": "1", **env}
        kwargs.setdefault("user", container_user())
        super().__init__(env=merged, **kwargs)

    @property
    def serves_http(self) -> bool:
        """True when the container runs the API."""
        return "api" in self.roles.split(",")

    def start(self, *, wait: bool = True, timeout: float = 120.0) -> Container:
        """Start; `wait` waits for /health (API containers) or for the worker program (others)."""
        super().start(wait=False)
        if wait:
            self.wait_started(timeout=timeout)
        return self

    def wait_started(self, *, timeout: float = 120.0) -> None:
        """Until /health answers (API containers) or the `worker` program is RUNNING (the others)."""
        if self.serves_http:
            self.wait_healthy(timeout=timeout)
            return

        def running() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output_tail()}")
            return self.program_states().get("worker", ("?",))[0] == "RUNNING"

        wait_for(running, timeout=timeout, interval=0.5, message=f"{self.name}: worker RUNNING")

    def wait_exit(self, *, timeout: float) -> int:
        """Wait for the start script to exit and its output to be read; return its code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        for thread in self._readers:
            thread.join(timeout=5)
        return code

    def kill(self) -> None:
        """SIGKILL every process of the container at once (a host or container crash: no clean-up runs).

        supervisord puts each program in a process group of its own, so the whole session is killed,
        not just the start script's group."""
        assert self.proc is not None
        sid = self.proc.pid
        for _ in range(3):
            pids = session_pids(sid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)

    def memory_mb(self) -> tuple[float, float]:
        """(RSS, PSS) summed over every process of the container, in MB (PSS counts shared pages once)."""
        assert self.proc is not None
        rss = pss = 0.0
        for pid in session_pids(self.proc.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) / 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) / 1024
        return round(rss), round(pss)

    def json_events(self) -> list[dict[str, Any]]:
        """Every JSON log line the container printed."""
        events = []
        for line in list(self.stderr_lines) + list(self.stdout_lines):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log events called `name`."""
        return [event for event in self.json_events() if event.get("event") == name]


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ProcessLookupError):
            if os.getsid(int(entry.name)) == sid:
                pids.append(int(entry.name))
    return pids


def wait_store_served(redis_url: str, *, timeout: float = 120.0) -> None:
    """Until a container's worker announces the embedded store on the shared Redis."""
    client = redis_sync.Redis.from_url(redis_url)
    try:
        wait_for(lambda: client.exists(STORE_PRESENCE_KEY), timeout=timeout, interval=0.5, message="store served")
    finally:
        client.close()


def base_env(redis_url: str, database_url: str, fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    """What every container of one deployment shares (the README's per-role variables)."""
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "OPENAI_API_KEY": "sk-scaleout-test-0000",
        "OPENAI_BASE_URL": fake.url,
        "OPENAI_TIMEOUT": "2",
        "EMBEDDING_DIMENSIONS": "128",
        "ADMIN_API_KEY": ADMIN_KEY,
        # One secret for every API replica: a cookie signed by one must verify on the others.
        "BETTER_AUTH_SECRET": "scaleout-shared-auth-secret-" + "x" * 16,
        "AUTO_INGEST": "false",
        "CIRCUIT_FAILURE_THRESHOLD": str(THRESHOLD),
        "CIRCUIT_RECOVERY_TIMEOUT": "60",
        "RATE_LIMIT_CHAT": f"{CHAT_LIMIT}/minute",
        "LECTERN_STORE_WAIT": "90",
        "INGEST_JOB_TIMEOUT": str(JOB_TIMEOUT_S),
        "LOG_LEVEL": "INFO",
        **extra,
    }


def start_together(containers: list[Container], *, timeout: float = 150.0) -> None:
    """Launch every container at once, then wait until each has started."""
    for container in containers:
        container.start(wait=False)
    for container in containers:
        container.wait_started(timeout=timeout)


def wait_job(client: httpx.Client, job_id: str, *, timeout: float = 120) -> dict[str, Any]:
    """Until the ingestion job ends; returns its view."""

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/ingest/jobs/{job_id}", headers=ADMIN).json()
        return body if body["status"] in ("succeeded", "failed") else None

    result: dict[str, Any] = wait_for(finished, timeout=timeout, interval=0.25, message=f"job {job_id}")
    return result


def expected_chunks(documents: list[dict[str, str]]) -> int:
    """What the default chunker settings produce, computed here independently of the service."""
    return sum(
        len(chunk_markdown(d["content"], source=d["source"], site_url="https://x", chunk_size=1200, overlap=150).chunks)
        for d in documents
    )
