"""Qdrant server path on the whole stack: QDRANT_URL points at a loopback port where nothing answers.

(No real Qdrant server is available here, so recovery is shown on the embedded path in test_faults.py
and against qdrant-client in tests/shared/test_resilience_qdrant.py.) Here: `/health` stays 200,
`/health/ready` names the vector store, the `qdrant` breaker opens in every API worker's view after the
threshold, and `/chat` is then refused with 503 + Retry-After in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.test_faults import assert_fails_fast, fresh_client, wait_state_everywhere
from tests.fakes.openai_server import FakeOpenAI, free_port
from tests.utils.stack import Stack

pytestmark = pytest.mark.e2e

QUESTION = "What is a ROS 2 topic?"


def test_unreachable_qdrant_server(stack_factory: Callable[..., Stack], fake_openai: FakeOpenAI) -> None:
    """Nothing listens at QDRANT_URL: liveness 200, readiness names vector_store, breaker open, fail fast."""
    fake_openai.reset()
    stack = stack_factory(
        env={
            "QDRANT_URL": f"http://127.0.0.1:{free_port()}",
            "QDRANT_API_KEY": "qdrant-key-not-shown-0123456789",
            "OPENAI_API_KEY": "sk-qdrant-fault-0123456789",
            "OPENAI_BASE_URL": fake_openai.url,
            "CIRCUIT_FAILURE_THRESHOLD": "3",
            "CIRCUIT_RECOVERY_TIMEOUT": "30",
            "RATE_LIMIT_CHAT": "100000/minute",
            "AUTO_INGEST": "false",
        },
        timeout=120,
    )
    assert httpx.get(stack.url("/health"), timeout=5).json() == {"status": "healthy"}
    with fresh_client(stack) as client:
        for _ in range(3):
            response = client.post("/chat", json={"query": QUESTION})
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "upstream_unavailable"
    views = wait_state_everywhere(stack, "qdrant", "open", timeout=10)
    assert all(v["qdrant"]["last_error"] for v in views.values())
    assert_fails_fast(stack, lambda c: c.post("/chat", json={"query": QUESTION}), count=20)
    time.sleep(3.1)  # readiness cache
    ready = httpx.get(stack.url("/health/ready"), timeout=10)
    assert ready.status_code == 200  # the vector store down degrades, it does not make us unavailable
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["checks"]["vector_store"]["status"] == "down"
    assert "qdrant-key-not-shown-0123456789" not in ready.text
    assert httpx.get(stack.url("/health"), timeout=5).status_code == 200
    assert "qdrant-key-not-shown-0123456789" not in stack.output()
