"""Routes: `POST /chat` (one JSON answer) and `POST /api/chat/stream` (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator

from api.deps import ChatRateLimitDep, OptionalUser, ServicesDep
from api.errors import stream_error_payload
from api.sse import EventStreamResponse, format_event, format_text_event
from shared.answering import generate, stream_answer
from shared.chat import Turn, ensure_session, finish_turn, open_turn, plan_turn
from shared.clients import Services
from shared.logging import get_logger

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
    plan = await generate(services=services, plan=await plan_turn(services=services, turn=turn))
    answer = plan.text or ""
    await finish_turn(services=services, turn=turn, plan=plan, answer=answer)
    return ChatResponse(
        response=answer,
        session_id=turn.session_id if turn.stored else None,
        sources=plan.sources,
        citations=plan.citations,
        mode=plan.mode,
        search_query=turn.search_query,
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
        chat_events(services=services, turn=turn), ping_interval_s=services.settings.chat_stream_ping_interval_s
    )


async def chat_events(*, services: Services, turn: Turn) -> AsyncIterator[str]:
    """The SSE frames of one streamed answer; failures become an `error` event (after `meta`)."""
    meta_sent = False
    session_id = turn.session_id if turn.stored else None
    started = time.perf_counter()
    try:
        planned = await plan_turn(services=services, turn=turn)
        retrieved = time.perf_counter()
        plan, deltas = await stream_answer(services=services, plan=planned)
        opened = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        try:
            await ensure_session(services=services, turn=turn)  # the id in `meta` must exist even if the stream fails
            # One write for both (they are ready together): a frame's trip through the middlewares and
            # the socket costs more CPU than its bytes.
            meta: dict[str, Any] = {"session_id": session_id, "mode": plan.mode}
            if turn.search_query is not None:
                meta["search_query"] = turn.search_query
            yield format_event("meta", meta) + format_event("citations", plan.citations)
            meta_sent = True
            async for text in deltas:
                if first is None:
                    first = time.perf_counter()
                parts.append(text)
                yield format_text_event("delta", text)
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                await aclose()
        # Shielded: a reader who leaves right after the last token still finds the answer in the history.
        message_id = await asyncio.shield(finish_turn(services=services, turn=turn, plan=plan, answer="".join(parts)))
        yield format_event("done", {"session_id": session_id, "message_id": message_id})
        log.info(
            "chat.stream_done",
            mode=plan.mode,
            deltas=len(parts),
            retrieval_ms=_ms(started, retrieved),
            open_ms=_ms(retrieved, opened),
            first_token_ms=_ms(started, first or opened),
            total_ms=_ms(started, time.perf_counter()),
        )
    except Exception as exc:
        payload = stream_error_payload(exc)
        log.warning("chat.stream_error", code=payload["code"])
        if not meta_sent:
            # The new session was not created (nothing is stored for a failed answer).
            yield format_event(
                "meta", {"session_id": None if turn.new_session_title else session_id, "mode": "generative"}
            )
        yield format_event("error", payload)


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 1)
