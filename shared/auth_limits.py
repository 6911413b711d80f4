"""Sign-in brute-force limiter: fixed one-window counters per client IP and per email, in Redis.

Redis makes the count shared by every Gunicorn worker. Deliberately tiny and separate from the general
per-user rate limiting of the chat endpoints. Emails are hashed in the key (no addresses in Redis).
When Redis is unreachable the limiter lets the attempt through (and logs), since signing in matters
more than the limit; scrypt still bounds the attempt rate per core.
"""

from __future__ import annotations

import hashlib
import time
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


class SignInLimiter:
    """Counts sign-in attempts per IP and per email; raises RateLimited (429 + Retry-After) past the rate."""

    def __init__(self, redis: Redis, rate: Rate, *, prefix: str = f"{RATE_LIMIT_PREFIX}:sign-in") -> None:
        self.redis = redis
        self.rate = rate
        self.prefix = prefix

    async def hit(self, *, ip: str, email: str, now: float | None = None) -> None:
        """Count one attempt; raise RateLimited when the IP or the email is over the limit."""
        now = time.time() if now is None else now
        window = int(now // self.rate.period_s)
        retry_after = (window + 1) * self.rate.period_s - now
        email_key = hashlib.sha256(email.encode("utf-8")).hexdigest()[:32]
        keys = (f"{self.prefix}:ip:{ip}:{window}", f"{self.prefix}:email:{email_key}:{window}")
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.incr(key)
                    pipe.expire(key, self.rate.period_s + 1)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("auth.rate_limit_unavailable", error=type(exc).__name__)
            return
        counts = results[0::2]
        if max(int(c) for c in counts) > self.rate.count:
            log.info("auth.sign_in_rate_limited", by="ip" if int(counts[0]) > self.rate.count else "email")
            raise RateLimited(
                "Too many sign-in attempts. Please wait a minute and try again.",
                retry_after=retry_after,
                code="TOO_MANY_REQUESTS",
            )
