"""POST /api/chat/stream over real sockets (uvicorn on loopback), parsed with an SSE parser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from shared.platform.clients import Services
from shared.stores.vectorstore import VectorStore
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.chat_corpus import chat_app, chat_settings, corpus_store, served, sign_up
from tests.utils.sse import Event, iter_events

__all__ = ["corpus_store"]

QUESTION = "How do ROS 2 nodes communicate using topics?"


@pytest.fixture(scope="module")
async def server(fake_openai: FakeOpenAI, corpus_store: VectorStore) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app served on loopback with a 1 s idle timeout and 0.2 s pings (short, to keep tests fast)."""
    settings = chat_settings(
        openai_base_url=fake_openai.url, chat_stream_idle_timeout_s=1.0, chat_stream_ping_interval_s=0.2
    )
    async with chat_app(settings, corpus_store) as (app, _client), served(app) as url:
        yield app, url


@pytest.fixture
async def client(server: tuple[FastAPI, str], fake_openai: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    """A real HTTP client; the fake and the breakers are reset."""
    fake_openai.reset()
    services: Services = server[0].state.services
    await services.resilience.reset()
    async with httpx.AsyncClient(base_url=server[1], timeout=30) as http:
        yield http
    fake_openai.reset()


async def _events(
    client: httpx.AsyncClient, body: dict[str, object], headers: dict[str, str] | None = None
) -> tuple[httpx.Response, list[Event]]:
    async with client.stream("POST", "/api/chat/stream", json=body, headers=headers) as response:
        events = [e async for e in iter_events(response, comments=True)]
    return response, events


async def test_event_order_format_and_stored_answer(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """meta, citations, delta..., done; no-buffering headers; the stored answer equals the deltas."""
    fake_openai.configure(tokens=12, token_delay_ms=10)
    auth = await sign_up(client)
    response, events = await _events(client, {"query": QUESTION}, auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    named = [e for e in events if e.comment is None]
    kinds = [e.event for e in named]
    assert kinds[:2] == ["meta", "citations"]
    assert kinds[-1] == "done"
    assert set(kinds[2:-1]) == {"delta"}
    assert len(kinds) - 3 >= 10
    meta, citations, done = named[0].json(), named[1].json(), named[-1].json()
    assert meta["mode"] == "generative"
    assert meta["session_id"]
    assert citations[0]["source"] == "week3/ros2-nodes-topics.md"
    assert done["session_id"] == meta["session_id"]
    assert done["message_id"]
    streamed = "".join(e.json()["text"] for e in named[2:-1])
    stored = (await client.get(f"/api/chat/sessions/{meta['session_id']}", headers=auth)).json()
    assistant = stored["messages"][-1]
    assert assistant["id"] == done["message_id"]
    assert assistant["content"] == streamed
    assert assistant["citations"] == citations
    assert all(isinstance(s, str) for s in assistant["sources"])


async def test_anonymous_stream_stores_nothing(client: httpx.AsyncClient) -> None:
    """Anonymous readers get `session_id: null` in meta and done, and no message id."""
    _, events = await _events(client, {"query": QUESTION})
    named = [e for e in events if e.comment is None]
    assert named[0].json()["session_id"] is None
    assert named[-1].event == "done"
    assert named[-1].json() == {"session_id": None, "message_id": None}


async def test_not_covered_streams_the_reply_without_citations(
    client: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    """Off-topic: empty citations, the not-covered text as deltas, and no model call."""
    _, events = await _events(client, {"query": "best pizza in Naples"})
    named = [e for e in events if e.comment is None]
    assert named[1].json() == []
    assert "couldn't find this" in "".join(e.json()["text"] for e in named if e.event == "delta")
    assert fake_openai.requests_to("/chat/completions") == []


async def test_pings_while_waiting(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """`: ping` comments flow while the model has not answered yet."""
    fake_openai.configure(latency_ms=700)
    _, events = await _events(client, {"query": QUESTION})
    first_named = next(i for i, e in enumerate(events) if e.comment is None)
    assert any(e.comment == "ping" for e in events[:first_named])
    assert events[-1].event == "done"


async def test_client_disconnect_cancels_upstream(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """Closing the response after the first delta makes the fake server see its stream abandoned."""
    fake_openai.configure(tokens=60, token_delay_ms=100)
    async with client.stream("POST", "/api/chat/stream", json={"query": QUESTION}) as response:
        async for event in iter_events(response):
            if event.event == "delta":
                break
    deadline = time.monotonic() + 10
    while fake_openai.state.cancelled_streams < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert fake_openai.state.cancelled_streams == 1
    assert fake_openai.state.completed_streams == 0


async def test_stalled_model_ends_with_error_event(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """No token within the idle timeout (1 s here, 30 s by default): an `error` event ends the stream."""
    fake_openai.configure(tokens=40, token_delay_ms=50)

    async def stall_soon() -> None:
        await asyncio.sleep(0.4)
        fake_openai.configure(fault="stall")

    staller = asyncio.create_task(stall_soon())
    started = time.monotonic()
    _, events = await _events(client, {"query": QUESTION})
    await staller
    named = [e for e in events if e.comment is None]
    assert [e.event for e in named[:2]] == ["meta", "citations"]
    assert named[2].event == "delta"
    assert named[-1].event == "error"
    assert named[-1].json()["code"] == "upstream_timeout"
    assert isinstance(named[-1].json()["detail"], str)
    assert time.monotonic() - started < 10


async def test_upstream_down_before_first_token_falls_back(
    server: tuple[FastAPI, str], client: httpx.AsyncClient
) -> None:
    """An open breaker: the stream announces `extractive` and quotes cited passages."""
    services: Services = server[0].state.services
    from shared.platform.upstreams import Upstream

    for _ in range(services.settings.circuit_failure_threshold):
        await services.resilience.record_failure(Upstream.OPENAI, ConnectionError("down"))
    _, events = await _events(client, {"query": QUESTION})
    named = [e for e in events if e.comment is None]
    assert named[0].json()["mode"] == "extractive"
    assert named[1].json()
    assert named[-1].event == "done"
    assert "[1]" in "".join(e.json()["text"] for e in named if e.event == "delta")


async def test_validation_and_ownership_fail_before_streaming(client: httpx.AsyncClient) -> None:
    """Bad input is a 422 and someone else's session a 404, both as JSON envelopes."""
    assert (await client.post("/api/chat/stream", json={"query": ""})).status_code == 422
    owner, other = await sign_up(client), await sign_up(client)
    _, events = await _events(client, {"query": QUESTION}, owner)
    session_id = events[-1].json()["session_id"]
    response = await client.post("/api/chat/stream", json={"query": QUESTION, "session_id": session_id}, headers=other)
    assert response.status_code == 404
    assert response.json()["code"] == "session_not_found"


async def test_search_index_down_is_an_error_event(server: tuple[FastAPI, str], client: httpx.AsyncClient) -> None:
    """A failure after the stream started arrives as `meta` then `error` with code and detail."""
    services: Services = server[0].state.services
    store, services.vectorstore = services.vectorstore, None
    try:
        response, events = await _events(client, {"query": QUESTION})
    finally:
        services.vectorstore = store
    assert response.status_code == 200
    named = [e for e in events if e.comment is None]
    assert [e.event for e in named] == ["meta", "error"]
    assert named[1].json()["code"] == "upstream_unavailable"
    assert isinstance(named[1].json()["detail"], str)


async def test_plain_chat_never_waits_past_the_deadline(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """POST /chat with a silent model answers extractively once the deadline (1 s here) passes."""
    fake_openai.configure(fault="stall")
    started = time.monotonic()
    response = await client.post("/chat", json={"query": QUESTION})
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == "extractive"
    assert response.json()["citations"]
    assert time.monotonic() - started < 10
