"""Ingestion jobs end to end in one process: real arq worker, Redis, PostgreSQL, Qdrant local, fake OpenAI."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from shared.stores.db.models import Document
from shared.stores.sparse import encode_query
from tests.fakes.openai_server import FakeOpenAI
from tests.worker.harness import IngestEnv, corpus_documents, ingest_env, ingest_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(fake_openai: FakeOpenAI, pg_database_factory: Callable[[], str]) -> AsyncIterator[IngestEnv]:
    """One app + worker on PostgreSQL with the fake embeddings server (64-dim to stay light)."""
    fake_openai.reset()
    settings = ingest_settings(
        database_url=pg_database_factory(),
        openai_api_key="sk-test-ingest-000000",
        openai_base_url=fake_openai.url,
        embedding_dimensions=64,
        circuit_failure_threshold=50,
    )
    async with ingest_env(settings) as running:
        yield running


async def _db_documents(env: IngestEnv) -> dict[str, Document]:
    from sqlmodel import select

    async with env.worker_services.sessions() as session:
        return {d.source: d for d in (await session.exec(select(Document))).all()}


async def test_corpus_ingest_counts_match(env: IngestEnv, fake_openai: FakeOpenAI) -> None:
    """The whole textbook ingests: job succeeded, documents and chunk counts agree with the store."""
    docs = corpus_documents()
    before = len(fake_openai.requests_to("/embeddings"))
    job = await env.ingest(docs)
    assert job["status"] == "succeeded", job
    assert job["documents_total"] == len(docs) == job["documents_done"]
    assert job["documents_skipped"] == 0
    assert job["errors"] == []
    rows = await _db_documents(env)
    assert set(rows) == {d["source"] for d in docs}
    total = sum(r.chunks for r in rows.values())
    assert job["chunks_upserted"] == total == await env.store.count()
    for source, row in rows.items():
        assert await env.store.count(source) == row.chunks
    requests = len(fake_openai.requests_to("/embeddings")) - before
    assert requests <= -(-total // 100) + 1  # batches are packed across documents
    listing = (await env.client.get("/api/documents?verify=true")).json()
    assert listing["total"] == len(docs)
    assert listing["chunks_in_store"] == total
    assert {"source", "title", "url", "content_hash", "chunks", "ingested_at"} <= set(listing["documents"][0])


async def test_reingest_unchanged_writes_nothing(env: IngestEnv, fake_openai: FakeOpenAI) -> None:
    """Re-ingesting the same corpus skips every document: no embedding call, the store's files are untouched."""
    docs = corpus_documents()
    snapshot = await env.snapshot()
    storage = env.storage_state()
    assert any(name.startswith("wal/") for name, _, _ in storage)  # every write goes through the WAL
    calls = len(fake_openai.requests_to("/embeddings"))
    job = await env.ingest(docs)
    assert job["status"] == "succeeded"
    assert job["documents_skipped"] == len(docs)
    assert job["chunks_upserted"] == 0
    assert len(fake_openai.requests_to("/embeddings")) == calls
    assert env.storage_state() == storage  # zero points written (no file of the shard touched)
    assert await env.snapshot() == snapshot


async def test_changed_file_replaces_only_its_chunks(env: IngestEnv) -> None:
    """Editing one file rewrites only that file's points and leaves no stale chunk behind."""
    docs = corpus_documents()
    target = next(d for d in docs if d["source"] == "week3/ros2-nodes-topics.md")
    before = await env.snapshot()
    # Shorter document with a new section: the tail chunks must disappear, a new one appear.
    head = target["content"][: len(target["content"]) // 2]
    edited = head + "\n\n## Zebra Gait Planning\n\nQuadruped zebras plan gaits with xylophonic rhythm.\n"
    job = await env.ingest([{"source": target["source"], "content": edited}])
    assert job["status"] == "succeeded"
    assert job["documents_done"] == 1
    after = await env.snapshot()
    for pid, point in before.items():
        if point[0]["source"] != target["source"]:
            assert after[pid] == point
    own = sorted(p[0]["chunk_index"] for p in after.values() if p[0]["source"] == target["source"])
    rows = await _db_documents(env)
    assert own == list(range(rows[target["source"]].chunks))
    assert len(after) == len(before) - sum(1 for p in before.values() if p[0]["source"] == target["source"]) + len(own)
    changed = [pid for pid in after if pid not in before or after[pid] != before[pid]]
    assert changed
    assert all(after[pid][0]["source"] == target["source"] for pid in changed)
    assert 0 < job["chunks_upserted"] <= len(own)  # unchanged leading chunks were kept, not rewritten
    hits = await env.store.query(dense=None, sparse=encode_query("zebra gait xylophonic"), limit=3)
    assert hits
    assert hits[0].source == target["source"]
    assert "Zebra" in hits[0].content


async def test_delete_document_never_returned_again(env: IngestEnv) -> None:
    """DELETE /api/documents/{source} removes every chunk; searches no longer return it; 404 after."""
    source = "week3/ros2-nodes-topics.md"
    chunks = await env.store.count(source)
    response = await env.client.delete(f"/api/documents/{source}")
    assert response.status_code == 200
    assert response.json() == {"deleted": source, "chunks": chunks}
    assert await env.store.count(source) == 0
    hits = await env.store.query(dense=None, sparse=encode_query("zebra gait xylophonic ros2 nodes topics"), limit=50)
    assert all(hit.source != source for hit in hits)
    api_hits = await env.app.state.services.vectorstore.query(
        dense=[0.1] * 64, sparse=encode_query("zebra gait xylophonic nodes"), limit=50
    )
    assert all(hit.source != source for hit in api_hits)
    assert (await env.client.delete(f"/api/documents/{source}")).status_code == 404


async def test_bad_document_does_not_fail_the_rest(env: IngestEnv) -> None:
    """A document with no indexable text is reported in errors; the others are ingested."""
    job = await env.ingest(
        [
            {"source": "extra/empty.md", "content": "---\ntitle: Empty\n---\n   \n"},
            {"source": "extra/good.md", "content": "# Good\n\nServo motors hold a commanded angle precisely."},
        ]
    )
    assert job["status"] == "succeeded"
    assert job["documents_done"] == 2
    assert [e["source"] for e in job["errors"]] == ["extra/empty.md"]
    assert await env.store.count("extra/good.md") == 1
    assert await env.store.count("extra/empty.md") == 0


async def test_rate_limited_embeddings_wait_for_retry_after(env: IngestEnv, fake_openai: FakeOpenAI) -> None:
    """429 with Retry-After: 1 for 5 s: the job still succeeds and no retry came sooner than asked."""
    fault_responses = fake_openai.state.fault_responses
    fake_openai.configure(fault="429", fault_seconds=5, retry_after=1)
    started = time.time()
    try:
        job = await env.ingest(
            [{"source": f"rl/doc-{i}.md", "content": f"# Doc {i}\n\nActuator torque note {i}."} for i in range(3)],
            timeout=90,
        )
    finally:
        fake_openai.configure(fault=None)
    assert job["status"] == "succeeded", job
    assert fake_openai.state.fault_responses - fault_responses >= 3
    times = sorted(r["at"] for r in fake_openai.requests_to("/embeddings") if r["at"] >= started)
    assert times[-1] - times[0] >= 5.0  # it kept trying until the fault window ended
    fault_window = [t for t in times if t < started + 5.0]
    for earlier, later in itertools.pairwise(fault_window):
        # Requests in flight together may arrive together; otherwise each retry waited >= Retry-After.
        gap = later - earlier
        assert gap < 0.2 or gap >= 0.95, gap
    assert await env.store.count("rl/doc-0.md") == 1


async def test_duplicate_enqueue_is_harmless(env: IngestEnv) -> None:
    """Enqueueing the same job id again does not run it twice (arq job id = ingest job id)."""
    from shared.ingestion.jobs import enqueue_job

    job_id = await env.submit([{"source": "dup/one.md", "content": "# One\n\nGripper fingers."}])
    await enqueue_job(redis=env.app.state.services.redis, job_id=job_id)
    job = await env.wait_job(job_id)
    assert job["status"] == "succeeded"
    assert job["documents_done"] == 1
    await asyncio.sleep(0.5)
    again = (await env.client.get(f"/api/ingest/jobs/{job_id}")).json()
    assert again["documents_done"] == 1
    assert again["chunks_upserted"] == job["chunks_upserted"]


async def test_jobs_listing_newest_first(env: IngestEnv) -> None:
    """GET /api/ingest/jobs lists jobs newest first with the documented fields."""
    body: dict[str, Any] = (await env.client.get("/api/ingest/jobs?limit=3")).json()
    jobs = body["jobs"]
    assert 1 <= len(jobs) <= 3
    created = [j["created_at"] for j in jobs]
    assert created == sorted(created, reverse=True)
    assert set(jobs[0]) == {
        "job_id",
        "status",
        "documents_total",
        "documents_done",
        "documents_skipped",
        "chunks_upserted",
        "errors",
        "created_at",
        "started_at",
        "finished_at",
    }


async def test_concurrent_jobs_on_one_source_never_interleave(env: IngestEnv) -> None:
    """Two jobs for the same source run one after the other; the store matches the last one exactly."""
    long_version = "# Race\n\n" + "".join(f"## Part {i}\n\nServo section {i} text.\n\n" for i in range(6))
    short_version = "# Race\n\n## Only\n\nStepper motors only."
    first = await env.submit([{"source": "race/doc.md", "content": long_version}])
    second = await env.submit([{"source": "race/doc.md", "content": short_version}])
    a, b = await env.wait_job(first), await env.wait_job(second)
    assert a["status"] == b["status"] == "succeeded"
    earlier, later = sorted((a, b), key=lambda job: job["started_at"])
    assert earlier["finished_at"] <= later["started_at"]
    row = (await _db_documents(env))["race/doc.md"]
    assert await env.store.count("race/doc.md") == row.chunks
    expected = 1 if later is b else 6
    assert row.chunks == expected
