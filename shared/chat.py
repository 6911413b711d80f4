"""One question, end to end, shared by `/chat`, `/api/chat/stream` and `/v1/chat/completions`.

`open_turn` applies the session rules (signed in: a given session must be the user's, else 404; none
given starts a new one titled from the question; anonymous: nothing stored) and loads the last 10
messages as history. `plan_turn` retrieves and plans the answer. `finish_turn` stores the exchange.
The new session is created together with the first exchange, so a failed answer leaves nothing behind;
its id is chosen up front so the stream can announce it first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shared.answering import AnswerPlan, plan_answer
from shared.clients import Services
from shared.db.models import new_id
from shared.followup import standalone_query
from shared.history import get_owned_session, recent_messages, start_session, store_exchange, title_from_query
from shared.llm import Message
from shared.logging import get_logger
from shared.retrieval import retrieve

__all__ = ["ChatUser", "Turn", "ensure_session", "finish_turn", "open_turn", "plan_turn"]

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


async def plan_turn(*, services: Services, turn: Turn) -> AnswerPlan:
    """Make a follow-up standalone, retrieve the passages for it, and plan the answer."""
    search = await standalone_query(services=services, question=turn.query, history=turn.history)
    if search.rewritten:
        turn.search_query = search.text
        log.info("chat.search_query", method=search.method, search_query=search.text)
    passages = await retrieve(services=services, query=search.text, selected_text=turn.selected_text)
    return plan_answer(
        services=services,
        query=turn.query,
        search_query=search.text,
        passages=passages,
        selected_text=turn.selected_text,
        history=turn.history,
        proficiency=turn.proficiency,
    )


async def ensure_session(*, services: Services, turn: Turn) -> None:
    """Create the turn's new session now (a stream announces its id before the answer exists)."""
    if turn.user_id is None or turn.session_id is None or turn.new_session_title is None:
        return
    async with services.sessions() as db:
        await start_session(db=db, user_id=turn.user_id, title=turn.new_session_title, session_id=turn.session_id)
    turn.new_session_title = None


async def finish_turn(*, services: Services, turn: Turn, plan: AnswerPlan, answer: str) -> str | None:
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
