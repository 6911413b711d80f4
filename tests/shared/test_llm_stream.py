"""The chat stream read from the raw SSE bytes: `DeltaParser` units, and `open_stream` against the fake server."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from openai import APIError

from shared.clients import Services, build_services
from shared.config import Settings
from shared.errors import UpstreamUnavailable
from shared.llm import LlmStalled, open_stream
from shared.llm_stream import DeltaParser
from shared.resilience import Upstream
from tests.conftest import REDIS_TEST_URL
from tests.fakes.openai_server import FakeOpenAI

REQUEST = httpx2.Request("POST", "http://upstream.test/v1/chat/completions")


def chunk(content: str | None = None, **delta: Any) -> bytes:
    """One `chat.completion.chunk` event as the API sends it."""
    if content is not None:
        delta["content"] = content
    body = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
    return f"data: {json.dumps(body)}\n\n".encode()


def test_deltas_in_order_and_done_stops() -> None:
    """Role and empty chunks give nothing, content chunks give their text, `[DONE]` ends the stream."""
    parser = DeltaParser(request=REQUEST)
    stream = chunk(role="assistant", content="") + chunk("Hello") + chunk(" world") + chunk(finish_reason=None)
    assert parser.feed(stream + b"data: [DONE]\n\n" + chunk("after")) == ["Hello", " world"]
    assert parser.done
    assert parser.events == 5


def test_events_split_anywhere_and_any_line_ending() -> None:
    """Byte-by-byte delivery, CRLF and CR line ends and multi-line data give the same deltas."""
    body = chunk("a") + chunk("é") + b": keep-alive comment\n\nevent: message\nid: 7\n" + chunk("c")
    for variant in (body, body.replace(b"\n", b"\r\n"), body.replace(b"\n", b"\r")):
        parser = DeltaParser(request=REQUEST)
        texts = [text for i in range(len(variant)) for text in parser.feed(variant[i : i + 1])]
        assert texts == ["a", "é", "c"]
        assert parser.events == 3
    multi = DeltaParser(request=REQUEST)
    assert multi.feed(b'data: {"choices": [{"delta":\ndata: {"content": "x"}}]}\n\n') == ["x"]


def test_error_event_raises_the_sdks_error() -> None:
    """An `{"error": ...}` event raises `openai.APIError` with its message and body, like the SDK."""
    parser = DeltaParser(request=REQUEST)
    with pytest.raises(APIError) as raised:
        parser.feed(chunk("ok") + b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n')
    assert raised.value.message == "boom"
    assert raised.value.body == {"message": "boom", "type": "server_error"}
    with pytest.raises(json.JSONDecodeError):
        DeltaParser(request=REQUEST).feed(b"data: {not json\n\n")


@pytest.fixture
async def services(fake_openai: FakeOpenAI) -> AsyncIterator[Services]:
    """API-role services whose OpenAI client talks to the fake server (breaker threshold 2)."""
    settings = Settings(
        _env_file=None,
        data_dir=tempfile.mkdtemp(prefix="lectern-llm-stream-"),
        redis_url=f"{REDIS_TEST_URL}/{1 + uuid.uuid4().int % 15}",
        openai_api_key="sk-test-llm-stream",
        openai_base_url=fake_openai.url,
        circuit_failure_threshold=2,
    )
    built = await build_services(settings, role="api")
    fake_openai.reset()
    yield built
    fake_openai.reset()
    await built.aclose()


async def collect(services: Services, **kwargs: Any) -> str:
    """Open a stream and join its deltas."""
    deltas = await open_stream(services=services, messages=[{"role": "user", "content": "hi"}], **kwargs)
    return "".join([text async for text in deltas])


async def test_stream_text_is_the_reply_and_counts_as_success(services: Services, fake_openai: FakeOpenAI) -> None:
    """The joined deltas are the fake's reply, the breaker records a success, and the stream completed."""
    fake_openai.configure(reply="Robots have joints [1].", tokens=5)
    services.resilience.record_failure(Upstream.OPENAI, TimeoutError())
    assert await collect(services) == "Robots have joints [1]."
    assert services.resilience.breakers[Upstream.OPENAI].failure_count == 0
    assert fake_openai.state.completed_streams == 1


async def test_dropped_stream_is_a_transient_failure(services: Services, fake_openai: FakeOpenAI) -> None:
    """A connection dropped mid-body is `UpstreamUnavailable` and counts against the breaker."""
    fake_openai.configure(fault="drop")
    with pytest.raises(UpstreamUnavailable):
        await collect(services)
    assert services.resilience.breakers[Upstream.OPENAI].failure_count == 1


async def test_stall_between_tokens_is_llm_stalled(services: Services, fake_openai: FakeOpenAI) -> None:
    """No event for the idle timeout after the first token ends the stream with `LlmStalled` (breaker failure)."""
    fake_openai.configure(reply="one two three four", tokens=4, token_delay_ms=50)
    deltas = await open_stream(services=services, messages=[{"role": "user", "content": "hi"}], idle_timeout_s=0.5)
    iterator = deltas.__aiter__()
    assert await iterator.__anext__() == "one "
    fake_openai.configure(fault="stall")
    with pytest.raises(LlmStalled):
        await iterator.__anext__()
    await deltas.aclose()  # type: ignore[attr-defined]
    assert services.resilience.breakers[Upstream.OPENAI].failure_count == 1
