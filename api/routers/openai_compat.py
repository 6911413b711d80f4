"""Routes: an OpenAI-compatible surface (`/v1/models`, `/v1/chat/completions`) so any OpenAI client can
chat with the book. The last user message is the question, earlier messages are history, nothing is
stored, and the response carries a top-level `citations` list (on the first chunk when streaming)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ChatRateLimitDep, OptionalUser, ServicesDep
from api.errors import stream_error_payload
from api.sse import EventStreamResponse, format_event
from shared.answers.chat import Citations, Delta, Meta, Turn, answer_turn, answer_whole, open_turn
from shared.inference.llm import Message
from shared.platform.clients import Services
from shared.platform.errors import InvalidInput
from shared.platform.logging import get_logger

router = APIRouter(prefix="/v1", tags=["openai-compatible"])
log = get_logger(__name__)

MODEL_ID = "lectern"
CREATED = 1_767_225_600  # 2026-01-01, a fixed "created" for the model list


class CompatMessage(BaseModel):
    """An OpenAI chat message (string content or a list of text parts)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class CompletionRequest(BaseModel):
    """The subset of the chat completions request Lectern honours (other fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str = MODEL_ID
    messages: list[CompatMessage] = Field(min_length=1, max_length=200)
    stream: bool = False


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(str(part.get("text", "")) for part in content if part.get("type", "text") == "text")


def _split(messages: list[CompatMessage]) -> tuple[str, list[Message]]:
    """The last user message (the question) and the user/assistant messages before it (history)."""
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last is None:
        raise InvalidInput("The conversation needs a user message.", code="validation_error")
    query = _text(messages[last].content).strip()
    if not query or len(query) > 4000:
        raise InvalidInput("The last user message must have 1 to 4000 characters.", code="validation_error")
    history: list[Message] = [
        {"role": m.role, "content": _text(m.content)}
        for m in messages[:last]
        if m.role in ("user", "assistant") and _text(m.content)
    ]
    return query, history


@router.get("/models")
async def list_models() -> dict[str, Any]:
    """The one model: `lectern` (answers grounded in the textbook)."""
    return {
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": "lectern"}],
    }


@router.post("/chat/completions", response_model=None, dependencies=[ChatRateLimitDep])
async def chat_completions(
    body: CompletionRequest, services: ServicesDep, user: OptionalUser
) -> JSONResponse | EventStreamResponse:
    """OpenAI chat completions (stream or not) answered from the book, plus `citations`."""
    query, history = _split(body.messages)
    turn = await open_turn(services=services, user=user, query=query, history=history)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        return EventStreamResponse(
            _stream(services=services, turn=turn, completion_id=completion_id, created=created),
            ping_interval_s=services.settings.chat_stream_ping_interval_s,
        )
    answered = await answer_whole(services=services, turn=turn)
    text = answered.done.answer
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": MODEL_ID,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": _usage(query, text),
            "citations": answered.cited.citations,
            "sources": answered.cited.sources,
            "mode": answered.meta.mode,
        }
    )


def _usage(prompt: str, completion: str) -> dict[str, int]:
    """Rough token counts (4 characters a token); Lectern does not bill."""
    p, c = len(prompt) // 4 + 1, len(completion) // 4 + 1
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _chunk(completion_id: str, created: int, delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
    payload = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return format_event(None, payload)


async def _stream(*, services: Services, turn: Turn, completion_id: str, created: int) -> AsyncIterator[str]:
    """OpenAI streaming chunks, then `data: [DONE]`; failures become an `error` chunk first."""
    try:
        mode = "generative"
        async for event in answer_turn(services=services, turn=turn, stream=True):
            if isinstance(event, Meta):
                mode = event.mode
            elif isinstance(event, Citations):
                yield _chunk(
                    completion_id,
                    created,
                    {"role": "assistant", "content": ""},
                    None,
                    citations=event.citations,
                    sources=event.sources,
                    mode=mode,
                )
            elif isinstance(event, Delta):
                yield _chunk(completion_id, created, {"content": event.text}, None)
        yield _chunk(completion_id, created, {}, "stop")
    except Exception as exc:
        payload = stream_error_payload(exc)
        yield format_event(
            None, {"error": {"message": payload["detail"], "type": payload["code"], "code": payload["code"]}}
        )
    yield "data: [DONE]\n\n"
