"""Hybrid retrieval: a question (and the reader's selected text) -> the passages relevant enough to use.

One vector-store round trip runs Qdrant's Query API with a dense and a `bm25` prefetch fused by RRF (the
ranking) and also returns each hit's raw scores. Offline (no LLM, so no embeddings) the query is BM25
only. RRF scores are rank based (about 1/60 whatever the question), so they cannot tell "relevant" from
"best of a bad lot"; the relevance gate therefore uses two meaningful signals:

- lexical term coverage: the share of the question's content terms (stemmed, stop words removed, the
  same analysis as the BM25 index) found in the passage, against `RETRIEVAL_MIN_TERM_COVERAGE`;
- the raw dense cosine similarity, against `RETRIEVAL_MIN_DENSE_SCORE`, which admits a paraphrase that
  shares at least one content term with the passage.

A passage is used when either rule admits it; when none is, the caller answers "not covered".
With selected text, it also drives retrieval (appended to the query) and counts for coverage. The
calibration on the real corpus is in docs/notes/chat.md.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field

from shared.clients import Services
from shared.constants import EMBEDDED_STORE_CONCURRENCY
from shared.errors import UpstreamUnavailable
from shared.logging import get_logger
from shared.resilience import Upstream
from shared.sparse import encode_query, tokenize

__all__ = ["Passage", "retrieve", "term_coverage"]

log = get_logger(__name__)

#: How much selected text goes into the retrieval query (embeddings and BM25 both cope, but more adds noise).
SELECTED_QUERY_CHARS = 1500
#: A question's embedding normally takes ~100 ms; past this (or the stream idle timeout) use BM25 alone.
EMBED_QUERY_TIMEOUT_S = 5.0
#: Candidates fetched for the relevance gate, as a multiple of the passages finally used.
CANDIDATE_FACTOR = 2
#: Vector-store queries in flight per process: `EMBEDDED_STORE_CONCURRENCY` (shared.constants) for the
#: embedded store; a server takes many more.
SERVER_STORE_CONCURRENCY = 64
_GATE = "retrieval.store_gate"


@dataclass
class Passage:
    """A retrieved chunk with its display fields and relevance signals."""

    source: str
    title: str | None
    heading: str | None
    url: str | None
    content: str
    score: float
    fused_score: float = 0.0
    dense_score: float | None = None
    sparse_score: float | None = None
    coverage: float = 0.0
    heading_path: list[str] = field(default_factory=list)


def _store_gate(services: Services) -> asyncio.Semaphore:
    """The process's cap on concurrent vector-store queries (created in the running loop, kept in extras)."""
    gate = services.extras.get(_GATE)
    if gate is None:
        size = EMBEDDED_STORE_CONCURRENCY if services.settings.embedded_qdrant else SERVER_STORE_CONCURRENCY
        gate = services.extras[_GATE] = asyncio.Semaphore(size)
    assert isinstance(gate, asyncio.Semaphore)
    return gate


def term_coverage(question_terms: set[str], text: str) -> float:
    """Share of the question's content terms that occur in `text` (0 when the question has none)."""
    if not question_terms:
        return 0.0
    present = question_terms & _terms(text)
    return len(present) / len(question_terms)


@functools.lru_cache(maxsize=4096)
def _terms(text: str) -> frozenset[str]:
    """The analysed terms of a passage. Cached: the same passages come back for many questions, and
    stemming one (~50 us) was a tenth of a chat request's own CPU in the API process."""
    return frozenset(tokenize(text))


def _relevant(passage: Passage, *, min_dense: float, min_coverage: float) -> bool:
    if passage.coverage >= min_coverage:
        return True
    # A close embedding rescues a paraphrase, but only with some shared vocabulary: embeddings alone
    # also score "the capital of France" against any passage that shares its sentence shape.
    return passage.dense_score is not None and passage.dense_score >= min_dense and passage.coverage > 0


async def retrieve(
    *,
    services: Services,
    query: str,
    selected_text: str = "",
    limit: int | None = None,
    min_dense_score: float | None = None,
    min_term_coverage: float | None = None,
) -> list[Passage]:
    """The passages that clear the relevance gate, best first (at most `limit`, default RETRIEVAL_TOP_K).

    Raises `UpstreamUnavailable` when the vector store is failing (at once when its breaker is open); a
    failing, slow or breaker-blocked embeddings API degrades to BM25-only retrieval instead.
    """
    settings = services.settings
    store = services.vectorstore
    if store is None:
        raise UpstreamUnavailable("The search index is not available.", upstream="qdrant")
    # An open `qdrant` breaker refuses at once, before an embeddings call is spent on the query.
    services.resilience.ensure_available(Upstream.QDRANT)
    top_k = limit or settings.retrieval_top_k
    min_dense = settings.retrieval_min_dense_score if min_dense_score is None else min_dense_score
    min_coverage = settings.retrieval_min_term_coverage if min_term_coverage is None else min_term_coverage

    selected = selected_text.strip()
    text = f"{query}\n\n{selected[:SELECTED_QUERY_CHARS]}" if selected else query
    started = time.perf_counter()
    dense: list[float] | None = None
    if services.embedder is not None:
        deadline = min(EMBED_QUERY_TIMEOUT_S, settings.chat_stream_idle_timeout_s)
        try:
            dense = await asyncio.wait_for(services.embedder.embed_query(text), deadline)
        except UpstreamUnavailable as exc:
            # BM25 alone still finds passages; better than failing the question.
            log.warning("retrieval.dense_unavailable", code=exc.code)
        except TimeoutError as exc:
            services.resilience.record_failure(Upstream.OPENAI, exc)  # repeated stalls open the breaker
            log.warning("retrieval.dense_timeout", deadline_s=deadline)
    embedded = time.perf_counter()
    async with _store_gate(services):
        hits = await store.query(dense=dense, sparse=encode_query(text), limit=top_k * CANDIDATE_FACTOR)
    queried = time.perf_counter()

    question_terms = set(tokenize(query))
    selected_terms = set(tokenize(selected[:SELECTED_QUERY_CHARS])) if selected else set()
    passages: list[Passage] = []
    for hit in hits:
        haystack = f"{hit.title or ''}\n{' '.join(hit.heading_path or [])}\n{hit.heading or ''}\n{hit.content}"
        coverage = term_coverage(question_terms, haystack)
        if selected_terms:
            coverage = max(coverage, term_coverage(selected_terms, haystack))
        score = hit.dense_score if hit.dense_score is not None else coverage
        passages.append(
            Passage(
                source=hit.source,
                title=hit.title,
                heading=hit.heading,
                url=hit.url,
                content=hit.content,
                score=float(score),
                fused_score=float(hit.score),
                dense_score=hit.dense_score,
                sparse_score=hit.sparse_score,
                coverage=coverage,
                heading_path=list(hit.heading_path or []),
            )
        )
    kept = [p for p in passages if _relevant(p, min_dense=min_dense, min_coverage=min_coverage)][:top_k]
    log.info(
        "retrieval.done",
        candidates=len(passages),
        kept=len(kept),
        dense=dense is not None,
        best_dense=max((p.dense_score or 0.0 for p in passages), default=0.0),
        best_coverage=max((p.coverage for p in passages), default=0.0),
        embed_ms=round((embedded - started) * 1000, 1),
        query_ms=round((queried - embedded) * 1000, 1),
    )
    return kept
