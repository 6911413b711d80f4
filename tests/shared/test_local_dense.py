"""The offline dense embedder: the bundled e5 model, in-process, with no download."""

from __future__ import annotations

import numpy as np
import pytest

from shared.inference.local_dense import CONTEXT_WEIGHT, LocalDenseEmbedder
from shared.platform.constants import OFFLINE_EMBEDDING_DIMENSIONS

PASSAGES = [
    "The Zero Moment Point is the point on the ground where the robot's net moment is zero; keeping it inside "
    "the support polygon keeps a walking biped from tipping over.",
    "Knead the dough for ten minutes, let it rise overnight, then bake it at 250 degrees.",
]


async def test_questions_and_passages_are_embedded_apart_and_rank_by_meaning() -> None:
    """384-dim unit vectors; a question is embedded as a query (not as a passage), lands nearer the
    passage that answers it, and a repeated question is served from the cache."""
    embedder = LocalDenseEmbedder(threads=1)
    passages = np.asarray(await embedder.embed_texts(PASSAGES))
    question = "How does a humanoid keep its balance while walking?"
    query = np.asarray(await embedder.embed_query(question))
    assert passages.shape == (2, OFFLINE_EMBEDDING_DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-3)
    scores = passages @ query
    assert scores[0] > scores[1]
    as_passage = np.asarray(await embedder.embed_texts([question]))[0]
    assert not np.allclose(as_passage, query, atol=1e-3)  # e5's "query: " / "passage: " prefixes differ
    assert await embedder.embed_query(question) is await embedder.embed_query(question)
    assert embedder.signature == f"multilingual-e5-small-q4:{OFFLINE_EMBEDDING_DIMENSIONS}:context={CONTEXT_WEIGHT}"
    assert await embedder.embed_texts([]) == []


async def test_a_chunk_vector_carries_its_context_embedded_on_its_own() -> None:
    """normalize(e5(text) + CONTEXT_WEIGHT * e5(context)), unit length, in the chunks' order; chunks that
    share a context get the same context vector."""
    embedder = LocalDenseEmbedder(threads=1)
    contexts = ["Humanoid Locomotion > Balance", "Baking > Bread", "Humanoid Locomotion > Balance"]
    texts = [f"{context}\n\n{passage}" for context, passage in zip(contexts, [*PASSAGES, PASSAGES[0]], strict=True)]
    chunks = np.asarray(await embedder.embed_chunks(texts, contexts=contexts))
    alone = np.asarray(await embedder.embed_texts(texts))
    context_vectors = np.asarray(await embedder.embed_texts(contexts))
    expected = alone + CONTEXT_WEIGHT * context_vectors
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(chunks, expected, atol=1e-5)
    np.testing.assert_allclose(chunks[0], chunks[2], atol=1e-6)
    assert await embedder.embed_chunks([], contexts=[]) == []
    with pytest.raises(ValueError, match="contexts"):
        await embedder.embed_chunks(texts, contexts=contexts[:1])
