"""Account-action limits on the shared `RateLimiter`: sign-in per client IP and per email, sign-up per IP.

Sign-in is limited per IP and per email (brute force); sign-up per IP (each attempt costs one scrypt, so
unlimited sign-ups would let one client keep the CPUs busy, and fill the users table). Emails are hashed
before they reach a key (no addresses in Redis or the logs). Like every limit, these fail open when Redis
is unreachable, since signing in matters more than the limit; scrypt still bounds the rate per core.
"""

from __future__ import annotations

import hashlib

from shared.platform.errors import RateLimited
from shared.platform.logging import get_logger
from shared.platform.ratelimit import Decision, Limit, RateLimiter

log = get_logger(__name__)


class AttemptLimiter:
    """Counts attempts at one action per IP (and per email when given); raises RateLimited (429 +
    Retry-After) past the rate. `message` is what the client reads."""

    def __init__(self, limiter: RateLimiter, limit: Limit, *, message: str) -> None:
        self.limiter = limiter
        self.limit = limit
        self.message = message

    async def hit(self, *, ip: str, email: str | None = None) -> None:
        """Count one attempt for the IP, then (if the IP is within its rate) for the email; raise
        RateLimited when either is over.

        An attempt the IP's limit refuses is not counted for the email: it never reaches the password
        check, so it must not use up the email's budget. That keeps one client from locking an account
        by trying past its own limit, and keeps N+1 concurrent attempts from one IP at exactly one 429
        (counted for both keys, two different attempts could each be the one over a limit).
        """
        identities = [("ip", f"ip:{ip}")]
        if email is not None:
            identities.append(("email", f"email:{hashlib.sha256(email.encode('utf-8')).hexdigest()[:32]}"))
        for by, identity in identities:
            decision: Decision = await self.limiter.hit(self.limit, identity)
            if not decision.allowed:
                log.info("auth.rate_limited", action=self.limit.name, by=by)
                raise RateLimited(self.message, retry_after=decision.reset_after_s, code="TOO_MANY_REQUESTS")


def sign_in_limiter(limiter: RateLimiter, rate: str) -> AttemptLimiter:
    """Sign-in attempts, per IP and per email."""
    return AttemptLimiter(
        limiter,
        Limit.parse("sign-in", rate),
        message="Too many sign-in attempts. Please wait a minute and try again.",
    )


def sign_up_limiter(limiter: RateLimiter, rate: str) -> AttemptLimiter:
    """Sign-up attempts, per IP."""
    return AttemptLimiter(
        limiter,
        Limit.parse("sign-up", rate),
        message="Too many sign-up attempts from your network. Please try again later.",
    )
