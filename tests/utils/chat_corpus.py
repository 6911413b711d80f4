"""The real textbook corpus indexed into a real local-mode Qdrant, for the chat tests and benchmarks.

Chunks with `shared.chunking`, embeds with the process's `Embedder` (the fake OpenAI server's
deterministic vectors), encodes BM25 with `shared.sparse` and writes through `QdrantVectorStore`:
the same pieces the ingestion worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from api.main import create_app
from shared.chunking import chunk_markdown
from shared.clients import Services, build_services
from shared.config import Settings
from shared.constants import ROLE_WORKER
from shared.db.migrate import upgrade
from shared.sparse import encode_document
from shared.vectorstore import ChunkPoint, VectorStore, point_id

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus" / "physical-ai-textbook"


def corpus_files() -> list[Path]:
    """Every markdown file of the textbook."""
    return sorted(CORPUS.rglob("*.md"))


async def index_corpus(services: Services, *, root: Path = CORPUS) -> int:
    """Chunk, embed and upsert the corpus into `services.vectorstore`; returns the number of chunks."""
    store = services.vectorstore
    assert store is not None
    settings = services.settings
    total = 0
    for path in sorted(root.rglob("*.md")):
        source = path.relative_to(root).as_posix()
        doc = chunk_markdown(
            path.read_text(encoding="utf-8"),
            source=source,
            site_url=settings.site_url,
            chunk_size=settings.chunk_size,
            overlap=settings.chunk_overlap,
        )
        texts = [c.embed_text for c in doc.chunks]
        dense = await services.embedder.embed_texts(texts) if services.embedder is not None else None
        points = [
            ChunkPoint(
                id=point_id(source, chunk.chunk_index),
                payload=chunk.payload(),
                sparse=encode_document(chunk.embed_text),
                dense=dense[i] if dense is not None else None,
            )
            for i, chunk in enumerate(doc.chunks)
        ]
        await store.replace_source(source, points)
        total += len(points)
    return total


async def indexed_store(settings: Settings) -> tuple[Services, int]:
    """Worker-role services (they own the local Qdrant folder) with the corpus indexed."""
    services = await build_services(settings, role=ROLE_WORKER)
    chunks = await index_corpus(services)
    return services, chunks


@asynccontextmanager
async def chat_app(
    settings: Settings, store: VectorStore, *, client_kwargs: dict[str, Any] | None = None
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
                services.resilience.reset()
