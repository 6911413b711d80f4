"""The job that makes the vector store match a job's documents (`run_ingest_job`, called by the worker).

It walks the job's pending documents in order:

1. a document whose hash (content, title, url, metadata) and embedding model are unchanged, and whose
   chunks are all in the store, is skipped: nothing is written;
2. otherwise it is chunked; chunks whose `content_hash` already sits at the same `chunk_index` are kept
   as they are, the others are embedded (batches packed ACROSS documents, so requests stay full) and
   BM25-encoded;
3. `replace_source` upserts the changed chunks (deterministic ids) and deletes chunk indexes past the new
   count, then ONE database transaction records the `documents` row, the job document's status and the
   job's counters. A crash before that commit re-runs the document (idempotent writes); after it, the
   document counts as done. So a killed job, run again, converges to the same store with no duplicates.

A document that fails (empty, unreadable, rejected by the embeddings API) goes to the job's `errors`;
the others continue. An unavailable upstream (open breaker, retries exhausted) raises
`UpstreamUnavailable` so the worker can retry the job later from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from shared.inference.embeddings import DenseEmbedder
from shared.ingestion.chunking import CHUNKER_VERSION, Chunk, chunk_markdown
from shared.ingestion.jobs import (
    DOC_DONE,
    DOC_FAILED,
    DOC_PENDING,
    DOC_SKIPPED,
    STATUS_FAILED,
    STATUS_RUNNING,
    STATUS_SUCCEEDED,
    get_job,
    mark_job,
)
from shared.platform.config import Settings
from shared.platform.errors import UpstreamUnavailable
from shared.platform.logging import get_logger
from shared.stores.db.engine import SessionFactory, session_scope
from shared.stores.db.models import Document, IngestJob, IngestJobDocument, utcnow
from shared.stores.sparse import encode_document
from shared.stores.vectorstore import ChunkPoint, VectorStore, point_id

log = get_logger(__name__)

SPARSE_ONLY = "sparse-only"


def document_hash(*, content: str, title: str | None, url: str | None, metadata: dict[str, Any]) -> str:
    """SHA-256 over everything that shapes a document's chunks."""
    canonical = json.dumps(
        {"content": content, "title": title, "url": url, "metadata": metadata}, sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class _Prepared:
    row: IngestJobDocument
    doc_hash: str
    title: str
    url: str | None
    chunks: list[Chunk]
    changed: list[Chunk]
    sparse: dict[int, Any] = field(default_factory=dict)
    dense: dict[int, list[float]] = field(default_factory=dict)
    remaining: int = 0
    error: str | None = None


@dataclass
class JobOutcome:
    """What one run of a job did (for logs, the CLI and benchmarks)."""

    job_id: str
    status: str
    documents: int = 0
    skipped: int = 0
    failed: int = 0
    chunks_written: int = 0
    seconds: float = 0.0


class _JobRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        sessions: SessionFactory,
        store: VectorStore,
        embedder: DenseEmbedder | None,
        job_id: str,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.embedder = embedder
        self.job_id = job_id
        vectors = embedder.signature if embedder is not None else SPARSE_ONLY
        # What the stored chunks were made with: another embedder or chunker means rewriting them.
        self.signature = f"{vectors};chunker={CHUNKER_VERSION}"
        self.outcome = JobOutcome(job_id=job_id, status=STATUS_RUNNING)

    async def prepare(self, row: IngestJobDocument) -> _Prepared | None:
        """Decide skip / chunk a document; None when skipped (recorded)."""
        metadata = dict(row.metadata_ or {})
        doc_hash = document_hash(content=row.content, title=row.title, url=row.url, metadata=metadata)
        async with self.sessions() as session:
            existing = await session.get(Document, row.source)
        same_model = existing is not None and (existing.metadata_ or {}).get("embedding") == self.signature
        unchanged = existing is not None and existing.content_hash == doc_hash and same_model
        # The count check heals a store that lost points (e.g. a deleted local folder) without a rehash.
        if unchanged and existing is not None and await self.store.count(row.source) == existing.chunks:
            await self.record_skip(row)
            return None
        parsed = chunk_markdown(
            row.content,
            source=row.source,
            site_url=self.settings.site_url,
            chunk_size=self.settings.chunk_size,
            overlap=min(self.settings.chunk_overlap, self.settings.chunk_size // 2),
            title=row.title,
            url=row.url,
            metadata=metadata,
        )
        if not parsed.chunks:
            raise ValueError("the document has no text to index")
        stored = await self.store.chunk_hashes(row.source) if same_model else {}
        changed = [c for c in parsed.chunks if stored.get(c.chunk_index) != c.content_hash]
        prepared = _Prepared(
            row=row, doc_hash=doc_hash, title=parsed.title, url=parsed.url, chunks=parsed.chunks, changed=changed
        )
        for chunk in changed:
            prepared.sparse[chunk.chunk_index] = encode_document(chunk.embed_text)
        prepared.remaining = len(changed) if self.embedder is not None else 0
        return prepared

    async def record_skip(self, row: IngestJobDocument) -> None:
        async with session_scope(self.sessions) as session:
            await session.exec(
                sa.update(IngestJobDocument).where(col(IngestJobDocument.id) == row.id).values(status=DOC_SKIPPED)
            )
            await session.exec(
                sa.update(IngestJob)
                .where(col(IngestJob.id) == self.job_id)
                .values(
                    documents_done=IngestJob.documents_done + 1,
                    documents_skipped=IngestJob.documents_skipped + 1,
                )
            )
        self.outcome.skipped += 1

    async def record_failure(self, row: IngestJobDocument, message: str) -> None:
        message = message[:500]
        async with session_scope(self.sessions) as session:
            await session.exec(
                sa.update(IngestJobDocument)
                .where(col(IngestJobDocument.id) == row.id)
                .values(status=DOC_FAILED, error=message)
            )
            job = await session.get(IngestJob, self.job_id, with_for_update=not self.settings.uses_sqlite)
            if job is not None:
                job.errors = [*(job.errors or []), {"source": row.source, "message": message}]
                job.documents_done += 1
                session.add(job)
        self.outcome.failed += 1
        log.warning("ingest.document_failed", job_id=self.job_id, source=row.source, error=message)

    async def write(self, prepared: _Prepared) -> None:
        """Store the document's changed chunks, then record it done in one transaction."""
        row = prepared.row
        points = [
            ChunkPoint(
                id=point_id(row.source, chunk.chunk_index),
                payload=chunk.payload(),
                sparse=prepared.sparse[chunk.chunk_index],
                dense=prepared.dense.get(chunk.chunk_index),
            )
            for chunk in prepared.changed
        ]
        await self.store.replace_source(row.source, points, total=len(prepared.chunks))
        metadata = {**(row.metadata_ or {}), "embedding": self.signature}
        async with session_scope(self.sessions) as session:
            document = await session.get(Document, row.source)
            if document is None:
                document = Document(source=row.source, content_hash=prepared.doc_hash)
            document.title = prepared.title
            document.url = prepared.url
            document.content_hash = prepared.doc_hash
            document.chunks = len(prepared.chunks)
            document.metadata_ = metadata
            document.ingested_at = utcnow()
            session.add(document)
            await session.exec(
                sa.update(IngestJobDocument).where(col(IngestJobDocument.id) == row.id).values(status=DOC_DONE)
            )
            await session.exec(
                sa.update(IngestJob)
                .where(col(IngestJob.id) == self.job_id)
                .values(
                    documents_done=IngestJob.documents_done + 1,
                    chunks_upserted=IngestJob.chunks_upserted + len(points),
                )
            )
        self.outcome.documents += 1
        self.outcome.chunks_written += len(points)
        log.info(
            "ingest.document_done",
            job_id=self.job_id,
            source=row.source,
            chunks=len(prepared.chunks),
            written=len(points),
        )

    async def embed_round(self, work: list[tuple[_Prepared, Chunk]]) -> None:
        """Embed one round of chunks (several full requests at once) and hand vectors to their documents."""
        assert self.embedder is not None
        try:
            vectors = await self.embedder.embed_chunks(
                [chunk.embed_text for _, chunk in work], contexts=[chunk.context for _, chunk in work]
            )
        except UpstreamUnavailable:
            raise
        except Exception as exc:
            # The API refused the batch itself (e.g. an input too long): fail those documents only.
            message = f"embedding failed: {type(exc).__name__}: {str(exc)[:300]}"
            for prepared, _ in work:
                prepared.error = prepared.error or message
                prepared.remaining = 0
            return
        for (prepared, chunk), vector in zip(work, vectors, strict=True):
            prepared.dense[chunk.chunk_index] = vector
            prepared.remaining -= 1

    async def flush(self, pending: deque[_Prepared], *, all_done: bool = False) -> None:
        """Write every leading document whose vectors are complete (in submission order)."""
        while pending and (pending[0].remaining <= 0 or all_done):
            prepared = pending.popleft()
            if prepared.error:
                await self.record_failure(prepared.row, prepared.error)
            else:
                await self.write(prepared)

    async def run(self, rows: list[IngestJobDocument]) -> None:
        pending: deque[_Prepared] = deque()
        buffer: list[tuple[_Prepared, Chunk]] = []
        round_size = self.settings.embed_batch_size * self.settings.embed_concurrency
        for row in rows:
            try:
                prepared = await self.prepare(row)
            except (UpstreamUnavailable, OSError):
                raise
            except Exception as exc:
                await self.flush(pending)
                await self.record_failure(row, f"{type(exc).__name__}: {exc}")
                continue
            if prepared is None:
                continue
            pending.append(prepared)
            if self.embedder is not None:
                buffer.extend((prepared, chunk) for chunk in prepared.changed)
            while len(buffer) >= round_size:
                work, buffer = buffer[:round_size], buffer[round_size:]
                await self.embed_round(work)
            await self.flush(pending)
        if buffer:
            await self.embed_round(buffer)
        await self.flush(pending, all_done=True)


async def _pending_rows(sessions: SessionFactory, job_id: str) -> list[IngestJobDocument]:
    async with sessions() as session:
        result = await session.exec(
            select(IngestJobDocument)
            .where(col(IngestJobDocument.job_id) == job_id, col(IngestJobDocument.status) == DOC_PENDING)
            .order_by(col(IngestJobDocument.position))
        )
        return list(result.all())


async def run_ingest_job(
    *,
    settings: Settings,
    sessions: SessionFactory,
    store: VectorStore,
    embedder: DenseEmbedder | None,
    job_id: str,
) -> JobOutcome:
    """Run (or continue) a job until every document is done; see the module docstring.

    Raises `UpstreamUnavailable` when OpenAI or Qdrant is down, leaving the job `running` with its
    progress checkpointed, so the caller can retry it later.
    """
    started = time.monotonic()
    async with sessions() as session:
        job = await session.get(IngestJob, job_id)
    if job is None:
        log.warning("ingest.job_missing", job_id=job_id)
        return JobOutcome(job_id=job_id, status="missing")
    if job.status in (STATUS_SUCCEEDED, STATUS_FAILED):
        return JobOutcome(job_id=job_id, status=job.status)
    await mark_job(sessions=sessions, job_id=job_id, status=STATUS_RUNNING)
    await store.ensure_collection()
    runner = _JobRunner(settings=settings, sessions=sessions, store=store, embedder=embedder, job_id=job_id)
    rows = await _pending_rows(sessions, job_id)
    log.info("ingest.job_started", job_id=job_id, pending=len(rows), total=job.documents_total)
    await runner.run(rows)
    final = await get_job(sessions=sessions, job_id=job_id)
    all_failed = final.documents_total > 0 and len(final.errors or []) >= final.documents_total
    status = STATUS_FAILED if all_failed else STATUS_SUCCEEDED
    await mark_job(sessions=sessions, job_id=job_id, status=status)
    runner.outcome.status = status
    runner.outcome.seconds = time.monotonic() - started
    log.info(
        "ingest.job_finished",
        job_id=job_id,
        status=status,
        documents=runner.outcome.documents,
        skipped=runner.outcome.skipped,
        failed=runner.outcome.failed,
        chunks_written=runner.outcome.chunks_written,
        seconds=round(runner.outcome.seconds, 2),
    )
    return runner.outcome
