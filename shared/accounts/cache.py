"""Redis-backed session-lookup cache: token hash -> the signed-in user, for at most 60 seconds.

A chat request with a cache hit pays one Redis GET instead of a database round trip. Entries are
deleted at sign-out (revocation is immediate on every worker) and when the user's profile changes;
each user's cached token hashes are tracked in a small set for that. Redis errors degrade to a miss:
the cache never decides whether someone is signed in, the database does.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.platform.constants import SESSION_CACHE_PREFIX
from shared.platform.logging import get_logger

log = get_logger(__name__)

MAX_TTL_S = 60


class SessionCache:
    """Caches resolved sessions by token hash; self-contained (its own key prefix, no other users)."""

    def __init__(self, redis: Redis, *, ttl_s: int = MAX_TTL_S, prefix: str = SESSION_CACHE_PREFIX) -> None:
        self.redis = redis
        self.ttl_s = max(1, min(ttl_s, MAX_TTL_S))
        self.prefix = prefix

    def _key(self, token_hash: str) -> str:
        return f"{self.prefix}{token_hash}"

    def _user_key(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    async def get(self, token_hash: str) -> dict[str, Any] | None:
        """The cached entry, or None on a miss (or when Redis is unreachable)."""
        try:
            raw = await self.redis.get(self._key(token_hash))
        except (RedisError, OSError) as exc:
            log.warning("auth.cache_unavailable", op="get", error=type(exc).__name__)
            return None
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def set(self, token_hash: str, user_id: str, entry: dict[str, Any], *, max_ttl_s: float) -> None:
        """Cache `entry` for min(ttl, `max_ttl_s`) seconds (never past the session's expiry)."""
        ttl = int(min(self.ttl_s, max_ttl_s))
        if ttl < 1:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._key(token_hash), json.dumps(entry, separators=(",", ":")), ex=ttl)
                pipe.sadd(self._user_key(user_id), token_hash)
                pipe.expire(self._user_key(user_id), self.ttl_s * 2)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("auth.cache_unavailable", op="set", error=type(exc).__name__)

    async def delete(self, token_hash: str) -> None:
        """Forget one session (sign-out, expiry, renewal)."""
        try:
            await self.redis.delete(self._key(token_hash))
        except (RedisError, OSError) as exc:
            log.warning("auth.cache_unavailable", op="delete", error=type(exc).__name__)

    async def invalidate_user(self, user_id: str) -> None:
        """Forget every cached session of a user (profile or account changes)."""
        try:
            members = await self.redis.smembers(self._user_key(user_id))
            keys = [self._key(m.decode() if isinstance(m, bytes) else str(m)) for m in members]
            await self.redis.delete(*keys, self._user_key(user_id))
        except (RedisError, OSError) as exc:
            log.warning("auth.cache_unavailable", op="invalidate_user", error=type(exc).__name__)
