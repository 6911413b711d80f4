"""A local semantic model: static word embeddings (wordllama, 256 dimensions) that ship in the wheel.

In every mode it gives the relevance gate a semantic signal that does not depend on the operator's
embedding model (the cosine between the question and a candidate passage), and the ranking the
similarity of the question and each candidate's heading. It embeds any text in well under a millisecond,
so it can score passages at question time; the offline dense embedder (`shared.inference.local_dense`)
is far better at ranking but ~1,000 times slower per passage.

The weights load from the installed package's own folder with downloads disabled, so nothing is fetched
at run time. Loading costs ~0.3 s and ~100 MB, so each process loads the model on first use (in a thread)
rather than at start-up. Embedding is a token lookup and an average: ~0.2 ms for a question, ~0.6 ms for
a 1,200-character passage.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.platform.constants import LOCAL_EMBEDDING_DIMENSIONS, LOCAL_EMBEDDING_MODEL

__all__ = ["LocalEmbedder"]

#: Passage and heading vectors kept per process for the gate (256 float32 each: 8,192 are ~8 MB).
CACHED_VECTORS = 8192


class LocalEmbedder:
    """Question-to-text similarities from the bundled wordllama model."""

    model = LOCAL_EMBEDDING_MODEL
    dimensions = LOCAL_EMBEDDING_DIMENSIONS

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        # One fill at a time: a burst of questions arrives with the same uncached passages, and each would
        # otherwise embed all of them (measured: a third of the API's CPU in bench.chat's first burst).
        self._filling = asyncio.Lock()

    def _loaded(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    import wordllama  # deferred: ~35 MB of imports a process may never need

                    self._model = wordllama.WordLlama.load(
                        cache_dir=Path(wordllama.__file__).parent, disable_download=True
                    )
        return self._model

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text (call off the event loop for many texts)."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = np.asarray(self._loaded().embed([t or " " for t in texts], norm=True), dtype=np.float32)
        return vectors

    async def similarities(self, query: str, texts: Sequence[str]) -> list[float]:
        """Cosine similarity of the question with each text. The texts' vectors are kept (LRU): the same
        passages and headings come back for many questions, and embedding 40 of them costs ~8 ms."""
        if not texts:
            return []
        async with self._filling:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            vectors = await asyncio.to_thread(self.embed_sync, [query, *missing])
            for text, vector in zip(missing, vectors[1:], strict=True):
                self._cache[text] = vector
                if len(self._cache) > CACHED_VECTORS:
                    self._cache.popitem(last=False)
            for text in texts:
                self._cache.move_to_end(text)
            matrix = np.stack([self._cache[t] for t in texts])
        return [float(x) for x in matrix @ vectors[0]]
