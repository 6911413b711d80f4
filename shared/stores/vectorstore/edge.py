"""`EdgeVectorStore`: the embedded store, a Qdrant Edge shard in `DATA_DIR/qdrant/edge/<collection>`.

Qdrant Edge (`qdrant-edge-py`, by the Qdrant team) is Qdrant's own engine run in-process: the same
vectors, IDF-modified sparse index, filters and RRF fusion as the server, with a write-ahead log. It
replaced qdrant-client's local mode, which scores every point in Python (a hybrid query on the book took
~9 ms there and ~0.4 ms here; docs/notes/ingestion.md). Only the process with the `store` role opens the
shard; every other process reaches it over the Redis RPC (`remote.py`).

The shard is not shared between threads: one dedicated thread creates it and runs every call, so the
event loop never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import qdrant_edge as edge

from shared.platform.config import Settings
from shared.platform.constants import DENSE_VECTOR, SPARSE_VECTOR
from shared.platform.logging import get_logger
from shared.platform.resilience import Resilience
from shared.platform.upstreams import Upstream
from shared.stores.sparse import SparseVector
from shared.stores.vectorstore.protocol import ChunkPoint, CollectionMismatch, ScoredChunk, SearchPlan, SourceWrites

__all__ = ["RRF_K", "EdgeVectorStore", "build_edge_store"]

log = get_logger(__name__)

T = TypeVar("T")

#: Points per write: one WAL record each.
UPSERT_BATCH = 256
#: Qdrant's own reciprocal-rank constant (the server's and qdrant-client's default), so an embedded
#: ranking equals a server's.
RRF_K = 2
#: How Qdrant's errors about the request itself begin (the engine raises a bare Exception for them): they are
#: the caller's (ValueError, not a store failure for the breaker), as a server's 400 is.
CALLER_ERRORS = ("Wrong input", "Vector dimension error", "Not existing vector name", "Validation", "Bad request")
#: Old stores kept in qdrant-client's local-mode folder layout are copied into the shard once, this many
#: points at a time.
MIGRATION_BATCH = 512


def _source_filter(source: str, *, min_chunk_index: int | None = None) -> edge.Filter:
    must: list[Any] = [edge.FieldCondition(key="source", match=edge.MatchValue(value=source))]
    if min_chunk_index is not None:
        must.append(edge.FieldCondition(key="chunk_index", range=edge.RangeFloat(gte=float(min_chunk_index))))
    return edge.Filter(must=must)


def _sparse(vector: SparseVector) -> edge.SparseVector:
    return edge.SparseVector(indices=list(vector.indices), values=list(vector.values))


def _legacy_point(record: Any) -> edge.Point:
    """A qdrant-client record (id, named vectors, payload) as an Edge point."""
    vectors: dict[str, Any] = dict(record.vector) if isinstance(record.vector, dict) else {}
    named: dict[str, Any] = {}
    sparse = vectors.get(SPARSE_VECTOR)
    if sparse is not None:
        named[SPARSE_VECTOR] = edge.SparseVector(indices=list(sparse.indices), values=list(sparse.values))
    if vectors.get(DENSE_VECTOR) is not None:
        named[DENSE_VECTOR] = list(vectors[DENSE_VECTOR])
    return edge.Point(str(record.id), named, record.payload or {})


def _point(point: ChunkPoint) -> edge.Point:
    vectors: dict[str, Any] = {SPARSE_VECTOR: _sparse(point.sparse)}
    if point.dense is not None:
        vectors[DENSE_VECTOR] = list(point.dense)
    return edge.Point(point.id, vectors, point.payload)


class EdgeVectorStore(SourceWrites):
    """The embedded store: one Qdrant Edge shard, every call on one dedicated thread."""

    mode = "local"

    def __init__(self, settings: Settings, *, path: Path, resilience: Resilience | None = None) -> None:
        self.settings = settings
        self.collection = settings.qdrant_collection
        self.dimensions = settings.dense_dimensions
        self.path = path
        self.resilience = resilience
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")
        self._shard: edge.EdgeShard | None = None

    # -- plumbing -------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[edge.EdgeShard], T]) -> T:
        """Run `fn(shard)` on the store thread (opening the shard first), behind the qdrant breaker."""
        loop = asyncio.get_running_loop()

        async def run() -> T:
            return await loop.run_in_executor(self._executor, lambda: _as_caller_error(fn, self._open))

        if self.resilience is None:
            return await run()
        result: T = await self.resilience.call(Upstream.QDRANT, run)
        return result

    def _config(self) -> edge.EdgeConfig:
        return edge.EdgeConfig(
            vectors={DENSE_VECTOR: edge.EdgeVectorParams(size=self.dimensions, distance=edge.Distance.Cosine)},
            sparse_vectors={SPARSE_VECTOR: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
            # BM25's IDF counts deleted points until their segment is vacuumed (on a server too, past 20 %
            # deleted and 1,000 points, which a book-sized store never reaches). Vacuum after any delete, so
            # the statistics are exactly the live chunks' (~0.08 s on the book).
            optimizers=edge.EdgeOptimizersConfig(deleted_threshold=0.0, vacuum_min_vector_number=0),
        )

    def _open(self) -> edge.EdgeShard:
        """The shard, created or loaded on first use (store thread only)."""
        if self._shard is not None:
            return self._shard
        if any(self.path.glob("*")):
            self._shard = self._load()
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._shard = edge.EdgeShard.create(str(self.path), self._config())
            log.info("vectorstore.collection_created", collection=self.collection, dimensions=self.dimensions)
            self._migrate_local_mode(self._shard)
        return self._shard

    def _load(self) -> edge.EdgeShard:
        try:
            # With a config, loading checks that the stored vectors match it.
            return edge.EdgeShard.load(str(self.path), self._config())
        except Exception as exc:
            if "incompatible" not in str(exc).lower():
                raise
            raise CollectionMismatch(
                f"The embedded store '{self.collection}' was built for other vectors than "
                f"EMBEDDING_DIMENSIONS={self.dimensions} ({exc}). Either set EMBEDDING_DIMENSIONS back (and the "
                f"matching OPENAI_EMBEDDING_MODEL), or reindex: delete {self.path} and re-ingest with POST /ingest or "
                "python -m worker ingest PATH."
            ) from exc

    def _migrate_local_mode(self, shard: edge.EdgeShard) -> None:
        """Copy a collection left by qdrant-client's local mode (this folder's earlier layout) into the new
        shard, then drop it there: an upgraded Space keeps its index without re-ingesting."""
        legacy = self.settings.qdrant_path
        if not (legacy / "collection" / self.collection).is_dir():
            return
        from qdrant_client import QdrantClient  # only for this one-off copy

        client = QdrantClient(path=str(legacy))
        try:
            vectors: Any = client.get_collection(self.collection).config.params.vectors
            dense = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
            if dense is not None and dense.size != self.dimensions:
                log.warning("vectorstore.migration_skipped", reason="dimensions", found=dense.size)
                return
            copied, offset = 0, None
            while True:
                records, offset = client.scroll(
                    collection_name=self.collection,
                    limit=MIGRATION_BATCH,
                    offset=offset,
                    with_payload=True,
                    with_vectors=True,
                )
                points = [_legacy_point(record) for record in records]
                if points:
                    shard.update(edge.UpdateOperation.upsert_points(points))
                    copied += len(points)
                if offset is None:
                    break
            shard.flush()
            client.delete_collection(self.collection)
        finally:
            client.close()
        log.info("vectorstore.migrated_local_mode", collection=self.collection, points=copied)

    # -- the VectorStore protocol ---------------------------------------------------------------

    async def ensure_collection(self) -> None:
        """Create the shard if missing; raise `CollectionMismatch` if it holds other dimensions."""
        await self._run(lambda shard: None)

    async def upsert(self, points: Sequence[ChunkPoint]) -> int:
        """Write points in batches (applied, and in the write-ahead log, when this returns)."""
        for start in range(0, len(points), UPSERT_BATCH):
            operation = edge.UpdateOperation.upsert_points([_point(p) for p in points[start : start + UPSERT_BATCH]])

            def write(shard: edge.EdgeShard, operation: edge.UpdateOperation = operation) -> None:
                shard.update(operation)

            await self._run(write)
        return len(points)

    async def _delete(self, source: str, *, min_chunk_index: int | None = None) -> None:
        selector = _source_filter(source, min_chunk_index=min_chunk_index)

        def delete(shard: edge.EdgeShard) -> None:
            shard.update(edge.UpdateOperation.delete_points_by_filter(selector))
            shard.optimize()  # a no-op (~25 us) when nothing was deleted

        await self._run(delete)

    async def chunk_hashes(self, source: str) -> dict[int, str]:
        """chunk_index -> content_hash of the stored chunks of `source`."""

        def scan(shard: edge.EdgeShard) -> dict[int, str]:
            hashes: dict[int, str] = {}
            offset: Any = None
            while True:
                records, offset = shard.scroll(
                    edge.ScrollRequest(
                        offset=offset,
                        limit=512,
                        filter=_source_filter(source),
                        with_payload=["chunk_index", "content_hash"],
                        with_vector=False,
                    )
                )
                for record in records:
                    payload = record.payload or {}
                    hashes[int(payload.get("chunk_index", -1))] = str(payload.get("content_hash", ""))
                if offset is None:
                    return hashes

        return await self._run(scan)

    async def query(
        self,
        *,
        dense: list[float] | None,
        sparse: SparseVector | None,
        limit: int = 5,
        score_threshold: float | None = None,
        dense_score_threshold: float | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[ScoredChunk]:
        """Hybrid search: RRF over the dense and BM25 candidate lists, with both raw scores per hit."""
        search = _EdgeSearch.build(
            dense=dense,
            sparse=sparse,
            limit=limit,
            score_threshold=score_threshold,
            dense_score_threshold=dense_score_threshold,
            sources=sources,
        )
        if search is None:
            return []
        request = edge.QueryBatchRequest(search.requests())
        responses = await self._run(lambda shard: shard.query_batch(request))
        return search.hits(responses)

    async def query_many(self, requests: Sequence[dict[str, Any]]) -> list[list[ScoredChunk] | Exception]:
        """Several `query` calls (keyword arguments each), answered in order in one trip to the store
        thread; a failing one is returned as its exception. The RPC server hands a burst of readers'
        questions over at once."""
        prepared: list[_EdgeSearch | Exception | None] = []
        for request in requests:
            try:
                prepared.append(_EdgeSearch.build(**request))
            except Exception as exc:
                prepared.append(exc)
        searches = [p for p in prepared if isinstance(p, _EdgeSearch)]

        def run_all(shard: edge.EdgeShard) -> list[Any]:
            outcomes: list[Any] = []
            for search in searches:
                try:
                    outcomes.append(shard.query_batch(edge.QueryBatchRequest(search.requests())))
                except Exception as exc:
                    outcomes.append(_caller_error(exc))
            return outcomes

        outcomes = iter(await self._run(run_all) if searches else [])
        results: list[list[ScoredChunk] | Exception] = []
        for item in prepared:
            if item is None:
                results.append([])
            elif isinstance(item, Exception):
                results.append(item)
            else:
                outcome = next(outcomes)
                results.append(outcome if isinstance(outcome, Exception) else item.hits(outcome))
        return results

    async def export(self) -> list[ChunkPoint]:
        """Every stored point with its vectors (copies, checks and tests; the whole store in memory)."""

        def scan(shard: edge.EdgeShard) -> list[ChunkPoint]:
            points: list[ChunkPoint] = []
            offset: Any = None
            while True:
                records, offset = shard.scroll(
                    edge.ScrollRequest(offset=offset, limit=1000, with_payload=True, with_vector=True)
                )
                for record in records:
                    vectors: dict[str, Any] = dict(record.vector) if isinstance(record.vector, dict) else {}
                    sparse = vectors.get(SPARSE_VECTOR)
                    dense = vectors.get(DENSE_VECTOR)
                    points.append(
                        ChunkPoint(
                            id=str(record.id),
                            payload=dict(record.payload or {}),
                            sparse=SparseVector(indices=list(sparse.indices), values=list(sparse.values))
                            if sparse is not None
                            else SparseVector(),
                            dense=[float(x) for x in dense] if dense is not None else None,
                        )
                    )
                if offset is None:
                    return points

        return await self._run(scan)

    async def count(self, source: str | None = None) -> int:
        """Exact point count."""
        request = edge.CountRequest(exact=True, filter=_source_filter(source) if source is not None else None)
        return int(await self._run(lambda shard: shard.count(request)))

    async def health(self) -> dict[str, Any]:
        """Up when the shard answers a count."""
        try:
            points = await asyncio.wait_for(self.count(), 3.0)
        except Exception as exc:
            return {"status": "down", "mode": self.mode, "detail": type(exc).__name__}
        return {"status": "up", "mode": self.mode, "points": points}

    async def close(self) -> None:
        """Flush and close the shard, then stop the store thread."""

        def close() -> None:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, close)
        finally:
            self._executor.shutdown(wait=False)


def _caller_error(exc: Exception) -> Exception:
    """`exc`, or a ValueError when it is about the request itself."""
    if not isinstance(exc, ValueError) and str(exc).startswith(CALLER_ERRORS):
        error = ValueError(str(exc))
        error.__cause__ = exc
        return error
    return exc


def _as_caller_error(fn: Callable[[edge.EdgeShard], T], shard: Callable[[], edge.EdgeShard]) -> T:
    try:
        return fn(shard())
    except Exception as exc:
        translated = _caller_error(exc)
        if translated is exc:
            raise
        raise translated from exc


class _EdgeSearch:
    """One query's Query API requests (one `query_batch` call) and their reading.

    Hybrid: the dense and BM25 candidate lists (each hit's raw `dense_score` and `sparse_score`) and their
    RRF fusion, which Qdrant computes from the same two prefetches. One leg only: that list.
    """

    def __init__(self, plan: SearchPlan) -> None:
        self.plan = plan
        query_filter = (
            edge.Filter(must=[edge.FieldCondition(key="source", match=edge.MatchAny(any=plan.sources))])
            if plan.sources
            else None
        )
        self.legs: list[edge.Prefetch] = []
        if plan.dense is not None:
            self.legs.append(
                edge.Prefetch(
                    query=edge.Query.Nearest(list(plan.dense), using=DENSE_VECTOR),
                    limit=plan.depth,
                    filter=query_filter,
                    score_threshold=plan.dense_score_threshold,
                )
            )
        if plan.sparse is not None:
            self.legs.append(
                edge.Prefetch(
                    query=edge.Query.Nearest(_sparse(plan.sparse), using=SPARSE_VECTOR),
                    limit=plan.depth,
                    filter=query_filter,
                )
            )

    @classmethod
    def build(cls, **query: Any) -> _EdgeSearch | None:
        """The search for `VectorStore.query`'s arguments; None when there is nothing to search with."""
        plan = SearchPlan.of(**query)
        return cls(plan) if plan is not None else None

    def requests(self) -> list[edge.QueryRequest]:
        """Each leg on its own (its raw scores), then, hybrid, their fusion."""
        hybrid = self.plan.hybrid
        requests = [
            edge.QueryRequest(
                query=leg.query,
                limit=leg.limit,
                filter=leg.filter,
                score_threshold=leg.score_threshold,
                with_payload=not hybrid,
            )
            for leg in self.legs
        ]
        if hybrid:
            # Every fused candidate (at most both legs), so that ties are cut below in a fixed order.
            everything = sum(leg.limit for leg in self.legs)
            requests.append(
                edge.QueryRequest(
                    prefetches=self.legs,
                    # The stub types `Fusion.Rrf` apart from `Fusion`; the engine takes it as the query.
                    query=cast(Any, edge.Fusion.Rrf(k=RRF_K)),
                    limit=everything,
                    with_payload=True,
                )
            )
        return requests

    def hits(self, responses: Sequence[Sequence[edge.ScoredPoint]]) -> list[ScoredChunk]:
        """The answers to `requests()` as `ScoredChunk`s with both raw scores, above `score_threshold`."""
        if not self.plan.hybrid:
            return self.plan.chunks(responses[-1], dense_scores={}, sparse_scores={})
        # RRF gives equal ranks equal scores, and the engine returns such ties in no fixed order: break them
        # by id, so a question gets the same passages every time.
        final = sorted(responses[-1], key=lambda p: (-p.score, str(p.id)))[: self.plan.limit]
        return self.plan.chunks(
            final,
            dense_scores={str(p.id): float(p.score) for p in responses[0]},
            sparse_scores={str(p.id): float(p.score) for p in responses[1]},
        )


def build_edge_store(settings: Settings, *, resilience: Resilience | None = None) -> EdgeVectorStore:
    """The embedded store of the process that owns it (the worker of the `store` role)."""
    path = settings.qdrant_path / "edge" / settings.qdrant_collection
    return EdgeVectorStore(settings, path=path, resilience=resilience)
