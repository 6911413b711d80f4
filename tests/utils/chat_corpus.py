"""The real textbook corpus indexed into the real embedded Qdrant (Edge), for the chat tests.

The ingestion service does the work in-process (`submit_ingest` then `run_ingest_job`, what the arq
worker runs), embedding with the fake OpenAI server's deterministic vectors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.main import create_app
from shared.ingestion.inputs import load_directory
from shared.ingestion.jobs import submit_ingest
from shared.ingestion.pipeline import run_ingest_job
from shared.platform.clients import Services, build_services
from shared.platform.config import Settings
from shared.platform.constants import ROLE_WORKER
from shared.stores.db.migrate import upgrade
from shared.stores.vectorstore import VectorStore
from tests.utils.corpus import corpus_dir

REPO = Path(__file__).resolve().parents[2]
CORPUS = corpus_dir()


def corpus_files() -> list[Path]:
    """Every markdown file of the textbook."""
    return sorted(CORPUS.rglob("*.md"))


async def index_corpus(services: Services, *, root: Path = CORPUS) -> int:
    """Ingest the corpus with the ingestion service in-process (submit the job, run it); returns chunks."""
    assert services.vectorstore is not None
    job = await submit_ingest(sessions=services.sessions, redis=services.redis, documents=load_directory(root))
    outcome = await run_ingest_job(
        settings=services.settings,
        sessions=services.sessions,
        store=services.vectorstore,
        embedder=services.embedder,
        job_id=job.id,
    )
    assert outcome.status == "succeeded", outcome
    return await services.vectorstore.count()


async def indexed_store(settings: Settings) -> tuple[Services, int]:
    """Worker-role services (they own the local Qdrant folder) with the corpus indexed."""
    await asyncio.to_thread(upgrade, settings)
    services = await build_services(settings, role=ROLE_WORKER)
    chunks = await index_corpus(services)
    return services, chunks


@asynccontextmanager
async def chat_app(
    settings: Settings, store: VectorStore | None, *, client_kwargs: dict[str, Any] | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """`create_app(settings)` with its lifespan running, reading from `store` (the indexed corpus).

    In-process there is no worker to answer the embedded-mode RPC, so the app is pointed at the
    local store directly; the app's own store is put back before shutdown so `store` stays open.
    """
    await asyncio.to_thread(upgrade, settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        own = services.vectorstore
        services.vectorstore = store
        try:
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50001))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver", timeout=30, **(client_kwargs or {})
            ) as client:
                yield app, client
        finally:
            services.vectorstore = own
            with contextlib.suppress(Exception):
                await services.resilience.reset()


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """Serve an app whose lifespan already runs with uvicorn on a loopback port, in this event loop.

    Real sockets are what let a test see a client disconnect travel all the way to the upstream call.
    """
    import uvicorn

    from tests.fakes.openai_server import free_port

    port = free_port()
    # The production HTTP implementation (h11, as in api/uvicorn_worker.py), whatever else is installed.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", http="h11")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def chat_settings(*, openai_base_url: str | None, offline: bool = False, **overrides: Any) -> Settings:
    """Settings for an in-process chat app: temp DATA_DIR (SQLite), a scratch Redis db, the fake LLM."""
    import tempfile
    import uuid

    from tests.conftest import REDIS_TEST_URL

    values: dict[str, Any] = {
        "data_dir": tempfile.mkdtemp(prefix="lectern-chat-"),
        "redis_url": f"{REDIS_TEST_URL}/{1 + uuid.uuid4().int % 15}",
        "better_auth_secret": "chat-test-secret-" + uuid.uuid4().hex,
        "rate_limit_chat": "100000/minute",
        # Sign-up counters outlive a run in the machine's shared Redis (an hour); the limit is tested apart.
        "rate_limit_sign_up": "100000/hour",
        "log_format": "console",
    }
    if not offline:
        values.update(openai_api_key="sk-test-chat", openai_base_url=openai_base_url)
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def sign_up(client: httpx.AsyncClient, *, proficiency: str = "pro", name: str = "Reader") -> dict[str, str]:
    """Create an account; returns the Authorization header for it."""
    import uuid

    response = await client.post(
        "/api/auth/sign-up",
        json={
            "email": f"reader-{uuid.uuid4().hex[:10]}@example.com",
            "name": name,
            "password": "correct horse battery",
            "proficiency": proficiency,
        },
    )
    assert response.status_code == 200, response.text
    client.cookies.clear()  # the Bearer header is the identity; a cookie jar would make "anonymous" signed in
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture(scope="module")
async def corpus_store(fake_openai: Any) -> AsyncIterator[VectorStore]:
    """An embedded Qdrant holding the whole textbook (embedded by the fake server), per test module."""
    fake_openai.reset()  # an earlier module may have left a fault switched on
    settings = chat_settings(openai_base_url=fake_openai.url)
    services, chunks = await indexed_store(settings)
    assert chunks > 100
    assert services.vectorstore is not None
    yield services.vectorstore
    await services.aclose()


@pytest.fixture(scope="module")
async def offline_corpus_store() -> AsyncIterator[VectorStore]:
    """An embedded Qdrant holding the whole textbook as offline mode indexes it (the bundled local model's
    dense vectors + BM25), per test module."""
    services, chunks = await indexed_store(chat_settings(openai_base_url=None, offline=True))
    assert chunks > 100
    assert services.vectorstore is not None
    yield services.vectorstore
    await services.aclose()


@pytest.fixture(scope="module")
async def app_client(fake_openai: Any, corpus_store: VectorStore) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app (lifespan running) reading the indexed corpus, answered by the fake model."""
    async with chat_app(chat_settings(openai_base_url=fake_openai.url), corpus_store) as pair:
        yield pair


@pytest.fixture
async def client(app_client: tuple[FastAPI, httpx.AsyncClient], fake_openai: Any) -> httpx.AsyncClient:
    """A client of `app_client` with the fake reset and the breakers closed."""
    fake_openai.reset()
    services: Services = app_client[0].state.services
    await services.resilience.reset()
    return app_client[1]
