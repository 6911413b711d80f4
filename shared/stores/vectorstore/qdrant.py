"""`QdrantVectorStore`: the store over a real Qdrant, a server (async client) or the local-mode folder.

The only module that imports `qdrant_client` (it is loaded when a Qdrant store is built, never by the API
processes in embedded mode). Both kinds answer through the same public calls (`upsert`, `delete`,
`query_batch_points` with the Query API, ...); in local mode (the arq worker in embedded mode) every call
runs on one dedicated thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

from shared.platform.config import Settings
from shared.platform.constants import DENSE_VECTOR, SPARSE_VECTOR
from shared.platform.logging import get_logger
from shared.platform.resilience import Resilience
from shared.platform.upstreams import Upstream
from shared.stores.sparse import SparseVector
from shared.stores.vectorstore.protocol import ChunkPoint, CollectionMismatch, ScoredChunk

__all__ = ["UPSERT_BATCH", "QdrantVectorStore", "build_qdrant_store"]

log = get_logger(__name__)

UPSERT_BATCH = 256
#: How deep each leg of a hybrid query reaches at least (at most `limit` is fused). Retrieval already asks
#: for four times the passages it keeps; deeper legs cost local mode a payload copy per hit (~5 ms of the
#: worker's ~15 ms per query on the book at 80 a leg) and moved no answer of the quality set.
CANDIDATES_PER_LEG = 20


def _source_filter(source: str, *, min_chunk_index: int | None = None) -> models.Filter:
    must: list[models.Condition] = [models.FieldCondition(key="source", match=models.MatchValue(value=source))]
    if min_chunk_index is not None:
        must.append(models.FieldCondition(key="chunk_index", range=models.Range(gte=min_chunk_index)))
    return models.Filter(must=must)


def _to_qdrant_sparse(vector: Any) -> models.SparseVector:
    return models.SparseVector(indices=list(vector.indices), values=list(vector.values))


class QdrantVectorStore:
    """The store over a real Qdrant: a server (async client) or the local-mode folder (one thread)."""

    def __init__(
        self,
        settings: Settings,
        *,
        resilience: Resilience | None = None,
        client: AsyncQdrantClient | None = None,
        local_client: QdrantClient | None = None,
    ) -> None:
        if (client is None) == (local_client is None):
            raise ValueError("pass exactly one of client (server) or local_client (embedded)")
        self.settings = settings
        self.collection = settings.qdrant_collection
        self.dimensions = settings.dense_dimensions
        self.resilience = resilience
        self._client = client
        self._local = local_client
        # Local mode is not thread-safe and does blocking work: one thread serialises every call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-local") if local_client else None
        self._ensured = False

    @property
    def mode(self) -> str:
        """ "local" or "server"."""
        return "local" if self._local is not None else "server"

    @property
    def local_client(self) -> QdrantClient | None:
        """The local-mode client (None on a server); call it only through this store's thread."""
        return self._local

    async def _guarded(self, run: Callable[[], Awaitable[Any]]) -> Any:
        if self.resilience is None:
            return await run()
        return await self.resilience.call(Upstream.QDRANT, run)

    async def _call(self, name: str, **kwargs: Any) -> Any:
        if self._local is not None:
            return await self._call_local(partial(getattr(self._local, name), **kwargs))

        async def run() -> Any:
            assert self._client is not None
            return await getattr(self._client, name)(**kwargs)

        return await self._guarded(run)

    async def _call_local(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the store thread, behind the qdrant breaker."""
        return await self._guarded(lambda: self._run_local(fn))

    async def ensure_collection(self) -> None:
        """Create the collection and payload indexes if missing; check dimensions if present."""
        if self._ensured:
            return
        if await self._call("collection_exists", collection_name=self.collection):
            info = await self._call("get_collection", collection_name=self.collection)
            vectors = info.config.params.vectors
            dense = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
            sparse = info.config.params.sparse_vectors or {}
            if dense is None or SPARSE_VECTOR not in sparse:
                raise CollectionMismatch(
                    f"Qdrant collection '{self.collection}' was not created by Lectern (it lacks the "
                    f"'{DENSE_VECTOR}'/'{SPARSE_VECTOR}' vectors). Set QDRANT_COLLECTION to a new name, or delete "
                    "the collection and re-ingest (POST /ingest or python -m worker ingest PATH)."
                )
            if dense.size != self.dimensions:
                raise CollectionMismatch(
                    f"Qdrant collection '{self.collection}' holds {dense.size}-dimensional vectors but "
                    f"EMBEDDING_DIMENSIONS={self.dimensions}. Either set EMBEDDING_DIMENSIONS={dense.size} (and the "
                    "matching OPENAI_EMBEDDING_MODEL), or reindex: set QDRANT_COLLECTION to a new name (or delete "
                    "the collection; in embedded mode delete DATA_DIR/qdrant) and re-ingest with "
                    "POST /ingest or python -m worker ingest PATH."
                )
        else:
            await self._call(
                "create_collection",
                collection_name=self.collection,
                vectors_config={
                    DENSE_VECTOR: models.VectorParams(size=self.dimensions, distance=models.Distance.COSINE)
                },
                sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
            log.info("vectorstore.collection_created", collection=self.collection, dimensions=self.dimensions)
        if self._local is None:
            # Filters by source (replace/delete/count) need an index on a server; local mode has none.
            for name, schema in (
                ("source", models.PayloadSchemaType.KEYWORD),
                ("chunk_index", models.PayloadSchemaType.INTEGER),
            ):
                await self._call(
                    "create_payload_index", collection_name=self.collection, field_name=name, field_schema=schema
                )
        self._ensured = True

    async def _run_local(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

    def _point(self, point: ChunkPoint) -> models.PointStruct:
        vector: dict[str, Any] = {SPARSE_VECTOR: _to_qdrant_sparse(point.sparse)}
        if point.dense is not None:
            vector[DENSE_VECTOR] = point.dense
        return models.PointStruct(id=point.id, vector=vector, payload=point.payload)

    # -- writes ---------------------------------------------------------------------------------

    async def upsert(self, points: Sequence[ChunkPoint]) -> int:
        """Write points in batches (waiting for each to be applied)."""
        await self.ensure_collection()
        for start in range(0, len(points), UPSERT_BATCH):
            batch = [self._point(p) for p in points[start : start + UPSERT_BATCH]]
            await self._call("upsert", collection_name=self.collection, points=batch, wait=True)
        return len(points)

    async def _delete(self, source: str, *, min_chunk_index: int | None = None) -> None:
        await self._call(
            "delete",
            collection_name=self.collection,
            points_selector=models.FilterSelector(filter=_source_filter(source, min_chunk_index=min_chunk_index)),
            wait=True,
        )

    async def delete_source(self, source: str) -> int:
        """Remove every chunk of `source`."""
        await self.ensure_collection()
        existing = await self.count(source)
        if existing:
            await self._delete(source)
        return existing

    async def replace_source(self, source: str, points: Sequence[ChunkPoint], *, total: int | None = None) -> int:
        """Upsert `points`, then delete the source's chunks with an index past the new count (`total`).

        Ids are deterministic, so a crash between the two steps leaves only chunks that a re-run
        overwrites or deletes: the store converges to exactly `points`.
        """
        written = await self.upsert(points)
        await self._delete(source, min_chunk_index=len(points) if total is None else total)
        return written

    async def chunk_hashes(self, source: str) -> dict[int, str]:
        """chunk_index -> content_hash of the stored chunks of `source`."""
        await self.ensure_collection()
        hashes: dict[int, str] = {}
        offset: Any = None
        while True:
            points, offset = await self._call(
                "scroll",
                collection_name=self.collection,
                scroll_filter=_source_filter(source),
                limit=512,
                offset=offset,
                with_payload=["chunk_index", "content_hash"],
                with_vectors=False,
            )
            for point in points:
                payload = point.payload or {}
                hashes[int(payload.get("chunk_index", -1))] = str(payload.get("content_hash", ""))
            if offset is None:
                return hashes

    # -- search -------------------------------------------------------------------------------

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
        await self.ensure_collection()
        search = _Search.build(
            dense=dense,
            sparse=sparse,
            limit=limit,
            score_threshold=score_threshold,
            dense_score_threshold=dense_score_threshold,
            sources=sources,
        )
        if search is None:
            return []
        responses = await self._call("query_batch_points", collection_name=self.collection, requests=search.requests())
        return search.hits(responses)

    async def query_many(self, requests: Sequence[dict[str, Any]]) -> list[list[ScoredChunk] | Exception]:
        """Several `query` calls (keyword arguments each), answered in order; a failing one is returned as
        its exception. In local mode all of them run in one trip to the store thread (the same
        `query_batch_points` request each, one after another): the embedded RPC server hands a burst of
        readers' questions over at once. On a server, concurrent calls."""
        if self._local is None:
            gathered = await asyncio.gather(*(self.query(**request) for request in requests), return_exceptions=True)
            answers: list[list[ScoredChunk] | Exception] = []
            for outcome in gathered:
                if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                    raise outcome  # cancellation
                answers.append(outcome)
            return answers
        await self.ensure_collection()
        prepared: list[_Search | Exception | None] = []
        for request in requests:
            try:
                prepared.append(_Search.build(**request))
            except Exception as exc:
                prepared.append(exc)
        searches = [p for p in prepared if isinstance(p, _Search)]
        local = self._local
        assert local is not None

        def run_all() -> list[Any]:
            outcomes: list[Any] = []
            for search in searches:
                try:
                    outcomes.append(
                        local.query_batch_points(collection_name=self.collection, requests=search.requests())
                    )
                except Exception as exc:  # this reader's error only (e.g. a NaN in its vector)
                    outcomes.append(exc)
            return outcomes

        outcomes = iter(await self._call_local(run_all) if searches else [])
        results: list[list[ScoredChunk] | Exception] = []
        for item in prepared:
            if item is None or isinstance(item, Exception):
                results.append(item if item is not None else [])
                continue
            outcome = next(outcomes)
            results.append(outcome if isinstance(outcome, Exception) else item.hits(outcome))
        return results

    async def count(self, source: str | None = None) -> int:
        """Exact point count."""
        await self.ensure_collection()
        result = await self._call(
            "count",
            collection_name=self.collection,
            count_filter=_source_filter(source) if source is not None else None,
            exact=True,
        )
        return int(result.count)

    async def health(self) -> dict[str, Any]:
        """Up when the collection answers a count."""
        try:
            points = await asyncio.wait_for(self.count(), 3.0)
        except Exception as exc:
            return {"status": "down", "mode": self.mode, "detail": type(exc).__name__}
        return {"status": "up", "mode": self.mode, "points": points}

    async def close(self) -> None:
        """Close the client (and the local-mode thread)."""
        if self._client is not None:
            await self._client.close()
        if self._local is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._local.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False)


def _scores(points: Sequence[Any]) -> dict[str, float]:
    return {str(p.id): float(p.score) for p in points}


class _Search:
    """One query's parameters, its Query API requests (one `query_batch_points` call) and their reading.

    Hybrid: the dense and BM25 candidate lists (each hit's `dense_score` and `sparse_score`), fused by
    reciprocal rank with qdrant-client's `reciprocal_rank_fusion`. One leg only: that list.
    """

    def __init__(
        self,
        *,
        dense: list[float] | None,
        sparse: models.SparseVector | None,
        limit: int,
        candidates: int,
        query_filter: models.Filter | None,
        dense_score_threshold: float | None,
        score_threshold: float | None = None,
    ) -> None:
        self.dense = dense
        self.sparse = sparse
        self.limit = limit
        self.candidates = candidates
        self.query_filter = query_filter
        self.dense_score_threshold = dense_score_threshold
        self.score_threshold = score_threshold
        self.hybrid = dense is not None and sparse is not None

    @classmethod
    def build(
        cls,
        *,
        dense: list[float] | None,
        sparse: SparseVector | None,
        limit: int = 5,
        score_threshold: float | None = None,
        dense_score_threshold: float | None = None,
        sources: Sequence[str] | None = None,
    ) -> _Search | None:
        """The search for `VectorStore.query`'s arguments; None when there is nothing to search with."""
        has_sparse = sparse is not None and bool(sparse.indices)
        if dense is None and not has_sparse:
            return None
        query_filter = (
            models.Filter(must=[models.FieldCondition(key="source", match=models.MatchAny(any=list(sources)))])
            if sources
            else None
        )
        return cls(
            dense=dense,
            sparse=_to_qdrant_sparse(sparse) if has_sparse else None,
            limit=limit,
            candidates=max(limit, CANDIDATES_PER_LEG),
            query_filter=query_filter,
            dense_score_threshold=dense_score_threshold,
            score_threshold=score_threshold,
        )

    def _legs(self) -> list[models.Prefetch]:
        """The candidate lists: dense (cosine, above `dense_score_threshold`), then BM25 (Qdrant applies IDF)."""
        legs: list[models.Prefetch] = []
        if self.dense is not None:
            legs.append(
                models.Prefetch(
                    query=self.dense,
                    using=DENSE_VECTOR,
                    limit=self.candidates,
                    filter=self.query_filter,
                    score_threshold=self.dense_score_threshold,
                )
            )
        if self.sparse is not None:
            legs.append(
                models.Prefetch(query=self.sparse, using=SPARSE_VECTOR, limit=self.candidates, filter=self.query_filter)
            )
        return legs

    def requests(self) -> list[models.QueryRequest]:
        """Hybrid: [dense, BM25], each `candidates` deep; one leg only: [that leg, `limit` deep]."""
        legs = self._legs()
        return [
            models.QueryRequest(
                query=leg.query,
                using=leg.using,
                limit=leg.limit if self.hybrid else self.limit,
                filter=leg.filter,
                score_threshold=leg.score_threshold,
                with_payload=True,
            )
            for leg in legs
        ]

    def hits(self, responses: Sequence[models.QueryResponse]) -> list[ScoredChunk]:
        """The answers to `requests()` as `ScoredChunk`s with both raw scores, above `score_threshold`."""
        lists = [response.points for response in responses]
        final = lists[-1]
        if self.hybrid:
            dense_scores, sparse_scores = _scores(lists[0]), _scores(lists[1])
            # The fusion the Query API's `FusionQuery(RRF)` applies, by qdrant-client's own function, over
            # the two lists already fetched: asking Qdrant to fuse would score both legs a second time
            # (in local mode, a Python scan of every point per leg).
            final = reciprocal_rank_fusion([lists[0], lists[1]], limit=self.limit)
        else:
            dense_scores = _scores(final) if self.dense is not None else {}
            sparse_scores = _scores(final) if self.sparse is not None else {}
        hits = [
            ScoredChunk.from_payload(
                id=str(p.id),
                score=float(p.score),
                payload=p.payload or {},
                dense=dense_scores.get(str(p.id)),
                sparse=sparse_scores.get(str(p.id)),
            )
            for p in final
        ]
        if self.score_threshold is not None:
            hits = [h for h in hits if h.score >= self.score_threshold]
        return hits


def build_qdrant_store(settings: Settings, *, resilience: Resilience | None = None) -> QdrantVectorStore:
    """A server client with QDRANT_URL, else the local-mode folder (only the worker may open it)."""
    if not settings.embedded_qdrant:
        client = AsyncQdrantClient(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            timeout=10,
            # The version probe is a request per process start (and a warning when Qdrant is down);
            # nothing here connects eagerly.
            check_compatibility=False,
        )
        return QdrantVectorStore(settings, resilience=resilience, client=client)
    settings.qdrant_path.mkdir(parents=True, exist_ok=True)
    return QdrantVectorStore(settings, resilience=resilience, local_client=QdrantClient(path=str(settings.qdrant_path)))
