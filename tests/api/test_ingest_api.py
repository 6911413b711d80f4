"""Ingestion routes in process: admin key, validation, uploads (types, traversal, zip bombs), envelopes."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from arq.jobs import Job, JobStatus

from api.main import create_app
from shared.platform.constants import QUEUE_NAME
from shared.stores.db.migrate import upgrade
from tests.worker.harness import ingest_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = {"X-API-Key": "admin-key-for-tests-1234"}
SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "sample"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app (no worker: jobs stay queued) with an admin key configured."""
    settings = ingest_settings(admin_api_key=ADMIN["X-API-Key"])
    await asyncio.to_thread(upgrade, settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50001))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["detail"], str)
    assert body["message"] == body["detail"]
    assert body["request_id"]
    if code is not None:
        assert body["code"] == code
    return body


async def test_admin_key_is_required(client: httpx.AsyncClient) -> None:
    """Missing or wrong X-API-Key: 401 on every admin endpoint."""
    doc = {"documents": [{"source": "a.md", "content": "x"}]}
    for headers in ({}, {"X-API-Key": "nope"}):
        _assert_envelope(await client.post("/api/ingest", json=doc, headers=headers), 401, "invalid_api_key")
        _assert_envelope(await client.get("/api/ingest/jobs", headers=headers), 401)
        _assert_envelope(await client.get("/api/documents", headers=headers), 401)
        _assert_envelope(await client.delete("/api/documents/a.md", headers=headers), 401)
        _assert_envelope(await client.post("/ingest", headers=headers), 401)


async def test_submit_returns_202_and_enqueues_under_the_job_id(client: httpx.AsyncClient) -> None:
    """POST /api/ingest answers 202 at once and the arq job id is the ingest job id."""
    response = await client.post(
        "/api/ingest",
        json={"documents": [{"source": "notes/a.md", "content": "# A\n\nText.", "title": "A", "metadata": {"k": 1}}]},
        headers=ADMIN,
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["documents"] == 1
    job = await client.get(f"/api/ingest/jobs/{body['job_id']}", headers=ADMIN)
    assert job.json()["status"] == "queued"
    assert job.json()["documents_total"] == 1
    redis = client.app.state.services.redis  # type: ignore[attr-defined]
    assert await Job(body["job_id"], redis, _queue_name=QUEUE_NAME).status() == JobStatus.queued


@pytest.mark.parametrize(
    "source",
    ["../etc/passwd.md", "/abs/path.md", "a/../../b.md", "a/./b.md", "C:/win.md", "bad\x00name.md", "x" * 600],
)
async def test_unsafe_sources_are_rejected(client: httpx.AsyncClient, source: str) -> None:
    """Absolute paths, '..' or '.' segments, control characters and huge names: 422."""
    response = await client.post(
        "/api/ingest", json={"documents": [{"source": source, "content": "text"}]}, headers=ADMIN
    )
    _assert_envelope(response, 422)


async def test_document_count_and_duplicates_are_validated(client: httpx.AsyncClient) -> None:
    """More than 500 documents, an empty list, duplicate sources or empty content: 422."""
    too_many = [{"source": f"d{i}.md", "content": "x"} for i in range(501)]
    _assert_envelope(await client.post("/api/ingest", json={"documents": too_many}, headers=ADMIN), 422)
    _assert_envelope(await client.post("/api/ingest", json={"documents": []}, headers=ADMIN), 422)
    dupes = [{"source": "same.md", "content": "a"}, {"source": "same.md", "content": "b"}]
    _assert_envelope(await client.post("/api/ingest", json={"documents": dupes}, headers=ADMIN), 422)
    empty = [{"source": "e.md", "content": ""}]
    _assert_envelope(await client.post("/api/ingest", json={"documents": empty}, headers=ADMIN), 422)


async def test_upload_markdown_files(client: httpx.AsyncClient) -> None:
    """Several .md/.mdx/.txt files in one multipart request become one job."""
    files = [
        ("files", ("one.md", b"# One\n\nText.", "text/markdown")),
        ("files", ("two.mdx", b"# Two\n\nText.", "text/markdown")),
        ("files", ("three.txt", b"Plain text.", "text/plain")),
    ]
    response = await client.post("/api/ingest/files", files=files, headers=ADMIN)
    assert response.status_code == 202, response.text
    assert response.json()["documents"] == 3


async def test_upload_zip(client: httpx.AsyncClient) -> None:
    """One .zip of markdown files becomes one job with paths kept as sources."""
    data = _zip({"book/ch1.md": b"# Ch1\n\nA.", "book/ch2.md": b"# Ch2\n\nB.", "book/": b""})
    response = await client.post(
        "/api/ingest/files", files=[("files", ("book.zip", data, "application/zip"))], headers=ADMIN
    )
    assert response.status_code == 202, response.text
    assert response.json()["documents"] == 2


async def test_upload_rejects_other_types_and_traversal(client: httpx.AsyncClient) -> None:
    """Executables, zip entries escaping the root, bad zips and zip+md mixes get clear 4xx errors."""
    exe = [("files", ("tool.exe", b"MZ\x90\x00", "application/octet-stream"))]
    _assert_envelope(await client.post("/api/ingest/files", files=exe, headers=ADMIN), 400, "unsupported_file_type")
    evil = _zip({"../../etc/cron.d/x.md": b"# x"})
    response = await client.post(
        "/api/ingest/files", files=[("files", ("evil.zip", evil, "application/zip"))], headers=ADMIN
    )
    _assert_envelope(response, 422)
    inner_exe = _zip({"ok.md": b"# ok", "bin/run.sh": b"echo"})
    response = await client.post(
        "/api/ingest/files", files=[("files", ("x.zip", inner_exe, "application/zip"))], headers=ADMIN
    )
    _assert_envelope(response, 400, "unsupported_file_type")
    broken = [("files", ("broken.zip", b"PK\x03\x04 not really", "application/zip"))]
    _assert_envelope(await client.post("/api/ingest/files", files=broken, headers=ADMIN), 400, "invalid_zip")
    mixed = [("files", ("a.zip", _zip({"a.md": b"a"}), "application/zip")), ("files", ("b.md", b"b", "text/markdown"))]
    _assert_envelope(await client.post("/api/ingest/files", files=mixed, headers=ADMIN), 400, "unsupported_upload")
    traversal_name = [("files", ("../up.md", b"# up", "text/markdown"))]
    _assert_envelope(await client.post("/api/ingest/files", files=traversal_name, headers=ADMIN), 422)


async def test_zip_bombs_are_refused(client: httpx.AsyncClient) -> None:
    """A zip expanding past the size limit, or holding too many files, is refused with 413."""
    bomb = _zip({"huge.md": b"a" * (60 * 1024 * 1024)})
    assert len(bomb) < 1024 * 1024  # tiny on the wire
    response = await client.post(
        "/api/ingest/files", files=[("files", ("bomb.zip", bomb, "application/zip"))], headers=ADMIN
    )
    _assert_envelope(response, 413, "payload_too_large")
    many = _zip({f"f{i}.md": b"x" for i in range(501)})
    response = await client.post(
        "/api/ingest/files", files=[("files", ("many.zip", many, "application/zip"))], headers=ADMIN
    )
    _assert_envelope(response, 413, "payload_too_large")


async def test_unknown_job_and_document_are_404(client: httpx.AsyncClient) -> None:
    """Unknown job ids and document sources answer 404 in the envelope; bad limits 422."""
    _assert_envelope(await client.get("/api/ingest/jobs/does-not-exist", headers=ADMIN), 404, "not_found")
    _assert_envelope(await client.delete("/api/documents/nope/never.md", headers=ADMIN), 404, "not_found")
    _assert_envelope(await client.get("/api/ingest/jobs?limit=0", headers=ADMIN), 422)


async def test_legacy_ingest_queues_docs_dir(client: httpx.AsyncClient) -> None:
    """POST /ingest (no body) queues every sample page of DOCS_DIR and answers 202 with the job."""
    response = await client.post("/ingest", headers=ADMIN)
    assert response.status_code == 202
    assert response.json()["documents"] == len(list(SAMPLE.rglob("*.md")))


async def test_admin_endpoints_open_in_development_without_key() -> None:
    """With no ADMIN_API_KEY in development the admin endpoints need no key."""
    settings = ingest_settings()
    await asyncio.to_thread(upgrade, settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50002))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get("/api/documents")
            assert response.status_code == 200
            assert response.json() == {"documents": [], "total": 0}
