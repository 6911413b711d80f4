"""`shared.clients`: the OpenAI client keeps its connections through a lull (the fake server behind a
counting TCP proxy), and an API process opens its store-RPC Redis connections at start (the machine's
Redis)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from pathlib import Path
from typing import Any

import openai
import pytest

from shared.clients import Services, build_services, create_openai_client, openai_post
from shared.config import Settings
from shared.constants import EMBEDDED_STORE_CONCURRENCY, ROLE_API, ROLE_WORKER
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.tcp_proxy import TcpProxy


async def test_a_connection_outlives_a_lull_of_a_few_seconds(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """Two requests 6 s apart share one TCP connection (httpx's default keep-alive of 5 s would not)."""
    proxy = TcpProxy(fake_openai.port).start()
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        openai_api_key="sk-test-keepalive",
        openai_base_url=f"http://127.0.0.1:{proxy.port}/v1",
    )
    client = create_openai_client(settings)
    assert client is not None
    try:
        await client.models.list()
        await asyncio.sleep(6)
        await client.models.list()
        assert proxy.connections_accepted == 1
    finally:
        await client.close()
        proxy.stop()


async def test_closing_the_client_leaves_no_open_connection_behind(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """The aiohttp session under the SDK is closed with the client: no "Unclosed client session" or
    "Unclosed connector" report when it is collected (a shutdown that leaked it would log both)."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path, openai_api_key="sk-test-close", openai_base_url=fake_openai.url
    )
    client = create_openai_client(settings)
    assert client is not None
    await client.models.list()
    await client.close()
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context.get("message", ""))))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del client
            gc.collect()
        unclosed: list[Any] = [w for w in caught if "Unclosed" in str(w.message)]
        assert unclosed == []
        assert [m for m in reported if "Unclosed" in m] == []
    finally:
        loop.set_exception_handler(previous)


async def test_an_api_process_opens_its_store_rpc_connections_at_start(redis_url: str, tmp_path: Path) -> None:
    """Embedded mode: each store query waits for its reply on a Redis connection of its own, so an API
    process opens that many at start instead of in the middle of its first burst of readers."""
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=redis_url)
    assert settings.embedded_qdrant
    api = await build_services(settings, role=ROLE_API)
    worker = await build_services(settings, role=ROLE_WORKER)
    try:
        assert _opened(api) >= EMBEDDED_STORE_CONCURRENCY
        assert _opened(worker) < EMBEDDED_STORE_CONCURRENCY
        assert await api.redis.ping()
    finally:
        await api.aclose()
        await worker.aclose()


def _opened(services: Services) -> int:
    pool = services.redis.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


async def test_raw_posts_send_what_the_typed_methods_send(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """`openai_post` (the SDK's raw-request method) sends the typed methods' body, credentials and SDK
    headers for a chat stream and an embedding, and raises the same SDK errors."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path, openai_api_key="sk-test-rawpost", openai_base_url=fake_openai.url
    )
    client = create_openai_client(settings)
    assert client is not None
    messages: list[Any] = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "What is ZMP?"}]
    chat_body = {"model": "m", "messages": messages, "temperature": 0.2, "stream": True}
    embed_body = {"model": "e", "input": ["a question"], "encoding_format": "base64"}
    try:
        async with client.chat.completions.with_streaming_response.create(
            model="m", messages=messages, temperature=0.2, stream=True
        ) as typed:
            typed_text = await typed.http_response.aread()
        raw = await openai_post(client, "/chat/completions", chat_body, stream=True)
        assert not raw.is_stream_consumed
        raw_text = await raw.aread()
        await raw.aclose()
        assert raw_text == typed_text
        assert b"[DONE]" in raw_text
        await client.embeddings.with_raw_response.create(model="e", input=["a question"], encoding_format="base64")
        embedded = await openai_post(client, "/embeddings", embed_body)
        assert isinstance(embedded.json()["data"][0]["embedding"], str)

        typed_chat, raw_chat, typed_embed, raw_embed = fake_openai.state.requests[-4:]
        for typed_request, raw_request in ((typed_chat, raw_chat), (typed_embed, raw_embed)):
            assert raw_request["path"] == typed_request["path"]
            assert raw_request["body"] == typed_request["body"]
            assert raw_request["authorization"] == typed_request["authorization"] == "Bearer sk-test-rawpost"
            sdk_headers = {k: v for k, v in typed_request["headers"].items() if k.startswith("x-stainless-")}
            sdk_headers.pop("x-stainless-raw-response")  # the typed wrappers' own marker
            assert sdk_headers
            assert sdk_headers.items() <= raw_request["headers"].items()

        for fault, error in (("429", openai.RateLimitError), ("500", openai.InternalServerError)):
            fake_openai.configure(fault=fault)
            with pytest.raises(error):
                await openai_post(client, "/chat/completions", chat_body, stream=True)
            with pytest.raises(error):
                await openai_post(client, "/embeddings", embed_body)
    finally:
        fake_openai.configure(reset=True)
        await client.close()
