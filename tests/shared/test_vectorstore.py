"""The vector store adapters: the async (server-mode) code path, the embedded-mode Redis RPC, and the
embedded Qdrant Edge store's answers on the real textbook (ids, order and scores equal to qdrant-client's
Query API over the same points: dense, BM25 with IDF, and RRF).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

from shared.platform.clients import Services, create_redis
from shared.platform.config import Settings
from shared.platform.constants import DENSE_VECTOR, SPARSE_VECTOR
from shared.stores.sparse import encode_document, encode_query
from shared.stores.vectorstore import (
    RPC_REPLY_PREFIX,
    RPC_REQUESTS_KEY,
    RPC_SERVER_KEY,
    ChunkPoint,
    EdgeVectorStore,
    QdrantVectorStore,
    RemoteVectorStore,
    ScoredChunk,
    VectorStoreRpcServer,
    point_id,
)
from shared.stores.vectorstore.edge import build_edge_store
from shared.stores.vectorstore.protocol import CANDIDATES_PER_LEG
from shared.stores.vectorstore.remote import _decode_args, _encode_args
from tests.fakes.openai_server import fake_embedding
from tests.utils.chat_corpus import chat_settings, indexed_store
from tests.worker.harness import ingest_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

DIMS = 32
#: EMBEDDING_DIMENSIONS applies online (offline the bundled local model sets the size); never called.
ONLINE_KEY = "sk-unused"
TEXTS = {
    "robots/arm.md": ["Robot arms use servo motors in each joint.", "Inverse kinematics finds joint angles."],
    "robots/legs.md": ["Legged robots balance with a zero moment point controller."],
}


def _points(source: str, texts: list[str], dims: int = DIMS) -> list[ChunkPoint]:
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
            dense=fake_embedding(text, dims),
        )
        for i, text in enumerate(texts)
    ]


async def _exercise(store: QdrantVectorStore | EdgeVectorStore | RemoteVectorStore) -> None:
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
    """An embedded (Edge) store served over a scratch Redis db, and a client of it."""
    settings = ingest_settings(openai_api_key=ONLINE_KEY, embedding_dimensions=DIMS)
    redis = await create_redis(settings)
    local = EdgeVectorStore(settings, path=tmp_path / "q")
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
    remote, _, _ = rpc
    await _exercise(remote)


async def test_rpc_errors_and_stale_requests(rpc: tuple[RemoteVectorStore, VectorStoreRpcServer, Settings]) -> None:
    """Caller errors come back as ValueError; requests past their deadline are dropped; no server -> fast error."""
    remote, server, settings = rpc
    await remote.ensure_collection()
    with pytest.raises(ValueError, match="UUID"):
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
    """The embedded store, recording the size of each `query_many` batch."""

    def __init__(self, store: EdgeVectorStore) -> None:
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
    assert isinstance(local, EdgeVectorStore)
    await remote.ensure_collection()
    for source, texts in TEXTS.items():
        await remote.replace_source(source, _points(source, texts))
    questions = ["legged robots balance", "servo motors in joints", "inverse kinematics", "zero moment point"] * 8
    counting = _CountingStore(local)
    server.store = counting  # type: ignore[assignment]
    try:
        bad = remote.query(dense=[0.1] * (DIMS + 1), sparse=encode_query("robots"), limit=2)
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


async def test_rpc_carries_the_embedding_exactly() -> None:
    """The embedded-mode RPC packs the query embedding as float64 bytes: every value comes back bit for bit."""
    dense = [*fake_embedding("What is the zero moment point?", 1536), 1e-300, -0.0, 0.1 + 0.2]
    wire = json.dumps(_encode_args("query", {"dense": dense, "sparse": encode_query("zmp"), "limit": 3}))
    assert "dense_f64" in wire
    decoded = _decode_args(json.loads(wire))
    assert decoded["dense"] == dense
    assert all(type(x) is float for x in decoded["dense"])
    assert _decode_args(json.loads(json.dumps(_encode_args("query", {"dense": None}))))["dense"] is None


# -- the embedded store on the real textbook -------------------------------------------------------

QUESTIONS = [
    "How do ROS 2 nodes communicate using topics?",
    "What is domain randomization in sim-to-real transfer?",
    "zero moment point",
    "inverse kinematics for a humanoid arm",
    "NVIDIA Isaac Sim",
    "How do I spawn a robot in Gazebo with URDF?",
    "robot",
    "ROS",
    "sensor",
    "bipedal locomotion balance control",
    "LiDAR camera IMU sensor fusion",
    "chocolate cake recipe with strawberries",
    "stock market prices in 2024",
    "quantum chromodynamics gluon",
    "What is Physical AI and embodied intelligence?",
]

Hits = list[tuple[str, float]]
#: Relative (BM25 scores reach ~20) and absolute tolerance between the two engines' float32 scores.
TOL = 1e-6


@dataclass
class Book:
    """The indexed textbook: the worker-role services, their embedded store, its settings, and the same
    points in qdrant-client's in-memory Qdrant (the reference answers)."""

    settings: Settings
    services: Services
    store: EdgeVectorStore
    sources: list[str]
    reference: QdrantClient


@pytest.fixture(scope="module")
async def book(fake_openai: Any) -> AsyncIterator[Book]:
    """The textbook ingested in-process into the embedded store (the worker's kind), embedded by the fake
    server, and copied point for point into qdrant-client's in-memory Qdrant."""
    fake_openai.reset()
    settings = chat_settings(openai_base_url=fake_openai.url)
    services, chunks = await indexed_store(settings)
    assert chunks > 100
    store = services.vectorstore
    assert isinstance(store, EdgeVectorStore)
    points = await store.export()
    assert len(points) == chunks
    reference = QdrantClient(location=":memory:")
    _copy_into(reference, store.collection, points, dims=settings.embedding_dimensions)
    sources = sorted({str(p.payload["source"]) for p in points})
    yield Book(settings=settings, services=services, store=store, sources=sources, reference=reference)
    reference.close()
    await services.aclose()


def _copy_into(client: QdrantClient, collection: str, points: list[ChunkPoint], *, dims: int) -> None:
    client.create_collection(
        collection_name=collection,
        vectors_config={DENSE_VECTOR: models.VectorParams(size=dims, distance=models.Distance.COSINE)},
        sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    structs = []
    for point in points:
        named: dict[str, Any] = {SPARSE_VECTOR: models.SparseVector(**point.sparse.as_dict())}
        if point.dense is not None:
            named[DENSE_VECTOR] = point.dense
        structs.append(models.PointStruct(id=point.id, vector=named, payload=point.payload))
    client.upsert(collection_name=collection, points=structs)


async def _resync_reference(book: Book) -> None:
    """After writes to the store, the reference holds the same points again."""
    book.reference.delete_collection(book.store.collection)
    _copy_into(
        book.reference, book.store.collection, await book.store.export(), dims=book.settings.embedding_dimensions
    )


def _filter(sources: list[str] | None) -> models.Filter | None:
    if not sources:
        return None
    return models.Filter(must=[models.FieldCondition(key="source", match=models.MatchAny(any=sources))])


def _reference(
    local: QdrantClient,
    collection: str,
    *,
    dense: list[float] | None,
    sparse: models.SparseVector | None,
    limit: int,
    sources: list[str] | None,
    dense_threshold: float | None,
) -> dict[str, Hits]:
    """Qdrant's own answers, one `query_points` call each: the raw dense and BM25 candidate lists."""
    flt = _filter(sources)
    candidates = max(limit, CANDIDATES_PER_LEG)
    legs: dict[str, models.Prefetch] = {}
    if dense is not None:
        legs["dense"] = models.Prefetch(
            query=dense, using=DENSE_VECTOR, limit=candidates, filter=flt, score_threshold=dense_threshold
        )
    if sparse is not None:
        legs["sparse"] = models.Prefetch(query=sparse, using=SPARSE_VECTOR, limit=candidates, filter=flt)
    out: dict[str, Hits] = {}
    for name, leg in legs.items():
        points = local.query_points(
            collection_name=collection,
            query=leg.query,
            using=leg.using,
            limit=candidates,
            query_filter=flt,
            score_threshold=leg.score_threshold,
            with_payload=False,
        ).points
        out[name] = [(str(p.id), p.score) for p in points]
    return out


def _hits(hits: list[ScoredChunk]) -> Hits:
    return [(h.id, h.score) for h in hits]


def _assert_same(actual: Hits, expected: Hits, what: str) -> None:
    """The same scores in the same order, up to TOL (the two engines add float32 products in different
    orders, so a score may differ in its 7th digit), and the same hits except for hits swapped with one of
    equal score: RRF gives equal ranks equal scores, and such ties are broken either way (also at a
    list's cut, and from one call to the next in Qdrant Edge)."""
    assert len(actual) == len(expected), what
    for (_, a), (_, e) in zip(actual, expected, strict=True):
        assert a == pytest.approx(e, rel=TOL, abs=TOL), (what, a, e)
    only_actual = sorted(s for i, s in actual if i not in {j for j, _ in expected})
    only_expected = sorted(s for i, s in expected if i not in {j for j, _ in actual})
    assert len(only_actual) == len(only_expected), what
    for a, e in zip(only_actual, only_expected, strict=True):
        assert a == pytest.approx(e, rel=TOL, abs=TOL), (what, "a different hit that ties with none", a, e)


def _scored(hits: list[ScoredChunk]) -> list[models.ScoredPoint]:
    return [models.ScoredPoint(id=h.id, version=0, score=h.score) for h in hits]


def _approx(value: float | None) -> Any:
    return None if value is None else pytest.approx(value, rel=TOL, abs=TOL)


def _assert_same_chunks(actual: list[ScoredChunk], expected: list[ScoredChunk], what: str) -> None:
    """Two answers of the store agree: hits, order and scores (see `_assert_same`), raw scores and payloads."""
    _assert_same(_hits(actual), _hits(expected), what)
    by_id = {h.id: h for h in expected}
    for hit in actual:
        other = by_id[hit.id]
        assert hit.dense_score == _approx(other.dense_score), what
        assert hit.sparse_score == _approx(other.sparse_score), what
        assert hit.payload == other.payload, what


async def _compare(
    book: Book, question: str, *, sources: list[str] | None, limit: int = 5, dense_threshold: float | None = None
) -> int:
    """The store's hybrid, BM25-only and dense-only answers equal Qdrant's own (ids, order, scores), with
    each hit's raw dense and BM25 scores and its payload; returns the hybrid hit count."""
    store = book.store
    dense = fake_embedding(question, book.settings.embedding_dimensions)
    sparse = encode_query(question)
    q_sparse = models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)) if sparse else None
    reference = _reference(
        book.reference,
        store.collection,
        dense=dense,
        sparse=q_sparse,
        limit=limit,
        sources=sources,
        dense_threshold=dense_threshold,
    )
    what = f"{question!r} sources={sources} threshold={dense_threshold}"
    kwargs: dict[str, Any] = {"limit": limit, "sources": sources, "dense_score_threshold": dense_threshold}
    dense_only = await store.query(dense=dense, sparse=None, **kwargs)
    _assert_same(_hits(dense_only), reference["dense"][:limit], what + " dense-only")
    assert all(h.dense_score == h.score and h.sparse_score is None and h.content for h in dense_only)
    if q_sparse is None:
        assert await store.query(dense=None, sparse=sparse, **kwargs) == []
        return len(await store.query(dense=dense, sparse=sparse, **kwargs))

    # Each leg at the depth a hybrid query fuses (ties at its cut broken either way), then the fusion:
    # Qdrant's RRF (qdrant-client's own function) over exactly those legs.
    depth = {**kwargs, "limit": max(limit, CANDIDATES_PER_LEG)}
    dense_leg = await store.query(dense=dense, sparse=None, **depth)
    sparse_leg = await store.query(dense=None, sparse=sparse, **depth)
    _assert_same(_hits(dense_leg), reference["dense"], what + " dense leg")
    _assert_same(_hits(sparse_leg), reference["sparse"], what + " BM25 leg")
    fused = reciprocal_rank_fusion([_scored(dense_leg), _scored(sparse_leg)], limit=limit)
    hybrid = await store.query(dense=dense, sparse=sparse, **kwargs)
    _assert_same(_hits(hybrid), [(str(p.id), p.score) for p in fused], what + " hybrid")
    dense_raw, sparse_raw = dict(_hits(dense_leg)), dict(_hits(sparse_leg))
    for hit in hybrid:
        assert hit.id in dense_raw or hit.id in sparse_raw
        assert hit.dense_score == _approx(dense_raw.get(hit.id)), what
        assert hit.sparse_score == _approx(sparse_raw.get(hit.id)), what
        assert hit.content, "payloads come back with the fused hits"
        if sources:
            assert hit.source in sources

    sparse_only = await store.query(dense=None, sparse=sparse, **kwargs)
    _assert_same(_hits(sparse_only), reference["sparse"][:limit], what + " sparse-only")
    assert all(h.sparse_score == h.score and h.dense_score is None and h.content for h in sparse_only)
    return len(hybrid)


async def test_book_queries_match_qdrant(book: Book) -> None:
    """15 questions (in-book and off-topic) on the real book, with and without a `sources` filter and a
    dense score threshold: hybrid, BM25-only and dense-only answers are Qdrant's own, RRF included."""
    found = 0
    for question in QUESTIONS:
        found += await _compare(book, question, sources=None)
        await _compare(book, question, sources=None, limit=20)
    assert found > 0
    chapters = book.sources[:2]
    for question in QUESTIONS[:8]:
        await _compare(book, question, sources=chapters)
        await _compare(book, question, sources=None, dense_threshold=0.05)
    await _compare(book, "robot", sources=["no/such/source.md"])
    await _compare(book, "the of and", sources=None)


async def test_book_query_many_matches_query(book: Book) -> None:
    """A burst answered in one trip to the store thread equals one `query` each; a malformed one fails alone."""
    dims = book.settings.embedding_dimensions
    requests: list[dict[str, Any]] = [
        {"dense": fake_embedding(q, dims), "sparse": encode_query(q), "limit": 8} for q in QUESTIONS[:6]
    ]
    requests.insert(2, {"dense": [0.1] * (dims + 1), "sparse": encode_query("robot"), "limit": 3})
    requests.append({"dense": None, "sparse": encode_query("the of and"), "limit": 3})
    answers = await book.store.query_many(requests)
    assert isinstance(answers[2], ValueError)
    assert answers[-1] == []
    for request, answer in zip(requests, answers, strict=True):
        if not isinstance(answer, Exception):
            _assert_same_chunks(answer, await book.store.query(**request), str(request["sparse"]))


async def test_book_queries_follow_writes(book: Book) -> None:
    """Upsert, changed source, replace (shrink), delete and re-add: the answers follow, still Qdrant's own."""
    store, dims, source = book.store, book.settings.embedding_dimensions, "scratch/zebra.md"
    texts = ["A zebra gripper holds torque sensors.", "Zebra robots walk.", "ROS 2 topics carry zebra messages."]
    await store.replace_source(source, _points(source, texts, dims))
    hits = await store.query(dense=None, sparse=encode_query("zebra gripper"), limit=3)
    assert hits[0].source == source
    await _resync_reference(book)
    await _compare(book, "zebra gripper torque", sources=None)

    changed = ["A zebra gripper with new torque sensors and a camera.", "Zebra robots walk and run."]
    await store.replace_source(source, _points(source, changed, dims))
    assert await store.count(source) == 2
    await _resync_reference(book)
    await _compare(book, "zebra gripper camera", sources=None)
    await _compare(book, "zebra", sources=[source, book.sources[0]])

    assert await store.delete_source(source) == 2
    assert await store.query(dense=None, sparse=encode_query("zebra"), limit=5) == []
    await store.upsert(_points(source, ["Zebra again.", "Zebra twice.", "Zebra thrice.", "Four."], dims))
    await _resync_reference(book)
    await _compare(book, "zebra again", sources=None)
    assert await store.delete_source(source) == 4
    await _resync_reference(book)
    await _compare(book, "robot", sources=None)


async def test_book_reopened_answers_the_same(book: Book) -> None:
    """After a restart (the shard reloads from disk and its write-ahead log) the store gives the same answers."""
    dims = book.settings.embedding_dimensions
    requests: list[dict[str, Any]] = [
        {"dense": fake_embedding(q, dims), "sparse": encode_query(q), "limit": 10} for q in QUESTIONS[:6]
    ]
    before = [await book.store.query(**request) for request in requests]
    await book.store.close()
    await asyncio.sleep(0)
    reopened = build_edge_store(book.settings)
    book.services.vectorstore = reopened
    book.store = reopened
    for request, answer in zip(requests, before, strict=True):
        _assert_same_chunks(await reopened.query(**request), answer, str(request["sparse"]))
    for question in QUESTIONS[:5]:
        await _compare(book, question, sources=None)
