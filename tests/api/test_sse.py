"""`api.sse.EventStreamResponse` driven directly over ASGI: frames, idle pings, disconnects, failures."""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from api.sse import PING, EventStreamResponse, format_event


class Recorder:
    """An ASGI `send` that keeps every message with the loop time it was sent at."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, dict[str, Any]]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append((asyncio.get_running_loop().time(), message))

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for _, m in self.messages if m["type"] == "http.response.body"]


def never_disconnects() -> Any:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    return receive


async def frames(count: int, gap_s: float, closed: list[bool] | None = None) -> AsyncIterator[str]:
    try:
        for i in range(count):
            await asyncio.sleep(gap_s)
            yield format_event("delta", {"text": str(i)})
    finally:
        if closed is not None:
            closed.append(True)


SCOPE = {"type": "http", "asgi": {"spec_version": "2.4"}}


async def test_frames_in_order_then_end_of_body_and_no_ping_while_busy() -> None:
    send = Recorder()
    response = EventStreamResponse(frames(20, 0.005), ping_interval_s=0.2)
    await response(SCOPE, never_disconnects(), send)
    start = send.messages[0][1]
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-accel-buffering"] == b"no"
    assert send.bodies[:-1] == [format_event("delta", {"text": str(i)}).encode() for i in range(20)]
    assert send.bodies[-1] == b""
    assert send.messages[-1][1]["more_body"] is False


async def test_pings_while_idle_then_the_frames() -> None:
    send = Recorder()

    async def slow_start() -> AsyncIterator[str]:
        await asyncio.sleep(0.55)
        yield format_event("meta", {"x": 1})

    await EventStreamResponse(slow_start(), ping_interval_s=0.1)(SCOPE, never_disconnects(), send)
    bodies = send.bodies
    pings = [b for b in bodies if b == PING.encode()]
    assert 3 <= len(pings) <= 6
    assert bodies[len(pings)] == format_event("meta", {"x": 1}).encode()  # all pings came before the frame
    times = [t for t, m in send.messages if m.get("body") == PING.encode()]
    assert all(later - earlier >= 0.09 for earlier, later in itertools.pairwise(times))


async def test_no_pings_without_an_interval() -> None:
    send = Recorder()
    await EventStreamResponse(frames(2, 0.15))(SCOPE, never_disconnects(), send)
    assert PING.encode() not in send.bodies


async def test_client_disconnect_cancels_the_body_and_closes_the_frames() -> None:
    send = Recorder()
    closed: list[bool] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.12)
        return {"type": "http.disconnect"}

    await asyncio.wait_for(
        EventStreamResponse(frames(100, 0.05, closed), ping_interval_s=0.02)(SCOPE, receive, send), 5
    )
    assert closed == [True]
    assert len(send.bodies) < 10  # stopped early, without an end-of-body message
    assert send.messages[-1][1].get("more_body", True) is True


async def test_a_failing_body_raises_to_the_caller() -> None:
    async def failing() -> AsyncIterator[str]:
        yield format_event("meta", {})
        raise RuntimeError("boom")

    send = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        await EventStreamResponse(failing(), ping_interval_s=0.05)(SCOPE, never_disconnects(), send)
    assert send.bodies == [format_event("meta", {}).encode()]


async def test_a_slow_client_never_gets_a_ping_inside_a_frame() -> None:
    """While a frame's send is blocked (a slow reader), the ping waits for it: messages never overlap."""
    in_send = 0
    overlaps = 0
    sent: list[bytes] = []

    async def slow_send(message: dict[str, Any]) -> None:
        nonlocal in_send, overlaps
        in_send += 1
        overlaps += in_send > 1
        await asyncio.sleep(0.08 if message.get("body") not in (None, PING.encode()) else 0)
        sent.append(message.get("body", b""))
        in_send -= 1

    await EventStreamResponse(frames(5, 0.0), ping_interval_s=0.03)(SCOPE, never_disconnects(), slow_send)
    assert overlaps == 0
    assert [b for b in sent if b and b != PING.encode()] == [
        format_event("delta", {"text": str(i)}).encode() for i in range(5)
    ]


async def test_a_failing_ping_is_not_left_unreported(caplog: pytest.LogCaptureFixture) -> None:
    """A ping whose send fails (the client left) neither crashes the stream's task nor leaves a 'Task
    exception was never retrieved' behind; the frames' own failure is what surfaces."""
    calls = 0

    async def failing_send(message: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if message.get("body") == PING.encode():
            raise OSError("client went away")

    async def slow() -> AsyncIterator[str]:
        await asyncio.sleep(0.25)
        yield format_event("meta", {})

    await EventStreamResponse(slow(), ping_interval_s=0.05)(SCOPE, never_disconnects(), failing_send)
    gc.collect()
    await asyncio.sleep(0)
    assert calls >= 3
    assert "never retrieved" not in caplog.text
