"""The offline dense embedder: the bundled e5 model, in-process, with no download."""

from __future__ import annotations

import numpy as np

from shared.inference.local_dense import LocalDenseEmbedder
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
    assert embedder.signature == f"multilingual-e5-small-q4:{OFFLINE_EMBEDDING_DIMENSIONS}"
    assert await embedder.embed_texts([]) == []
