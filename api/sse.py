"""Server-Sent Events plumbing: event formatting, `: ping` heartbeats, and disconnect-aware responses.

`EventStreamResponse` sends `: ping` comments while the body is idle, always listens for the client's
disconnect (whatever ASGI spec version the server speaks) and cancels the body as soon as it arrives,
even while the body is waiting for an upstream token; cancelling runs the body's `finally` blocks, which
close the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["SSE_HEADERS", "EventStreamResponse", "format_event", "format_text_event"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
PING = ": ping\n\n"
PING_BYTES = PING.encode()


#: `json.dumps(..., ensure_ascii=False)` builds a new encoder per call; this one is built once.
_encode = json.JSONEncoder(ensure_ascii=False).encode


def format_event(event: str | None, data: Any) -> str:
    """One SSE event; `data` is JSON-encoded on one line (strings too, unless `event` is None)."""
    payload = data if isinstance(data, str) and event is None else _encode(data)
    return f"event: {event}\ndata: {payload}\n\n" if event else f"data: {payload}\n\n"


def format_text_event(event: str, text: str) -> str:
    """`format_event(event, {"text": text})`, byte for byte, without building the dict (once per token)."""
    return f'event: {event}\ndata: {{"text": {_encode(text)}}}\n\n'


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` with the no-buffering headers, `: ping` comments while idle, and the body
    cancelled on client disconnect.

    The frames are sent by the task that iterates them, so a frame costs no queue hop or task switch.
    When nothing went out for `ping_interval_s`, a timer (one per stream, re-armed from the time of the
    last frame) starts a short task that sends one `: ping`; a lock keeps it and the frames from
    interleaving, and a ping never interrupts a pending upstream read.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[str],
        *,
        ping_interval_s: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, headers={**SSE_HEADERS, **(headers or {})}, media_type=self.media_type)
        self.frames = content
        self.ping_interval_s = ping_interval_s

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

    async def stream_response(self, send: Send) -> None:
        """Send the head, every frame as it comes (pings in the gaps), then the end of the body."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        interval = self.ping_interval_s
        loop = asyncio.get_running_loop()
        lock = asyncio.Lock()
        last = loop.time()  # when a frame or ping last went out
        timer: asyncio.TimerHandle | None = None
        pinger: asyncio.Future[None] | None = None

        async def ping() -> None:
            nonlocal last
            async with lock:
                # A failed ping (the client left) is not this task's to report: the next frame's send, or
                # the disconnect watcher, ends the stream.
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": PING_BYTES, "more_body": True})
                last = loop.time()

        def ping_if_idle() -> None:
            nonlocal timer, pinger
            assert interval is not None
            now = loop.time()
            due = last + interval
            if now >= due:
                if not lock.locked() and (pinger is None or pinger.done()):
                    pinger = asyncio.ensure_future(ping())
                due = now + interval
            timer = loop.call_at(due, ping_if_idle)

        if interval:
            timer = loop.call_at(last + interval, ping_if_idle)
        try:
            async for frame in self.frames:
                async with lock:
                    await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})
                last = loop.time()
        finally:
            if timer is not None:
                timer.cancel()
            if pinger is not None and not pinger.done():
                pinger.cancel()
                with contextlib.suppress(BaseException):
                    await pinger
        await send({"type": "http.response.body", "body": b"", "more_body": False})
