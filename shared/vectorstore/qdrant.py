"""`QdrantVectorStore`: the store over a real Qdrant, a server (async client) or the local-mode folder.

The only module that imports `qdrant_client` (it is loaded when a Qdrant store is built, never by the API
processes in embedded mode). In local mode (the arq worker in embedded mode) every call runs on one
dedicated thread, and the BM25 leg of a query is answered by `SparseIndex` (shared/sparse_index.py)
instead of local mode's pure-Python scan: same ids, same order, same scores. The index mirrors the
collection's internal rows; the writes below keep it in step on the same thread, and a cheap row-count
check before each query rebuilds it if anything else changed the collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion
from qdrant_client.local.sparse import validate_sparse_vector

from shared.config import Settings
from shared.constants import DENSE_VECTOR, SPARSE_VECTOR
from shared.logging import get_logger
from shared.resilience import Resilience, Upstream
from shared.sparse import SparseVector
from shared.sparse_index import SparseIndex
from shared.vectorstore.protocol import ChunkPoint, CollectionMismatch, ScoredChunk

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


class QdrantVectorStore:
    """The store over a real Qdrant: a server (async client) or the local-mode folder (one thread)."""

    def __init__(
        self,
        settings: Settings,
        *,
        resilience: Resilience | None = None,
        client: AsyncQdrantClient | None = None,
        local_client: QdrantClient | None = None,
        sparse_index: bool = True,
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
        # Local mode only (`sparse_index=False` keeps local mode's own BM25 scan, e.g. to compare).
        # Built on the first query and touched only on the store thread.
        self._use_sparse_index = local_client is not None and sparse_index
        self._sparse_index: SparseIndex | None = None
        # Local mode only, same switch: dense search by one float32 product (see `_dense_scan`).
        self._use_dense_scan = self._use_sparse_index
        # Local mode only, same switch: payloads of the final hits read from the collection's rows.
        self._use_payload_rows = self._use_sparse_index

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
        if self._local is not None:
            await self._run_local(self._tune_local_storage)
            # Build the BM25 index now (~0.1 s at 5,000 chunks) rather than in the first reader's query;
            # from here on the writes keep it current.
            await self._run_local(self._ready_sparse_index)
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

    def _tune_local_storage(self) -> None:
        """Local mode commits (and fsyncs) its SQLite file once per point: 6 ms each on a plain disk.
        WAL with synchronous=NORMAL keeps every commit crash-safe for the process (SIGKILL loses
        nothing) without an fsync per point; a power cut may lose the last commits, which the next
        ingest detects (chunk count check) and rewrites. Reaches into qdrant-client's local internals,
        so any surprise there only costs speed."""
        try:
            collections = self._local._client.collections  # type: ignore[union-attr]
            for collection in collections.values():
                connection = collection.storage.storage
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
        except Exception as exc:  # pragma: no cover - depends on qdrant-client internals
            log.warning("vectorstore.local_tuning_skipped", error=type(exc).__name__)

    def _point(self, point: ChunkPoint) -> models.PointStruct:
        vector: dict[str, Any] = {SPARSE_VECTOR: _to_qdrant_sparse(point.sparse)}
        if point.dense is not None:
            vector[DENSE_VECTOR] = point.dense
        return models.PointStruct(id=point.id, vector=vector, payload=point.payload)

    # -- the BM25 index (local mode; store thread only) -----------------------------------------

    def _local_collection(self) -> Any:
        """Local mode's in-memory collection (qdrant-client internals, read only)."""
        return self._local._client._get_collection(self.collection)  # type: ignore[union-attr]

    def _build_sparse_index(self) -> SparseIndex:
        started = time.perf_counter()
        collection = self._local_collection()
        params = collection.config.sparse_vectors[SPARSE_VECTOR]
        if params.modifier != models.Modifier.IDF:
            raise ValueError(f"the '{SPARSE_VECTOR}' vector has modifier {params.modifier}, not IDF")
        index = SparseIndex.from_payload_rows(
            ids=collection.ids_inv,
            vectors=collection.sparse_vectors[SPARSE_VECTOR],
            payloads=collection.payload,
            deleted=collection.deleted,
            has_vector=~collection.deleted_per_vector[SPARSE_VECTOR],
        )
        # Local mode keeps its own document frequencies; the index must agree on every term.
        expected = {int(t): int(c) for t, c in collection.sparse_vectors_idf.get(SPARSE_VECTOR, {}).items() if c}
        if index.document_frequencies() != expected:
            raise ValueError("document frequencies differ from local mode's")
        log.info(
            "vectorstore.sparse_index_built",
            rows=index.rows,
            points=index.live_count,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return index

    def _ready_sparse_index(self) -> SparseIndex | None:
        """The index, built or rebuilt if needed; None when local mode must answer BM25 itself."""
        if not self._use_sparse_index:
            return None
        try:
            collection = self._local_collection()
            index = self._sparse_index
            if index is not None and (
                index.rows != len(collection.payload) or index.deleted_rows != int(np.count_nonzero(collection.deleted))
            ):
                log.warning("vectorstore.sparse_index_stale", rows=index.rows, collection_rows=len(collection.payload))
                index = None
            if index is None:
                index = self._sparse_index = self._build_sparse_index()
            return index
        except Exception as exc:  # pragma: no cover - depends on qdrant-client internals
            # Anything unexpected in local mode's internals only costs speed: its own scan answers.
            log.warning("vectorstore.sparse_index_disabled", error=f"{type(exc).__name__}: {exc}")
            self._use_sparse_index = False
            self._sparse_index = None
            return None

    def _index_write(self, apply: Callable[[SparseIndex], Any]) -> None:
        """Apply a write to the index if it exists; if that fails, drop it (the next query rebuilds it)."""
        index = self._sparse_index
        if index is None:
            return
        try:
            apply(index)
        except Exception as exc:
            log.warning("vectorstore.sparse_index_dropped", error=type(exc).__name__)
            self._sparse_index = None

    def _upsert_local(self, points: Sequence[ChunkPoint]) -> None:
        assert self._local is not None
        try:
            self._local.upsert(collection_name=self.collection, points=[self._point(p) for p in points], wait=True)
        except BaseException:
            self._sparse_index = None  # maybe partly applied: rebuild from the collection
            raise

        def apply(index: SparseIndex) -> None:
            for point in points:
                index.upsert(point.id, indices=point.sparse.indices, values=point.sparse.values, payload=point.payload)

        self._index_write(apply)

    def _delete_local(self, source: str, min_chunk_index: int | None) -> None:
        assert self._local is not None
        try:
            self._local.delete(
                collection_name=self.collection,
                points_selector=models.FilterSelector(filter=_source_filter(source, min_chunk_index=min_chunk_index)),
                wait=True,
            )
        except BaseException:
            self._sparse_index = None
            raise
        self._index_write(lambda index: index.delete_where(source=source, min_chunk_index=min_chunk_index))

    # -- writes ---------------------------------------------------------------------------------

    async def upsert(self, points: Sequence[ChunkPoint]) -> int:
        """Write points in batches (waiting for each to be applied)."""
        await self.ensure_collection()
        for start in range(0, len(points), UPSERT_BATCH):
            chunk = points[start : start + UPSERT_BATCH]
            if self._local is not None:
                await self._call_local(partial(self._upsert_local, chunk))
            else:
                batch = [self._point(p) for p in chunk]
                await self._call("upsert", collection_name=self.collection, points=batch, wait=True)
        return len(points)

    async def _delete(self, source: str, *, min_chunk_index: int | None = None) -> None:
        if self._local is not None:
            await self._call_local(partial(self._delete_local, source, min_chunk_index))
            return
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
        if self._local is not None:
            found = await self._call_local(partial(self._query_local, search))
        else:
            found = await self._query_server(search)
        return search.hits(*found)

    async def query_many(self, requests: Sequence[dict[str, Any]]) -> list[list[ScoredChunk] | Exception]:
        """Several `query` calls (keyword arguments each), answered in order; a failing one is returned as
        its exception. In local mode all of them run in one trip to the store thread: the embedded RPC
        server hands a burst of readers' questions over at once. On a server, concurrent calls."""
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

        def run_all() -> list[Any]:
            outcomes: list[Any] = []
            for search in searches:
                try:
                    outcomes.append(self._query_local(search))
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
            results.append(outcome if isinstance(outcome, Exception) else item.hits(*outcome))
        return results

    async def _query_server(self, search: _Search) -> tuple[dict[str, float], dict[str, float], list[Any]]:
        """One round trip: the raw lists (scores only) and the fused list (prefetch + RRF, with payloads)."""
        requests: list[models.QueryRequest] = []
        prefetch: list[models.Prefetch] = []
        if search.dense is not None:
            requests.append(search.dense_request(with_payload=not search.hybrid))
            prefetch.append(
                models.Prefetch(
                    query=search.dense,
                    using=DENSE_VECTOR,
                    limit=search.candidates,
                    filter=search.query_filter,
                    score_threshold=search.dense_score_threshold,
                )
            )
        if search.sparse is not None:
            requests.append(search.sparse_request(with_payload=not search.hybrid))
            prefetch.append(
                models.Prefetch(
                    query=search.sparse, using=SPARSE_VECTOR, limit=search.candidates, filter=search.query_filter
                )
            )
        if search.hybrid:
            requests.append(
                models.QueryRequest(
                    prefetch=prefetch,
                    query=models.FusionQuery(fusion=models.Fusion.RRF),
                    limit=search.limit,
                    with_payload=True,
                )
            )
        responses = await self._call("query_batch_points", collection_name=self.collection, requests=requests)
        lists = [response.points for response in responses]
        dense_list = lists[0] if search.dense is not None else []
        sparse_list = lists[-2 if search.hybrid else 0] if search.sparse is not None else []
        final = lists[-1] if search.hybrid else lists[0][: search.limit]
        return _scores(dense_list), _scores(sparse_list), final

    def _query_local(self, search: _Search) -> tuple[dict[str, float], dict[str, float], list[Any]]:
        """On the store thread: dense by local mode, BM25 by the index, fused in-process.

        Re-running both prefetches for a fused Query API request would double the work on this single
        thread, so the two lists are fused with the RRF function local mode itself uses (identical
        ranking and scores), then the payloads of the final hits are fetched.
        """
        assert self._local is not None
        dense_list: list[Any] = []
        sparse_list: list[Any] = []
        if search.dense is not None:
            dense_list = self._dense_candidates(search)
        if search.sparse is not None:
            sparse_list = self._sparse_candidates(search)
        # Raw scores first: the fusion below writes the fused score into the points it returns.
        dense_scores, sparse_scores = _scores(dense_list), _scores(sparse_list)
        if search.hybrid:
            final = reciprocal_rank_fusion([dense_list, sparse_list], limit=search.limit)
        else:
            final = (dense_list or sparse_list)[: search.limit]
        if final and final[0].payload is None:
            payloads = self._payloads([p.id for p in final])
            final = [p.model_copy(update={"payload": payloads.get(str(p.id))}) for p in final]
        return dense_scores, sparse_scores, final

    def _payloads(self, ids: list[Any]) -> dict[str, Any]:
        """The payloads of live points by id, copied. Local mode's `retrieve` copies each payload with
        `copy.deepcopy` (0.08-0.11 ms for ten hits, about a sixth of a hybrid query); payloads are JSON,
        so a plain JSON copy of the collection's own rows gives the same values in 0.015-0.05 ms."""
        assert self._local is not None
        if self._use_payload_rows:
            try:
                collection = self._local_collection()
                rows, payloads, deleted = collection.ids, collection.payload, collection.deleted
                found: dict[str, Any] = {}
                for point in ids:
                    row = rows.get(point)
                    if row is not None and not deleted[row]:
                        found[str(point)] = _json_copy(payloads[row])
                return found
            except (AttributeError, KeyError, TypeError, IndexError) as exc:  # pragma: no cover - internals
                log.warning("vectorstore.payload_rows_disabled", error=f"{type(exc).__name__}: {exc}")
                self._use_payload_rows = False
        records = self._local.retrieve(collection_name=self.collection, ids=ids, with_payload=True, with_vectors=False)
        return {str(r.id): r.payload for r in records}

    def _dense_candidates(self, search: _Search) -> list[Any]:
        """The dense list, ranked as local mode ranks it (cosine over every point)."""
        assert self._local is not None
        if self._use_dense_scan:
            with contextlib.suppress(_InternalsChanged):
                return self._dense_scan(search)
        request = search.dense_request(with_payload=not search.hybrid)
        return list(self._local.query_batch_points(collection_name=self.collection, requests=[request])[0].points)

    def _dense_scan(self, search: _Search) -> list[Any]:
        """Local mode's dense search without its per-query costs: it re-normalises every stored vector
        (already unit length: local mode normalises cosine vectors on upsert) and multiplies them in
        float64 (a float64 copy of the whole matrix): ~1.5 ms of a 2 ms query at 550 points. Here one
        float32 matrix-vector product; then local mode's own mask (filter, deleted points), order
        (`argsort`, best first) and threshold rule. Scores agree with local mode's to ~1e-7.
        """
        assert search.dense is not None
        try:
            collection = self._local_collection()
            matrix = collection.vectors[DENSE_VECTOR][: len(collection.payload)]
            mask = collection._payload_and_non_deleted_mask(search.query_filter, vector_name=DENSE_VECTOR)
            ids = collection.ids_inv
        except (AttributeError, KeyError, TypeError) as exc:  # pragma: no cover - qdrant-client internals
            log.warning("vectorstore.dense_scan_disabled", error=f"{type(exc).__name__}: {exc}")
            self._use_dense_scan = False
            raise _InternalsChanged from exc
        query = np.asarray(search.dense, dtype=np.float32)
        if query.shape != (matrix.shape[1],) or np.isnan(query).any():
            raise _InternalsChanged  # local mode's own checks and errors apply
        norm = float(np.linalg.norm(query))
        scores = matrix @ (query / norm if norm != 0.0 else query)
        threshold = search.dense_score_threshold
        hits: list[Any] = []
        for row in np.argsort(scores)[::-1]:
            if len(hits) >= search.candidates:
                break
            if not mask[row]:
                continue
            score = float(scores[row])
            if threshold is not None and score <= threshold:
                break
            hits.append(models.ScoredPoint(id=ids[row], version=0, score=score))
        return hits

    def _sparse_candidates(self, search: _Search) -> list[Any]:
        """The BM25 list exactly as local mode ranks it (without payloads when the index answers)."""
        assert self._local is not None
        assert search.sparse is not None
        index = self._ready_sparse_index()
        if index is None:
            request = search.sparse_request(with_payload=not search.hybrid)
            return list(self._local.query_batch_points(collection_name=self.collection, requests=[request])[0].points)
        validate_sparse_vector(search.sparse)  # the errors local mode raises for a malformed query
        hits = index.search(
            search.sparse.indices, search.sparse.values, limit=search.candidates, sources=search.sources
        )
        return [models.ScoredPoint(id=point, version=0, score=score) for point, score in hits]

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
            self._sparse_index = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)


class _InternalsChanged(Exception):
    """Local mode's internals are not what the fast dense scan expects: let local mode answer."""


def _json_copy(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists and scalars), without `copy.deepcopy`'s bookkeeping."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value


def _scores(points: Sequence[Any]) -> dict[str, float]:
    return {str(p.id): float(p.score) for p in points}


class _Search:
    """One hybrid query's parameters, and the raw Query API requests for its two candidate lists."""

    def __init__(
        self,
        *,
        dense: list[float] | None,
        sparse: models.SparseVector | None,
        limit: int,
        candidates: int,
        query_filter: models.Filter | None,
        sources: list[str] | None,
        dense_score_threshold: float | None,
        score_threshold: float | None = None,
    ) -> None:
        self.dense = dense
        self.sparse = sparse
        self.limit = limit
        self.candidates = candidates
        self.query_filter = query_filter
        self.sources = sources
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
            candidates=max(limit * 4, 20),
            query_filter=query_filter,
            sources=list(sources) if sources else None,
            dense_score_threshold=dense_score_threshold,
            score_threshold=score_threshold,
        )

    def hits(
        self, dense_scores: dict[str, float], sparse_scores: dict[str, float], final: Sequence[Any]
    ) -> list[ScoredChunk]:
        """The fused points as `ScoredChunk`s with both raw scores, above `score_threshold`."""
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

    def dense_request(self, *, with_payload: bool) -> models.QueryRequest:
        """The dense candidates (cosine), above `dense_score_threshold`."""
        return models.QueryRequest(
            query=self.dense,
            using=DENSE_VECTOR,
            limit=self.candidates,
            filter=self.query_filter,
            score_threshold=self.dense_score_threshold,
            with_payload=with_payload,
        )

    def sparse_request(self, *, with_payload: bool) -> models.QueryRequest:
        """The BM25 candidates (local mode applies IDF)."""
        return models.QueryRequest(
            query=self.sparse,
            using=SPARSE_VECTOR,
            limit=self.candidates,
            filter=self.query_filter,
            with_payload=with_payload,
        )


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
