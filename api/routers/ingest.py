"""Ingestion jobs and documents (admin): submit, follow, list, delete; legacy `POST /ingest`.

The API never embeds: it validates, stores the job and enqueues it (202); the arq worker does the work.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile
from pydantic import BaseModel, Field

from api.deps import AdminKey, ServicesDep, SettingsDep, VectorStoreDep
from shared.ingestion.inputs import MAX_DOCUMENTS, DocumentInput, extract_uploads, load_directory
from shared.ingestion.jobs import delete_document, get_job, job_view, list_documents, list_jobs, submit_ingest
from shared.platform.errors import InvalidInput

router = APIRouter(tags=["ingestion"])

MAX_UPLOAD_FILES = 500


class DocumentIn(BaseModel):
    """One document to ingest."""

    source: str = Field(min_length=1, max_length=512, examples=["week3/ros2-nodes-topics.md"])
    content: str = Field(min_length=1)
    title: str | None = Field(default=None, max_length=500)
    url: str | None = Field(default=None, max_length=2048)
    metadata: dict[str, Any] | None = None


class IngestRequest(BaseModel):
    """`POST /api/ingest` body."""

    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_DOCUMENTS)


class JobQueued(BaseModel):
    """202 answer: the job is on the queue."""

    job_id: str
    status: str
    documents: int


async def _submit(services: ServicesDep, documents: list[DocumentInput]) -> JobQueued:
    job = await submit_ingest(sessions=services.sessions, redis=services.redis, documents=documents)
    return JobQueued(job_id=job.id, status=job.status, documents=job.documents_total)


@router.post("/api/ingest", status_code=202, response_model=JobQueued)
async def ingest_documents(body: IngestRequest, services: ServicesDep, _: AdminKey) -> JobQueued:
    """Queue documents for ingestion (at most 500)."""
    documents = [
        DocumentInput(source=d.source, content=d.content, title=d.title, url=d.url, metadata=dict(d.metadata or {}))
        for d in body.documents
    ]
    return await _submit(services, documents)


@router.post("/api/ingest/files", status_code=202, response_model=JobQueued)
async def ingest_files(services: ServicesDep, _: AdminKey, files: Annotated[list[UploadFile], File()]) -> JobQueued:
    """Queue uploaded .md/.mdx/.txt files, or one .zip of them."""
    if len(files) > MAX_UPLOAD_FILES:
        raise InvalidInput(f"At most {MAX_UPLOAD_FILES} files per upload.")
    uploads = [(upload.filename or "", await upload.read()) for upload in files]
    return await _submit(services, extract_uploads(uploads))


@router.post("/ingest", status_code=202, response_model=JobQueued)
async def ingest_docs_dir(services: ServicesDep, settings: SettingsDep, _: AdminKey) -> JobQueued:
    """Legacy trigger: queue ingestion of DOCS_DIR."""
    documents = load_directory(settings.docs_dir)
    if not documents:
        raise InvalidInput("DOCS_DIR holds no .md, .mdx or .txt files.")
    return await _submit(services, documents)


@router.get("/api/ingest/jobs/{job_id}")
async def ingest_job(job_id: str, services: ServicesDep, _: AdminKey) -> dict[str, Any]:
    """One job's status and progress."""
    return job_view(await get_job(sessions=services.sessions, job_id=job_id))


@router.get("/api/ingest/jobs")
async def ingest_jobs(services: ServicesDep, _: AdminKey, limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    """The newest jobs first."""
    return {"jobs": [job_view(job) for job in await list_jobs(sessions=services.sessions, limit=limit)]}


@router.get("/api/documents")
async def documents(
    services: ServicesDep,
    store: VectorStoreDep,
    _: AdminKey,
    verify: bool = Query(False, description="Also count the chunks in the vector store (chunks_in_store)."),
) -> dict[str, Any]:
    """Every ingested document; `?verify=true` adds the vector store's own chunk count."""
    items = await list_documents(sessions=services.sessions)
    body: dict[str, Any] = {"documents": items, "total": len(items)}
    if verify:
        body["chunks_in_store"] = await store.count()
    return body


@router.delete("/api/documents/{source:path}")
async def remove_document(source: str, services: ServicesDep, store: VectorStoreDep, _: AdminKey) -> dict[str, Any]:
    """Delete a document and all its chunks."""
    chunks = await delete_document(sessions=services.sessions, store=store, source=source)
    return {"deleted": source, "chunks": chunks}
