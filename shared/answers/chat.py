"""One question, end to end: the chat pipeline that `/chat`, `/api/chat/stream` and `/v1/chat/completions`
adapt to HTTP.

`open_turn` applies the session rules (signed in: a given session must be the user's, else 404; none
given starts a new one titled from the question; anonymous: nothing stored) and loads the last 10
messages as history. `answer_turn` then yields the turn's events: `Meta` (session, mode, the search
query of a rewritten follow-up), `Citations`, `Delta`s and `Done` (after the exchange is stored). A
failure raises (the doors turn it into an error response or an SSE `error` event). Inside it,
`_plan_turn` rewrites a follow-up, retrieves and plans the answer, and `_finish_turn` stores the exchange.
The new session is created together with the first exchange, so a failed answer leaves nothing behind;
its id is chosen up front, and a stream creates the session just before announcing it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.accounts.history import get_owned_session, recent_messages, start_session, store_exchange, title_from_query
from shared.answers.answering import AnswerPlan, generate, plan_answer, stream_answer
from shared.answers.followup import standalone_query
from shared.answers.retrieval import retrieve
from shared.inference.llm import Message
from shared.platform.clients import Services
from shared.platform.logging import get_logger
from shared.stores.db.models import new_id

__all__ = [
    "ChatEvent",
    "ChatUser",
    "Citations",
    "Delta",
    "Done",
    "Meta",
    "Turn",
    "WholeAnswer",
    "answer_turn",
    "answer_whole",
    "open_turn",
]

log = get_logger(__name__)


class ChatUser(Protocol):
    """What chat needs to know about a signed-in reader."""

    @property
    def id(self) -> str:
        """The user's id."""
        ...

    @property
    def proficiency(self) -> str:
        """beginner | intermediate | pro."""
        ...


@dataclass
class Turn:
    """The context of one question."""

    query: str
    selected_text: str
    user_id: str | None = None
    proficiency: str | None = None
    session_id: str | None = None
    new_session_title: str | None = None
    history: list[Message] = field(default_factory=list)
    #: The standalone query retrieval used, when it differs from the reader's words (a rewritten follow-up).
    search_query: str | None = None

    @property
    def stored(self) -> bool:
        """True when the exchange will be stored (signed-in reader)."""
        return self.user_id is not None


async def open_turn(
    *,
    services: Services,
    user: ChatUser | None,
    query: str,
    selected_text: str = "",
    session_id: str | None = None,
    history: Sequence[Message] | None = None,
) -> Turn:
    """Resolve the session and history of a question (raises NotFound for someone else's session)."""
    turn = Turn(query=query, selected_text=selected_text)
    if user is None:
        turn.history = list(history or [])[-10:]
        return turn
    turn.user_id = user.id
    turn.proficiency = user.proficiency
    if history is not None:  # the OpenAI-compatible API brings its own history and stores nothing
        turn.user_id = None
        turn.history = list(history)[-10:]
        return turn
    if session_id:
        async with services.sessions() as db:
            session = await get_owned_session(db=db, user_id=user.id, session_id=session_id)
            turn.session_id = session.id
            turn.history = await recent_messages(db=db, session_id=session.id)
    else:
        turn.session_id = new_id()
        turn.new_session_title = title_from_query(query)
    return turn


async def _plan_turn(*, services: Services, turn: Turn) -> AnswerPlan:
    """Make a follow-up standalone, retrieve the passages for it, and plan the answer."""
    search = await standalone_query(services=services, question=turn.query, history=turn.history)
    if search.rewritten:
        turn.search_query = search.text
        log.info("chat.search_query", method=search.method, search_query=search.text)
    # A rewritten follow-up's own words are its new focus ("And a camera?"); a request about the previous
    # answer ("Explain that more simply.") has none: it searches the previous turn's query again.
    focus = turn.query if search.method in ("rule", "model") else ""
    passages = await retrieve(services=services, query=search.text, selected_text=turn.selected_text, focus=focus)
    return plan_answer(
        services=services,
        query=turn.query,
        search_query=search.text,
        passages=passages,
        selected_text=turn.selected_text,
        history=turn.history,
        proficiency=turn.proficiency,
    )


async def _ensure_session(*, services: Services, turn: Turn) -> None:
    """Create the turn's new session now (a stream announces its id before the answer exists)."""
    if turn.user_id is None or turn.session_id is None or turn.new_session_title is None:
        return
    async with services.sessions() as db:
        await start_session(db=db, user_id=turn.user_id, title=turn.new_session_title, session_id=turn.session_id)
    turn.new_session_title = None


async def _finish_turn(*, services: Services, turn: Turn, plan: AnswerPlan, answer: str) -> str | None:
    """Store the exchange for a signed-in reader; returns the assistant message id (None when anonymous)."""
    if turn.user_id is None or turn.session_id is None:
        return None
    async with services.sessions() as db:
        message = await store_exchange(
            db=db,
            user_id=turn.user_id,
            session_id=turn.session_id,
            create_title=turn.new_session_title,
            query=turn.query,
            selected_text=turn.selected_text,
            answer=answer,
            sources=plan.sources,
            citations=plan.citations,
        )
    turn.new_session_title = None  # created now
    return message.id


@dataclass(frozen=True)
class Meta:
    """The turn's session (None when nothing is stored), answer mode and rewritten search query."""

    session_id: str | None
    mode: str
    search_query: str | None = None


@dataclass(frozen=True)
class Citations:
    """The passages the answer rests on (objects) and their display labels, in the same order."""

    citations: list[dict[str, Any]]
    sources: list[str]


@dataclass(frozen=True)
class Delta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True)
class Done:
    """The exchange is stored: its session and assistant message (None when anonymous), and the answer."""

    session_id: str | None
    message_id: str | None
    answer: str


ChatEvent = Meta | Citations | Delta | Done


async def answer_turn(*, services: Services, turn: Turn, stream: bool) -> AsyncIterator[ChatEvent]:
    """The events of one answered question (module docstring). With `stream`, the model's tokens are
    `Delta`s as they come; without, the finished answer is one `Delta` (a plain `/chat` waits for it)."""
    started = time.perf_counter()
    planned = await _plan_turn(services=services, turn=turn)
    planned_at = time.perf_counter()
    if stream:
        plan, deltas = await stream_answer(services=services, plan=planned)  # reads the first token
        await _ensure_session(services=services, turn=turn)  # `Meta` announces an id that must exist
    else:
        plan = await generate(services=services, plan=planned)
        deltas = _once(plan.text or "")
    opened_at = time.perf_counter()
    session_id = turn.session_id if turn.stored else None
    parts: list[str] = []
    try:
        yield Meta(session_id=session_id, mode=plan.mode, search_query=turn.search_query)
        yield Citations(citations=plan.citations, sources=plan.sources)
        async for text in deltas:
            parts.append(text)
            yield Delta(text)
    finally:
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()
    answer = "".join(parts)
    # Shielded: a reader who leaves right after the last token still finds the answer in the history.
    message_id = await asyncio.shield(_finish_turn(services=services, turn=turn, plan=plan, answer=answer))
    log.info(
        "chat.answered",
        mode=plan.mode,
        stream=stream,
        deltas=len(parts),
        citations=len(plan.citations),
        plan_ms=_ms(started, planned_at),
        open_ms=_ms(planned_at, opened_at),
        total_ms=_ms(started, time.perf_counter()),
    )
    yield Done(session_id=session_id, message_id=message_id, answer=answer)


async def _once(text: str) -> AsyncIterator[str]:
    yield text


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 1)


@dataclass(frozen=True)
class WholeAnswer:
    """A turn answered without streaming: its `Meta`, `Citations` and `Done` events."""

    meta: Meta
    cited: Citations
    done: Done


async def answer_whole(*, services: Services, turn: Turn) -> WholeAnswer:
    """The pipeline run to its end without streaming (a plain `/chat`, a non-streaming completion)."""
    events = [event async for event in answer_turn(services=services, turn=turn, stream=False)]
    meta = next(e for e in events if isinstance(e, Meta))
    cited = next(e for e in events if isinstance(e, Citations))
    done = next(e for e in events if isinstance(e, Done))
    return WholeAnswer(meta=meta, cited=cited, done=done)
