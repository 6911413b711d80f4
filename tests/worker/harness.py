"""In-process ingestion environment: the real API app and a real arq worker in one event loop.

The worker (built by `worker.settings.build_worker`) owns the embedded Qdrant (Edge) folder and serves it over
Redis; the API app reaches it through the same RPC as in production's embedded mode. Redis is the
machine's (a scratch db), the database SQLite in a temp DATA_DIR or a fresh PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync
from arq.worker import Worker
from fastapi import FastAPI

from api.main import create_app
from shared.platform.clients import Services
from shared.platform.config import Settings
from shared.stores.db.migrate import upgrade
from shared.stores.vectorstore import EdgeVectorStore
from tests.conftest import REDIS_TEST_URL
from tests.utils.corpus import corpus_dir
from worker.settings import build_worker

CORPUS = corpus_dir()


def corpus_documents() -> list[dict[str, str]]:
    """The real textbook as API documents (source = path relative to the corpus root)."""
    return [
        {"source": p.relative_to(CORPUS).as_posix(), "content": p.read_text(encoding="utf-8")}
        for p in sorted(CORPUS.rglob("*.md"))
    ]


def ingest_settings(*, database_url: str | None = None, **overrides: Any) -> Settings:
    """Settings on a scratch Redis db and a temp DATA_DIR (SQLite unless `database_url`)."""
    db = 1 + (uuid.uuid4().int % 15)
    redis_url = f"{REDIS_TEST_URL}/{db}"
    client = redis_sync.Redis.from_url(redis_url, socket_connect_timeout=2)
    client.flushdb()
    client.close()
    values: dict[str, Any] = {
        "data_dir": Path(tempfile.mkdtemp(prefix="lectern-ingest-")),
        "redis_url": redis_url,
        "log_format": "console",
        "log_level": "WARNING",
        "auto_ingest": False,
    }
    if database_url:
        values["database_url"] = database_url
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class IngestEnv:
    """A running API app + worker."""

    settings: Settings
    app: FastAPI
    client: httpx.AsyncClient
    worker: Worker

    @property
    def worker_services(self) -> Services:
        """The worker's clients (its store is the embedded store's owner)."""
        services: Services = self.worker.ctx["services"]
        return services

    @property
    def store(self) -> EdgeVectorStore:
        """The worker's embedded store (direct access, for assertions)."""
        store = self.worker_services.vectorstore
        assert isinstance(store, EdgeVectorStore)
        return store

    def storage_state(self) -> list[tuple[str, int, int]]:
        """(path, size, mtime) of every file of the embedded shard (write-ahead log, segments): any write
        changes one."""
        folder = self.store.path
        return sorted(
            (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")
            if p.is_file()
        )

    async def submit(self, documents: list[dict[str, Any]]) -> str:
        """POST /api/ingest and return the job id."""
        response = await self.client.post("/api/ingest", json={"documents": documents})
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    async def wait_job(self, job_id: str, *, timeout: float = 120.0) -> dict[str, Any]:
        """Poll the job until it is succeeded or failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = await self.client.get(f"/api/ingest/jobs/{job_id}")
            body: dict[str, Any] = response.json()
            if body["status"] in ("succeeded", "failed"):
                return body
            await asyncio.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not finish: {body}")

    async def ingest(self, documents: list[dict[str, Any]], *, timeout: float = 120.0) -> dict[str, Any]:
        """Submit and wait."""
        return await self.wait_job(await self.submit(documents), timeout=timeout)

    async def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Every point: id -> (payload, dense, sparse) straight from the embedded store."""
        return {
            point.id: (
                dict(point.payload),
                tuple(round(x, 6) for x in point.dense) if point.dense is not None else None,
                (tuple(point.sparse.indices), tuple(round(v, 6) for v in point.sparse.values))
                if point.sparse.indices
                else None,
            )
            for point in await self.store.export()
        }


@asynccontextmanager
async def ingest_env(settings: Settings) -> AsyncIterator[IngestEnv]:
    """Migrate, start the worker (startup hooks included) and the app; stop both afterwards."""
    await asyncio.to_thread(upgrade, settings)
    worker = build_worker(settings, handle_signals=False, poll_delay=0.05)
    main = asyncio.create_task(worker.main())
    deadline = time.monotonic() + 30
    while "ingest_reconciler" not in worker.ctx:  # set at the end of the startup duties
        if main.done():
            main.result()  # surface the startup error
        if time.monotonic() > deadline:
            raise TimeoutError("worker did not start")
        await asyncio.sleep(0.02)
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
                yield IngestEnv(settings=settings, app=app, client=client, worker=worker)
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await main
        await worker.close()
