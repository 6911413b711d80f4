"""`shared.platform.clients`: the OpenAI client keeps its connections through a lull (the fake server behind a
counting TCP proxy), and an API process opens its store-RPC Redis connections at start (the machine's
Redis)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from pathlib import Path
from typing import Any

from shared.platform.clients import Services, build_services, create_openai_client
from shared.platform.config import Settings
from shared.platform.constants import EMBEDDED_STORE_CONCURRENCY, ROLE_API, ROLE_WORKER
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
