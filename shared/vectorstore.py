"""Vector store adapter (Qdrant) and the embedded-mode arrangement.

One collection (`QDRANT_COLLECTION`) holds one point per chunk: a named dense vector `dense` (cosine,
`EMBEDDING_DIMENSIONS`; absent in offline mode) and a sparse vector `bm25` (Qdrant applies IDF). Point ids
are deterministic (`uuid5(source#chunk_index)`), so writing a document twice converges to one copy.

Two ways to reach the store, behind one `VectorStore` protocol:

- `QdrantVectorStore`: talks to Qdrant itself. With `QDRANT_URL` every process uses an
  `AsyncQdrantClient`. In embedded mode (no `QDRANT_URL`) only the arq worker opens the local-mode store
  (`QdrantClient(path=DATA_DIR/qdrant)`, which allows one process per folder); its blocking calls run on
  one dedicated thread so the event loop never blocks.
- `RemoteVectorStore`: what the API processes use in embedded mode. Each call is a small RPC over Redis:
  the request goes onto a list that the worker's `VectorStoreRpcServer` pops (BLPOP), and the answer comes
  back on a per-request reply key. Ranking is the same as on a server because the same Query API
  (prefetch + RRF fusion) runs inside the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

from shared.config import Settings
from shared.constants import DENSE_VECTOR, SPARSE_VECTOR, VECTOR_RPC_PREFIX
from shared.errors import UpstreamUnavailable
from shared.logging import get_logger
from shared.resilience import Resilience, Upstream
from shared.sparse import SparseVector

if TYPE_CHECKING:
    from arq.connections import ArqRedis

__all__ = [
    "ChunkPoint",
    "CollectionMismatch",
    "QdrantVectorStore",
    "RemoteVectorStore",
    "ScoredChunk",
    "VectorStore",
    "VectorStoreRpcServer",
    "create_vector_store",
    "point_id",
]

log = get_logger(__name__)

POINT_NAMESPACE = uuid.UUID("5b0c1d2e-7a34-4c1f-9d0e-6c7f1e2a3b4c")
UPSERT_BATCH = 256
RPC_REQUESTS_KEY = VECTOR_RPC_PREFIX + "requests"
RPC_REPLY_PREFIX = VECTOR_RPC_PREFIX + "reply:"
#: Present while a worker serves the local store (TTL refreshed every few seconds, deleted on shutdown).
RPC_SERVER_KEY = VECTOR_RPC_PREFIX + "server"
RPC_SERVER_TTL_S = 15
PAYLOAD_FIELDS = ("source", "title", "heading", "heading_path", "chunk_index", "url", "content", "content_hash")


class CollectionMismatch(RuntimeError):
    """The existing collection was built for other vectors (e.g. another EMBEDDING_DIMENSIONS)."""


def point_id(source: str, chunk_index: int) -> str:
    """The deterministic id of a chunk's point."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{source}#{chunk_index}"))


@dataclass
class ChunkPoint:
    """One chunk ready for the store: payload plus sparse (always) and dense (online only) vectors."""

    id: str
    payload: dict[str, Any]
    sparse: SparseVector
    dense: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (for the RPC)."""
        return {"id": self.id, "payload": self.payload, "sparse": self.sparse.as_dict(), "dense": self.dense}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkPoint:
        """Inverse of `as_dict`."""
        sparse = data.get("sparse") or {}
        return cls(
            id=data["id"],
            payload=data["payload"],
            sparse=SparseVector(indices=list(sparse.get("indices", [])), values=list(sparse.get("values", []))),
            dense=data.get("dense"),
        )


@dataclass
class ScoredChunk:
    """A search hit: the chunk's payload fields, the fused score and, when known, the raw scores.

    `score` is the RRF-fused score for hybrid queries (rank based, about 1/60 per list) and the raw BM25
    score for sparse-only queries. `dense_score` is the cosine similarity when the chunk was in the dense
    candidate list; `sparse_score` the BM25 score when it was in the sparse list (None otherwise).
    """

    id: str
    score: float
    source: str
    title: str | None
    heading: str | None
    heading_path: list[str]
    chunk_index: int
    url: str | None
    content: str
    content_hash: str
    dense_score: float | None = None
    sparse_score: float | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_payload(
        cls, *, id: str, score: float, payload: dict[str, Any], dense: float | None, sparse: float | None
    ) -> ScoredChunk:
        """Build from a Qdrant point's payload."""
        return cls(
            id=str(id),
            score=float(score),
            source=str(payload.get("source", "")),
            title=payload.get("title"),
            heading=payload.get("heading"),
            heading_path=list(payload.get("heading_path") or []),
            chunk_index=int(payload.get("chunk_index", 0)),
            url=payload.get("url"),
            content=str(payload.get("content", "")),
            content_hash=str(payload.get("content_hash", "")),
            dense_score=dense,
            sparse_score=sparse,
            payload=dict(payload),
        )


@runtime_checkable
class VectorStore(Protocol):
    """What the rest of the code needs from the vector store."""

    async def ensure_collection(self) -> None:
        """Create the collection if missing; raise `CollectionMismatch` if it has other dimensions."""
        ...

    async def upsert(self, points: Sequence[ChunkPoint]) -> int:
        """Write points (same id overwrites); returns the number written."""
        ...

    async def delete_source(self, source: str) -> int:
        """Remove every chunk of a source; returns how many there were."""
        ...

    async def replace_source(self, source: str, points: Sequence[ChunkPoint], *, total: int | None = None) -> int:
        """Make the source's chunks exactly `points` (upsert, then drop chunk indexes >= `total`).

        `total` (default `len(points)`) lets a caller upsert only the chunks that changed while the
        unchanged ones (same id, same content) stay as they are.
        """
        ...

    async def chunk_hashes(self, source: str) -> dict[int, str]:
        """chunk_index -> content_hash of the source's stored chunks."""
        ...

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
        """Hybrid search (dense + BM25 fused with RRF); sparse-only when `dense` is None."""
        ...

    async def count(self, source: str | None = None) -> int:
        """Exact number of points (of one source, or all)."""
        ...

    async def health(self) -> dict[str, Any]:
        """{"status": "up"|"down", ...} within a short time."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


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
        self.dimensions = settings.embedding_dimensions
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

    async def _call(self, name: str, **kwargs: Any) -> Any:
        async def run() -> Any:
            if self._local is not None:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, partial(getattr(self._local, name), **kwargs))
            assert self._client is not None
            return await getattr(self._client, name)(**kwargs)

        if self.resilience is None:
            return await run()
        return await self.resilience.call(Upstream.QDRANT, run)

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

    async def upsert(self, points: Sequence[ChunkPoint]) -> int:
        """Write points in batches (waiting for each to be applied)."""
        await self.ensure_collection()
        for start in range(0, len(points), UPSERT_BATCH):
            batch = [self._point(p) for p in points[start : start + UPSERT_BATCH]]
            await self._call("upsert", collection_name=self.collection, points=batch, wait=True)
        return len(points)

    async def delete_source(self, source: str) -> int:
        """Remove every chunk of `source`."""
        await self.ensure_collection()
        existing = await self.count(source)
        if existing:
            await self._call(
                "delete",
                collection_name=self.collection,
                points_selector=models.FilterSelector(filter=_source_filter(source)),
                wait=True,
            )
        return existing

    async def replace_source(self, source: str, points: Sequence[ChunkPoint], *, total: int | None = None) -> int:
        """Upsert `points`, then delete the source's chunks with an index past the new count (`total`).

        Ids are deterministic, so a crash between the two steps leaves only chunks that a re-run
        overwrites or deletes: the store converges to exactly `points`.
        """
        written = await self.upsert(points)
        await self._call(
            "delete",
            collection_name=self.collection,
            points_selector=models.FilterSelector(
                filter=_source_filter(source, min_chunk_index=len(points) if total is None else total)
            ),
            wait=True,
        )
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
        """Hybrid search in one round trip: fused (RRF over dense + BM25 prefetches) plus both raw lists."""
        await self.ensure_collection()
        has_sparse = sparse is not None and bool(sparse.indices)
        if dense is None and not has_sparse:
            return []
        query_filter = (
            models.Filter(must=[models.FieldCondition(key="source", match=models.MatchAny(any=list(sources)))])
            if sources
            else None
        )
        candidates = max(limit * 4, 20)
        # With both lists the raw ones only supply scores by id: payloads come with the fused list.
        hybrid = dense is not None and has_sparse
        dense_req = (
            models.QueryRequest(
                query=dense,
                using=DENSE_VECTOR,
                limit=candidates,
                filter=query_filter,
                score_threshold=dense_score_threshold,
                with_payload=not hybrid,
            )
            if dense is not None
            else None
        )
        sparse_req = (
            models.QueryRequest(
                query=_to_qdrant_sparse(sparse),
                using=SPARSE_VECTOR,
                limit=candidates,
                filter=query_filter,
                with_payload=not hybrid,
            )
            if has_sparse
            else None
        )
        requests = [r for r in (dense_req, sparse_req) if r is not None]
        fused_req = None
        # Local mode scores by brute force in Python: re-running both prefetches for the fused request
        # would double the work on the worker's single store thread, so it fuses the two lists it already
        # has with the same RRF function local mode itself uses (identical ranking), then fetches payloads.
        if hybrid and self._local is None:
            fused_req = models.QueryRequest(
                prefetch=[
                    models.Prefetch(
                        query=dense,
                        using=DENSE_VECTOR,
                        limit=candidates,
                        filter=query_filter,
                        score_threshold=dense_score_threshold,
                    ),
                    models.Prefetch(
                        query=_to_qdrant_sparse(sparse), using=SPARSE_VECTOR, limit=candidates, filter=query_filter
                    ),
                ],
                query=models.FusionQuery(fusion=models.Fusion.RRF),
                limit=limit,
                with_payload=True,
            )
            requests.append(fused_req)
        responses = await self._call("query_batch_points", collection_name=self.collection, requests=requests)
        lists = [response.points for response in responses]
        dense_scores = {str(p.id): float(p.score) for p in lists[0]} if dense_req is not None else {}
        sparse_list = lists[1] if (dense_req is not None and sparse_req is not None) else lists[0]
        sparse_scores = {str(p.id): float(p.score) for p in sparse_list} if sparse_req is not None else {}
        if fused_req is not None:
            final = lists[-1]
        elif hybrid:
            fused = reciprocal_rank_fusion([lists[0], lists[1]], limit=limit)
            records = await self._call(
                "retrieve",
                collection_name=self.collection,
                ids=[p.id for p in fused],
                with_payload=True,
                with_vectors=False,
            )
            payloads = {str(r.id): r.payload for r in records}
            final = [p.model_copy(update={"payload": payloads.get(str(p.id))}) for p in fused]
        else:
            final = lists[0][:limit]
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
        if score_threshold is not None:
            hits = [h for h in hits if h.score >= score_threshold]
        return hits

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


# ---------------------------------------------------------------------------------------------
# Embedded mode: the worker serves the local store to the API processes over Redis.
# ---------------------------------------------------------------------------------------------


def _encode_args(method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if "points" in out:
        out["points"] = [p.as_dict() for p in out["points"]]
    if out.get("sparse") is not None:
        out["sparse"] = SparseVector(list(out["sparse"].indices), list(out["sparse"].values)).as_dict()
    if out.get("sources") is not None:
        out["sources"] = list(out["sources"])
    return out


def _decode_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if "points" in out:
        out["points"] = [ChunkPoint.from_dict(p) for p in out["points"]]
    if out.get("sparse") is not None:
        out["sparse"] = SparseVector(indices=list(out["sparse"]["indices"]), values=list(out["sparse"]["values"]))
    return out


RPC_METHODS = frozenset(
    {"ensure_collection", "upsert", "delete_source", "replace_source", "chunk_hashes", "query", "count", "health"}
)


class RemoteVectorStore:
    """`VectorStore` for API processes in embedded mode: every call is an RPC to the worker over Redis."""

    def __init__(self, settings: Settings, *, redis: ArqRedis, resilience: Resilience | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.resilience = resilience
        self.timeout_s = settings.vector_rpc_timeout
        self.mode = "local-rpc"

    async def _rpc(self, method: str, timeout_s: float | None = None, **kwargs: Any) -> Any:
        timeout = timeout_s or self.timeout_s

        async def call() -> Any:
            if not await self.redis.exists(RPC_SERVER_KEY):
                # Fail fast instead of waiting for a timeout while the worker is down or restarting.
                raise ConnectionError("the ingestion worker, which serves the embedded vector store, is not running")
            request_id = uuid.uuid4().hex
            reply_key = RPC_REPLY_PREFIX + request_id
            message = {
                "id": request_id,
                "method": method,
                "args": _encode_args(method, kwargs),
                "reply": reply_key,
                "deadline": time.time() + timeout,
            }
            await self.redis.rpush(RPC_REQUESTS_KEY, json.dumps(message, separators=(",", ":")))
            answer = await self.redis.blpop([reply_key], timeout=timeout)
            if answer is None:
                with contextlib.suppress(Exception):
                    await self.redis.delete(reply_key)
                raise TimeoutError(f"no answer from the ingestion worker's vector store within {timeout:.0f} s")
            reply = json.loads(answer[1])
            if reply.get("ok"):
                return reply.get("result")
            if reply.get("kind") == "caller":
                raise ValueError(reply.get("message", "bad vector store request"))
            if reply.get("kind") == "mismatch":
                raise CollectionMismatch(reply.get("message", "collection mismatch"))
            raise ConnectionError(f"vector store error in the worker: {reply.get('error')}")

        if self.resilience is None:
            return await call()
        return await self.resilience.call(Upstream.QDRANT, call, retry=False)

    async def ensure_collection(self) -> None:
        """Ask the worker to ensure the collection."""
        await self._rpc("ensure_collection")

    async def upsert(self, points: Sequence[ChunkPoint]) -> int:
        """Write points through the worker."""
        return int(await self._rpc("upsert", points=list(points)))

    async def delete_source(self, source: str) -> int:
        """Remove a source's chunks through the worker."""
        return int(await self._rpc("delete_source", source=source))

    async def replace_source(self, source: str, points: Sequence[ChunkPoint], *, total: int | None = None) -> int:
        """Replace a source's chunks through the worker."""
        return int(await self._rpc("replace_source", source=source, points=list(points), total=total))

    async def chunk_hashes(self, source: str) -> dict[int, str]:
        """Stored chunk hashes of a source."""
        result = await self._rpc("chunk_hashes", source=source)
        return {int(k): str(v) for k, v in result.items()}

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
        """Hybrid search run by the worker."""
        result = await self._rpc(
            "query",
            dense=dense,
            sparse=sparse,
            limit=limit,
            score_threshold=score_threshold,
            dense_score_threshold=dense_score_threshold,
            sources=sources,
        )
        return [ScoredChunk(**item) for item in result]

    async def count(self, source: str | None = None) -> int:
        """Point count from the worker."""
        return int(await self._rpc("count", source=source))

    async def health(self) -> dict[str, Any]:
        """The worker's store health, with the RPC round trip."""
        started = time.perf_counter()
        try:
            result: dict[str, Any] = await self._rpc("health", timeout_s=2.0)
        except Exception as exc:
            return {"status": "down", "mode": self.mode, "detail": f"vector store RPC failed: {type(exc).__name__}"}
        result = dict(result)
        result["mode"] = self.mode
        result["rpc_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return result

    async def close(self) -> None:
        """Nothing to close: the Redis pool belongs to `Services`."""


class VectorStoreRpcServer:
    """Runs in the arq worker: pops RPC requests from Redis and answers them from the local store."""

    def __init__(self, store: VectorStore, *, redis: ArqRedis, concurrency: int = 16) -> None:
        self.store = store
        self.redis = redis
        self._semaphore = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.served = 0

    async def start(self) -> None:
        """Announce the server and start serving in the background."""
        await self.redis.set(RPC_SERVER_KEY, "1", ex=RPC_SERVER_TTL_S)
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name="vectorstore-rpc")

    async def stop(self) -> None:
        """Stop serving; in-flight requests get a moment to finish."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=2.0)
        with contextlib.suppress(Exception):
            await self.redis.delete(RPC_SERVER_KEY)

    async def _serve(self) -> None:
        log.info("vectorstore.rpc_serving", key=RPC_REQUESTS_KEY)
        announced = 0.0
        while True:
            try:
                if time.monotonic() - announced > RPC_SERVER_TTL_S / 3:
                    await self.redis.set(RPC_SERVER_KEY, "1", ex=RPC_SERVER_TTL_S)
                    announced = time.monotonic()
                item = await self.redis.blpop([RPC_REQUESTS_KEY], timeout=1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("vectorstore.rpc_pop_failed", error=type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if item is None:
                continue
            await self._semaphore.acquire()
            task = asyncio.create_task(self._handle(item[1]))
            self._inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._semaphore.release()

    async def _handle(self, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
            reply_key = str(message["reply"])
        except Exception:
            log.warning("vectorstore.rpc_bad_message")
            return
        if float(message.get("deadline", 0)) < time.time():
            return  # the caller gave up long ago (e.g. queued while the worker restarted)
        reply = await self.dispatch(str(message.get("method", "")), message.get("args") or {})
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(reply_key, json.dumps(reply, separators=(",", ":")))
                pipe.expire(reply_key, 30)
                await pipe.execute()
        except Exception as exc:
            log.warning("vectorstore.rpc_reply_failed", error=type(exc).__name__)
        self.served += 1

    async def dispatch(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run one store method and return the JSON reply."""
        if method not in RPC_METHODS:
            return {"ok": False, "kind": "caller", "error": "unknown_method", "message": f"unknown method {method!r}"}
        fn: Callable[..., Awaitable[Any]] = getattr(self.store, method)
        try:
            result = await fn(**_decode_args(args))
        except CollectionMismatch as exc:
            return {"ok": False, "kind": "mismatch", "error": type(exc).__name__, "message": str(exc)}
        except (ValueError, TypeError, KeyError) as exc:
            return {"ok": False, "kind": "caller", "error": type(exc).__name__, "message": str(exc)[:500]}
        except UpstreamUnavailable as exc:
            return {"ok": False, "kind": "unavailable", "error": exc.code, "message": str(exc.detail)}
        except Exception as exc:
            log.warning("vectorstore.rpc_failed", method=method, error=type(exc).__name__)
            return {"ok": False, "kind": "unavailable", "error": type(exc).__name__, "message": "store error"}
        if method == "query":
            result = [asdict(hit) for hit in result]
        elif method == "chunk_hashes":
            result = {str(k): v for k, v in result.items()}
        return {"ok": True, "result": result}


def create_vector_store(
    settings: Settings, *, role: str, redis: ArqRedis, resilience: Resilience | None = None
) -> VectorStore:
    """The process's store: a server client everywhere with QDRANT_URL; in embedded mode the worker
    owns the local folder and every other role reaches it over the Redis RPC."""
    from shared.constants import ROLE_WORKER

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
    if role == ROLE_WORKER:
        settings.qdrant_path.mkdir(parents=True, exist_ok=True)
        return QdrantVectorStore(
            settings, resilience=resilience, local_client=QdrantClient(path=str(settings.qdrant_path))
        )
    return RemoteVectorStore(settings, redis=redis, resilience=resilience)
