"""`shared.inference.llm.open_stream` against the fake OpenAI server: deltas, idle timeout, disconnects and errors."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.inference.llm import LlmStalled, open_stream
from shared.platform.clients import Services, build_services
from shared.platform.config import Settings
from shared.platform.errors import UpstreamMisconfigured, UpstreamUnavailable
from shared.platform.resilience import Resilience, RetryPolicy
from shared.platform.upstreams import Upstream
from tests.conftest import REDIS_TEST_URL
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.metrics import retries_counted

#: Three quick tries, so a failing upstream is given up on within a fraction of a second.
FAST = RetryPolicy(max_tries=3, max_time_s=5, base_s=0.01, cap_s=0.02)
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def services(fake_openai: FakeOpenAI) -> AsyncIterator[Services]:
    """API-role services whose OpenAI client talks to the fake server (breaker threshold 2, fast retries)."""
    settings = Settings(
        _env_file=None,
        data_dir=tempfile.mkdtemp(prefix="lectern-llm-stream-"),
        redis_url=f"{REDIS_TEST_URL}/{1 + uuid.uuid4().int % 15}",
        openai_api_key="sk-test-llm-stream",
        openai_base_url=fake_openai.url,
        circuit_failure_threshold=2,
    )
    built = await build_services(
        settings, role="api", resilience=Resilience(settings, policies={Upstream.OPENAI: FAST})
    )
    fake_openai.reset()
    yield built
    fake_openai.reset()
    await built.aclose()


async def collect(services: Services, **kwargs: Any) -> list[str]:
    """Open a stream and read all its deltas."""
    deltas = await open_stream(services=services, messages=MESSAGES, **kwargs)
    return [text async for text in deltas]


async def test_deltas_arrive_in_order_and_count_as_success(services: Services, fake_openai: FakeOpenAI) -> None:
    """The deltas are the reply's tokens in order (no empty ones), and a finished stream resets the breaker."""
    fake_openai.configure(reply="Robots have joints [1].", tokens=4)
    await services.resilience.record_failure(Upstream.OPENAI, TimeoutError())
    assert await collect(services) == ["Robots ", "have ", "joints ", "[1]."]
    assert services.resilience.breakers[Upstream.OPENAI].failure_count == 0
    assert fake_openai.state.completed_streams == 1
    (request,) = fake_openai.requests_to("/chat/completions")
    assert request["body"]["stream"] is True
    assert request["body"]["messages"] == MESSAGES


async def test_stall_between_tokens_is_llm_stalled(services: Services, fake_openai: FakeOpenAI) -> None:
    """No chunk for the idle timeout after the first token ends the stream with `LlmStalled` (breaker failure)."""
    fake_openai.configure(reply="one two three four", tokens=4, token_delay_ms=50)
    deltas = await open_stream(services=services, messages=MESSAGES, idle_timeout_s=0.5)
    assert await anext(deltas) == "one "
    fake_openai.configure(fault="stall")
    with pytest.raises(LlmStalled):
        await anext(deltas)
    await deltas.aclose()  # type: ignore[attr-defined]
    assert services.resilience.breakers[Upstream.OPENAI].failure_count == 1


async def test_silence_before_the_headers_is_llm_stalled(services: Services, fake_openai: FakeOpenAI) -> None:
    """No response headers within the idle timeout make opening fail with `LlmStalled` (a breaker failure)."""
    fake_openai.configure(latency_ms=1500)  # longer than the idle timeout, short enough to end before teardown
    started = time.monotonic()
    with pytest.raises(LlmStalled):
        await open_stream(services=services, messages=MESSAGES, idle_timeout_s=0.5)
    assert time.monotonic() - started < 1.4
    assert services.resilience.breakers[Upstream.OPENAI].failure_count == 1


async def test_closing_the_deltas_cancels_the_upstream_stream(services: Services, fake_openai: FakeOpenAI) -> None:
    """Closing the iterator after the first delta (a client disconnect) makes the fake see its stream abandoned."""
    fake_openai.configure(tokens=60, token_delay_ms=100)
    deltas = await open_stream(services=services, messages=MESSAGES)
    assert await anext(deltas)
    await deltas.aclose()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while fake_openai.state.cancelled_streams < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert fake_openai.state.cancelled_streams == 1
    assert fake_openai.state.completed_streams == 0


async def test_rejected_key_is_misconfigured(services: Services, fake_openai: FakeOpenAI) -> None:
    """A 401 when opening is `UpstreamMisconfigured` at once: no retry, and the breaker is not counted."""
    fake_openai.configure(fault="401")
    with pytest.raises(UpstreamMisconfigured):
        await open_stream(services=services, messages=MESSAGES)
    assert len(fake_openai.requests_to("/chat/completions")) == 1
    assert services.resilience.breakers[Upstream.OPENAI].failure_count == 0


async def test_server_errors_are_retried_then_unavailable(services: Services, fake_openai: FakeOpenAI) -> None:
    """A 500 when opening is retried up to the policy's tries, then `UpstreamUnavailable` (one breaker failure)."""
    fake_openai.configure(fault="500")
    retries_before = retries_counted(Upstream.OPENAI)
    with pytest.raises(UpstreamUnavailable) as raised:
        await open_stream(services=services, messages=MESSAGES)
    assert not isinstance(raised.value, UpstreamMisconfigured)
    assert len(fake_openai.requests_to("/chat/completions")) == FAST.max_tries
    assert retries_counted(Upstream.OPENAI) - retries_before == FAST.max_tries - 1
    assert services.resilience.breakers[Upstream.OPENAI].failure_count == 1


async def test_dropped_stream_is_a_transient_failure(services: Services, fake_openai: FakeOpenAI) -> None:
    """A connection dropped mid-body is `UpstreamUnavailable` and counts against the breaker."""
    fake_openai.configure(fault="drop")
    with pytest.raises(UpstreamUnavailable):
        await collect(services)
    assert services.resilience.breakers[Upstream.OPENAI].failure_count == 1
