"""Past one Space, the parts that must be safe to run N times (issue 21): migrations applied once by three
containers starting together on one empty PostgreSQL database, and an ingestion job that survives the loss
of the worker container running it (another worker container finishes it, with exactly the expected points).

Each "container" is its own `scripts/start` with its own DATA_DIR, port and HOSTNAME (see
tests/utils/scaleout.py), on a scratch database of the machine's Redis and a fresh PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
import redis as redis_sync

from shared.platform.constants import CIRCUIT_PROCESS_KEY, HEALTH_CHECK_KEY
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.corpus import corpus_dir
from tests.utils.scaleout import (
    ADMIN,
    JOB_TIMEOUT_S,
    Container,
    base_env,
    expected_chunks,
    scratch_redis_db,
    start_together,
    wait_job,
    wait_store_served,
)
from tests.utils.stack import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


# -- three containers, one empty database ---------------------------------------------------------------------
def test_three_containers_starting_at_once_migrate_once(
    fake_openai: FakeOpenAI, pg_database_factory: Callable[[], str]
) -> None:
    """Three containers (`worker,store`, `api`, `api`) launched together against one empty PostgreSQL
    database: exactly one applies the migrations (the advisory lock serialises them), none fails, all
    three become ready."""
    database_url = pg_database_factory()
    with scratch_redis_db() as redis_url:
        env = base_env(redis_url, database_url, fake_openai)
        containers = [
            Container("lectern-m1", "worker,store", env=env),
            Container("lectern-m2", "api", env=env),
            Container("lectern-m3", "api", env=env),
        ]
        try:
            start_together(containers, timeout=180)
            outcomes = []
            for container in containers:
                events = container.events("startup.migrations_applied")
                assert len(events) == 1, f"{container.name}: {container.output_tail()}"
                outcomes.append(events[0]["applied"])
            assert sorted(outcomes) == [False, False, True], outcomes
            for api in containers[1:]:

                def ready(api: Container = api) -> dict[str, Any] | None:
                    body: dict[str, Any] = httpx.get(api.url("/health/ready"), timeout=10).json()
                    checks = body["checks"]
                    up = checks["database"]["status"] == checks["worker"]["status"] == "up"
                    return body if up and checks["vector_store"]["status"] == "up" else None

                report = wait_for(ready, timeout=90, interval=1.0, message=f"{api.name} ready")
                assert report["status"] in ("ready", "degraded"), report
            with psycopg.connect(database_url) as conn:
                versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            assert len(versions) == 1
        finally:
            for container in containers:
                container.cleanup()


# -- two worker containers, one large job, one of them killed ---------------------------------------------------
def test_killed_worker_container_job_finished_by_the_other(
    fake_openai: FakeOpenAI, pg_database_factory: Callable[[], str]
) -> None:
    """Two worker containers and the textbook as one job: it runs in exactly one of them; SIGKILL that whole
    container mid-job and the other one finishes it (arq's second try, after the dead try's in-progress
    marker expires), with exactly the expected points in the store."""
    corpus = corpus_dir()
    documents = [
        {"source": "killed/" + p.relative_to(corpus).as_posix(), "content": p.read_text(encoding="utf-8")}
        for p in sorted(corpus.rglob("*.md"))
    ]
    fake_openai.reset()
    with scratch_redis_db() as redis_url:
        env = base_env(redis_url, pg_database_factory(), fake_openai, EMBED_BATCH_SIZE="20", EMBED_CONCURRENCY="1")
        front = Container("lectern-s1", "api,store", env=env)
        workers = [Container(f"lectern-k{i}", "worker", env=env) for i in (1, 2)]
        try:
            front.start(timeout=150)
            wait_store_served(redis_url, timeout=120)
            start_together(workers)
            front.wait_worker(timeout=90)
            fake_openai.configure(latency_ms=400)
            started = time.monotonic()
            with front.client() as client:
                job_id = client.post("/api/ingest", json={"documents": documents}, headers=ADMIN).json()["job_id"]

                def midway() -> bool:
                    body = client.get(f"/api/ingest/jobs/{job_id}", headers=ADMIN).json()
                    return bool(body["status"] == "running" and 0 < body["documents_done"] < len(documents))

                wait_for(midway, timeout=90, interval=0.1, message="job midway")
                runners = [w for w in workers if any(e.get("job_id") == job_id for e in w.events("ingest.job_started"))]
                assert len(runners) == 1, "the job must run in exactly one worker container"
                victim = runners[0]
                survivor = next(w for w in workers if w is not victim)
                victim.kill()
                fake_openai.configure(latency_ms=0)
                job = wait_job(client, job_id, timeout=JOB_TIMEOUT_S + 20 + 90)
                recovered_s = time.monotonic() - started
                assert job["status"] == "succeeded", job
                assert job["documents_done"] == len(documents)
                rows = {d["source"]: d for d in client.get("/api/documents", headers=ADMIN).json()["documents"]}
                in_store = client.get("/api/documents?verify=true", headers=ADMIN).json()["chunks_in_store"]
            expected = expected_chunks(documents)
            assert sum(rows[d["source"]]["chunks"] for d in documents) == expected
            assert in_store == expected, f"store holds {in_store} points, expected {expected}"
            tries = [e for e in survivor.events("ingest.job_try") if e.get("job_id") == job_id]
            assert [e["job_try"] for e in tries] == [2], tries
            assert len([e for e in survivor.events("ingest.job_started") if e.get("job_id") == job_id]) == 1
            print(f"\njob of the killed container finished by {survivor.name} {recovered_s:.1f} s after submission")
        finally:
            fake_openai.reset()
            for container in [*workers, front]:
                container.cleanup()


# -- a hung worker next to a live one ------------------------------------------------------------------------------
def test_watchdog_restarts_its_own_hung_worker_while_another_container_lives(
    fake_openai: FakeOpenAI, pg_database_factory: Callable[[], str]
) -> None:
    """Two worker containers, each with its watchdog: the worker of one is frozen (SIGSTOP). arq's queue-wide
    health key stays fresh (the other container's worker writes it), yet that container's watchdog restarts
    its own worker (it watches the process's own heartbeat key), and the other worker is left alone."""
    with scratch_redis_db() as redis_url:
        # The watchdog polls every 5 s: if the freeze comes before it has seen the new worker's heartbeat, the
        # startup grace (not the stale limit) decides, so it is short here too.
        env = base_env(
            redis_url, pg_database_factory(), fake_openai, WATCHDOG_STALE_S="4", WATCHDOG_STARTUP_GRACE_S="15"
        )
        steady = Container("lectern-h1", "worker,store,watchdog", env=env)
        frozen = Container("lectern-h2", "worker,watchdog", env=env)
        try:
            steady.start(timeout=150)
            wait_store_served(redis_url, timeout=120)
            frozen.start(timeout=150)

            def heartbeat(container: Container) -> int | None:
                pid = container.program_states()["worker"][1]
                client = redis_sync.Redis.from_url(redis_url)
                try:
                    key = CIRCUIT_PROCESS_KEY.format(host=container.name, role="worker", pid=pid)
                    return pid if client.exists(key) else None
                finally:
                    client.close()

            old_pid = wait_for(lambda: heartbeat(frozen), timeout=90, interval=0.5, message="frozen's heartbeat")
            steady_pid = wait_for(lambda: heartbeat(steady), timeout=90, interval=0.5, message="steady's heartbeat")
            os.kill(old_pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                new_pid = wait_for(
                    lambda: (pid := frozen.program_states()["worker"][1]) not in (None, old_pid) and pid,
                    timeout=60,
                    interval=0.5,
                    message="the frozen worker restarted",
                )
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(old_pid, signal.SIGCONT)
            took = time.monotonic() - stopped
            client = redis_sync.Redis.from_url(redis_url)
            try:
                assert client.exists(HEALTH_CHECK_KEY), "arq's queue-wide key should have stayed fresh"
            finally:
                client.close()
            assert frozen.events("watchdog.worker_hung")
            assert steady.program_states()["worker"][1] == steady_pid
            assert not steady.events("watchdog.worker_hung")
            print(f"\nhung worker {old_pid} restarted as {new_pid} after {took:.1f} s (WATCHDOG_STALE_S=4)")
        finally:
            for container in (frozen, steady):
                container.cleanup()
