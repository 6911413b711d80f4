"""The ingestion pipeline: submit documents as a job, and the job that makes the vector store match them.

Submitting (`submit_ingest`, used by the API, the legacy `/ingest`, the CLI and the dev auto-ingest)
validates the documents, stores an `ingest_job` row and one `ingest_job_document` row per document, and
enqueues the arq job with `_job_id = job id`, so a repeated enqueue is harmless (arq refuses a job id it
already holds, queued, running or finished).

The job row is what the API shows; arq owns the queue, the tries and the in-progress marker.
`reconcile_jobs` (run by the worker) brings the two together through arq's public `Job` API: a row still
queued/running whose arq job ended without our code recording an outcome (tries exhausted by a worker
killed on every try, arq's timeout backstop, an unexpected error) is failed with the reason, and a row
arq does not know at all (Redis lost it, or the enqueue failed after the row was stored) is queued again.

Running (`run_ingest_job`, called by the worker) walks the job's pending documents in order:

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
import io
import json
import time
import zipfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.jobs import Job, JobResult, JobStatus
from arq.worker import JobExecutionFailed
from sqlmodel import col, select

from shared.inference.embeddings import DenseEmbedder
from shared.ingestion.chunking import CHUNKER_VERSION, Chunk, chunk_markdown
from shared.platform.config import Settings
from shared.platform.constants import JOB_INGEST, QUEUE_NAME
from shared.platform.errors import BadRequest, InvalidInput, NotFound, PayloadTooLarge, UpstreamUnavailable
from shared.platform.logging import get_logger
from shared.stores.db.engine import SessionFactory, session_scope
from shared.stores.db.models import Document, IngestJob, IngestJobDocument, utcnow
from shared.stores.sparse import encode_document
from shared.stores.vectorstore import ChunkPoint, VectorStore, point_id

__all__ = [
    "ALLOWED_SUFFIXES",
    "MAX_DOCUMENTS",
    "DocumentInput",
    "JobOutcome",
    "delete_document",
    "document_hash",
    "extract_uploads",
    "get_job",
    "job_view",
    "list_documents",
    "list_jobs",
    "load_directory",
    "reconcile_jobs",
    "run_ingest_job",
    "submit_ingest",
    "validate_source",
]

log = get_logger(__name__)

MAX_DOCUMENTS = 500
MAX_DOCUMENT_CHARS = 2_000_000
ALLOWED_SUFFIXES = (".md", ".mdx", ".txt", ".markdown")
MAX_ZIP_FILES = 500
MAX_ZIP_UNCOMPRESSED = 50 * 1024 * 1024
MAX_ZIP_RATIO = 200
SPARSE_ONLY = "sparse-only"

STATUS_QUEUED, STATUS_RUNNING, STATUS_SUCCEEDED, STATUS_FAILED = "queued", "running", "succeeded", "failed"
DOC_PENDING, DOC_DONE, DOC_SKIPPED, DOC_FAILED = "pending", "done", "skipped", "failed"


@dataclass
class DocumentInput:
    """One document to ingest."""

    source: str
    content: str
    title: str | None = None
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Validation and inputs
# ---------------------------------------------------------------------------------------------


def validate_source(source: str) -> str:
    """Normalise a document source (a relative POSIX path) or raise `InvalidInput`."""
    text = source.strip().replace("\\", "/")
    if not text or len(text) > 512:
        raise InvalidInput("A document source must be 1 to 512 characters.")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in text):
        raise InvalidInput(f"The source {source!r} contains control characters.")
    path = PurePosixPath(text)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or any(p in {"..", "."} for p in text.split("/")):
        raise InvalidInput(f"The source {source!r} must be a relative path without '.' or '..' segments.")
    return str(path)


def _check_documents(documents: Sequence[DocumentInput]) -> list[DocumentInput]:
    if not documents:
        raise InvalidInput("Send at least one document.")
    if len(documents) > MAX_DOCUMENTS:
        raise InvalidInput(f"At most {MAX_DOCUMENTS} documents per job; split the upload into several jobs.")
    seen: set[str] = set()
    cleaned: list[DocumentInput] = []
    for doc in documents:
        source = validate_source(doc.source)
        if source in seen:
            raise InvalidInput(f"The source {source!r} appears twice in this job.")
        if len(doc.content) > MAX_DOCUMENT_CHARS:
            raise InvalidInput(f"The document {source!r} is longer than {MAX_DOCUMENT_CHARS} characters.")
        seen.add(source)
        cleaned.append(
            DocumentInput(source=source, content=doc.content, title=doc.title, url=doc.url, metadata=doc.metadata)
        )
    return cleaned


def load_directory(path: Path) -> list[DocumentInput]:
    """Every .md/.mdx/.txt file under `path` (sources are paths relative to it, sorted)."""
    root = path.resolve()
    if not root.is_dir():
        raise InvalidInput(f"{path} is not a directory.")
    documents = []
    for file in sorted(root.rglob("*")):
        if file.is_file() and file.suffix.lower() in ALLOWED_SUFFIXES and not file.name.startswith("."):
            source = file.relative_to(root).as_posix()
            documents.append(DocumentInput(source=source, content=file.read_text(encoding="utf-8", errors="replace")))
    return documents


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{name} is not UTF-8 text.") from None


def extract_uploads(files: Sequence[tuple[str, bytes]]) -> list[DocumentInput]:
    """Documents from uploaded files: .md/.mdx/.txt files, or exactly one .zip of them.

    Refuses path traversal, other file types, and zip bombs (more than `MAX_ZIP_FILES` files, more than
    `MAX_ZIP_UNCOMPRESSED` bytes uncompressed, or a suspicious compression ratio).
    """
    if not files:
        raise InvalidInput("Upload at least one .md, .mdx or .txt file, or one .zip of them.")
    zips = [f for f in files if f[0].lower().endswith(".zip")]
    if zips:
        if len(files) != 1:
            raise BadRequest("Upload either one .zip file or markdown/text files, not both.", code="unsupported_upload")
        return _extract_zip(*zips[0])
    documents = []
    for name, data in files:
        source = validate_source(name)
        if PurePosixPath(source).suffix.lower() not in ALLOWED_SUFFIXES:
            raise BadRequest(
                f"{name}: only .md, .mdx, .txt files or one .zip are accepted.", code="unsupported_file_type"
            )
        documents.append(DocumentInput(source=source, content=_decode(source, data)))
    return documents


def _extract_zip(name: str, data: bytes) -> list[DocumentInput]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise BadRequest(f"{name} is not a valid zip archive.", code="invalid_zip") from None
    with archive:
        entries = [info for info in archive.infolist() if not info.is_dir()]
        if len(entries) > MAX_ZIP_FILES:
            raise PayloadTooLarge(f"{name} holds {len(entries)} files; at most {MAX_ZIP_FILES} are accepted.")
        declared = sum(info.file_size for info in entries)
        if declared > MAX_ZIP_UNCOMPRESSED:
            raise PayloadTooLarge(
                f"{name} expands to {declared} bytes; at most {MAX_ZIP_UNCOMPRESSED} bytes uncompressed are accepted."
            )
        documents = []
        total = 0
        for info in entries:
            source = validate_source(info.filename)
            if PurePosixPath(source).name.startswith(".") or "__MACOSX" in source:
                continue
            if PurePosixPath(source).suffix.lower() not in ALLOWED_SUFFIXES:
                raise BadRequest(f"{name}: {source} is not a .md, .mdx or .txt file.", code="unsupported_file_type")
            if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO and info.file_size > 1 << 20:
                raise PayloadTooLarge(f"{name}: {source} has a suspicious compression ratio.")
            # Read with a hard cap: the declared sizes in a crafted archive can lie.
            with archive.open(info) as handle:
                content = handle.read(MAX_ZIP_UNCOMPRESSED - total + 1)
            total += len(content)
            if total > MAX_ZIP_UNCOMPRESSED:
                raise PayloadTooLarge(f"{name} expands to more than {MAX_ZIP_UNCOMPRESSED} bytes.")
            documents.append(DocumentInput(source=source, content=_decode(source, content)))
    if not documents:
        raise InvalidInput(f"{name} contains no .md, .mdx or .txt files.")
    return documents


# ---------------------------------------------------------------------------------------------
# Submitting and reading jobs
# ---------------------------------------------------------------------------------------------


async def enqueue_job(*, redis: ArqRedis, job_id: str, defer_s: float | None = None) -> bool:
    """Put the job on the arq queue; False when arq already holds that job id (queued, running or with
    a result): the arq job id is the ingest job id, so one ingestion job is never queued twice."""
    job = await redis.enqueue_job(JOB_INGEST, job_id, _job_id=job_id, _queue_name=QUEUE_NAME, _defer_by=defer_s)
    return job is not None


async def submit_ingest(*, sessions: SessionFactory, redis: ArqRedis, documents: Sequence[DocumentInput]) -> IngestJob:
    """Validate, store the job and its documents, enqueue it; returns the queued job."""
    cleaned = _check_documents(documents)
    job = IngestJob(status=STATUS_QUEUED, documents_total=len(cleaned))
    async with session_scope(sessions) as session:
        session.add(job)
        await session.flush()
        for position, doc in enumerate(cleaned):
            session.add(
                IngestJobDocument(
                    job_id=job.id,
                    position=position,
                    source=doc.source,
                    title=doc.title,
                    url=doc.url,
                    content=doc.content,
                    metadata_=dict(doc.metadata),
                )
            )
    await enqueue_job(redis=redis, job_id=job.id)
    log.info("ingest.job_queued", job_id=job.id, documents=len(cleaned))
    return job


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_view(job: IngestJob) -> dict[str, Any]:
    """The job as API.md shows it."""
    return {
        "job_id": job.id,
        "status": job.status,
        "documents_total": job.documents_total,
        "documents_done": job.documents_done,
        "documents_skipped": job.documents_skipped,
        "chunks_upserted": job.chunks_upserted,
        "errors": list(job.errors or []),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


async def get_job(*, sessions: SessionFactory, job_id: str) -> IngestJob:
    """One job, or `NotFound`."""
    async with sessions() as session:
        job = await session.get(IngestJob, job_id)
    if job is None:
        raise NotFound(f"No ingestion job {job_id}.")
    return job


async def list_jobs(*, sessions: SessionFactory, limit: int = 20) -> list[IngestJob]:
    """The newest jobs first."""
    async with sessions() as session:
        result = await session.exec(select(IngestJob).order_by(col(IngestJob.created_at).desc()).limit(limit))
        return list(result.all())


#: A row arq does not know is queued again only when it is older than this (submit stores the row first,
#: then enqueues).
RECONCILE_GRACE_S = 30.0
_SUBMIT_AGAIN = "Documents already done are kept; submit the documents again to finish."


def _arq_failure_message(settings: Settings, result: JobResult) -> str:
    """Why arq ended a job without our code recording an outcome (from arq's stored result)."""
    error = result.result
    if result.job_try > settings.ingest_max_tries:
        return (
            f"Gave up after {settings.ingest_max_tries} tries (INGEST_MAX_TRIES): the job was interrupted "
            f"every time. {_SUBMIT_AGAIN}"
        )
    if isinstance(error, TimeoutError):
        return (
            f"The job did not finish within INGEST_JOB_TIMEOUT={settings.ingest_job_timeout:g} s and was "
            f"stopped. {_SUBMIT_AGAIN}"
        )
    if isinstance(error, JobExecutionFailed):  # arq's own words ("job expired", ...): no secrets in them
        return f"The job could not run: {error}. {_SUBMIT_AGAIN}"
    return f"The job stopped on an unexpected {type(error).__name__}. {_SUBMIT_AGAIN}"


async def _fail_unfinished(*, settings: Settings, sessions: SessionFactory, job_id: str, message: str) -> bool:
    """Fail the job with `message` unless it already ended; True when it was failed here."""
    async with session_scope(sessions) as session:
        job = await session.get(IngestJob, job_id, with_for_update=not settings.uses_sqlite)
        if job is None or job.status not in (STATUS_QUEUED, STATUS_RUNNING):
            return False
        job.status = STATUS_FAILED
        job.finished_at = utcnow()
        job.errors = [*(job.errors or []), {"source": "", "message": message}]
        session.add(job)
    return True


async def reconcile_jobs(*, settings: Settings, sessions: SessionFactory, redis: ArqRedis) -> dict[str, list[str]]:
    """Compare every queued/running job row with arq's view of the job (`Job.status`, `Job.result_info`).

    - arq finished the job as a failure (tries exhausted, arq's timeout, an unexpected error) while the
      row is still queued/running: the row is failed with the reason (arq never calls the job again);
    - arq does not know the job at all and the row is older than `RECONCILE_GRACE_S`: it is queued again
      (same job id, so at most once); the run continues from the job's checkpoint;
    - queued, deferred or in progress: arq has it (a job of a killed worker runs again when its
      in-progress marker expires).

    Returns the ids handled, as `{"failed": [...], "requeued": [...]}`. Safe to run from many workers.
    """
    async with sessions() as session:
        rows = (
            await session.exec(
                select(IngestJob.id, IngestJob.created_at).where(
                    col(IngestJob.status).in_((STATUS_QUEUED, STATUS_RUNNING))
                )
            )
        ).all()
    handled: dict[str, list[str]] = {"failed": [], "requeued": []}
    now = utcnow()
    for job_id, created_at in rows:
        arq_job = Job(job_id, redis, _queue_name=QUEUE_NAME)
        status = await arq_job.status()
        if status == JobStatus.complete:
            result = await arq_job.result_info()
            if result is None or result.success:
                continue  # expired meanwhile, or the job returned (it records its own outcome)
            message = _arq_failure_message(settings, result)
            if await _fail_unfinished(settings=settings, sessions=sessions, job_id=job_id, message=message):
                handled["failed"].append(job_id)
                log.error("ingest.job_failed_by_arq", job_id=job_id, tries=result.job_try, error=message)
        elif status == JobStatus.not_found:
            created = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
            if (now - created).total_seconds() >= RECONCILE_GRACE_S and await enqueue_job(redis=redis, job_id=job_id):
                handled["requeued"].append(job_id)
                log.warning("ingest.job_requeued", job_id=job_id, reason="unknown to arq")
    return handled


async def list_documents(*, sessions: SessionFactory) -> list[dict[str, Any]]:
    """Every ingested document, by source."""
    async with sessions() as session:
        result = await session.exec(select(Document).order_by(col(Document.source)))
        return [
            {
                "source": d.source,
                "title": d.title,
                "url": d.url,
                "content_hash": d.content_hash,
                "chunks": d.chunks,
                "ingested_at": _iso(d.ingested_at),
            }
            for d in result.all()
        ]


async def delete_document(*, sessions: SessionFactory, store: VectorStore, source: str) -> int:
    """Remove a document and every chunk of it; `NotFound` if it is unknown. Returns the chunk count."""
    async with sessions() as session:
        document = await session.get(Document, source)
    if document is None:
        raise NotFound(f"No document {source!r}.")
    removed = await store.delete_source(source)
    async with session_scope(sessions) as session:
        await session.exec(sa.delete(Document).where(col(Document.source) == source))
    log.info("ingest.document_deleted", source=source, chunks=removed)
    return removed


# ---------------------------------------------------------------------------------------------
# Running a job
# ---------------------------------------------------------------------------------------------


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
            vectors = await self.embedder.embed_texts([chunk.embed_text for _, chunk in work])
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


async def mark_job(
    *, sessions: SessionFactory, job_id: str, status: str, error: dict[str, str] | None = None
) -> IngestJob | None:
    """Set a job's status (running sets `started_at` once; terminal states set `finished_at`)."""
    async with session_scope(sessions) as session:
        job = await session.get(IngestJob, job_id)
        if job is None:
            return None
        job.status = status
        if status == STATUS_RUNNING:
            job.started_at = job.started_at or utcnow()
            job.finished_at = None
        if status in (STATUS_SUCCEEDED, STATUS_FAILED):
            job.finished_at = utcnow()
        if error is not None:
            job.errors = [*(job.errors or []), error]
        session.add(job)
        return job


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
