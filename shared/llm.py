"""Chat completions over the process's shared OpenAI client: plain and streaming, behind the breaker.

The client is `services.openai` (built once per process by `shared.clients`, with its own timeouts and
no SDK retries). Every call goes through `services.resilience`: a plain completion with backoff retries,
a stream with a retried *open* and its outcome reported with `record_success` / `record_failure`.
A stream is opened through the SDK (`shared.clients.openai_post`: same client, headers and 4xx/5xx errors)
but its SSE body is read by `shared.llm_stream.DeltaParser`, not decoded into pydantic chunks.
Offline mode (no OPENAI_API_KEY) raises `LlmUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import httpx2
from openai import APIConnectionError, APITimeoutError, AsyncOpenAI

from shared.clients import Services, openai_post
from shared.errors import LlmUnavailable, UpstreamUnavailable
from shared.llm_stream import DeltaParser
from shared.logging import get_logger
from shared.resilience import RetryPolicy, Upstream

__all__ = ["LlmStalled", "Message", "complete", "open_stream", "require_client"]

log = get_logger(__name__)

#: Default overall deadline of a plain completion (attempts and backoff included).
COMPLETION_DEADLINE_S = 20.0

#: How long the bytes after a stream's `[DONE]` are awaited before the connection is given up (the SDK's).
DRAIN_TIMEOUT_S = 0.1

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
        services.resilience.record_failure(Upstream.OPENAI, exc)
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
    kwargs: dict[str, Any] = {
        "model": model or services.settings.openai_chat_model,
        "messages": list(messages),
        "temperature": temperature,
        "stream": True,
    }
    timeout = idle_timeout_s if idle_timeout_s is not None else services.settings.chat_stream_idle_timeout_s
    try:
        upstream = await asyncio.wait_for(
            services.resilience.call(Upstream.OPENAI, lambda: _open_raw(client, kwargs)), timeout
        )
    except TimeoutError as exc:
        services.resilience.record_failure(Upstream.OPENAI, exc)
        log.warning("llm.stream_stalled", idle_timeout_s=timeout, phase="open")
        raise LlmStalled(f"The language model sent nothing for {timeout:g} s. Please try again.") from None
    return _deltas(services=services, response=upstream, idle_timeout_s=timeout)


async def _open_raw(client: AsyncOpenAI, kwargs: dict[str, Any]) -> httpx2.Response:
    """Send the streaming request through the SDK (same client, headers, errors for 4xx/5xx) and return
    the raw response, its body unread: `DeltaParser` reads the SSE itself."""
    return await openai_post(client, "/chat/completions", kwargs, stream=True)


async def _deltas(*, services: Services, response: httpx2.Response, idle_timeout_s: float) -> AsyncIterator[str]:
    """The text deltas of an open stream (see `open_stream` for the errors), parsed by `DeltaParser`.

    The idle timer starts whenever the next delta is wanted and stops at the next SSE event, as the SDK's
    iterator did (a read that completes no event, e.g. a comment, does not reset it).
    """
    resilience = services.resilience
    chunks = response.aiter_bytes().__aiter__()
    parser = DeltaParser(request=response.request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + idle_timeout_s
    finished = False
    try:
        while not parser.done:
            try:
                # asyncio.timeout_at, not wait_for: no extra task per read (wait_for makes one on 3.11).
                async with asyncio.timeout_at(deadline):
                    chunk = await chunks.__anext__()
                seen = parser.events
                texts = parser.feed(chunk)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                resilience.record_failure(Upstream.OPENAI, exc)
                log.warning("llm.stream_stalled", idle_timeout_s=idle_timeout_s)
                raise LlmStalled(
                    f"The language model sent nothing for {idle_timeout_s:g} s. Please try again."
                ) from None
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                error = _as_sdk_error(exc, response)
                log.warning("llm.stream_failed", error=type(error).__name__)
                raise resilience.record_failure(Upstream.OPENAI, error) from error
            for text in texts:
                yield text
            if parser.events != seen:
                deadline = loop.time() + idle_timeout_s
        if parser.done:
            await _drain(chunks)
        finished = True
        resilience.record_success(Upstream.OPENAI)
    finally:
        if not finished:
            log.info("llm.stream_closed_early")
        with contextlib.suppress(Exception):
            await asyncio.shield(_close(chunks, response))


async def _close(chunks: AsyncIterator[bytes], response: httpx2.Response) -> None:
    """Finish the body iterator (runs the transport's cleanup now, not at garbage collection), then close."""
    try:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    finally:
        await response.aclose()


def _as_sdk_error(exc: Exception, response: httpx2.Response) -> Exception:
    """Transport errors as the SDK's stream reported them (so the breaker classifies them the same)."""
    if isinstance(exc, httpx2.TimeoutException):
        return APITimeoutError(request=response.request)
    if isinstance(exc, httpx2.RequestError | ssl.SSLError | anyio.EndOfStream):
        return APIConnectionError(request=response.request)
    return exc


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows `[DONE]` (the chunked terminator) so the connection goes back to the pool."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in chunks:
                pass
