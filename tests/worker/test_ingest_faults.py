"""Ingestion under faults and in other modes: hung jobs, open breakers, jobs arq lost or gave up on, offline,
the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from arq.jobs import Job, JobStatus
from qdrant_client import QdrantClient, models

from shared.inference.local_dense import LocalDenseEmbedder
from shared.ingestion.jobs import RECONCILE_GRACE_S, reconcile_jobs
from shared.platform.config import Settings
from shared.platform.constants import (
    DENSE_VECTOR,
    JOB_INGEST,
    OFFLINE_EMBEDDING_DIMENSIONS,
    QUEUE_NAME,
    SPARSE_VECTOR,
)
from shared.platform.upstreams import Upstream
from shared.stores.db.models import IngestJob, IngestJobDocument, utcnow
from shared.stores.sparse import encode_document, encode_query
from shared.stores.vectorstore import CollectionMismatch, point_id
from shared.stores.vectorstore.edge import build_edge_store
from tests.fakes.openai_server import FakeOpenAI
from tests.worker.harness import IngestEnv, ingest_env, ingest_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "docs" / "sample"


@pytest_asyncio.fixture(loop_scope="session")
async def online(fake_openai: FakeOpenAI) -> AsyncIterator[IngestEnv]:
    """App + worker on SQLite with a short job timeout and a quickly recovering breaker."""
    settings = ingest_settings(
        openai_api_key="sk-test-faults-000000",
        openai_base_url=fake_openai.url,
        embedding_dimensions=32,
        ingest_job_timeout=3,
        circuit_failure_threshold=2,
        circuit_recovery_timeout=2,
        openai_timeout_s=20,
    )
    try:
        async with ingest_env(settings) as running:
            yield running
    finally:
        fake_openai.configure(fault=None)


async def test_hung_job_fails_with_clear_error(online: IngestEnv, fake_openai: FakeOpenAI) -> None:
    """An embeddings call that never answers: the job is failed at INGEST_JOB_TIMEOUT with a clear error."""
    fake_openai.configure(fault="stall", fault_seconds=6)
    started = time.monotonic()
    job = await online.ingest([{"source": "hang.md", "content": "# Hang\n\nLidar point clouds."}], timeout=60)
    assert job["status"] == "failed"
    assert "INGEST_JOB_TIMEOUT=3" in job["errors"][-1]["message"]
    assert job["finished_at"] is not None
    assert time.monotonic() - started < 30


async def test_open_breaker_defers_job_then_succeeds(online: IngestEnv, fake_openai: FakeOpenAI) -> None:
    """While the OpenAI breaker is open the job is retried later (arq.Retry), then succeeds."""
    fake_openai.configure(fault=None)
    await asyncio.sleep(3.5)  # let the stalled call of the previous test drain
    resilience = online.worker_services.resilience
    await resilience.reset()
    for _ in range(2):
        await resilience.record_failure(Upstream.OPENAI, ConnectionError("simulated outage"))
    assert resilience.is_open(Upstream.OPENAI)
    job_id = await online.submit([{"source": "breaker.md", "content": "# Breaker\n\nTorque sensors in joints."}])
    job = await online.wait_job(job_id, timeout=60)
    assert job["status"] == "succeeded", job
    info = await Job(job_id, online.app.state.services.redis, _queue_name=QUEUE_NAME).result_info()
    assert info is not None
    assert info.job_try >= 2  # the first try raised arq.Retry instead of failing
    assert await online.store.count("breaker.md") == 1


async def _job_row(env: IngestEnv, source: str, *, status: str, age_s: float = 0.0) -> str:
    """A job row with one document, stored without enqueueing it (as if arq had lost it)."""
    services = env.worker_services
    job = IngestJob(status=status, documents_total=1, created_at=utcnow() - timedelta(seconds=age_s))
    async with services.sessions() as session:
        session.add(job)
        await session.flush()
        session.add(IngestJobDocument(job_id=job.id, source=source, content=f"# {source}\n\nGear trains."))
        await session.commit()
    return job.id


async def test_job_unknown_to_arq_is_queued_again(online: IngestEnv) -> None:
    """A queued/running row that arq does not know (Redis lost it, or the enqueue failed) is queued again
    under the same job id once it is older than the grace, and converges; a fresh one is left to submit."""
    redis = online.app.state.services.redis
    lost = await _job_row(online, "lost.md", status="running", age_s=RECONCILE_GRACE_S + 5)
    fresh = await _job_row(online, "fresh.md", status="queued")
    handled = await reconcile_jobs(settings=online.settings, sessions=online.worker_services.sessions, redis=redis)
    # (The worker's own reconciler, every 10 s, may have queued it a moment earlier: arq knows it either way.)
    assert lost in handled["requeued"] or await Job(lost, redis, _queue_name=QUEUE_NAME).status() != JobStatus.not_found
    assert fresh not in handled["requeued"]
    body = await online.wait_job(lost, timeout=30)
    assert body["status"] == "succeeded", body
    assert await online.store.count("lost.md") == 1
    assert await Job(fresh, redis, _queue_name=QUEUE_NAME).status() == JobStatus.not_found
    again = await reconcile_jobs(settings=online.settings, sessions=online.worker_services.sessions, redis=redis)
    assert lost not in again["requeued"]  # finished: nothing to do


async def test_offline_mode_indexes_local_dense_and_bm25_and_searches() -> None:
    """Without OPENAI_API_KEY the bundled e5 model writes the dense vectors (384 dimensions) beside BM25,
    and both searches find the right page."""
    settings = ingest_settings()
    async with ingest_env(settings) as env:
        assert isinstance(env.worker_services.embedder, LocalDenseEmbedder)
        job = await env.client.post("/ingest")
        assert job.status_code == 202
        body = await env.wait_job(job.json()["job_id"])
        assert body["status"] == "succeeded"
        assert body["documents_done"] == len(list(SAMPLE.rglob("*.md")))
        snapshot = await env.snapshot()
        assert snapshot
        assert all(
            dense is not None and len(dense) == OFFLINE_EMBEDDING_DIMENSIONS and sparse
            for _, dense, sparse in snapshot.values()
        )
        hits = await env.app.state.services.vectorstore.query(
            dense=None,
            sparse=encode_query("What do the integral and derivative terms of a PID controller do?"),
            limit=3,
        )
        assert hits[0].source == "module-2/motors-and-control.md"
        assert (
            hits[0].url
            == "https://physical-ai-textbook.vercel.app/docs/module-2/motors-and-control#pid-control-staying-on-course"
        )
        assert hits[0].sparse_score is not None
        question = "What do the integral and derivative terms of a PID controller do?"
        dense = await env.worker_services.embedder.embed_query(question)
        hybrid = await env.app.state.services.vectorstore.query(dense=dense, sparse=encode_query(question), limit=3)
        assert hybrid[0].source == "module-2/motors-and-control.md"
        assert hybrid[0].dense_score is not None


async def test_dimension_mismatch_is_a_clear_startup_error(tmp_path: Path) -> None:
    """Opening a store built for other dimensions raises an error that says how to reindex."""
    for dims, expect_error in ((64, False), (128, True)):
        # EMBEDDING_DIMENSIONS is the online setting (offline vectors come from the bundled local model).
        settings = Settings(_env_file=None, data_dir=tmp_path, embedding_dimensions=dims, openai_api_key="sk-unused")
        store = build_edge_store(settings)
        try:
            if expect_error:
                with pytest.raises(CollectionMismatch, match=r"EMBEDDING_DIMENSIONS=128.*reindex"):
                    await store.ensure_collection()
            else:
                await store.ensure_collection()
        finally:
            await store.close()


async def test_an_index_left_by_qdrant_local_mode_is_carried_over(tmp_path: Path) -> None:
    """A DATA_DIR from before Qdrant Edge (qdrant-client's local-mode folder) keeps its index: the points
    are copied into the new shard once, searchable at once, and the old collection is dropped."""
    settings = Settings(_env_file=None, data_dir=tmp_path, embedding_dimensions=8, openai_api_key="sk-unused")
    texts = ["Zero moment point keeps a biped upright.", "LiDAR measures distance with laser pulses."]
    old = QdrantClient(path=str(settings.qdrant_path))
    old.create_collection(
        settings.qdrant_collection,
        vectors_config={DENSE_VECTOR: models.VectorParams(size=8, distance=models.Distance.COSINE)},
        sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    old.upsert(
        settings.qdrant_collection,
        points=[
            models.PointStruct(
                id=point_id("robots.md", i),
                vector={
                    DENSE_VECTOR: [float(i + 1)] * 8,
                    SPARSE_VECTOR: models.SparseVector(**encode_document(text).as_dict()),
                },
                payload={"source": "robots.md", "chunk_index": i, "content": text, "content_hash": str(i)},
            )
            for i, text in enumerate(texts)
        ],
    )
    old.close()
    store = build_edge_store(settings)
    try:
        assert await store.count() == 2
        hits = await store.query(dense=None, sparse=encode_query("laser distance"), limit=1)
        assert hits[0].content == texts[1]
        assert await store.chunk_hashes("robots.md") == {0: "0", 1: "1"}
    finally:
        await store.close()
    reopened = QdrantClient(path=str(settings.qdrant_path))
    try:
        assert not reopened.collection_exists(settings.qdrant_collection)
    finally:
        reopened.close()
    again = build_edge_store(settings)  # no second copy
    try:
        assert await again.count() == 2
    finally:
        await again.close()


async def test_cli_ingest_waits_and_reports(tmp_path: Path) -> None:
    """`python -m worker ingest PATH --wait` shows progress, exits 0 on success and 1 on a failed job."""
    settings = ingest_settings()
    async with ingest_env(settings) as env:
        cli_env = {
            "PATH": os.environ.get("PATH", ""),
            "DATA_DIR": str(settings.data_dir),
            "REDIS_URL": str(settings.redis_url),
            "AUTO_INGEST": "false",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "worker", "ingest", *args],
                cwd=REPO,
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        ok = await asyncio.to_thread(run, str(SAMPLE), "--wait")
        assert ok.returncode == 0, ok.stderr
        total = len(list(SAMPLE.rglob("*.md")))
        assert f"{total}/{total} documents" in ok.stderr
        assert "[succeeded]" in ok.stderr
        listing = (await env.client.get("/api/documents")).json()
        assert listing["total"] == total
        bad_dir = Path(tempfile.mkdtemp(dir=tmp_path))
        (bad_dir / "empty.md").write_text("---\ntitle: nothing\n---\n")
        bad = await asyncio.to_thread(run, str(bad_dir), "--wait")
        assert bad.returncode == 1
        assert "error: empty.md" in bad.stderr
        missing = await asyncio.to_thread(run, str(tmp_path / "nope"))
        assert missing.returncode == 2


async def test_unreachable_qdrant_server_does_not_stop_the_worker() -> None:
    """With QDRANT_URL down the worker still starts; a job waits (retries) instead of failing."""
    from tests.fakes.openai_server import free_port

    settings = ingest_settings(qdrant_url=f"http://127.0.0.1:{free_port()}")
    async with ingest_env(settings) as env:
        job_id = await env.submit([{"source": "later.md", "content": "# Later\n\nWhen Qdrant is back."}])
        await asyncio.sleep(3)
        body = (await env.client.get(f"/api/ingest/jobs/{job_id}")).json()
        assert body["status"] in ("queued", "running")
        assert body["errors"] == []


async def test_job_interrupted_too_often_is_failed_not_left_running(online: IngestEnv) -> None:
    """A job whose tries ran out without an outcome (arq refuses a try past INGEST_MAX_TRIES, as after a
    worker killed on every try) ends `failed` with a reason instead of staying `running`."""
    job_id = await _job_row(online, "tries.md", status="running")
    tries = online.settings.ingest_max_tries + 1
    redis = online.worker_services.redis
    await redis.enqueue_job(JOB_INGEST, job_id, _job_id=job_id, _queue_name=QUEUE_NAME, _job_try=tries)
    body = await online.wait_job(job_id, timeout=30)
    assert body["status"] == "failed"
    assert "INGEST_MAX_TRIES" in body["errors"][-1]["message"]
    assert body["finished_at"] is not None
    info = await Job(job_id, redis, _queue_name=QUEUE_NAME).result_info()
    assert info is not None
    assert not info.success  # arq itself gave up (the job function never ran)
    assert await online.store.count("tries.md") == 0
