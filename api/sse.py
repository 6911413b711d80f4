"""Server-Sent Events plumbing: event formatting, `: ping` heartbeats, and disconnect-aware responses.

`EventStreamResponse` always listens for the client's disconnect (whatever ASGI spec version the server
speaks) and cancels the body as soon as it arrives, even while the body is waiting for an upstream
token; cancelling runs the body's `finally` blocks, which close the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["SSE_HEADERS", "EventStreamResponse", "format_event", "format_text_event", "with_heartbeat"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
PING = ": ping\n\n"


#: `json.dumps(..., ensure_ascii=False)` builds a new encoder per call; this one is built once.
_encode = json.JSONEncoder(ensure_ascii=False).encode


def format_event(event: str | None, data: Any) -> str:
    """One SSE event; `data` is JSON-encoded on one line (strings too, unless `event` is None)."""
    payload = data if isinstance(data, str) and event is None else _encode(data)
    return f"event: {event}\ndata: {payload}\n\n" if event else f"data: {payload}\n\n"


def format_text_event(event: str, text: str) -> str:
    """`format_event(event, {"text": text})`, byte for byte, without building the dict (once per token)."""
    return f'event: {event}\ndata: {{"text": {_encode(text)}}}\n\n'


class _Failure:
    """An exception raised by the frames, carried through the queue to the consumer."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


_END = object()


async def with_heartbeat(frames: AsyncIterator[str], *, interval_s: float) -> AsyncIterator[str]:
    """Pass `frames` through, adding a `: ping` comment whenever none came for `interval_s`.

    One producer task reads `frames` into a small queue for the whole stream, so a ping never cancels a
    pending upstream read and no task is created per frame; one timer per stream (re-armed from the time
    of the last frame, not per frame) queues the ping. Closing this iterator cancels the producer, which
    closes `frames` (and, through it, the upstream request).
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
    loop = asyncio.get_running_loop()
    last = loop.time()  # when the consumer last took something from the queue
    timer: asyncio.TimerHandle | None = None

    async def pump() -> None:
        try:
            async for frame in frames:
                await queue.put(frame)
        except Exception as exc:
            await queue.put(_Failure(exc))
            return
        await queue.put(_END)

    def ping_if_idle() -> None:
        nonlocal timer
        now = loop.time()
        due = last + interval_s
        if now >= due:
            if queue.empty():  # the consumer is waiting: nothing went out for interval_s
                queue.put_nowait(PING)
            due = now + interval_s
        timer = loop.call_at(due, ping_if_idle)

    producer = asyncio.ensure_future(pump())
    timer = loop.call_at(last + interval_s, ping_if_idle)
    try:
        while True:
            item = await queue.get()
            last = loop.time()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            assert isinstance(item, str)
            yield item
    finally:
        timer.cancel()
        if not producer.done():
            producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):
                await aclose()


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` with the no-buffering headers; the body is cancelled on client disconnect."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(content, headers={**SSE_HEADERS, **(headers or {})}, media_type=self.media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = asyncio.ensure_future(self._send_body(send))
        watcher = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({body, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watcher, body):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await body

    async def _send_body(self, send: Send) -> None:
        try:
            await self.stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()
