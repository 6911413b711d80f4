"""Dense embeddings through the OpenAI embeddings API: batched, concurrent, rate-limited, retried.

`Embedder.embed_texts` splits the inputs into requests of at most `EMBED_BATCH_SIZE` inputs (100) or
`EMBED_BATCH_TOKENS` estimated tokens, runs at most `EMBED_CONCURRENCY` requests at once, and passes each
through a client-side limiter (requests and tokens per minute, `EMBED_RPM` / `EMBED_TPM`) so a big ingest
does not provoke a 429 storm. A 429's `Retry-After` pauses every request of the process, and the
resilience layer retries with exponential backoff and jitter, honouring the same header. In offline mode
(no `OPENAI_API_KEY`) the dense embedder is the bundled e5 model (`shared.inference.local_dense`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

from openai import AsyncOpenAI, RateLimitError, omit

from shared.inference.local_dense import LocalDenseEmbedder
from shared.platform.config import Settings
from shared.platform.errors import UpstreamUnavailable
from shared.platform.logging import get_logger
from shared.platform.resilience import Resilience, RetryPolicy
from shared.platform.upstreams import Upstream, retry_after_of

__all__ = [
    "INGEST_RETRY_POLICY",
    "DenseEmbedder",
    "Embedder",
    "RateLimiter",
    "create_embedder",
    "estimate_tokens",
]

log = get_logger(__name__)

#: Ingestion can afford to wait out a rate-limit episode; interactive queries use the default policy.
INGEST_RETRY_POLICY = RetryPolicy(max_tries=12, max_time_s=120.0, base_s=0.5, cap_s=8.0, max_retry_after_s=60.0)


def estimate_tokens(text: str) -> int:
    """A cheap upper-bound-ish token estimate (about 4 characters per token for English)."""
    return len(text) // 4 + 1


class DenseEmbedder(Protocol):
    """What ingestion and retrieval need from a dense embedder (OpenAI's or the local model)."""

    @property
    def signature(self) -> str:
        """Model and dimensions: a change means stored vectors must be recomputed."""
        ...

    async def embed_texts(self, texts: Sequence[str], *, policy: RetryPolicy | None = None) -> list[list[float]]:
        """Embed passages, order kept."""
        ...

    async def embed_chunks(
        self, texts: Sequence[str], *, contexts: Sequence[str], policy: RetryPolicy | None = None
    ) -> list[list[float]]:
        """Embed chunks, order kept: `texts[i]` is a chunk's `embed_text` (its context, then its content)
        and `contexts[i]` that context alone, which an embedder may weigh in on its own."""
        ...

    async def embed_query(self, text: str) -> list[float]:
        """Embed one question."""
        ...


class RateLimiter:
    """Token buckets for requests and tokens per minute, plus a process-wide pause after a 429."""

    def __init__(self, *, rpm: int, tpm: int) -> None:
        self.rpm = float(rpm)
        self.tpm = float(tpm)
        self._requests = float(rpm)
        self._tokens = float(tpm)
        self._updated = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated
        self._updated = now
        self._requests = min(self.rpm, self._requests + elapsed * self.rpm / 60.0)
        self._tokens = min(self.tpm, self._tokens + elapsed * self.tpm / 60.0)

    def pause(self, seconds: float) -> None:
        """Hold every request back for `seconds` (a server's Retry-After)."""
        self._paused_until = max(self._paused_until, time.monotonic() + max(0.0, seconds))

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of `tokens` tokens fits in both budgets and no pause is active."""
        tokens = min(tokens, int(self.tpm))  # a request larger than a minute's budget still goes, alone
        async with self._lock:
            while True:
                now = time.monotonic()
                self._refill(now)
                wait = self._paused_until - now
                if wait <= 0:
                    need_req = 1.0 - self._requests
                    need_tok = tokens - self._tokens
                    wait = max(need_req * 60.0 / self.rpm, need_tok * 60.0 / self.tpm, 0.0)
                    if wait <= 0:
                        self._requests -= 1.0
                        self._tokens -= tokens
                        return
                await asyncio.sleep(wait)


class Embedder:
    """Dense embeddings for chunks (`embed_texts`) and questions (`embed_query`)."""

    def __init__(self, settings: Settings, client: AsyncOpenAI, resilience: Resilience) -> None:
        self.settings = settings
        self.client = client
        self.resilience = resilience
        self.model = settings.openai_embedding_model
        self.dimensions = settings.embedding_dimensions
        self.limiter = RateLimiter(rpm=settings.embed_rpm, tpm=settings.embed_tpm)
        self._semaphore = asyncio.Semaphore(settings.embed_concurrency)

    @property
    def signature(self) -> str:
        """Model and dimensions: a change means stored vectors must be recomputed."""
        return f"{self.model}:{self.dimensions}"

    def batches(self, texts: Sequence[str]) -> list[list[int]]:
        """Index batches of at most `embed_batch_size` inputs and `embed_batch_tokens` estimated tokens."""
        batches: list[list[int]] = []
        current: list[int] = []
        budget = 0
        for i, text in enumerate(texts):
            cost = estimate_tokens(text)
            if current and (
                len(current) >= self.settings.embed_batch_size or budget + cost > self.settings.embed_batch_tokens
            ):
                batches.append(current)
                current, budget = [], 0
            current.append(i)
            budget += cost
        if current:
            batches.append(current)
        return batches

    async def embed_texts(self, texts: Sequence[str], *, policy: RetryPolicy | None = None) -> list[list[float]]:
        """Embed `texts` (order kept). Raises `UpstreamUnavailable` when retries are exhausted."""
        if not texts:
            return []
        results: list[list[float]] = [[] for _ in texts]
        chosen = policy or INGEST_RETRY_POLICY

        async def run(batch: list[int]) -> None:
            inputs = [texts[i] or " " for i in batch]
            async with self._semaphore:
                vectors = await self._request(inputs, policy=chosen)
            for i, vector in zip(batch, vectors, strict=True):
                results[i] = vector

        # Not a TaskGroup: on Python 3.11.2 a failing child can leave a stray cancellation on the caller.
        tasks = [asyncio.create_task(run(batch)) for batch in self.batches(texts)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        errors = [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]
        if errors:
            # Callers handle plain domain errors; an outage wins over a per-batch refusal.
            raise next((e for e in errors if isinstance(e, UpstreamUnavailable)), errors[0])
        return results

    async def embed_chunks(
        self, texts: Sequence[str], *, contexts: Sequence[str], policy: RetryPolicy | None = None
    ) -> list[list[float]]:
        """Embed chunks as `embed_texts` does: `texts` already start with their context, and a second
        embedding per chunk would double the API's cost for an unmeasured gain."""
        return await self.embed_texts(texts, policy=policy)

    async def embed_query(self, text: str) -> list[float]:
        """Embed one question with the interactive (short) retry policy."""
        vectors = await self._request([text or " "], policy=None)
        return vectors[0]

    async def _request(self, inputs: list[str], *, policy: RetryPolicy | None) -> list[list[float]]:
        tokens = sum(estimate_tokens(t) for t in inputs)
        # Only the text-embedding-3 family accepts `dimensions`; older models reject the parameter.
        dimensions = self.dimensions if self.model.startswith("text-embedding-3") else omit

        async def attempt() -> list[list[float]]:
            await self.limiter.acquire(tokens)
            try:
                # No `encoding_format`: the SDK then asks for base64 (4x smaller on the wire than JSON
                # floats) and decodes the vectors itself.
                response = await self.client.embeddings.create(model=self.model, input=inputs, dimensions=dimensions)
            except RateLimitError as exc:
                hinted = retry_after_of(exc) or 1.0
                self.limiter.pause(hinted)
                log.warning("embeddings.rate_limited", retry_after_s=hinted, inputs=len(inputs))
                raise
            return [item.embedding for item in sorted(response.data, key=lambda item: item.index)]

        vectors = await self.resilience.call(Upstream.OPENAI, attempt, policy=policy)
        if len(vectors) != len(inputs):
            raise ValueError(f"the embeddings API returned {len(vectors)} vectors for {len(inputs)} inputs")
        if vectors and len(vectors[0]) != self.dimensions:
            raise ValueError(
                f"the embeddings API returned {len(vectors[0])}-dimensional vectors but EMBEDDING_DIMENSIONS="
                f"{self.dimensions}; set EMBEDDING_DIMENSIONS to match OPENAI_EMBEDDING_MODEL"
            )
        return vectors


def create_embedder(
    settings: Settings, client: AsyncOpenAI | None, resilience: Resilience, *, interactive: bool
) -> DenseEmbedder:
    """The process's dense embedder: OpenAI's when configured, else the bundled e5 model. An interactive
    process (the API: one question at a time, several workers per machine) runs e5 on one thread; the
    worker embeds whole batches on every core."""
    if client is None:
        return LocalDenseEmbedder(threads=1 if interactive else None)
    return Embedder(settings, client, resilience)
