"""The shared OpenAI client (`shared.clients.create_openai_client`) against the fake server, over a
counting TCP proxy: connections are kept for the next question after a lull."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.clients import create_openai_client
from shared.config import Settings
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
