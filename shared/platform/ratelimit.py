"""The one rate limiter of the API: `limits`' fixed-window strategy on its async Redis storage.

Chat (`RATE_LIMIT_CHAT`, per user or client IP), sign-in (`RATE_LIMIT_SIGN_IN`, per IP and per email)
and sign-up (`RATE_LIMIT_SIGN_UP`, per IP) are `Limit`s counted by one `RateLimiter` per process. Its
counters live in the Redis of `REDIS_URL` (or the embedded one's unix socket), under `RATE_LIMIT_PREFIX`,
so every worker of every container that shares that Redis sees the same count.

Fixed window: a window opens at an identity's first hit and lasts the rate's period; each hit is one
atomic INCR + EXPIRE script in Redis (exact across workers, one round trip), the expiry is kept by
Redis (no worker clock involved), and a refused request learns from `get_window_stats` when the window
resets (`Retry-After`). A counter is one integer whatever the rate, so a generous `100000/minute` costs
no more than `20/minute`.

Redis trouble never turns a request into an error: the limiter fails open and logs a warning.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any

import limits
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool

from shared.platform.constants import RATE_LIMIT_PREFIX
from shared.platform.logging import get_logger

__all__ = ["Decision", "Limit", "RateLimiter", "client_ip", "storage_uri"]

log = get_logger(__name__)

#: A limiter that waits on Redis longer than this lets the request through (fails open).
REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Limit:
    """A named rate such as `chat` at `20/minute` (parsed by `limits`; the settings validated it)."""

    name: str
    item: limits.RateLimitItem

    @classmethod
    def parse(cls, name: str, rate: str) -> Limit:
        """`rate` in `limits`' notation, e.g. `20/minute`."""
        return cls(name, limits.parse(rate))


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit: allowed or not, and in how many seconds the window resets."""

    allowed: bool
    limit: int
    reset_after_s: float = 0.0


def storage_uri(redis_url: str) -> str:
    """REDIS_URL (`redis://`, `rediss://` or `unix:///path`) as the URI of `limits`' async Redis storage."""
    scheme, _, rest = redis_url.partition("://")
    return f"async+{'redis+unix' if scheme == 'unix' else scheme}://{rest}"


class RateLimiter:
    """Counts hits of `Limit`s per identity in Redis; built once per process, closed with `aclose`."""

    def __init__(self, redis_url: str) -> None:
        # `limits` picks its Redis storage from the URI; the connections come from a pool we own (the
        # storage's documented `connection_pool` option), because the storage has no close of its own
        # (its `reset()` deletes every counter).
        self._pool: ConnectionPool[Any] = ConnectionPool.from_url(
            redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
        storage = RedisStorage(
            storage_uri(redis_url),
            implementation="redispy",
            key_prefix=RATE_LIMIT_PREFIX,
            wrap_exceptions=True,
            connection_pool=self._pool,  # type: ignore[arg-type]  # documented; typed as float|str|bool
        )
        self._strategy = FixedWindowRateLimiter(storage)

    async def hit(self, limit: Limit, identity: str) -> Decision:
        """Count one request of `identity` against `limit`; allowed when Redis cannot answer."""
        item = limit.item
        try:
            if await self._strategy.hit(item, limit.name, identity):
                return Decision(True, item.amount)
            stats = await self._strategy.get_window_stats(item, limit.name, identity)
        except StorageError as exc:
            log.warning("ratelimit.unavailable", limit=limit.name, error=type(exc.storage_error).__name__)
            return Decision(True, item.amount)
        return Decision(False, item.amount, max(stats.reset_time - time.time(), 0.0))

    async def aclose(self) -> None:
        """Close the limiter's Redis connections."""
        await self._pool.disconnect()  # what the pool's `aclose` does (older stubs lack `aclose`)


def client_ip(*, peer: str | None, forwarded_for: list[str], trusted_hops: int) -> str:
    """The client's address: the peer, or the entry `trusted_hops` from the right of X-Forwarded-For.

    Each trusted proxy appends the address it received the request from, so the rightmost
    `trusted_hops` entries were written by infrastructure we trust and everything left of them may be
    forged by the client. With `trusted_hops=0` the header is ignored. A malformed entry falls back to
    the peer.
    """
    fallback = peer or "unknown"
    if trusted_hops <= 0:
        return fallback
    entries = [part.strip() for value in forwarded_for for part in value.split(",") if part.strip()]
    if not entries:
        return fallback
    candidate = entries[max(len(entries) - trusted_hops, 0)]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return fallback
