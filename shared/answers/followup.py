"""Follow-up questions -> standalone search queries, so retrieval sees the subject of the conversation.

Retrieval only sees one string. "What GPU does it need?" after "What is Isaac Sim?" must search for Isaac
Sim, and "Give me an example." after a question about sim-to-real transfer must find the same passages
again. `standalone_query` decides, in this order:

1. A question that stands alone (no history, or no anaphora and no request about the previous answer)
   is searched as written: a first question costs nothing extra.
2. Online (an LLM is configured and its breaker is closed): one short call to the chat model rewrites the
   follow-up with the recent turns (small `max_tokens`, a tight timeout, one try through the `openai`
   breaker). Any failure falls back to rule 3; a turn never fails over its rewrite.
3. Offline rule, deterministic: a request about the previous answer ("give me an example", "explain that
   more simply", "summarise it") searches the previous turn's search query again, so it gets the same
   passages; any other follow-up keeps its own words and borrows the subject terms of the previous
   questions ("What GPU does it need?" -> "What GPU does it need? Isaac Sim").

The reader's own words are what is stored and shown; the search query is logged and returned to clients
as `search_query` when it differs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from shared.inference.llm import Message, complete
from shared.platform.clients import Services
from shared.platform.errors import UpstreamUnavailable
from shared.platform.logging import get_logger
from shared.platform.resilience import RetryPolicy
from shared.platform.upstreams import Upstream
from shared.stores.sparse import tokenize

__all__ = ["REWRITE_SYSTEM_PROMPT", "SearchQuery", "is_standalone", "rule_based_query", "standalone_query"]

log = get_logger(__name__)

REWRITE_SYSTEM_PROMPT = (
    "You rewrite a reader's follow-up question about a robotics textbook into one standalone search query. "
    "Use the earlier questions only to resolve what the follow-up refers to (pronouns like it/they/that, "
    'or "give me an example", "explain that more simply"). Keep the reader\'s intent and the book\'s '
    "technical terms. Reply with the query alone, on one line, with no quotes and no explanation."
)
#: One try, a tight deadline: a slow rewrite would delay the answer more than a rule-based query hurts it.
REWRITE_POLICY = RetryPolicy(max_tries=1, max_time_s=3.0)
REWRITE_TIMEOUT_S = 3.0
REWRITE_MAX_TOKENS = 48
#: Earlier user questions the rewrite (model or rule) looks at.
HISTORY_QUESTIONS = 3
#: A rewrite longer than this is a model that answered instead of rewriting.
MAX_QUERY_CHARS = 300

# Words that point back at something said before. Matched as whole words on the lower-cased question.
_ANAPHORA = re.compile(
    r"\b(it|its|it's|they|them|their|theirs|this|that|these|those|one|ones|he|she|him|her|there|"
    r"the same|the former|the latter|the above|above|such)\b"
)
# Elliptical openings that only make sense after another question ("And a LiDAR?", "What about Gazebo?").
_ELLIPSIS = re.compile(r"^\s*(and|or|also|but|what about|how about|then|so|why|why not|how so)\b")
# Requests about the previous answer rather than a new subject.
_ABOUT_ANSWER = re.compile(
    r"\b(give me|show me|can you give|provide|any|another|more)\s+(an?\s+)?(concrete\s+|real[- ]world\s+|simple\s+)?"
    r"(example|examples|analogy|illustration)\b"
    r"|\b(explain|say|put|describe|rephrase|simplify)\b.*\b(simpl|easier|plain|again|differently|more detail|"
    r"in other words|like i'?m)"
    r"|\b(summari[sz]e|sum up|tl;?dr|recap|elaborate|expand on|go deeper|clarify|tell me more|more details?)\b"
    r"|\bwhat do you mean\b|\bwhy is that\b|\bhow so\b|\bfor example\b"
)
#: With this many content terms of its own, a question is specific enough to keep its own subject even if
#: it happens to contain "that" or "one".
SPECIFIC_TERMS = 5


@dataclass(frozen=True)
class SearchQuery:
    """What retrieval searches for, and how it was obtained."""

    text: str
    rewritten: bool = False
    method: str = "as_is"  # as_is | model | rule | previous_answer


def _user_questions(history: Sequence[Message]) -> list[str]:
    return [str(m["content"]) for m in history if m.get("role") == "user" and str(m.get("content", "")).strip()]


def is_about_previous_answer(question: str) -> bool:
    """True for requests about the previous answer ("give me an example", "explain that more simply")."""
    return bool(_ABOUT_ANSWER.search(question.lower()))


def is_standalone(question: str, history: Sequence[Message]) -> bool:
    """The cheap check: does the question need the conversation to be understood?"""
    if not _user_questions(history):
        return True
    lowered = question.lower()
    if is_about_previous_answer(lowered) or _ELLIPSIS.search(lowered):
        return False
    terms = tokenize(question)
    if len(terms) <= 1:
        return False  # "Why?", "And LiDAR?", "How?": too little to search on
    return not (_ANAPHORA.search(lowered) and len(set(terms)) < SPECIFIC_TERMS)


def rule_based_query(question: str, history: Sequence[Message]) -> SearchQuery:
    """The deterministic rewrite: replay the conversation's questions through the same rule."""
    subject = ""  # the standalone query of the previous question
    for earlier in _user_questions(history)[-HISTORY_QUESTIONS:]:
        subject = _resolve(earlier, subject).text if subject else earlier
    if not subject or is_standalone(question, history):
        return SearchQuery(text=question)
    return _resolve(question, subject)


def _resolve(question: str, previous: str) -> SearchQuery:
    if not previous or (not is_about_previous_answer(question.lower()) and _stands_alone(question)):
        return SearchQuery(text=question)
    if is_about_previous_answer(question.lower()):
        return SearchQuery(text=previous, rewritten=True, method="previous_answer")
    own = set(tokenize(question))
    borrowed = [w for w in _subject_words(previous) if not (set(tokenize(w)) & own)]
    if not borrowed:
        return SearchQuery(text=question)
    return SearchQuery(text=f"{question} {' '.join(borrowed)}", rewritten=True, method="rule")


def _stands_alone(question: str) -> bool:
    lowered = question.lower()
    if _ELLIPSIS.search(lowered):
        return False
    terms = tokenize(question)
    return len(terms) > 1 and not (_ANAPHORA.search(lowered) and len(set(terms)) < SPECIFIC_TERMS)


def _subject_words(query: str) -> list[str]:
    """The words of a query that carry content (as written, in order, once each)."""
    words: list[str] = []
    seen: set[str] = set()
    for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9\-+.]*[A-Za-z0-9+]|[A-Za-z0-9]", query):
        terms = tokenize(word)
        if terms and not (set(terms) & seen):
            seen.update(terms)
            words.append(word)
    return words


async def standalone_query(*, services: Services, question: str, history: Sequence[Message]) -> SearchQuery:
    """The search query for `question` given the conversation so far (see the module docstring)."""
    if is_standalone(question, history):
        return SearchQuery(text=question)
    llm_ready = services.openai is not None and not services.resilience.is_open(Upstream.OPENAI)
    if llm_ready:
        rewritten = await _model_rewrite(services=services, question=question, history=history)
        if rewritten is not None:
            return rewritten
    return rule_based_query(question, history)


async def _model_rewrite(*, services: Services, question: str, history: Sequence[Message]) -> SearchQuery | None:
    earlier = _user_questions(history)[-HISTORY_QUESTIONS:]
    lines = [f"Earlier question {i}: {q}" for i, q in enumerate(earlier, start=1)]
    last_answer = next((str(m["content"]) for m in reversed(history) if m.get("role") == "assistant"), "")
    if last_answer:
        lines.append(f"Previous answer (start): {last_answer[:400]}")
    lines.append(f"Follow-up question: {question}")
    messages: list[Message] = [
        {"role": "system", "content": REWRITE_SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]
    try:
        text = await complete(
            services=services,
            messages=messages,
            max_tokens=REWRITE_MAX_TOKENS,
            deadline_s=REWRITE_TIMEOUT_S,
            policy=REWRITE_POLICY,
        )
    except UpstreamUnavailable as exc:  # LlmStalled (the deadline), LlmUnavailable, an open breaker, 5xx...
        log.info("followup.rewrite_failed", error=type(exc).__name__)
        return None
    query = " ".join(text.strip().strip("\"'").split())
    if not query or len(query) > MAX_QUERY_CHARS:
        log.info("followup.rewrite_unusable", chars=len(query))
        return None
    return SearchQuery(text=query, rewritten=query != question, method="model")
