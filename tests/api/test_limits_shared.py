"""One count for every process: two separately built apps on one Redis refuse exactly the (N+1)th request.

Each app (as each Gunicorn worker) builds its own `RateLimiter` in its lifespan; only Redis is shared. The
counters are `limits`' fixed-window keys under `RATE_LIMIT_PREFIX`. (tests/e2e/test_security.py and
test_auth_stack.py check the same across real Gunicorn worker processes.)
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import limits
import redis.asyncio as redis_async

from api.deps import ChatRateLimitDep
from shared.platform.config import Settings
from shared.platform.constants import RATE_LIMIT_PREFIX
from tests.utils.auth_app import auth_settings, running_app

N = 5
RATE = f"{N}/minute"


@asynccontextmanager
async def two_apps(settings: Settings) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two `create_app(settings)` with their own lifespans (clients, limiter), each with a chat-limited route."""

    async def limited() -> dict[str, bool]:
        return {"ok": True}

    async with running_app(settings) as (first, a), running_app(settings) as (second, b):
        assert first.state.rate_limiter is not second.state.rate_limiter
        for app in (first, second):
            app.add_api_route("/_t/limited", limited, methods=["POST"], dependencies=[ChatRateLimitDep])
        yield [a, b]


async def limits_counter(settings: Settings, *identifiers: str) -> tuple[int, int]:
    """(count, seconds to live) of the `limits` fixed-window key of RATE for `identifiers`, read from Redis."""
    key = f"{RATE_LIMIT_PREFIX}:{limits.parse(RATE).key_for(*identifiers)}"
    client = redis_async.Redis.from_url(settings.effective_redis_url)
    try:
        return int(await client.get(key) or 0), await client.ttl(key)
    finally:
        await client.aclose()


def _ip() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


async def test_sign_in_attempts_across_two_apps() -> None:
    """N+1 wrong sign-ins on one email from one IP, spread over two apps at once: exactly one 429."""
    settings = auth_settings("sqlite", None, rate_limit_sign_in=RATE, trusted_proxy_hops=1)
    ip, email = _ip(), f"shared-{uuid.uuid4().hex[:8]}@example.com"
    async with two_apps(settings) as clients:
        responses = await asyncio.gather(
            *(
                clients[i % 2].post(
                    "/api/auth/sign-in/email",
                    json={"email": email, "password": "wrong-password"},
                    headers={"X-Forwarded-For": ip},
                )
                for i in range(N + 1)
            )
        )
    assert sorted(r.status_code for r in responses) == [401] * N + [429]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["code"] == "TOO_MANY_REQUESTS"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Both counters are limits' keys, shared by the two apps; the email only ever appears hashed.
    count, ttl = await limits_counter(settings, "sign-in", f"ip:{ip}")
    assert count == N + 1
    assert 0 < ttl <= 60
    email_ref = hashlib.sha256(email.encode()).hexdigest()[:32]
    # The attempt the IP's limit refused was not counted for the email (it never reached the password).
    assert (await limits_counter(settings, "sign-in", f"email:{email_ref}"))[0] == N
    client = redis_async.Redis.from_url(settings.effective_redis_url)
    try:
        keys = [key.decode() async for key in client.scan_iter(match=f"{RATE_LIMIT_PREFIX}:*")]
    finally:
        await client.aclose()
    assert keys
    assert not [key for key in keys if email.split("@")[0] in key]  # neither the address nor its local part


async def test_chat_requests_across_two_apps() -> None:
    """N+1 chat-limited requests of one client, spread over two apps at once: exactly one 429."""
    settings = auth_settings("sqlite", None, rate_limit_chat=RATE, trusted_proxy_hops=1)
    ip = _ip()
    async with two_apps(settings) as clients:
        responses = await asyncio.gather(
            *(clients[i % 2].post("/_t/limited", headers={"X-Forwarded-For": ip}) for i in range(N + 1))
        )
        other = await clients[1].post("/_t/limited", headers={"X-Forwarded-For": _ip()})
    assert sorted(r.status_code for r in responses) == [200] * N + [429]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert other.status_code == 200
    count, ttl = await limits_counter(settings, "chat", f"ip:{ip}")
    assert count == N + 1
    assert 0 < ttl <= 60
