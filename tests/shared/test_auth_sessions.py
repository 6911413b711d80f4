"""Session lifecycle against real databases and Redis: expiry, sliding renewal, revocation, the cache."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from shared.accounts.auth import hash_password, hash_token
from shared.accounts.cache import SessionCache
from shared.accounts.sessions import (
    RENEW_AFTER,
    SESSION_TTL,
    AuthContext,
    create_session,
    resolve_session,
    revoke_session,
)
from shared.accounts.users import create_user
from shared.platform.clients import Services, build_services
from shared.stores.db.models import AuthSession, User, utcnow
from tests.utils.auth_app import BACKENDS, auth_settings

PASSWORD_HASH = hash_password("irrelevant-here")


@pytest.fixture(scope="module", params=BACKENDS)
async def services(request: pytest.FixtureRequest, pg_database_factory: Callable[[], str]) -> AsyncIterator[Services]:
    """Services (engine, Redis) over a migrated SQLite or PostgreSQL database."""
    import asyncio

    from shared.stores.db.migrate import upgrade

    settings = auth_settings(request.param, pg_database_factory)
    await asyncio.to_thread(upgrade, settings)
    built = await build_services(settings, role="test")
    yield built
    await built.aclose()


@pytest.fixture
def cache(services: Services) -> SessionCache:
    """A session cache on the services' Redis with a per-test prefix."""
    return SessionCache(services.redis, prefix=f"test:{uuid.uuid4().hex[:8]}:")


async def _signed_in(services: Services) -> AuthContext:
    async with services.sessions() as db:
        user = await create_user(
            db=db, email=f"s-{uuid.uuid4().hex[:8]}@example.com", name="S", password_hash=PASSWORD_HASH
        )
        return await create_session(db=db, user=user, ip_address="127.0.0.1", user_agent="pytest")


async def _resolve(services: Services, cache: SessionCache, token: str, **kwargs: object) -> AuthContext | None:
    return await resolve_session(
        sessions=services.sessions,
        cache=cache,
        resilience=services.resilience,
        token=token,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_only_the_token_hash_is_stored(services: Services) -> None:
    """The database holds sha256(token), never the token; the session lasts 7 days."""
    ctx = await _signed_in(services)
    async with services.sessions() as db:
        row = await db.get(AuthSession, ctx.session_id)
        user = await db.get(User, ctx.user.id)
    assert row is not None
    assert user is not None
    assert row.token_hash == hash_token(ctx.token)
    assert ctx.token not in (row.token_hash, user.password_hash)
    assert abs((ctx.expires_at - ctx.created_at) - SESSION_TTL) < timedelta(seconds=1)


async def test_sliding_renewal_at_most_once_a_day(services: Services, cache: SessionCache) -> None:
    """Use after a day extends the session by 7 days from then; use within the day writes nothing."""
    ctx = await _signed_in(services)
    soon = await _resolve(services, cache, ctx.token, now=utcnow() + timedelta(hours=3))
    assert soon is not None
    assert soon.renewed is False
    assert soon.expires_at == ctx.expires_at
    later = utcnow() + RENEW_AFTER + timedelta(hours=1)
    renewed = await _resolve(services, cache, ctx.token, now=later)
    assert renewed is not None
    assert renewed.renewed is True
    assert abs(renewed.expires_at - (later + SESSION_TTL)) < timedelta(seconds=1)
    async with services.sessions() as db:
        row = await db.get(AuthSession, ctx.session_id)
    assert row is not None
    stored_expiry = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=later.tzinfo)
    assert abs(stored_expiry - (later + SESSION_TTL)) < timedelta(seconds=1)
    again = await _resolve(services, cache, ctx.token, now=later + timedelta(hours=5))
    assert again is not None
    assert again.renewed is False
    # Past the original expiry, the renewed session is still alive.
    assert await _resolve(services, cache, ctx.token, now=ctx.expires_at + timedelta(days=1)) is not None


async def test_expiry_is_checked_on_cache_hits_too(services: Services, cache: SessionCache) -> None:
    """A cached session past its expiry is anonymous (the cache never outlives the session)."""
    ctx = await _signed_in(services)
    assert await _resolve(services, cache, ctx.token) is not None
    assert await cache.get(hash_token(ctx.token)) is not None
    assert await _resolve(services, cache, ctx.token, now=ctx.expires_at + timedelta(seconds=1)) is None
    assert await cache.get(hash_token(ctx.token)) is None


async def test_revocation_removes_row_and_cache_entry(services: Services, cache: SessionCache) -> None:
    """revoke_session deletes the session row and its cache entry; the token no longer resolves."""
    ctx = await _signed_in(services)
    assert await _resolve(services, cache, ctx.token) is not None
    assert await revoke_session(sessions=services.sessions, cache=cache, token=ctx.token) is True
    assert await cache.get(hash_token(ctx.token)) is None
    assert await _resolve(services, cache, ctx.token) is None
    assert await revoke_session(sessions=services.sessions, cache=cache, token=ctx.token) is False


async def test_cache_ttl_is_capped_at_60_seconds(services: Services) -> None:
    """Asking for a longer TTL still caches for at most 60 s."""
    redis: Redis = services.redis
    cache = SessionCache(redis, ttl_s=3600, prefix=f"test:{uuid.uuid4().hex[:8]}:")
    await cache.set("abc", "user-1", {"x": 1}, max_ttl_s=10_000)
    assert 0 < await redis.ttl(cache.prefix + "abc") <= 60
    await cache.set("short", "user-1", {"x": 1}, max_ttl_s=5)
    assert 0 < await redis.ttl(cache.prefix + "short") <= 5
    await cache.invalidate_user("user-1")
    assert await cache.get("abc") is None
    assert await cache.get("short") is None


async def test_unreachable_redis_degrades_to_database(services: Services) -> None:
    """With the cache's Redis unreachable, sessions still resolve from the database."""
    ctx = await _signed_in(services)
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        resolved = await _resolve(services, SessionCache(dead), ctx.token)
    finally:
        await dead.aclose()
    assert resolved is not None
    assert resolved.user.id == ctx.user.id
