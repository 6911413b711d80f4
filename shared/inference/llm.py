"""Chat completions over the process's shared OpenAI client: plain and streaming, behind the breaker.

The client is `services.openai` (built once per process by `shared.platform.clients`, with its own timeouts and
no SDK retries). Every call goes through `services.resilience`: a plain completion with backoff retries,
a stream with a retried *open* and its outcome reported with `record_success` / `record_failure`.
A stream is the SDK's own (`chat.completions.create(stream=True)`, an `AsyncStream` of chunks).
Offline mode (no OPENAI_API_KEY) raises `LlmUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from shared.platform.clients import Services
from shared.platform.errors import LlmUnavailable, UpstreamUnavailable
from shared.platform.logging import get_logger
from shared.platform.resilience import RetryPolicy
from shared.platform.upstreams import Upstream

__all__ = ["LlmStalled", "Message", "complete", "open_stream", "require_client"]

log = get_logger(__name__)

#: Default overall deadline of a plain completion (attempts and backoff included).
COMPLETION_DEADLINE_S = 20.0

#: An OpenAI chat message: {"role": "system"|"user"|"assistant", "content": str}.
Message = dict[str, str]


class LlmStalled(UpstreamUnavailable):
    """The model stopped sending tokens for longer than the idle timeout."""

    code = "upstream_timeout"
    default_detail = "The language model stopped responding. Please try again."


def require_client(services: Services) -> AsyncOpenAI:
    """The shared OpenAI client, or `LlmUnavailable` in offline mode."""
    if services.openai is None:
        raise LlmUnavailable()
    return services.openai


async def complete(
    *,
    services: Services,
    messages: Sequence[Message],
    model: str | None = None,
    temperature: float = 0.2,
    max_tokens: int | None = None,
    deadline_s: float | None = None,
    policy: RetryPolicy | None = None,
) -> str:
    """One chat completion, retried behind the `openai` breaker, all within `deadline_s`; returns the text.

    The default deadline (20 s, or the stream idle timeout if shorter) leaves a plain `/chat` time to fall
    back to an extractive answer before the API's 28 s response deadline.
    """
    client = require_client(services)
    kwargs: dict[str, Any] = {
        "model": model or services.settings.openai_chat_model,
        "messages": list(messages),
        "temperature": temperature,
    }
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    deadline = deadline_s or min(COMPLETION_DEADLINE_S, services.settings.chat_stream_idle_timeout_s)
    try:
        # One overall deadline over the attempts and their backoff: a caller never waits past it.
        response = await asyncio.wait_for(
            services.resilience.call(Upstream.OPENAI, lambda: client.chat.completions.create(**kwargs), policy=policy),
            deadline,
        )
    except TimeoutError as exc:
        await services.resilience.record_failure(Upstream.OPENAI, exc)
        log.warning("llm.completion_timeout", deadline_s=deadline)
        raise LlmStalled(f"The language model did not answer within {deadline:g} s. Please try again.") from None
    if not response.choices:
        return ""
    return response.choices[0].message.content or ""


async def open_stream(
    *,
    services: Services,
    messages: Sequence[Message],
    model: str | None = None,
    temperature: float = 0.2,
    idle_timeout_s: float | None = None,
) -> AsyncIterator[str]:
    """Open a streaming completion and return an iterator of text deltas.

    Opening (until the response headers arrive) is retried behind the breaker, so an upstream that is
    down fails here, before the caller has promised anything to its client; opening also counts against
    the idle timeout (`LlmStalled`). The returned iterator
    raises `LlmStalled` when no token arrives for `idle_timeout_s`, `UpstreamUnavailable` when the
    stream breaks, and always closes the upstream response (closing it is how a client disconnect
    cancels the upstream request).
    """
    client = require_client(services)
    chosen = model or services.settings.openai_chat_model
    chat = cast("list[ChatCompletionMessageParam]", list(messages))
    timeout = idle_timeout_s if idle_timeout_s is not None else services.settings.chat_stream_idle_timeout_s
    try:
        upstream = await asyncio.wait_for(
            services.resilience.call(
                Upstream.OPENAI,
                lambda: client.chat.completions.create(
                    model=chosen, messages=chat, temperature=temperature, stream=True
                ),
            ),
            timeout,
        )
    except TimeoutError as exc:
        await services.resilience.record_failure(Upstream.OPENAI, exc)
        log.warning("llm.stream_stalled", idle_timeout_s=timeout, phase="open")
        raise LlmStalled(f"The language model sent nothing for {timeout:g} s. Please try again.") from None
    return _deltas(services=services, stream=upstream, idle_timeout_s=timeout)


async def _deltas(
    *, services: Services, stream: AsyncStream[ChatCompletionChunk], idle_timeout_s: float
) -> AsyncIterator[str]:
    """The text deltas (`choices[0].delta.content`) of an open SDK stream; see `open_stream` for the errors.

    The idle timer restarts at every chunk the stream yields, content or not.
    """
    resilience = services.resilience
    finished = False
    try:
        while True:
            try:
                # asyncio.timeout, not wait_for: no extra task per chunk (wait_for makes one on 3.11).
                async with asyncio.timeout(idle_timeout_s):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                await resilience.record_failure(Upstream.OPENAI, exc)
                log.warning("llm.stream_stalled", idle_timeout_s=idle_timeout_s)
                raise LlmStalled(
                    f"The language model sent nothing for {idle_timeout_s:g} s. Please try again."
                ) from None
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                log.warning("llm.stream_failed", error=type(exc).__name__)
                raise await resilience.record_failure(Upstream.OPENAI, exc) from exc
            if chunk.choices and (text := chunk.choices[0].delta.content):
                yield text
        finished = True
        await resilience.record_success(Upstream.OPENAI)
    finally:
        if not finished:
            log.info("llm.stream_closed_early")
        # Closing the response is how a client disconnect cancels the upstream request.
        with contextlib.suppress(Exception):
            await asyncio.shield(stream.close())
