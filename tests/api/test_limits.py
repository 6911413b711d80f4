"""Rate limits: per user or per client IP in Redis, 429 + Retry-After, trusted X-Forwarded-For hops."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.deps import ChatRateLimitDep
from shared.ratelimit import RateLimit, client_ip
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


def test_rate_parsing() -> None:
    """Rates are parsed by `limits`; the window and amount drive the Redis key."""
    limit = RateLimit(name="chat", rate="20/minute")
    assert limit.item.amount == 20
    assert limit.window_ms == 60_000
    assert limit.key("ip:1.2.3.4").startswith("lectern:ratelimit:chat:")
    with pytest.raises(ValueError, match="one rate"):
        RateLimit(name="chat", rate="1/second;5/minute")


async def test_redis_down_fails_open() -> None:
    """When Redis cannot answer, the request is allowed (a limiter outage is not a chat outage)."""
    from redis.asyncio import Redis

    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    decision = await RateLimit(name="t", rate="1/minute").hit(redis=dead, identity="x")
    assert decision.allowed
    await dead.aclose()
