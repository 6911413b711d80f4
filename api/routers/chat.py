"""Routes: `POST /chat` (one JSON answer) and `POST /api/chat/stream` (Server-Sent Events)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator

from api.deps import ChatRateLimitDep, OptionalUser, ServicesDep
from api.errors import stream_error_payload
from api.sse import EventStreamResponse, format_event, format_text_event
from shared.answers.chat import Citations, Delta, Meta, Turn, answer_turn, answer_whole, open_turn
from shared.platform.clients import Services
from shared.platform.logging import get_logger

router = APIRouter(tags=["chat"])
log = get_logger(__name__)


class ChatRequest(BaseModel):
    """A question, optionally about a selected passage, optionally in a chat session."""

    query: str = Field(min_length=1, max_length=4000)
    selected_text: str | None = Field("", max_length=10_000)
    session_id: str | None = Field(None, max_length=64)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the question is empty")
        return value

    @property
    def selection(self) -> str:
        """The selected text ('' when absent or blank)."""
        text = self.selected_text or ""
        return text if text.strip() else ""


class ChatResponse(BaseModel):
    """The frontend's fields (`response`, `session_id`) plus `sources` (strings), `citations`, `mode`."""

    response: str
    session_id: str | None
    sources: list[str]
    citations: list[dict[str, Any]]
    mode: str
    search_query: str | None = Field(
        None, description="The standalone query used for retrieval when a follow-up was rewritten."
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "The session does not exist or belongs to someone else"},
    503: {"description": "The search index (or another upstream) is unavailable"},
}


@router.post("/chat", response_model=ChatResponse, responses=_ERRORS, dependencies=[ChatRateLimitDep])
async def chat(body: ChatRequest, services: ServicesDep, user: OptionalUser) -> ChatResponse:
    """Answer a question from the book, with citations; stores the exchange for signed-in readers."""
    turn = await open_turn(
        services=services, user=user, query=body.query, selected_text=body.selection, session_id=body.session_id
    )
    answered = await answer_whole(services=services, turn=turn)
    return ChatResponse(
        response=answered.done.answer,
        session_id=answered.done.session_id,
        sources=answered.cited.sources,
        citations=answered.cited.citations,
        mode=answered.meta.mode,
        search_query=answered.meta.search_query,
    )


@router.post(
    "/api/chat/stream",
    dependencies=[ChatRateLimitDep],
    responses={200: {"content": {"text/event-stream": {}}, "description": "meta, citations, delta..., done|error"}},
)
async def chat_stream(body: ChatRequest, services: ServicesDep, user: OptionalUser) -> EventStreamResponse:
    """Stream the answer as Server-Sent Events: meta, citations, delta..., then done or error."""
    turn = await open_turn(
        services=services, user=user, query=body.query, selected_text=body.selection, session_id=body.session_id
    )
    return EventStreamResponse(
        sse_frames(services=services, turn=turn), ping_interval_s=services.settings.chat_stream_ping_interval_s
    )


async def sse_frames(*, services: Services, turn: Turn) -> AsyncIterator[str]:
    """The pipeline's events as SSE frames; a failure becomes an `error` event (after `meta`)."""
    meta_sent = False
    try:
        async for event in answer_turn(services=services, turn=turn, stream=True):
            if isinstance(event, Meta):
                meta: dict[str, Any] = {"session_id": event.session_id, "mode": event.mode}
                if event.search_query is not None:
                    meta["search_query"] = event.search_query
                pending = format_event("meta", meta)
                meta_sent = True
            elif isinstance(event, Citations):
                # One write for both (they are ready together): a frame's trip through the middlewares
                # and the socket costs more CPU than its bytes.
                yield pending + format_event("citations", event.citations)
            elif isinstance(event, Delta):
                yield format_text_event("delta", event.text)
            else:
                yield format_event("done", {"session_id": event.session_id, "message_id": event.message_id})
    except Exception as exc:
        payload = stream_error_payload(exc)
        log.warning("chat.stream_error", code=payload["code"])
        if not meta_sent:
            # The new session was not created (nothing is stored for a failed answer).
            session_id = turn.session_id if turn.stored and not turn.new_session_title else None
            yield format_event("meta", {"session_id": session_id, "mode": "generative"})
        yield format_event("error", payload)
