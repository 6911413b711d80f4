"""Ingestion through the whole stack (scripts/start -> supervisord: embedded Redis, 2 Gunicorn workers, the
arq worker owning the embedded Qdrant), PostgreSQL and the fake OpenAI server. One stack for the module.

Covers: the dev auto-ingest of the sample docs, the textbook ingested through the API with matching counts,
new chunks visible from EVERY API worker (each reaches the worker's local store over the Redis RPC), a worker
SIGKILLed mid-job (supervisord restarts it, arq runs the job again once its in-progress marker expires, and
the store holds exactly the expected points), and a SIGTERM restart mid-job.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.jobs import Job

from shared.ingestion.chunking import chunk_markdown
from shared.platform.clients import create_redis
from shared.platform.config import Settings
from shared.platform.constants import QUEUE_NAME
from shared.stores.sparse import encode_query
from shared.stores.vectorstore import RemoteVectorStore
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.corpus import corpus_dir
from tests.utils.stack import Stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CORPUS = corpus_dir()
SAMPLE = REPO / "docs" / "sample"
ADMIN_KEY = "ingest-admin-key-" + uuid.uuid4().hex[:8]
HEADERS = {"X-API-Key": ADMIN_KEY}
#: INGEST_JOB_TIMEOUT of the stack: arq runs the job of a SIGKILLed worker again when its in-progress
#: marker expires, INGEST_JOB_TIMEOUT + JOB_TIMEOUT_GRACE_S (10) + 10 s after the try started.
JOB_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def stack(fake_openai: FakeOpenAI, pg_database_factory: Callable[[], str]) -> Iterator[Stack]:
    """The whole service with small embedding batches (so a job lasts long enough to be killed)."""
    fake_openai.reset()
    running = Stack(
        env={
            "DATABASE_URL": pg_database_factory(),
            "OPENAI_API_KEY": "sk-test-e2e-ingest-0000",
            "OPENAI_BASE_URL": fake_openai.url,
            "EMBEDDING_DIMENSIONS": "128",
            "EMBED_BATCH_SIZE": "20",
            "INGEST_JOB_TIMEOUT": str(JOB_TIMEOUT_S),
            "ADMIN_API_KEY": ADMIN_KEY,
            "LOG_LEVEL": "INFO",
        }
    )
    try:
        running.start(timeout=120)
        running.wait_worker(timeout=60)
        yield running
    finally:
        fake_openai.configure(fault=None, latency_ms=0)
        running.cleanup()


def _documents(prefix: str = "") -> list[dict[str, str]]:
    return [
        {"source": prefix + p.relative_to(CORPUS).as_posix(), "content": p.read_text(encoding="utf-8")}
        for p in sorted(CORPUS.rglob("*.md"))
    ]


def _expected_chunks(documents: list[dict[str, str]]) -> int:
    """What the default chunker settings produce, computed here independently of the service."""
    return sum(
        len(chunk_markdown(d["content"], source=d["source"], site_url="https://x", chunk_size=1200, overlap=150).chunks)
        for d in documents
    )


def _wait_job(client: httpx.Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/ingest/jobs/{job_id}", headers=HEADERS).json()
        return body if body["status"] in ("succeeded", "failed") else None

    result: dict[str, Any] = wait_for(finished, timeout=timeout, interval=0.25, message=f"job {job_id}")
    return result


def _documents_by_source(client: httpx.Client) -> dict[str, dict[str, Any]]:
    body = client.get("/api/documents", headers=HEADERS).json()
    return {d["source"]: d for d in body["documents"]}


def _arq_job_try(stack: Stack, job_id: str) -> int | None:
    """The try on which arq finished the job (arq's public `Job.result_info`), None without a result."""

    async def run() -> int | None:
        redis = await create_redis(Settings(_env_file=None, data_dir=stack.data_dir))
        try:
            info = await Job(job_id, redis, _queue_name=QUEUE_NAME).result_info()
            return None if info is None else info.job_try
        finally:
            await redis.aclose()  # type: ignore[attr-defined]

    return asyncio.run(run())


def _remote_store_count(stack: Stack, *, source: str | None = None, query: str | None = None) -> Any:
    """Ask the worker's store over the same Redis RPC the API workers use (from this test process)."""

    async def run() -> Any:
        settings = Settings(_env_file=None, data_dir=stack.data_dir)
        redis = await create_redis(settings)
        try:
            store = RemoteVectorStore(settings, redis=redis)
            if query is not None:
                return await store.query(dense=None, sparse=encode_query(query), limit=10)
            return await store.count(source)
        finally:
            await redis.aclose()  # type: ignore[attr-defined]

    return asyncio.run(run())


def test_sample_docs_are_ingested_on_first_start(stack: Stack) -> None:
    """In development the sample docs in DOCS_DIR are ingested automatically on first start."""
    expected = {p.relative_to(SAMPLE).as_posix() for p in SAMPLE.rglob("*.md")}
    with stack.client() as client:
        wait_for(lambda: set(_documents_by_source(client)) >= expected, timeout=60, message="sample docs ingested")
        jobs = client.get("/api/ingest/jobs", headers=HEADERS).json()["jobs"]
        assert jobs[-1]["status"] == "succeeded"
        assert jobs[-1]["documents_total"] == len(expected)


def test_admin_endpoints_need_the_key(stack: Stack) -> None:
    """Without (or with a wrong) X-API-Key the ingestion endpoints answer 401 in the error envelope."""
    with stack.client() as client:
        for headers in ({}, {"X-API-Key": "wrong"}):
            response = client.post("/api/ingest", json={"documents": []}, headers=headers)
            assert response.status_code == 401
            assert response.json()["code"] == "invalid_api_key"
        assert client.post("/ingest").status_code == 401


def test_textbook_ingest_counts_match(stack: Stack) -> None:
    """The 14-chapter textbook ingests through the API; job, documents table and store agree."""
    documents = _documents()
    with stack.client() as client:
        response = client.post("/api/ingest", json={"documents": documents}, headers=HEADERS)
        assert response.status_code == 202
        assert response.json()["status"] == "queued"
        assert response.json()["documents"] == len(documents)
        job = _wait_job(client, response.json()["job_id"])
        assert job["status"] == "succeeded", job
        assert job["documents_done"] == len(documents)
        assert job["errors"] == []
        expected = _expected_chunks(documents)
        assert job["chunks_upserted"] == expected
        rows = _documents_by_source(client)
        assert sum(rows[d["source"]]["chunks"] for d in documents) == expected
    for doc in documents[:3]:
        assert _remote_store_count(stack, source=doc["source"]) == rows[doc["source"]]["chunks"]


def _api_pid_of(stack: Stack, request_id: str) -> int | None:
    for line in reversed(stack.stdout_lines + stack.stderr_lines):
        if request_id in line and '"http.request"' in line:
            try:
                return int(json.loads(line)["pid"])
            except (ValueError, KeyError):
                return None
    return None


def test_new_chunks_visible_from_every_api_worker(stack: Stack) -> None:
    """After an ingest, every Gunicorn worker process answers with the new chunks from the vector store."""
    marker = "quokka" + uuid.uuid4().hex[:6]
    doc = {"source": f"e2e/{marker}.md", "content": f"# Marsupial Robots\n\nThe {marker} robot hops on springs."}
    with stack.client() as client:
        job = _wait_job(client, client.post("/api/ingest", json={"documents": [doc]}, headers=HEADERS).json()["job_id"])
        assert job["status"] == "succeeded"
        expected_total = sum(d["chunks"] for d in _documents_by_source(client).values())
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            request_id = uuid.uuid4().hex
            response = client.get(
                "/api/documents?verify=true", headers={**HEADERS, "X-Request-ID": request_id, "Connection": "close"}
            )
            assert response.status_code == 200
            body = response.json()
            assert doc["source"] in {d["source"] for d in body["documents"]}
            pid = wait_for(lambda rid=request_id: _api_pid_of(stack, rid), timeout=5, message="access log line")
            seen[pid] = body["chunks_in_store"]
        assert len(seen) == 2, f"only API pids {list(seen)} answered"
        assert all(count == expected_total for count in seen.values()), seen
    hits = _remote_store_count(stack, query=f"{marker} springs")
    assert hits[0].source == doc["source"]


def _worker_pid(stack: Stack) -> int:
    state, pid = stack.program_states()["worker"]
    assert state == "RUNNING"
    assert pid is not None
    return pid


def _interrupt_mid_job(stack: Stack, fake_openai: FakeOpenAI, prefix: str, interrupt: Callable[[int], object]) -> str:
    """Interrupt the worker while a job is midway; returns the job id once it ended with exactly the expected
    points."""
    documents = _documents(prefix)
    fake_openai.configure(latency_ms=400)
    try:
        with stack.client() as client:
            job_id = client.post("/api/ingest", json={"documents": documents}, headers=HEADERS).json()["job_id"]

            def midway() -> bool:
                body = client.get(f"/api/ingest/jobs/{job_id}", headers=HEADERS).json()
                return bool(body["status"] == "running" and 0 < body["documents_done"] < len(documents))

            wait_for(midway, timeout=60, interval=0.05, message="job midway")
            old_pid = _worker_pid(stack)
            interrupt(old_pid)
            wait_for(lambda: _worker_pid(stack) != old_pid, timeout=30, interval=0.2, message="worker restarted")
            fake_openai.configure(latency_ms=0)
            job = _wait_job(client, job_id, timeout=120)
            assert job["status"] == "succeeded", job
            assert job["documents_done"] == len(documents)
            rows = _documents_by_source(client)
    finally:
        fake_openai.configure(latency_ms=0)
    expected = _expected_chunks(documents)
    assert sum(rows[d["source"]]["chunks"] for d in documents) == expected
    # Exactly the expected points for these sources: no duplicate and no lost chunk.
    assert sum(_remote_store_count(stack, source=d["source"]) for d in documents) == expected
    return str(job_id)


def test_sigkill_worker_mid_job_converges(stack: Stack, fake_openai: FakeOpenAI) -> None:
    """SIGKILL the worker in the middle of a job: supervisord restarts it, arq runs the job again (a second
    try) once the dead try's in-progress marker expires, and the store ends with exactly the expected points."""
    started = time.monotonic()
    job_id = _interrupt_mid_job(stack, fake_openai, "killed/", lambda pid: os.kill(pid, signal.SIGKILL))
    # The re-run waits for arq's in-progress marker: INGEST_JOB_TIMEOUT + 10 s grace + 10 s after the
    # first try started (not a fixed 31 minutes: it follows INGEST_JOB_TIMEOUT).
    assert time.monotonic() - started < JOB_TIMEOUT_S + 20 + 60
    assert _arq_job_try(stack, job_id) == 2


def test_sigterm_worker_mid_job_converges(stack: Stack, fake_openai: FakeOpenAI) -> None:
    """A graceful restart (SIGTERM) mid-job: arq cancels the try and re-queues the job at once (no wait for
    an in-progress marker), which completes exactly once."""
    started = time.monotonic()
    job_id = _interrupt_mid_job(stack, fake_openai, "restarted/", lambda _pid: stack.supervisorctl("restart", "worker"))
    assert time.monotonic() - started < JOB_TIMEOUT_S + 20
    assert _arq_job_try(stack, job_id) == 2
