"""The vector store adapter: the async (server-mode) code path, and the embedded-mode Redis RPC."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from qdrant_client import AsyncQdrantClient, QdrantClient

from shared.clients import create_redis
from shared.config import Settings
from shared.sparse import encode_document, encode_query
from shared.vectorstore import (
    RPC_REPLY_PREFIX,
    RPC_REQUESTS_KEY,
    RPC_SERVER_KEY,
    ChunkPoint,
    QdrantVectorStore,
    RemoteVectorStore,
    VectorStoreRpcServer,
    point_id,
)
from tests.fakes.openai_server import fake_embedding
from tests.worker.harness import ingest_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

DIMS = 32
#: EMBEDDING_DIMENSIONS applies online (offline the bundled local model sets the size); never called.
ONLINE_KEY = "sk-unused"
TEXTS = {
    "robots/arm.md": ["Robot arms use servo motors in each joint.", "Inverse kinematics finds joint angles."],
    "robots/legs.md": ["Legged robots balance with a zero moment point controller."],
}


def _points(source: str, texts: list[str]) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            id=point_id(source, i),
            payload={
                "source": source,
                "title": "Robots",
                "heading": "H",
                "heading_path": ["Robots", "H"],
                "chunk_index": i,
                "url": f"https://x/docs/{source}",
                "content": text,
                "content_hash": f"h{i}-{len(text)}",
            },
            sparse=encode_document(text),
            dense=fake_embedding(text, DIMS),
        )
        for i, text in enumerate(texts)
    ]


async def _exercise(store: QdrantVectorStore | RemoteVectorStore) -> None:
    await store.ensure_collection()
    for source, texts in TEXTS.items():
        assert await store.replace_source(source, _points(source, texts)) == len(texts)
    assert await store.count() == 3
    question = "Which controller helps legged robots balance?"
    hits = await store.query(dense=fake_embedding(question, DIMS), sparse=encode_query(question), limit=2)
    assert hits[0].source == "robots/legs.md"
    assert hits[0].dense_score is not None
    assert hits[0].sparse_score is not None
    assert hits[0].heading_path == ["Robots", "H"]
    sparse_only = await store.query(dense=None, sparse=encode_query("inverse kinematics"), limit=5)
    assert [h.chunk_index for h in sparse_only][:1] == [1]
    assert await store.query(dense=None, sparse=encode_query("the of and"), limit=5) == []
    filtered = await store.query(dense=None, sparse=encode_query("robots"), limit=5, sources=["robots/arm.md"])
    assert {h.source for h in filtered} == {"robots/arm.md"}
    # Shrinking a source leaves no stale chunk.
    assert await store.replace_source("robots/arm.md", _points("robots/arm.md", TEXTS["robots/arm.md"][:1])) == 1
    assert await store.chunk_hashes("robots/arm.md") == {0: "h0-42"}
    assert await store.delete_source("robots/legs.md") == 1
    assert await store.count("robots/legs.md") == 0
    assert (await store.health())["status"] == "up"


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect")
async def test_async_client_code_path() -> None:
    """The server-mode (AsyncQdrantClient) path: hybrid query, replace, delete, counts."""
    settings = Settings(
        _env_file=None,
        openai_api_key=ONLINE_KEY,
        embedding_dimensions=DIMS,
        qdrant_collection="t-" + uuid.uuid4().hex[:6],
    )
    store = QdrantVectorStore(settings, client=AsyncQdrantClient(location=":memory:"))
    try:
        await _exercise(store)
    finally:
        await store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def rpc(tmp_path: Path) -> AsyncIterator[tuple[RemoteVectorStore, VectorStoreRpcServer, Settings]]:
    """A local-mode store served over a scratch Redis db, and a client of it."""
    settings = ingest_settings(openai_api_key=ONLINE_KEY, embedding_dimensions=DIMS)
    redis = await create_redis(settings)
    local = QdrantVectorStore(settings, local_client=QdrantClient(path=str(tmp_path / "q")))
    server = VectorStoreRpcServer(local, redis=redis)
    await server.start()
    try:
        yield RemoteVectorStore(settings, redis=redis), server, settings
    finally:
        await server.stop()
        await local.close()
        await redis.flushdb()
        await redis.aclose()  # type: ignore[attr-defined]


async def test_rpc_store_behaves_like_the_local_store(
    rpc: tuple[RemoteVectorStore, VectorStoreRpcServer, Settings],
) -> None:
    """Every store method works the same through the Redis RPC."""
    remote, server, _ = rpc
    await _exercise(remote)
    assert server.served >= 10


async def test_rpc_errors_and_stale_requests(rpc: tuple[RemoteVectorStore, VectorStoreRpcServer, Settings]) -> None:
    """Caller errors come back as ValueError; requests past their deadline are dropped; no server -> fast error."""
    remote, server, settings = rpc
    await remote.ensure_collection()
    with pytest.raises(ValueError, match="not a valid UUID"):
        await remote.upsert([ChunkPoint(id="not-a-uuid-or-int", payload={}, sparse=encode_query("wrong id"))])
    reply_key = RPC_REPLY_PREFIX + "stale"
    stale = {"id": "stale", "method": "count", "args": {}, "reply": reply_key, "deadline": time.time() - 1}
    await remote.redis.rpush(RPC_REQUESTS_KEY, json.dumps(stale))
    assert await remote.count() >= 0
    await asyncio.sleep(0.1)
    assert not await remote.redis.exists(reply_key)
    await server.stop()
    assert not await remote.redis.exists(RPC_SERVER_KEY)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        await RemoteVectorStore(settings, redis=remote.redis).count()
    assert time.monotonic() - started < 1
    health = await remote.health()
    assert health["status"] == "down"


class _CountingStore:
    """The local store, recording the size of each `query_many` batch."""

    def __init__(self, store: QdrantVectorStore) -> None:
        self.store = store
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def query_many(self, requests: list[dict[str, object]]) -> list[object]:
        self.batches.append(len(requests))
        return list(await self.store.query_many(requests))


async def test_rpc_answers_a_burst_as_one_batch(
    rpc: tuple[RemoteVectorStore, VectorStoreRpcServer, Settings],
) -> None:
    """Concurrent readers' queries are answered in batches (one store call each) with the exact hits the
    local store gives each of them; a malformed query in the batch fails alone."""
    remote, server, _ = rpc
    local = server.store
    assert isinstance(local, QdrantVectorStore)
    await remote.ensure_collection()
    for source, texts in TEXTS.items():
        await remote.replace_source(source, _points(source, texts))
    questions = ["legged robots balance", "servo motors in joints", "inverse kinematics", "zero moment point"] * 8
    counting = _CountingStore(local)
    server.store = counting  # type: ignore[assignment]
    try:
        bad = remote.query(dense=[float("nan")] * DIMS, sparse=encode_query("robots"), limit=2)
        results = await asyncio.gather(
            bad,
            *(remote.query(dense=fake_embedding(q, DIMS), sparse=encode_query(q), limit=2) for q in questions),
            return_exceptions=True,
        )
    finally:
        server.store = local
    calls = counting.batches
    assert isinstance(results[0], ValueError)
    assert sum(calls) == len(questions) + 1
    assert len(calls) < len(questions), f"batched: {calls}"
    for question, hits in zip(questions, results[1:], strict=True):
        expected = await local.query(dense=fake_embedding(question, DIMS), sparse=encode_query(question), limit=2)
        assert hits == expected, question  # payloads included: rebuilt exactly on the API side
