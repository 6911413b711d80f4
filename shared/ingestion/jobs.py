"""Ingestion jobs as the API and the worker see them: submit, read, reconcile with arq, and documents.

A job row (`ingest_job`) is what the API shows; arq owns the queue, the tries and the in-progress marker.
The arq job id is the ingest job id, so one job is never queued twice. `reconcile_jobs` (run by the
worker) brings the two together through arq's public `Job` API: a row still queued/running whose arq
job ended without our code recording an outcome is failed with the reason, and a row arq does not know
at all (Redis lost it, or the enqueue failed after the row was stored) is queued again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.jobs import Job, JobResult, JobStatus
from arq.worker import JobExecutionFailed
from sqlmodel import col, select

from shared.ingestion.inputs import DocumentInput, check_documents
from shared.platform.config import Settings
from shared.platform.constants import JOB_INGEST, QUEUE_NAME
from shared.platform.errors import NotFound
from shared.platform.logging import get_logger
from shared.stores.db.engine import SessionFactory, session_scope
from shared.stores.db.models import Document, IngestJob, IngestJobDocument, utcnow
from shared.stores.vectorstore import VectorStore

log = get_logger(__name__)

STATUS_QUEUED, STATUS_RUNNING, STATUS_SUCCEEDED, STATUS_FAILED = "queued", "running", "succeeded", "failed"
DOC_PENDING, DOC_DONE, DOC_SKIPPED, DOC_FAILED = "pending", "done", "skipped", "failed"


async def enqueue_job(*, redis: ArqRedis, job_id: str, defer_s: float | None = None) -> bool:
    """Put the job on the arq queue; False when arq already holds that job id (queued, running or with
    a result): the arq job id is the ingest job id, so one ingestion job is never queued twice."""
    job = await redis.enqueue_job(JOB_INGEST, job_id, _job_id=job_id, _queue_name=QUEUE_NAME, _defer_by=defer_s)
    return job is not None


async def submit_ingest(*, sessions: SessionFactory, redis: ArqRedis, documents: Sequence[DocumentInput]) -> IngestJob:
    """Validate, store the job and its documents, enqueue it; returns the queued job."""
    cleaned = check_documents(documents)
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
