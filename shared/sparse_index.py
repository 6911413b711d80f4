"""In-memory inverted index for the `bm25` sparse vector of a Qdrant local-mode collection.

Qdrant local mode scores a sparse query by brute force in pure Python (a merge of the query with every
stored vector, ~6 ms per query at 600 points). This index keeps, per term, numpy arrays of the rows that
contain it and their weights, so a query only touches the rows sharing a term with it.

Results are identical to local mode's (`LocalCollection.search` with `Modifier.IDF`), ties included:

- Rows mirror local mode's internal rows one for one (same order, deleted points keep their row and
  their vector, an upsert of a known id reuses its row, a new id appends one), because local mode ranks
  with `np.argsort` over the score array of *every* row, and the order it gives equal scores depends on
  that whole array.
- IDF is applied to the query as local mode does: `ln((n - df + 0.5) / (df + 0.5) + 1)` with `n` the
  live points that have the vector and `df` the live ones containing the term; the products are summed
  in float64 in ascending term order and the total rounded to float32; a row sharing no term scores
  -inf and is never returned.

The index holds no lock: its owner (`QdrantVectorStore`) calls it only from the local store's single
thread, the same one that writes the collection.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["IndexRow", "SparseIndex", "UnsupportedRow", "normalize_id"]


class UnsupportedRow(ValueError):
    """A stored point the index cannot mirror exactly (e.g. a non-string `source`)."""


def normalize_id(point_id: Any) -> str | int:
    """The id as local mode keys it: canonical UUID string, or the unsigned integer."""
    if isinstance(point_id, int) and not isinstance(point_id, bool):
        return point_id
    return str(uuid.UUID(str(point_id)))


@dataclass(frozen=True)
class IndexRow:
    """One row of the collection as the index needs it."""

    id: str | int
    indices: Sequence[int]
    values: Sequence[float]
    source: str | None
    chunk_index: int | float | None
    deleted: bool = False
    has_vector: bool = True


def _source_of(payload: dict[str, Any]) -> str | None:
    source = payload.get("source")
    if source is not None and not isinstance(source, str):
        raise UnsupportedRow(f"payload 'source' is a {type(source).__name__}, not a string")
    return source


def _chunk_index_of(payload: dict[str, Any]) -> int | float | None:
    value = payload.get("chunk_index")
    # What a `Range` condition accepts in local mode: numbers, not booleans.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


class SparseIndex:
    """Term -> (row ids, weights), with the per-row facts that filters and IDF need."""

    def __init__(self) -> None:
        self._ids: list[str | int] = []
        self._row_of: dict[str | int, int] = {}
        self._terms: list[tuple[int, ...]] = []
        self._postings: dict[int, dict[int, float]] = {}
        self._compiled: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = {}
        self._sources: list[str | None] = []
        self._chunk_indexes: list[int | float | None] = []
        self._deleted: list[bool] = []
        self._has_vector: list[bool] = []
        self._source_codes: dict[str | None, int] = {}
        self._arrays: tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]] | None = None

    # -- building and writing -------------------------------------------------------------------

    @classmethod
    def from_rows(cls, rows: Iterable[IndexRow]) -> SparseIndex:
        """An index over `rows`, in the collection's internal row order."""
        index = cls()
        for row in rows:
            point = normalize_id(row.id)
            index._row_of[point] = len(index._ids)
            index._ids.append(point)
            index._sources.append(row.source)
            index._chunk_indexes.append(row.chunk_index)
            index._deleted.append(bool(row.deleted))
            index._has_vector.append(bool(row.has_vector))
            index._terms.append(())
            index._set_vector(len(index._ids) - 1, row.indices, row.values)
        return index

    @classmethod
    def from_payload_rows(
        cls,
        *,
        ids: Sequence[Any],
        vectors: Sequence[Any],
        payloads: Sequence[dict[str, Any]],
        deleted: Sequence[bool],
        has_vector: Sequence[bool],
    ) -> SparseIndex:
        """An index from parallel per-row sequences (ids, sparse vectors, payloads, flags)."""
        return cls.from_rows(
            IndexRow(
                id=ids[row],
                indices=list(vectors[row].indices),
                values=list(vectors[row].values),
                source=_source_of(payloads[row]),
                chunk_index=_chunk_index_of(payloads[row]),
                deleted=bool(deleted[row]),
                has_vector=bool(has_vector[row]),
            )
            for row in range(len(payloads))
        )

    def _set_vector(self, row: int, indices: Sequence[int], values: Sequence[float]) -> None:
        for term in self._terms[row]:
            postings = self._postings[term]
            postings.pop(row, None)
            if not postings:
                del self._postings[term]
            self._compiled.pop(term, None)
        terms = tuple(int(i) for i in indices)
        for term, value in zip(terms, values, strict=True):
            self._postings.setdefault(term, {})[row] = float(value)
            self._compiled.pop(term, None)
        self._terms[row] = terms

    def upsert(self, point_id: Any, *, indices: Sequence[int], values: Sequence[float], payload: dict[str, Any]) -> int:
        """Write one point as local mode does (a known id keeps its row, even a deleted one); returns the row."""
        source, chunk_index = _source_of(payload), _chunk_index_of(payload)
        point = normalize_id(point_id)
        row = self._row_of.get(point)
        if row is None:
            row = len(self._ids)
            self._row_of[point] = row
            self._ids.append(point)
            self._sources.append(source)
            self._chunk_indexes.append(chunk_index)
            self._deleted.append(False)
            self._has_vector.append(True)
            self._terms.append(())
        else:
            self._sources[row] = source
            self._chunk_indexes[row] = chunk_index
            self._deleted[row] = False
            self._has_vector[row] = True
        self._set_vector(row, indices, values)
        self._arrays = None
        return row

    def delete_where(self, *, source: str, min_chunk_index: int | None = None) -> int:
        """Mark the live points of `source` (with chunk_index >= `min_chunk_index`) deleted; returns how many.

        Like local mode, a deleted point keeps its row and its vector (it is still scored, never returned).
        """
        deleted = 0
        for row, row_source in enumerate(self._sources):
            if self._deleted[row] or row_source != source:
                continue
            if min_chunk_index is not None:
                chunk_index = self._chunk_indexes[row]
                if chunk_index is None or chunk_index < min_chunk_index:
                    continue
            self._deleted[row] = True
            deleted += 1
        if deleted:
            self._arrays = None
        return deleted

    # -- reading --------------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows, deleted ones included (local mode's `len(collection.payload)`)."""
        return len(self._ids)

    @property
    def deleted_rows(self) -> int:
        """Rows of deleted points."""
        return sum(self._deleted)

    @property
    def live_count(self) -> int:
        """Points that count for IDF: not deleted and holding the vector."""
        live, _ = self._live_and_codes()
        return int(np.count_nonzero(live))

    def document_frequency(self, term: int) -> int:
        """Live points containing `term`."""
        live, _ = self._live_and_codes()
        rows, _ = self._postings_of(term)
        return int(np.count_nonzero(live[rows])) if rows.size else 0

    def document_frequencies(self) -> dict[int, int]:
        """Every term with at least one live point, with its document frequency."""
        frequencies = {term: self.document_frequency(term) for term in self._postings}
        return {term: df for term, df in frequencies.items() if df}

    def _live_and_codes(self) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        if self._arrays is None:
            codes = [self._source_codes.setdefault(source, len(self._source_codes)) for source in self._sources]
            live = ~np.array(self._deleted, dtype=bool) & np.array(self._has_vector, dtype=bool)
            self._arrays = (live.reshape(len(self._ids)), np.array(codes, dtype=np.int64).reshape(len(self._ids)))
        return self._arrays

    def _postings_of(self, term: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        compiled = self._compiled.get(term)
        if compiled is None:
            postings = self._postings.get(term, {})
            compiled = (
                np.fromiter(postings.keys(), dtype=np.int64, count=len(postings)),
                np.fromiter(postings.values(), dtype=np.float64, count=len(postings)),
            )
            self._compiled[term] = compiled
        return compiled

    def scores(self, indices: Sequence[int], values: Sequence[float]) -> npt.NDArray[np.float32]:
        """Local mode's score array over every row (-inf where a row shares no term with the query)."""
        if len(indices) != len(values):
            raise ValueError("Indices and values must have the same length")
        if len(set(indices)) != len(indices):
            raise ValueError("Indices must be unique")
        live, _ = self._live_and_codes()
        num_docs = int(np.count_nonzero(live))
        weighted: list[tuple[int, float]] = []
        for term, value in zip(indices, values, strict=True):
            rows, _ = self._postings_of(int(term))
            df = int(np.count_nonzero(live[rows])) if rows.size else 0
            weighted.append((int(term), value * math.log((num_docs - df + 0.5) / (df + 0.5) + 1)))
        weighted.sort(key=lambda pair: pair[0])
        total = np.zeros(len(self._ids), dtype=np.float64)
        overlap = np.zeros(len(self._ids), dtype=bool)
        for term, weight in weighted:
            rows, weights = self._postings_of(term)
            if rows.size:
                total[rows] += weight * weights
                overlap[rows] = True
        scores = np.full(len(self._ids), -np.inf, dtype=np.float32)
        scores[overlap] = total[overlap].astype(np.float32)
        return scores

    def search(
        self,
        indices: Sequence[int],
        values: Sequence[float],
        *,
        limit: int,
        sources: Sequence[str] | None = None,
        score_threshold: float | None = None,
    ) -> list[tuple[str | int, float]]:
        """The best `limit` (id, score) pairs, in local mode's order; `sources` keeps only those sources."""
        if not self._ids or limit <= 0:
            return []
        scores = self.scores(indices, values)
        live, codes = self._live_and_codes()
        keep = live & (scores != -np.inf)
        if sources is not None:
            wanted = [self._source_codes[s] for s in set(sources) if s in self._source_codes]
            keep &= np.isin(codes, np.array(wanted, dtype=np.int64))
        # Local mode walks `np.argsort(scores)[::-1]`; on that walk scores never increase, so its
        # "stop at the first score <= threshold" is the same as dropping every such score.
        order = np.argsort(scores)[::-1]
        picked = order[keep[order]]
        if score_threshold is not None:
            picked = picked[scores[picked] > score_threshold]
        return [(self._ids[row], float(scores[row])) for row in picked[:limit]]
