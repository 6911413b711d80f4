"""The BM25 inverted index answers exactly like Qdrant local mode (ids, order, scores), and stays in sync.

The real textbook is indexed in-process into a real local-mode Qdrant; every comparison runs local
mode's own query (the Query API request a server would get) next to the store's indexed path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from shared.clients import Services
from shared.config import Settings
from shared.constants import DENSE_VECTOR, SPARSE_VECTOR
from shared.sparse import encode_document, encode_query
from shared.sparse_index import SparseIndex
from shared.vectorstore import ChunkPoint, QdrantVectorStore, ScoredChunk, point_id
from shared.vectorstore.qdrant import _Search
from shared.vectorstore.remote import _decode_args, _encode_args
from tests.fakes.openai_server import fake_embedding
from tests.utils.chat_corpus import chat_settings, indexed_store

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOL = 1e-6
QUERIES = [
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


@dataclass
class Corpus:
    """The indexed textbook: the worker-role services, their store and its settings."""

    settings: Settings
    services: Services
    store: QdrantVectorStore
    sources: list[str]


@pytest.fixture(scope="module")
async def corpus(fake_openai: Any) -> AsyncIterator[Corpus]:
    """The textbook in a local-mode store (the worker's kind), embedded by the fake server."""
    fake_openai.reset()
    settings = chat_settings(openai_base_url=fake_openai.url)
    services, chunks = await indexed_store(settings)
    assert chunks > 100
    store = services.vectorstore
    assert isinstance(store, QdrantVectorStore)
    assert store.mode == "local"
    records = await _on_store_thread(store, lambda local: _all_sources(local, store.collection))
    yield Corpus(settings=settings, services=services, store=store, sources=records)
    await services.aclose()


def _all_sources(local: QdrantClient, collection: str) -> list[str]:
    points, _ = local.scroll(collection_name=collection, limit=10_000, with_payload=["source"])
    return sorted({str((p.payload or {})["source"]) for p in points})


async def _on_store_thread(store: QdrantVectorStore, fn: Any) -> Any:
    """Run `fn(local_client)` on the store's own thread (local mode is not thread-safe)."""
    return await store._run_local(lambda: fn(store.local_client))


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
) -> dict[str, list[tuple[str, float]]]:
    """Local mode's own answers: raw dense and BM25 lists and the fused Query API request."""
    candidates = max(limit * 4, 20)
    flt = _filter(sources)
    out: dict[str, list[tuple[str, float]]] = {}
    requests: dict[str, models.QueryRequest] = {}
    prefetch: list[models.Prefetch] = []
    if dense is not None:
        requests["dense"] = models.QueryRequest(query=dense, using=DENSE_VECTOR, limit=candidates, filter=flt)
        prefetch.append(models.Prefetch(query=dense, using=DENSE_VECTOR, limit=candidates, filter=flt))
    if sparse is not None:
        requests["sparse"] = models.QueryRequest(query=sparse, using=SPARSE_VECTOR, limit=candidates, filter=flt)
        prefetch.append(models.Prefetch(query=sparse, using=SPARSE_VECTOR, limit=candidates, filter=flt))
    if len(prefetch) == 2:
        requests["fused"] = models.QueryRequest(
            prefetch=prefetch, query=models.FusionQuery(fusion=models.Fusion.RRF), limit=limit
        )
    responses = local.query_batch_points(collection_name=collection, requests=list(requests.values()))
    for name, response in zip(requests, responses, strict=True):
        out[name] = [(str(p.id), float(p.score)) for p in response.points]
    return out


def _assert_same(actual: list[tuple[str, float]], expected: list[tuple[str, float]], what: str) -> None:
    """The same hits with the same scores, in the same order except among near-ties: two dense scores
    1e-9 apart may rank either way between float32 and local mode's float64."""
    assert {i for i, _ in actual} == {i for i, _ in expected}, what
    for (_, a), (_, e) in zip(actual, expected, strict=True):
        assert abs(a - e) <= TOL, (what, a, e)
    for (i, a), (j, e) in zip(actual, expected, strict=True):
        if i != j:
            assert abs(a - e) <= TOL, (what, "order differs beyond a near-tie", i, j)


def _hits(hits: list[ScoredChunk]) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in hits]


async def _compare(corpus: Corpus, question: str, *, sources: list[str] | None, limit: int = 5) -> int:
    """Store query (indexed BM25) == local mode's, for hybrid and sparse-only; returns the fused hit count."""
    store = corpus.store
    dense = fake_embedding(question, corpus.settings.embedding_dimensions)
    sparse = encode_query(question)
    q_sparse = models.SparseVector(indices=list(sparse.indices), values=list(sparse.values)) if sparse else None
    reference = await _on_store_thread(
        store,
        lambda local: _reference(local, store.collection, dense=dense, sparse=q_sparse, limit=limit, sources=sources),
    )
    hybrid = await store.query(dense=dense, sparse=sparse, limit=limit, sources=sources)
    what = f"{question!r} sources={sources}"
    if q_sparse is None:
        assert "fused" not in reference
        return len(hybrid)
    _assert_same(_hits(hybrid), reference["fused"], what + " fused")
    sparse_ref = dict(reference["sparse"])
    dense_ref = dict(reference["dense"])
    for hit in hybrid:
        assert hit.sparse_score == (pytest.approx(sparse_ref[hit.id], abs=TOL) if hit.id in sparse_ref else None)
        assert hit.dense_score == (pytest.approx(dense_ref[hit.id], abs=TOL) if hit.id in dense_ref else None)
        if sources:
            assert hit.source in sources
    sparse_only = await store.query(dense=None, sparse=sparse, limit=limit, sources=sources)
    _assert_same(_hits(sparse_only), reference["sparse"][:limit], what + " sparse-only")
    for hit in sparse_only:
        assert hit.content, "payloads come back with sparse-only hits"
    return len(hybrid)


async def _compare_candidates(store: QdrantVectorStore, question: str, *, limit: int) -> None:
    """The raw BM25 list, `limit` deep (every row: tie order included), equals local mode's."""
    sparse = encode_query(question)
    q_sparse = models.SparseVector(indices=list(sparse.indices), values=list(sparse.values))

    def both(local: QdrantClient) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        expected = local.query_points(
            collection_name=store.collection, query=q_sparse, using=SPARSE_VECTOR, limit=limit, with_payload=False
        ).points
        index = store._ready_sparse_index()
        assert index is not None
        actual = index.search(q_sparse.indices, q_sparse.values, limit=limit)
        return [(str(i), s) for i, s in actual], [(str(p.id), float(p.score)) for p in expected]

    actual, expected = await _on_store_thread(store, both)
    assert expected, question
    _assert_same(actual, expected, question)


async def test_queries_match_local_mode(corpus: Corpus) -> None:
    """15 questions (in-book and off-topic), with and without a `sources` filter: same ids, order, scores."""
    found = 0
    for question in QUERIES:
        found += await _compare(corpus, question, sources=None)
    assert found > 0
    chapters = corpus.sources[:2]
    for question in QUERIES[:8]:
        await _compare(corpus, question, sources=chapters)
    await _compare(corpus, "robot", sources=["no/such/source.md"])
    await _compare(corpus, "the of and", sources=None)
    assert corpus.store._sparse_index is not None, "the indexed path answered"


async def test_whole_ranking_and_ties_match(corpus: Corpus) -> None:
    """Every matching row, in local mode's order (ties broken the same way), with equal scores."""
    for question in ("robot", "ROS", "sensor", "zero moment point", "humanoid"):
        await _compare_candidates(corpus.store, question, limit=10_000)


def _scratch(source: str, texts: list[str], dims: int) -> list[ChunkPoint]:
    return [
        ChunkPoint(
            id=point_id(source, i),
            payload={
                "source": source,
                "title": "Scratch",
                "heading": "H",
                "heading_path": ["Scratch", "H"],
                "chunk_index": i,
                "url": None,
                "content": text,
                "content_hash": f"s{i}-{len(text)}",
            },
            sparse=encode_document(text),
            dense=fake_embedding(text, dims),
        )
        for i, text in enumerate(texts)
    ]


async def _assert_in_sync(store: QdrantVectorStore, index: SparseIndex) -> None:
    """The incrementally maintained index equals one rebuilt from the collection, and answers alike."""
    assert store._sparse_index is index, "kept in sync in place, not rebuilt"
    rebuilt: SparseIndex = await store._run_local(store._build_sparse_index)
    assert index.rows == rebuilt.rows
    assert index.live_count == rebuilt.live_count == await store.count()
    assert index.document_frequencies() == rebuilt.document_frequencies()
    for question in ("zebra gripper torque", "robot", "ROS 2 topics"):
        await _compare_candidates(store, question, limit=10_000)


async def test_index_follows_writes(corpus: Corpus) -> None:
    """Upsert, changed source, replace (shrink), delete and re-add: the index agrees with the store."""
    store, dims = corpus.store, corpus.settings.embedding_dimensions
    await store.query(dense=None, sparse=encode_query("robot"), limit=3)  # builds the index
    index = store._sparse_index
    assert index is not None
    rows = index.rows
    texts = ["A zebra gripper holds torque sensors.", "Zebra robots walk.", "ROS 2 topics carry zebra messages."]
    await store.replace_source("scratch/zebra.md", _scratch("scratch/zebra.md", texts, dims))
    assert index.rows == rows + 3
    await _assert_in_sync(store, index)
    hits = await store.query(dense=None, sparse=encode_query("zebra gripper"), limit=3)
    assert hits[0].source == "scratch/zebra.md"

    changed = ["A zebra gripper with new torque sensors and a camera.", "Zebra robots walk and run."]
    await store.replace_source("scratch/zebra.md", _scratch("scratch/zebra.md", changed, dims))
    assert await store.count("scratch/zebra.md") == 2
    await _assert_in_sync(store, index)
    await _compare(corpus, "zebra gripper camera", sources=None)
    await _compare(corpus, "zebra", sources=["scratch/zebra.md", corpus.sources[0]])

    # Only the changed chunk is rewritten, the rest kept (`total`).
    await store.replace_source("scratch/zebra.md", _scratch("scratch/zebra.md", ["Zebra wheels."], dims), total=2)
    assert await store.count("scratch/zebra.md") == 2
    await _assert_in_sync(store, index)

    assert await store.delete_source("scratch/zebra.md") == 2
    assert await store.query(dense=None, sparse=encode_query("zebra"), limit=5) == []
    await _assert_in_sync(store, index)
    assert index.rows == rows + 3, "deleted points keep their rows, as in local mode"

    # Re-adding a deleted id revives its row; a new one appends.
    await store.upsert(_scratch("scratch/zebra.md", ["Zebra again.", "Zebra twice.", "Zebra thrice.", "Four."], dims))
    assert index.rows == rows + 4
    await _assert_in_sync(store, index)
    await _compare(corpus, "zebra again", sources=None)
    assert await store.delete_source("scratch/zebra.md") == 4
    await _assert_in_sync(store, index)


async def test_index_rebuilds_after_foreign_write(corpus: Corpus) -> None:
    """A write that bypassed the store (straight to the local client) makes the next query rebuild the index."""
    store = corpus.store
    await store.query(dense=None, sparse=encode_query("robot"), limit=3)
    before = store._sparse_index
    assert before is not None
    point = _scratch("scratch/foreign.md", ["Foreign okapi text."], corpus.settings.embedding_dimensions)[0]
    await _on_store_thread(
        store, lambda local: local.upsert(collection_name=store.collection, points=[store._point(point)], wait=True)
    )
    hits = await store.query(dense=None, sparse=encode_query("okapi"), limit=3)
    assert [h.source for h in hits] == ["scratch/foreign.md"]
    assert store._sparse_index is not None
    assert store._sparse_index is not before
    await store.delete_source("scratch/foreign.md")


async def test_reopened_collection_matches(corpus: Corpus) -> None:
    """After a restart local mode reloads rows in another order; the index rebuilt from it still matches."""
    await corpus.store.close()
    await asyncio.sleep(0)
    reopened = QdrantVectorStore(corpus.settings, local_client=QdrantClient(path=str(corpus.settings.qdrant_path)))
    corpus.services.vectorstore = reopened
    corpus.store = reopened
    for question in ("robot", "ROS", "inverse kinematics"):
        await _compare_candidates(reopened, question, limit=10_000)
    for question in QUERIES[:5]:
        await _compare(corpus, question, sources=None)


async def test_rpc_carries_the_embedding_exactly() -> None:
    """The embedded-mode RPC packs the query embedding as float64 bytes: every value comes back bit for bit."""
    dense = [*fake_embedding("What is the zero moment point?", 1536), 1e-300, -0.0, 0.1 + 0.2]
    wire = json.dumps(_encode_args("query", {"dense": dense, "sparse": encode_query("zmp"), "limit": 3}))
    assert "dense_f64" in wire
    decoded = _decode_args(json.loads(wire))
    assert decoded["dense"] == dense
    assert all(type(x) is float for x in decoded["dense"])
    assert _decode_args(json.loads(json.dumps(_encode_args("query", {"dense": None}))))["dense"] is None


def _assert_same_up_to_ties(actual: list[tuple[str, float]], expected: list[tuple[str, float]], what: str) -> None:
    """Scores equal within TOL, and the same ids in the same order except inside runs of scores that
    local mode computes (in float64) as differing by less than TOL: the float32 scan may swap those."""
    assert len(actual) == len(expected), what
    for (_, a), (_, e) in zip(actual, expected, strict=True):
        assert abs(a - e) <= TOL, (what, a, e)
    start = 0
    for end in range(1, len(expected) + 1):
        if end == len(expected) or expected[end - 1][1] - expected[end][1] > TOL:
            run = slice(start, end)
            assert sorted(i for i, _ in actual[run]) == sorted(i for i, _ in expected[run]), (what, start)
            start = end


async def test_dense_scan_matches_local_mode(corpus: Corpus) -> None:
    """The store's dense scan (one float32 product over the stored matrix) ranks like local mode's own
    dense search, 200 deep, with and without a `sources` filter and a score threshold."""
    store = corpus.store
    assert store._use_dense_scan
    compared = 0
    for question in QUERIES:
        dense = fake_embedding(question, corpus.settings.embedding_dimensions)
        for sources, threshold in ((None, None), (corpus.sources[:3], None), (None, 0.02)):
            search = _Search(
                dense=dense,
                sparse=None,
                limit=200,
                candidates=200,
                query_filter=_filter(sources),
                sources=sources,
                dense_score_threshold=threshold,
            )

            def both(
                local: QdrantClient, search: _Search = search, sources: list[str] | None = sources
            ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
                expected = local.query_points(
                    collection_name=store.collection,
                    query=search.dense,
                    using=DENSE_VECTOR,
                    limit=200,
                    query_filter=_filter(sources),
                    score_threshold=search.dense_score_threshold,
                    with_payload=False,
                ).points
                actual = store._dense_scan(search)
                return [(str(p.id), p.score) for p in actual], [(str(p.id), float(p.score)) for p in expected]

            actual, expected = await _on_store_thread(store, both)
            _assert_same_up_to_ties(actual, expected, f"{question!r} sources={sources} threshold={threshold}")
            compared += len(expected)
    assert compared > 1000
    assert store._use_dense_scan, "the scan answered every query (no fallback to local mode)"


async def test_payloads_from_rows_match_retrieve(corpus: Corpus) -> None:
    """The final hits' payloads, read from the collection's rows, equal local mode's `retrieve` (unknown
    ids skipped) and are copies: changing a returned payload changes nothing stored."""
    store = corpus.store
    missing = point_id("no/such/source.md", 0)

    def both(local: QdrantClient) -> tuple[dict[str, Any], dict[str, Any]]:
        ids = [*store._local_collection().ids_inv[:25], missing]
        records = local.retrieve(collection_name=store.collection, ids=ids, with_payload=True, with_vectors=False)
        return store._payloads(ids), {str(r.id): r.payload for r in records}

    actual, expected = await _on_store_thread(store, both)
    assert len(actual) == 25
    assert actual == expected
    changed = next(iter(actual.values()))
    changed["heading_path"].append("changed")
    changed["title"] = "changed"
    again, _ = await _on_store_thread(store, both)
    assert again == expected
    assert store._use_payload_rows, "the rows answered (no fallback to retrieve)"
