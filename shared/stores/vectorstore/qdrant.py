"""`QdrantVectorStore`: the store over a Qdrant server (`QDRANT_URL`, e.g. Qdrant Cloud), async client.

The module that imports `qdrant_client` (loaded when a server store is built; embedded mode uses Qdrant
Edge, `edge.py`). A search is one `query_batch_points` Query API request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

from shared.platform.config import Settings
from shared.platform.constants import DENSE_VECTOR, SPARSE_VECTOR
from shared.platform.logging import get_logger
from shared.platform.resilience import Resilience
from shared.platform.upstreams import Upstream
from shared.stores.sparse import SparseVector
from shared.stores.vectorstore.protocol import ChunkPoint, CollectionMismatch, ScoredChunk, SearchPlan, SourceWrites

__all__ = ["UPSERT_BATCH", "QdrantVectorStore", "build_qdrant_store"]

log = get_logger(__name__)

UPSERT_BATCH = 256


def _source_filter(source: str, *, min_chunk_index: int | None = None) -> models.Filter:
    must: list[models.Condition] = [models.FieldCondition(key="source", match=models.MatchValue(value=source))]
    if min_chunk_index is not None:
        must.append(models.FieldCondition(key="chunk_index", range=models.Range(gte=min_chunk_index)))
    return models.Filter(must=must)


def _to_qdrant_sparse(vector: Any) -> models.SparseVector:
    return models.SparseVector(indices=list(vector.indices), values=list(vector.values))


class QdrantVectorStore(SourceWrites):
    """The store over a Qdrant server (async client)."""

    mode = "server"

    def __init__(self, settings: Settings, *, client: AsyncQdrantClient, resilience: Resilience | None = None) -> None:
        self.settings = settings
        self.collection = settings.qdrant_collection
        self.dimensions = settings.dense_dimensions
        self.resilience = resilience
        self._client = client
        self._ensured = False

    async def _guarded(self, run: Callable[[], Awaitable[Any]]) -> Any:
        if self.resilience is None:
            return await run()
        return await self.resilience.call(Upstream.QDRANT, run)

    async def _call(self, name: str, **kwargs: Any) -> Any:
        async def run() -> Any:
            return await getattr(self._client, name)(**kwargs)

        return await self._guarded(run)

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
                    "the collection) and re-ingest with "
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
        # Filters by source (replace/delete/count) need an index on a server.
        for name, schema in (
            ("source", models.PayloadSchemaType.KEYWORD),
            ("chunk_index", models.PayloadSchemaType.INTEGER),
        ):
            await self._call(
                "create_payload_index", collection_name=self.collection, field_name=name, field_schema=schema
            )
        self._ensured = True

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
        """Close the client."""
        await self._client.close()


def _scores(points: Sequence[Any]) -> dict[str, float]:
    return {str(p.id): float(p.score) for p in points}


class _Search:
    """One query's Query API requests (one `query_batch_points` call) and their reading.

    Hybrid: the dense and BM25 candidate lists (each hit's raw scores), fused by reciprocal rank with
    qdrant-client's `reciprocal_rank_fusion`. One leg only: that list.
    """

    def __init__(self, plan: SearchPlan) -> None:
        self.plan = plan
        self.query_filter = (
            models.Filter(must=[models.FieldCondition(key="source", match=models.MatchAny(any=plan.sources))])
            if plan.sources
            else None
        )

    @classmethod
    def build(cls, **query: Any) -> _Search | None:
        """The search for `VectorStore.query`'s arguments; None when there is nothing to search with."""
        plan = SearchPlan.of(**query)
        return cls(plan) if plan is not None else None

    def requests(self) -> list[models.QueryRequest]:
        """Dense (cosine, above `dense_score_threshold`), then BM25 (Qdrant applies IDF), each `depth` deep."""
        plan = self.plan
        requests: list[models.QueryRequest] = []
        if plan.dense is not None:
            requests.append(
                models.QueryRequest(
                    query=plan.dense,
                    using=DENSE_VECTOR,
                    limit=plan.depth,
                    filter=self.query_filter,
                    score_threshold=plan.dense_score_threshold,
                    with_payload=True,
                )
            )
        if plan.sparse is not None:
            requests.append(
                models.QueryRequest(
                    query=_to_qdrant_sparse(plan.sparse),
                    using=SPARSE_VECTOR,
                    limit=plan.depth,
                    filter=self.query_filter,
                    with_payload=True,
                )
            )
        return requests

    def hits(self, responses: Sequence[models.QueryResponse]) -> list[ScoredChunk]:
        """The answers to `requests()` as `ScoredChunk`s with both raw scores, above `score_threshold`."""
        lists = [response.points for response in responses]
        if not self.plan.hybrid:
            return self.plan.chunks(lists[0], dense_scores={}, sparse_scores={})
        # The fusion the Query API's `FusionQuery(RRF)` applies, by qdrant-client's own function, over the
        # two lists already fetched: asking Qdrant to fuse would score both legs a second time.
        final = reciprocal_rank_fusion([lists[0], lists[1]], limit=self.plan.limit)
        return self.plan.chunks(final, dense_scores=_scores(lists[0]), sparse_scores=_scores(lists[1]))


def build_qdrant_store(settings: Settings, *, resilience: Resilience | None = None) -> QdrantVectorStore:
    """The client of the Qdrant server at QDRANT_URL (nothing connects until the first call)."""
    client = AsyncQdrantClient(
        url=settings.qdrant_url,
        api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        timeout=10,
        # The version probe is a request per process start (and a warning when Qdrant is down).
        check_compatibility=False,
    )
    return QdrantVectorStore(settings, resilience=resilience, client=client)
