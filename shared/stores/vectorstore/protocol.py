"""What the rest of the code needs from the vector store: the `VectorStore` protocol and its data types.

One collection (`QDRANT_COLLECTION`) holds one point per chunk: a named dense vector `dense` (cosine,
`EMBEDDING_DIMENSIONS`; absent in offline mode) and a sparse vector `bm25` (Qdrant applies IDF). Point ids
are deterministic (`uuid5(source#chunk_index)`), so writing a document twice converges to one copy.

Imports no Qdrant code: API processes in embedded mode only ever hold a `RemoteVectorStore`.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from shared.stores.sparse import SparseVector

__all__ = [
    "CANDIDATES_PER_LEG",
    "PAYLOAD_FIELDS",
    "ChunkPoint",
    "CollectionMismatch",
    "ScoredChunk",
    "SearchPlan",
    "SourceWrites",
    "VectorStore",
    "point_id",
]

POINT_NAMESPACE = uuid.UUID("5b0c1d2e-7a34-4c1f-9d0e-6c7f1e2a3b4c")
#: How deep each leg of a hybrid query reaches at least (at most `limit` is fused). Retrieval already asks
#: for four times the passages it keeps; deeper legs moved no answer of the quality set.
CANDIDATES_PER_LEG = 20
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


@dataclass(frozen=True)
class SearchPlan:
    """One `VectorStore.query` call, read the same way by every engine: which legs run (dense, BM25 or
    both, fused by RRF), how deep, and how their answers become `ScoredChunk`s."""

    dense: list[float] | None
    #: None when the question has no indexed term.
    sparse: SparseVector | None
    limit: int
    sources: list[str] | None
    dense_score_threshold: float | None
    score_threshold: float | None

    @classmethod
    def of(
        cls,
        *,
        dense: list[float] | None,
        sparse: SparseVector | None,
        limit: int = 5,
        score_threshold: float | None = None,
        dense_score_threshold: float | None = None,
        sources: Sequence[str] | None = None,
    ) -> SearchPlan | None:
        """The plan for `VectorStore.query`'s arguments; None when there is nothing to search with."""
        has_sparse = sparse is not None and bool(sparse.indices)
        if dense is None and not has_sparse:
            return None
        return cls(
            dense=dense,
            sparse=sparse if has_sparse else None,
            limit=limit,
            sources=list(sources) if sources else None,
            dense_score_threshold=dense_score_threshold,
            score_threshold=score_threshold,
        )

    @property
    def hybrid(self) -> bool:
        """Both legs run and are fused."""
        return self.dense is not None and self.sparse is not None

    @property
    def depth(self) -> int:
        """How many hits each leg asks for: hybrid, `CANDIDATES_PER_LEG` at least; one leg, `limit`."""
        return max(self.limit, CANDIDATES_PER_LEG) if self.hybrid else self.limit

    def chunks(
        self, final: Sequence[Any], *, dense_scores: dict[str, float], sparse_scores: dict[str, float]
    ) -> list[ScoredChunk]:
        """The final points (`id`, `score`, `payload`) as `ScoredChunk`s above `score_threshold`, with each
        hit's raw leg scores. One leg: its own scores are the raw ones (pass empty mappings)."""
        if not self.hybrid:
            own = {str(p.id): float(p.score) for p in final}
            dense_scores = own if self.dense is not None else {}
            sparse_scores = own if self.sparse is not None else {}
        hits = [
            ScoredChunk.from_payload(
                id=str(p.id),
                score=float(p.score),
                payload=dict(p.payload or {}),
                dense=dense_scores.get(str(p.id)),
                sparse=sparse_scores.get(str(p.id)),
            )
            for p in final
        ]
        if self.score_threshold is not None:
            hits = [h for h in hits if h.score >= self.score_threshold]
        return hits


class SourceWrites(ABC):
    """`delete_source` and `replace_source`, the same for every engine over its own upsert, count and
    delete-by-source."""

    @abstractmethod
    async def upsert(self, points: Sequence[ChunkPoint]) -> int:
        """Write points (same id overwrites); returns the number written."""

    @abstractmethod
    async def count(self, source: str | None = None) -> int:
        """Exact number of points (of one source, or all)."""

    @abstractmethod
    async def _delete(self, source: str, *, min_chunk_index: int | None = None) -> None:
        """Delete the source's points (those from `min_chunk_index` on, when given)."""

    async def delete_source(self, source: str) -> int:
        """Remove every chunk of `source`; returns how many there were."""
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
