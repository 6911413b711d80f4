"""Rate limits shared by every Gunicorn worker: one atomic fixed window per (limit, identity) in Redis.

`RATE_LIMIT_CHAT` (e.g. `20/minute`) is parsed by the `limits` package; the counting is a short Lua
script (INCR, set the expiry on the first hit, read the remaining time) run on the process's existing
Redis pool, so every worker of every container that shares `REDIS_URL` sees the same count, and a hit is
one round trip. The identity is the signed-in user's id, else the client IP (`client_ip`), which honours
`X-Forwarded-For` only for the configured number of trusted proxy hops.

Redis trouble never turns a chat request into an error: the limiter fails open and logs a warning.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import limits
from redis.exceptions import RedisError

from shared.constants import RATE_LIMIT_PREFIX
from shared.logging import get_logger

__all__ = ["Decision", "RateLimit", "client_ip"]

log = get_logger(__name__)

# KEYS[1] = counter key; ARGV[1] = window in ms. Returns {count, ms until the window resets}.
_FIXED_WINDOW = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if count == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit: allowed or not, and when the window resets."""

    allowed: bool
    limit: int
    remaining: int
    reset_after_s: float


class RateLimit:
    """A named limit such as `20/minute`, counted in Redis per identity."""

    def __init__(self, *, name: str, rate: str) -> None:
        items = limits.parse_many(rate)
        if len(items) != 1:
            raise ValueError(f"expected one rate such as 20/minute, got {rate!r}")
        self.name = name
        self.item = items[0]
        self.window_ms = int(self.item.get_expiry() * 1000)
        self._script: Any = None

    def key(self, identity: str) -> str:
        """The Redis key counting `identity` in this limit."""
        return f"{RATE_LIMIT_PREFIX}:{self.name}:{self.item.amount}/{self.window_ms}:{identity}"

    async def hit(self, *, redis: Any, identity: str) -> Decision:
        """Count one request of `identity`; fails open (allowed) when Redis cannot answer."""
        if self._script is None:
            # A Script object only holds the source and its SHA; EVALSHA falls back to EVAL once.
            self._script = redis.register_script(_FIXED_WINDOW)
        try:
            count, ttl_ms = await self._script(keys=[self.key(identity)], args=[self.window_ms])
        except (RedisError, OSError) as exc:
            log.warning("ratelimit.unavailable", limit=self.name, error=type(exc).__name__)
            return Decision(True, self.item.amount, self.item.amount, 0.0)
        count, ttl_ms = int(count), max(int(ttl_ms), 0)
        return Decision(
            allowed=count <= self.item.amount,
            limit=self.item.amount,
            remaining=max(self.item.amount - count, 0),
            reset_after_s=ttl_ms / 1000,
        )


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
