"""The bundled static model behind the relevance gate and the heading nudge (wordllama, in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from shared.inference.semantic import LocalEmbedder

pytestmark = pytest.mark.asyncio(loop_scope="session")


class _CountingEmbedder(LocalEmbedder):
    """The real model, recording every text it is asked to embed."""

    def __init__(self) -> None:
        super().__init__()
        self.embedded: list[str] = []

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded.extend(texts)
        return super().embed_sync(texts)


async def test_similarity_follows_meaning() -> None:
    """A passage on the question's subject scores above one on another subject."""
    model = LocalEmbedder()
    on_topic, off_topic = await model.similarities(
        "How does a humanoid robot keep its balance?",
        ["Balance control keeps a walking humanoid robot stable.", "A recipe for chocolate cake with cream."],
    )
    assert on_topic > off_topic


async def test_a_burst_embeds_each_passage_once() -> None:
    """Concurrent questions over the same uncached passages embed each passage once, not once per question;
    every question still gets its own, correct similarities."""
    model = _CountingEmbedder()
    passages = [f"Section {i}: robots, sensors and controllers, part {i}." for i in range(30)]
    questions = [f"Question {i} about robot sensors?" for i in range(20)]
    answers = await asyncio.gather(*(model.similarities(q, passages) for q in questions))
    assert sorted(t for t in model.embedded if t.startswith("Section")) == sorted(passages)
    alone = LocalEmbedder()
    for question, answer in zip(questions, answers, strict=True):
        assert answer == pytest.approx(await alone.similarities(question, passages), abs=1e-6)
