"""`shared.inference.embeddings.Embedder` against the fake OpenAI server: vectors in order, 429 pauses, dimension checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.inference.embeddings import Embedder
from shared.platform.clients import create_openai_client
from shared.platform.config import Settings
from shared.platform.resilience import Resilience, RetryPolicy
from shared.platform.upstreams import Upstream
from tests.fakes.openai_server import FakeOpenAI, fake_embedding_array

FAST = RetryPolicy(max_tries=3, max_time_s=10, base_s=0.01, cap_s=0.02, max_retry_after_s=2)


@pytest.fixture
def reset_fake(fake_openai: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake server, cleared before and after the test."""
    fake_openai.reset()
    yield fake_openai
    fake_openai.reset()


def embedder(fake_openai: FakeOpenAI, tmp_path: Path, **overrides: Any) -> Embedder:
    """An `Embedder` on a client of the fake server (64 dimensions, batches of 2 inputs)."""
    options: dict[str, Any] = {"embedding_dimensions": 64, "embed_batch_size": 2} | overrides
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        openai_api_key="sk-test-embeddings",
        openai_base_url=fake_openai.url,
        **options,
    )
    client = create_openai_client(settings)
    assert client is not None
    return Embedder(settings, client, Resilience(settings, policies={Upstream.OPENAI: FAST}))


async def test_vectors_come_back_in_input_order(reset_fake: FakeOpenAI, tmp_path: Path) -> None:
    """Five texts in three requests give the fake's vectors in input order, sent as base64 with `dimensions`."""
    dense = embedder(reset_fake, tmp_path)
    texts = ["robot joints", "lidar point clouds", "torque sensors", "zero moment point", "gait cycles"]
    try:
        vectors = await dense.embed_texts(texts)
        query = await dense.embed_query("robot joints")
    finally:
        await dense.client.close()
    for text, vector in zip(texts, vectors, strict=True):
        assert all(isinstance(value, float) for value in vector)
        np.testing.assert_allclose(vector, fake_embedding_array(text, 64), rtol=1e-6, atol=1e-7)
    assert query == vectors[0]
    requests = reset_fake.requests_to("/embeddings")
    assert len(requests) == 4
    assert all(r["body"]["encoding_format"] == "base64" and r["body"]["dimensions"] == 64 for r in requests)


async def test_rate_limit_pauses_by_retry_after_then_succeeds(reset_fake: FakeOpenAI, tmp_path: Path) -> None:
    """A 429 with `Retry-After: 1` pauses the limiter for a second, then the retried request succeeds."""
    dense = embedder(reset_fake, tmp_path)
    reset_fake.configure(fault="429", fault_seconds=0.3, retry_after=1)
    started = time.monotonic()
    try:
        vectors = await dense.embed_texts(["robot joints"], policy=FAST)
    finally:
        await dense.client.close()
    assert [len(vector) for vector in vectors] == [64]
    sent = reset_fake.requests_to("/embeddings")
    assert len(sent) >= 2  # the 429, then the retry after the pause
    assert sent[-1]["at"] - sent[0]["at"] >= 0.9  # the fault lasts 0.3 s: only Retry-After explains the wait
    assert time.monotonic() - started >= 0.9


async def test_vectors_of_the_wrong_size_are_refused(reset_fake: FakeOpenAI, tmp_path: Path) -> None:
    """A model outside text-embedding-3 gets no `dimensions`; its 1536-d vectors against 64 configured raise."""
    dense = embedder(reset_fake, tmp_path, openai_embedding_model="text-embedding-ada-002")
    try:
        with pytest.raises(ValueError, match="EMBEDDING_DIMENSIONS"):
            await dense.embed_query("robot joints")
    finally:
        await dense.client.close()
    (request,) = reset_fake.requests_to("/embeddings")
    assert "dimensions" not in request["body"]
