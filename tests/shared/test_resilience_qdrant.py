"""The `qdrant` breaker on the server path (QDRANT_URL), through the real qdrant-client on loopback:
an unreachable server opens the breaker and then fails fast; a 401/403 names QDRANT_API_KEY."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shared.platform.clients import build_services
from shared.platform.config import Settings
from shared.platform.errors import UpstreamMisconfigured, UpstreamUnavailable
from shared.platform.readiness import ReadinessProbe
from shared.platform.resilience import Resilience, RetryPolicy
from shared.platform.upstreams import Upstream
from shared.stores.vectorstore import create_vector_store
from tests.fakes.openai_server import free_port

KEY = "qdrant-secret-key-0123456789"


class _Rejecting(BaseHTTPRequestHandler):
    """Answers every request like Qdrant Cloud with a wrong api-key."""

    status = 401

    def _reject(self) -> None:
        body = b'{"status":{"error":"Must provide an API key or an Authorization bearer token"},"time":0.0}'
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _reject

    def log_message(self, *_args: Any) -> None:
        """Quiet."""


@pytest.fixture(params=[401, 403])
def rejecting_qdrant(request: pytest.FixtureRequest) -> Iterator[str]:
    """A loopback HTTP server that rejects every request with 401 or 403; yields its URL."""
    handler = type("Handler", (_Rejecting,), {"status": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def settings_for(qdrant_url: str, **kwargs: Any) -> Settings:
    """Server-mode settings with a small breaker."""
    return Settings(
        _env_file=None,
        qdrant_url=qdrant_url,
        qdrant_api_key=KEY,
        circuit_failure_threshold=2,
        circuit_recovery_timeout=30,
        **kwargs,
    )


async def test_unreachable_qdrant_opens_the_breaker_then_fails_fast() -> None:
    """Connection refused: UpstreamUnavailable, open after the threshold, then refused in < 50 ms."""
    settings = settings_for(f"http://127.0.0.1:{free_port()}")
    resilience = Resilience(settings, policies={Upstream.QDRANT: RetryPolicy(max_tries=2, base_s=0.01, cap_s=0.02)})
    store = create_vector_store(settings, role="api", redis=None, resilience=resilience)  # type: ignore[arg-type]
    try:
        for _ in range(2):
            with pytest.raises(UpstreamUnavailable):
                await store.count()
        assert resilience.is_open(Upstream.QDRANT)
        started = time.perf_counter()
        with pytest.raises(UpstreamUnavailable) as info:
            await store.count()
        assert time.perf_counter() - started < 0.05
        assert info.value.headers["Retry-After"]
    finally:
        await store.close()


async def test_rejected_qdrant_key_is_misconfiguration(rejecting_qdrant: str) -> None:
    """401/403 from Qdrant: UpstreamMisconfigured naming QDRANT_API_KEY; the breaker never counts it."""
    settings = settings_for(rejecting_qdrant)
    resilience = Resilience(settings)
    store = create_vector_store(settings, role="api", redis=None, resilience=resilience)  # type: ignore[arg-type]
    try:
        for _ in range(3):
            with pytest.raises(UpstreamMisconfigured) as info:
                await store.count()
            assert "QDRANT_API_KEY" in info.value.detail
            assert KEY not in info.value.detail
        assert resilience.breaker(Upstream.QDRANT).failure_count == 0
        assert resilience.misconfigured[Upstream.QDRANT] == "QDRANT_API_KEY was rejected by qdrant"
    finally:
        await store.close()


async def test_ready_names_a_rejected_qdrant_key(rejecting_qdrant: str, redis_url: str, tmp_path: Path) -> None:
    """/health/ready's vector_store check reports QDRANT_API_KEY as misconfigured, without its value."""
    settings = settings_for(rejecting_qdrant, data_dir=tmp_path, redis_url=redis_url)
    services = await build_services(settings, role="api")
    try:
        report = await ReadinessProbe().run(services)
    finally:
        await services.aclose()
    check = report["checks"]["vector_store"]
    assert check["status"] == "down"
    assert check["error"] == "misconfigured"
    assert check["variable"] == "QDRANT_API_KEY"
    assert report["status"] == "degraded"
    assert KEY not in str(report)
