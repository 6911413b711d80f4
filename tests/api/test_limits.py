"""Rate limits: per user or per client IP in Redis, 429 + Retry-After, trusted X-Forwarded-For hops."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from limits.aio.storage import RedisStorage
from limits.storage import storage_from_string

from api.deps import ChatRateLimitDep
from shared.platform.ratelimit import Limit, RateLimiter, client_ip, storage_uri
from tests.utils.inprocess import make_settings, running_app


def _extend(app: FastAPI) -> None:
    async def limited() -> dict[str, bool]:
        return {"ok": True}

    app.add_api_route("/_t/limited", limited, methods=["POST"], dependencies=[ChatRateLimitDep])


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app limited to 3/minute that trusts one proxy hop."""
    settings = make_settings(tmp_path_factory.mktemp("limits"), RATE_LIMIT_CHAT="3/minute", TRUSTED_PROXY_HOPS="1")
    with running_app(settings, extend=_extend) as (_app, test_client):
        yield test_client


def test_fourth_request_in_window_is_429(client: TestClient) -> None:
    """Three requests pass; the fourth is 429 rate_limited with a Retry-After within the window."""
    headers = {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250 + 1}"}
    statuses = [client.post("/_t/limited", headers=headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = client.post("/_t/limited", headers=headers)
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_clients_have_separate_buckets(client: TestClient) -> None:
    """Another client address (from the trusted proxy) has its own allowance."""
    first, second = "192.0.2.10", "192.0.2.11"
    for _ in range(3):
        client.post("/_t/limited", headers={"X-Forwarded-For": first})
    assert client.post("/_t/limited", headers={"X-Forwarded-For": first}).status_code == 429
    assert client.post("/_t/limited", headers={"X-Forwarded-For": second}).status_code == 200


def test_forged_leftmost_entries_do_not_escape(client: TestClient) -> None:
    """A client rotating forged X-Forwarded-For prefixes stays in one bucket (the proxy's entry counts)."""
    real = "192.0.2.77"
    statuses = [
        client.post("/_t/limited", headers={"X-Forwarded-For": f"10.9.8.{i}, {real}"}).status_code for i in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


def test_signed_in_user_has_own_bucket(client: TestClient) -> None:
    """A signed-in user is limited per account, not per address (two users behind one IP both pass)."""
    shared_ip = {"X-Forwarded-For": "192.0.2.200"}
    for _ in range(3):
        client.post("/_t/limited", headers=shared_ip)
    assert client.post("/_t/limited", headers=shared_ip).status_code == 429
    email = f"limits-{uuid.uuid4().hex[:8]}@example.com"
    signed = client.post(
        "/api/auth/sign-up", json={"email": email, "name": "Lim", "password": "long-enough-pw"}, headers=shared_ip
    )
    assert signed.status_code == 200, signed.text
    bearer = {**shared_ip, "Authorization": f"Bearer {signed.json()['token']}"}
    statuses = [client.post("/_t/limited", headers=bearer).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_invalid_token_counts_as_anonymous(client: TestClient) -> None:
    """A bogus bearer token does not get a fresh bucket: it is the anonymous IP bucket."""
    ip = {"X-Forwarded-For": "192.0.2.201"}
    for _ in range(3):
        client.post("/_t/limited", headers=ip)
    forged = client.post("/_t/limited", headers={**ip, "Authorization": f"Bearer {uuid.uuid4().hex * 2}"})
    assert forged.status_code == 429


@pytest.mark.parametrize(
    ("peer", "xff", "hops", "expected"),
    [
        ("10.0.0.5", [], 1, "10.0.0.5"),
        ("10.0.0.5", ["1.2.3.4"], 0, "10.0.0.5"),
        ("10.0.0.5", ["1.2.3.4"], 1, "1.2.3.4"),
        ("10.0.0.5", ["6.6.6.6, 1.2.3.4"], 1, "1.2.3.4"),
        ("10.0.0.5", ["6.6.6.6, 1.2.3.4, 10.0.0.9"], 2, "1.2.3.4"),
        ("10.0.0.5", ["6.6.6.6", "1.2.3.4"], 1, "1.2.3.4"),
        ("10.0.0.5", ["1.2.3.4"], 3, "1.2.3.4"),
        ("10.0.0.5", ["not-an-ip"], 1, "10.0.0.5"),
        ("10.0.0.5", ["2001:db8::1"], 1, "2001:db8::1"),
        (None, [], 0, "unknown"),
    ],
)
def test_client_ip(peer: str | None, xff: list[str], hops: int, expected: str) -> None:
    """The client address honours exactly `hops` trusted entries from the right of X-Forwarded-For."""
    assert client_ip(peer=peer, forwarded_for=xff, trusted_hops=hops) == expected


def test_storage_uri() -> None:
    """REDIS_URL in every accepted form becomes the URI `limits` picks its async Redis storage by."""
    assert storage_uri("redis://127.0.0.1:6379/3") == "async+redis://127.0.0.1:6379/3"
    assert storage_uri("rediss://redis.example.com:6380/0") == "async+rediss://redis.example.com:6380/0"
    assert storage_uri("unix:///data/redis.sock") == "async+redis+unix:///data/redis.sock"
    for url in ("redis://127.0.0.1:6379/3", "unix:///data/redis.sock"):
        assert isinstance(storage_from_string(storage_uri(url), implementation="redispy"), RedisStorage)


async def test_counts_over_a_unix_socket(tmp_path: Path) -> None:
    """The embedded Redis is a unix socket: the limiter counts there, and says when the window resets."""
    socket = tmp_path / "redis.sock"
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(socket), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    limiter = RateLimiter(f"unix://{socket}")
    try:
        for _ in range(100):
            if socket.exists():
                break
            await asyncio.sleep(0.05)
        limit = Limit.parse("t", "2/minute")
        decisions = [await limiter.hit(limit, "ip:192.0.2.1") for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
        assert 58 <= decisions[-1].reset_after_s <= 60
    finally:
        await limiter.aclose()
        server.terminate()
        server.wait(timeout=10)


async def test_redis_down_fails_open() -> None:
    """When Redis cannot answer, the request is allowed (a limiter outage is not a chat outage)."""
    limiter = RateLimiter("redis://127.0.0.1:1/0")
    try:
        decision = await limiter.hit(Limit.parse("t", "1/minute"), "x")
    finally:
        await limiter.aclose()
    assert decision.allowed
