"""Account-action limiters: fixed-window counters per client IP (and per email), in Redis.

Sign-in is limited per IP and per email (brute force); sign-up per IP (each attempt costs one scrypt, so
unlimited sign-ups would let one client keep the CPUs busy, and fill the users table). Redis makes the
counts shared by every Gunicorn worker. Deliberately tiny and separate from the general per-user rate
limiting of the chat endpoints. Emails are hashed in the key (no addresses in Redis). When Redis is
unreachable the limiter lets the attempt through (and logs), since signing in matters more than the
limit; scrypt still bounds the attempt rate per core.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.constants import RATE_LIMIT_PREFIX
from shared.errors import RateLimited
from shared.logging import get_logger

log = get_logger(__name__)

_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Rate:
    """`count` attempts per `period_s` seconds."""

    count: int
    period_s: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse '10/minute' (count / second|minute|hour|day)."""
        count, _, period = text.partition("/")
        return cls(count=int(count.strip()), period_s=_PERIODS[period.strip()])


class AttemptLimiter:
    """Counts attempts at one `action` per IP (and per email when given); raises RateLimited (429 +
    Retry-After) past the rate. `message` is what the client reads."""

    def __init__(self, redis: Redis, rate: Rate, *, action: str, message: str) -> None:
        self.redis = redis
        self.rate = rate
        self.action = action
        self.message = message
        self.prefix = f"{RATE_LIMIT_PREFIX}:{action}"

    async def hit(self, *, ip: str, email: str | None = None) -> None:
        """Count one attempt; raise RateLimited when the IP or the email is over the limit."""
        keys = [f"{self.prefix}:ip:{ip}"]
        if email is not None:
            keys.append(f"{self.prefix}:email:{hashlib.sha256(email.encode('utf-8')).hexdigest()[:32]}")
        try:
            # The window starts at a key's first attempt: SET NX EX creates it with its expiry, INCR keeps it.
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.set(key, 0, ex=self.rate.period_s, nx=True)
                    pipe.incr(key)
                    pipe.ttl(key)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("auth.rate_limit_unavailable", action=self.action, error=type(exc).__name__)
            return
        counts, ttls = [int(c) for c in results[1::3]], [int(t) for t in results[2::3]]
        over = [i for i, count in enumerate(counts) if count > self.rate.count]
        if over:
            log.info("auth.rate_limited", action=self.action, by="ip" if 0 in over else "email")
            raise RateLimited(self.message, retry_after=max(max(ttls[i] for i in over), 1), code="TOO_MANY_REQUESTS")


def sign_in_limiter(redis: Redis, rate: Rate) -> AttemptLimiter:
    """Sign-in attempts, per IP and per email."""
    return AttemptLimiter(
        redis, rate, action="sign-in", message="Too many sign-in attempts. Please wait a minute and try again."
    )


def sign_up_limiter(redis: Redis, rate: Rate) -> AttemptLimiter:
    """Sign-up attempts, per IP."""
    return AttemptLimiter(
        redis, rate, action="sign-up", message="Too many sign-up attempts from your network. Please try again later."
    )
