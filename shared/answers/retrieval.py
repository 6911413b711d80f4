"""Hybrid retrieval: a question (and the reader's selected text) -> the passages relevant enough to use.

One vector-store round trip runs Qdrant's Query API with a dense and a `bm25` prefetch fused by RRF and
returns each hit's raw scores. The dense vectors are the operator's embedding model's online, and the
bundled e5 model's offline (`shared.inference.local_dense`); with the embeddings API failing, BM25 alone.

The candidates are then ranked (`_rank`: one passage per section, sections that explain before sections
that ask, the store's order nudged by the section's heading and by a definition of the subject) and
gated. RRF scores are rank based, so they cannot tell "relevant" from "best of a bad lot"; the gate uses
signals with a meaning of their own:

- term coverage: the share of the question's content terms (stemmed, stop words and question-framing
  words removed) found in the passage, against `RETRIEVAL_MIN_TERM_COVERAGE`;
- offline, the e5 cosine of question and passage against `OFFLINE_MIN_DENSE_SCORE` (calibrated for that
  bundled model, so not a setting), with the static local model's agreement (`OFFLINE_MIN_AGREEMENT_SCORE`);
- online, the static local model's similarity (`shared.inference.semantic`, whatever the operator's
  embedding model) against the low `RETRIEVAL_OFFTOPIC_SEMANTIC_SCORE` (only the clearly off-topic is
  refused before the model, which is told to say when the passages do not answer), or against
  `RETRIEVAL_MIN_SEMANTIC_SCORE` while the LLM breaker is open (the extractive answer has the last word);
- online, the operator's dense cosine against `RETRIEVAL_MIN_DENSE_SCORE`, with a shared term.

With selected text, it also drives retrieval (appended to the query) and counts for coverage. The
measurements behind the bars are in docs/notes/quality.md.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

from shared.answers.extractive import defines_subject
from shared.answers.passages import Passage
from shared.inference.local_dense import LocalDenseEmbedder
from shared.ingestion.chunking import ASKS as SECTION_ASKS
from shared.ingestion.chunking import EXPLAINS as SECTION_EXPLAINS
from shared.platform.clients import Services
from shared.platform.constants import EMBEDDED_STORE_CONCURRENCY
from shared.platform.errors import UpstreamUnavailable
from shared.platform.logging import get_logger
from shared.platform.upstreams import Upstream
from shared.stores.sparse import encode_query, tokenize
from shared.stores.vectorstore.protocol import ScoredChunk

__all__ = ["SECTION_ASKS", "SECTION_EXPLAINS", "Passage", "retrieve", "term_coverage"]

log = get_logger(__name__)

#: How much selected text goes into the retrieval query (embeddings and BM25 both cope, but more adds noise).
SELECTED_QUERY_CHARS = 1500
#: A question's embedding normally takes ~100 ms; past this (or the stream idle timeout) use BM25 alone.
EMBED_QUERY_TIMEOUT_S = 5.0
#: Candidates fetched for ranking and the relevance gate, as a multiple of the passages finally used.
CANDIDATE_FACTOR = 4
#: How much a section's own heading naming the question's subject moves it up, against the store's
#: hybrid order scored 1..0 (`_rank`): its share of the question's terms, and its similarity.
HEADING_TERMS_WEIGHT = 0.1
HEADING_SEMANTIC_WEIGHT = 0.25
#: A "what is X?" question moves a section that opens by defining X up by this much (as above).
DEFINITION_WEIGHT = 0.5
#: A rewritten follow-up ("And a camera?" searched with the earlier question's words) moves a section whose
#: heading names the reader's own new words up by this much per share of them: they are the new focus, the
#: borrowed words only context.
FOCUS_HEADING_WEIGHT = 0.25
#: Words that frame a question rather than name its subject ("tell me about LiDAR", "what do I need"):
#: left out of term coverage, so the subject decides.
QUESTION_FRAME_TERMS = frozenset(
    {"tell", "explain", "describ", "need", "use", "work", "mean", "exampl", "give", "show", "know", "learn"}
)
#: Vector-store queries in flight per process: `EMBEDDED_STORE_CONCURRENCY` (shared.platform.constants) for the
#: embedded store; a server takes many more.
SERVER_STORE_CONCURRENCY = 64
#: Offline, a passage whose e5 cosine with the question reaches this is relevant (e5's scores sit in a
#: narrow band: on the book's set, with the heading path in the chunk vectors (`local_dense.CONTEXT_WEIGHT`),
#: in-book best scores 0.82-0.94, off-topic 0.76-0.85; docs/notes/quality.md).
OFFLINE_MIN_DENSE_SCORE = 0.85
#: Offline, a passage admitted by e5's cosine alone (too few of the question's words) must also not be
#: plainly unrelated to the static model: two models of different kinds rarely err on the same question.
#: On the book's set, in-book questions admitted this way scored 0.11-0.40, the one off-topic question e5
#: admitted ("How many calories should I eat to lose weight?") 0.01 (docs/notes/quality.md).
OFFLINE_MIN_AGREEMENT_SCORE = 0.05
_GATE = "retrieval.store_gate"


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


def _relevant(passage: Passage, *, gate: Gate) -> bool:
    if passage.coverage >= gate.min_coverage:
        return True
    semantic, bar = passage.semantic_score, gate.min_semantic
    if semantic is not None and bar is not None and semantic >= bar:
        return True
    if passage.dense_score is None or passage.dense_score < gate.min_dense:
        return False
    if not gate.dense_alone:
        # Online, the operator's own embedding model may admit a paraphrase too, with some shared vocabulary:
        # embeddings alone also score "the capital of France" against any passage of the same sentence shape.
        return passage.coverage > 0
    # Offline, the bundled e5 model's bar was measured on its own (docs/notes/quality.md), and the static
    # model vetoes what it finds plainly unrelated.
    return gate.min_agreement is None or (semantic is not None and semantic >= gate.min_agreement)


@dataclass(frozen=True)
class Gate:
    """The relevance gate's bars for one query."""

    min_coverage: float
    #: The static model's similarity bar; None offline, where the e5 cosine is the semantic signal.
    min_semantic: float | None
    min_dense: float
    #: The dense score admits a passage with no shared term (the bundled model's calibrated bar).
    dense_alone: bool = False
    #: With `dense_alone`, the static model's similarity such a passage must also reach.
    min_agreement: float | None = None


def _gate(services: Services, *, min_dense_score: float | None, min_term_coverage: float | None) -> Gate:
    """Offline the gate is the last word, so it asks for a clearly relevant passage: enough of the
    question's terms, or the bundled e5 model's calibrated cosine. Online the model reads the passages with
    the instruction to say when they do not answer, so only the clearly off-topic is refused before it (the
    static model's lower bar); with the LLM breaker open the extractive answer has the last word again (its
    higher bar)."""
    settings = services.settings
    llm_ready = services.openai is not None and not services.resilience.is_open(Upstream.OPENAI)
    offline_dense = isinstance(services.embedder, LocalDenseEmbedder)
    if min_dense_score is None:
        min_dense_score = OFFLINE_MIN_DENSE_SCORE if offline_dense else settings.retrieval_min_dense_score
    if offline_dense:
        min_semantic = None
    elif llm_ready:
        min_semantic = settings.retrieval_offtopic_semantic_score
    else:
        min_semantic = settings.retrieval_min_semantic_score
    return Gate(
        min_coverage=settings.retrieval_min_term_coverage if min_term_coverage is None else min_term_coverage,
        min_semantic=min_semantic,
        min_dense=min_dense_score,
        dense_alone=offline_dense,
        min_agreement=OFFLINE_MIN_AGREEMENT_SCORE if offline_dense else None,
    )


def _section_key(passage: Passage) -> tuple[str, str]:
    return passage.source, passage.url or passage.heading or ""


def _rank(passages: list[Passage]) -> list[Passage]:
    """Best first, one passage per section.

    Sections that ask (review questions, objectives, reading lists, exercises) come after every section
    that explains: they repeat a topic's words without teaching it. Among the rest, the store's hybrid
    order (dense + BM25 fused by rank) leads, nudged towards the section whose own heading names the
    question's subject, so a section titled by the topic beats a broad chapter introduction that mentions
    it. Measured on the book's question set: re-ranking by the whole passage's semantic similarity instead
    lost more than it won (the static model favours broad sections).
    """
    count = len(passages)
    keyed: list[tuple[bool, float, Passage]] = []
    for position, passage in enumerate(passages):
        fused = 1.0 - position / max(count, 1)  # the store's hybrid order, as a 1..0 score
        heading = HEADING_TERMS_WEIGHT * passage.heading_coverage + HEADING_SEMANTIC_WEIGHT * passage.heading_semantic
        heading += DEFINITION_WEIGHT * passage.defines_subject + FOCUS_HEADING_WEIGHT * passage.heading_focus
        keyed.append((passage.section_kind == SECTION_ASKS, -(fused + heading), passage))
    keyed.sort(key=lambda item: (item[0], item[1]))
    ranked: list[Passage] = []
    seen: set[tuple[str, str]] = set()
    for _, _, passage in keyed:
        key = _section_key(passage)
        if key not in seen:
            seen.add(key)
            ranked.append(passage)
    return ranked


async def retrieve(
    *,
    services: Services,
    query: str,
    selected_text: str = "",
    limit: int | None = None,
    min_dense_score: float | None = None,
    min_term_coverage: float | None = None,
    focus: str = "",
) -> list[Passage]:
    """The passages that clear the relevance gate, best first, one per section (at most `limit`, default
    RETRIEVAL_TOP_K). `focus` is the reader's own words when `query` is a rewritten follow-up.

    Raises `UpstreamUnavailable` when the vector store is failing (at once when its breaker is open); a
    failing, slow or breaker-blocked embeddings API degrades to BM25-only retrieval instead.
    """
    settings = services.settings
    store = services.vectorstore
    if store is None:
        raise UpstreamUnavailable("The search index is not available.", upstream="qdrant")
    # An open `qdrant` breaker refuses at once, before an embeddings call is spent on the query.
    await services.resilience.check(Upstream.QDRANT)
    top_k = limit or settings.retrieval_top_k
    gate = _gate(services, min_dense_score=min_dense_score, min_term_coverage=min_term_coverage)

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
            await services.resilience.record_failure(Upstream.OPENAI, exc)  # repeated stalls open the breaker
            log.warning("retrieval.dense_timeout", deadline_s=deadline)
    embedded = time.perf_counter()
    async with _store_gate(services):
        hits = await store.query(dense=dense, sparse=encode_query(text), limit=top_k * CANDIDATE_FACTOR)
    queried = time.perf_counter()

    question_terms = set(tokenize(query)) - QUESTION_FRAME_TERMS
    focus_terms = set(tokenize(focus)) - QUESTION_FRAME_TERMS
    selected_terms = set(tokenize(selected[:SELECTED_QUERY_CHARS])) if selected else set()
    haystacks = [_haystack(hit) for hit in hits]
    headings = [hit.heading or hit.title or "" for hit in hits]
    # One batch for both: each passage's similarity (the gate: online its semantic bar, offline the
    # agreement a passage admitted by e5 alone needs) and its heading's (the ranking).
    gated = haystacks if gate.min_semantic is not None or gate.min_agreement is not None else []
    similarities = await services.semantic.similarities(text, [*gated, *headings])
    heading_semantic = similarities[len(gated) :]
    semantic: list[float | None] = list(similarities[: len(gated)]) if gated else [None] * len(hits)
    passages: list[Passage] = []
    for hit, haystack, similarity, heading_similarity in zip(hits, haystacks, semantic, heading_semantic, strict=True):
        coverage = term_coverage(question_terms, haystack)
        if selected_terms:
            coverage = max(coverage, term_coverage(selected_terms, haystack))
        score = hit.dense_score if hit.dense_score is not None else (similarity or 0.0)
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
                semantic_score=similarity,
                heading_coverage=term_coverage(question_terms, hit.heading or ""),
                heading_semantic=heading_similarity,
                heading_focus=term_coverage(focus_terms, hit.heading or ""),
                defines_subject=defines_subject(query, hit.content),
                coverage=coverage,
                heading_path=list(hit.heading_path or []),
                section_kind=str(hit.payload.get("section_kind") or SECTION_EXPLAINS),
            )
        )
    kept = [p for p in _rank(passages) if _relevant(p, gate=gate)][:top_k]
    log.info(
        "retrieval.done",
        search_query=query,
        candidates=len(passages),
        kept=len(kept),
        dense=dense is not None,
        best_semantic=round(max((s for s in semantic if s is not None), default=0.0), 3),
        best_coverage=round(max((p.coverage for p in passages), default=0.0), 3),
        embed_ms=round((embedded - started) * 1000, 1),
        query_ms=round((queried - embedded) * 1000, 1),
        total_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return kept


def _haystack(hit: ScoredChunk) -> str:
    """What a passage says, with where it sits: the text coverage and the semantic model look at."""
    return f"{hit.title or ''}\n{' '.join(hit.heading_path or [])}\n{hit.heading or ''}\n{hit.content}"
