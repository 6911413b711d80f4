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

__all__ = ["SSE_HEADERS", "EventStreamResponse", "format_event", "with_heartbeat"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
PING = ": ping\n\n"


def format_event(event: str | None, data: Any) -> str:
    """One SSE event; `data` is JSON-encoded on one line (strings too, unless `event` is None)."""
    payload = data if isinstance(data, str) and event is None else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


class _Failure:
    """An exception raised by the frames, carried through the queue to the consumer."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


_END = object()


async def with_heartbeat(frames: AsyncIterator[str], *, interval_s: float) -> AsyncIterator[str]:
    """Pass `frames` through, adding a `: ping` comment whenever none came for `interval_s`.

    One producer task reads `frames` into a small queue for the whole stream, so a ping never cancels a
    pending upstream read and no task is created per frame; closing this iterator cancels the producer,
    which closes `frames` (and, through it, the upstream request).
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)

    async def pump() -> None:
        try:
            async for frame in frames:
                await queue.put(frame)
        except Exception as exc:
            await queue.put(_Failure(exc))
            return
        await queue.put(_END)

    producer = asyncio.ensure_future(pump())
    try:
        while True:
            try:
                async with asyncio.timeout(interval_s):
                    item = await queue.get()
            except TimeoutError:
                yield PING
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            assert isinstance(item, str)
            yield item
    finally:
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
