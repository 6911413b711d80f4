"""Request-side auth: where tokens come from (Bearer or signed cookie), the session cookie, and resolution.

`api.deps` turns these into the `CurrentUser` / `OptionalUser` / `CurrentAuth` / `OptionalAuth`
dependencies. `AuthRuntime` (cookie settings, session cache, sign-in limiter) is built once per app
on first use from the process's settings and services; it holds no client of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request, Response

from shared.accounts.auth import sign_cookie_value, unsign_cookie_value
from shared.accounts.auth_limits import AttemptLimiter, sign_in_limiter, sign_up_limiter
from shared.accounts.cache import SessionCache
from shared.accounts.sessions import SESSION_TTL, AuthContext, resolve_session
from shared.platform import ratelimit
from shared.platform.clients import Services
from shared.platform.config import Settings, generate_dev_secret
from shared.platform.ratelimit import RateLimiter

COOKIE_NAME = "better-auth.session_token"
SECURE_COOKIE_NAME = f"__Secure-{COOKIE_NAME}"


@dataclass(frozen=True)
class CookiePolicy:
    """How the session cookie is named and flagged (production: __Secure-, Secure, SameSite=None)."""

    secret: str
    secure: bool

    @property
    def name(self) -> str:
        """The cookie's name in this environment."""
        return SECURE_COOKIE_NAME if self.secure else COOKIE_NAME

    def set(self, response: Response, token: str, *, remember: bool = True) -> None:
        """Set the signed session cookie (a browser-session cookie when `remember` is false)."""
        response.set_cookie(
            self.name,
            sign_cookie_value(token, self.secret),
            max_age=int(SESSION_TTL.total_seconds()) if remember else None,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="none" if self.secure else "lax",
        )

    def clear(self, response: Response) -> None:
        """Expire the session cookie."""
        response.delete_cookie(
            self.name, path="/", secure=self.secure, httponly=True, samesite="none" if self.secure else "lax"
        )

    def token_from(self, request: Request) -> str | None:
        """The token inside a correctly signed session cookie (either name), else None."""
        for name in (self.name, COOKIE_NAME, SECURE_COOKIE_NAME):
            raw = request.cookies.get(name)
            if raw:
                token = unsign_cookie_value(raw, self.secret)
                if token:
                    return token
        return None


@dataclass(frozen=True)
class AuthRuntime:
    """Per-app auth collaborators, built once."""

    settings: Settings
    services: Services
    cookies: CookiePolicy
    cache: SessionCache
    sign_in_limiter: AttemptLimiter
    sign_up_limiter: AttemptLimiter


async def auth_runtime(request: Request) -> AuthRuntime:
    """The app's AuthRuntime (built on first use; a dev secret is generated when none is configured)."""
    state = request.app.state
    runtime: AuthRuntime | None = getattr(state, "auth_runtime", None)
    services: Services = state.services
    if runtime is None or runtime.services is not services:  # rebuilt when a new lifespan built new clients
        settings: Settings = state.settings
        limiter: RateLimiter = state.rate_limiter  # built by the same lifespan as `services`
        secret = settings.better_auth_secret.get_secret_value() if settings.better_auth_secret else None
        runtime = AuthRuntime(
            settings=settings,
            services=services,
            cookies=CookiePolicy(secret=secret or generate_dev_secret(), secure=settings.is_production),
            cache=SessionCache(services.redis),
            sign_in_limiter=sign_in_limiter(limiter, settings.rate_limit_sign_in),
            sign_up_limiter=sign_up_limiter(limiter, settings.rate_limit_sign_up),
        )
        state.auth_runtime = runtime
    return runtime


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`; None when absent or empty (the signed-out frontend)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def presented_tokens(request: Request, cookies: CookiePolicy) -> list[tuple[str, str]]:
    """(token, source) pairs the request carries: the Bearer token first, then the cookie."""
    found: list[tuple[str, str]] = []
    bearer = bearer_token(request)
    if bearer:
        found.append((bearer, "bearer"))
    cookie = cookies.token_from(request)
    if cookie and cookie != bearer:
        found.append((cookie, "cookie"))
    return found


async def authenticate(request: Request, response: Response, runtime: AuthRuntime) -> AuthContext | None:
    """The request's session, or None (anonymous) when no presented token resolves.

    A renewed session presented by cookie gets a fresh cookie so the browser's copy slides too.
    """
    services = runtime.services
    for token, source in presented_tokens(request, runtime.cookies):
        ctx = await resolve_session(
            sessions=services.sessions, cache=runtime.cache, resilience=services.resilience, token=token
        )
        if ctx is not None:
            if ctx.renewed and source == "cookie":
                runtime.cookies.set(response, token)
            return ctx
    return None


def client_ip(request: Request, settings: Settings) -> str:
    """The client's IP (peer, or X-Forwarded-For per TRUSTED_PROXY_HOPS), as the general rate limiter sees it."""
    return ratelimit.client_ip(
        peer=request.client.host if request.client else None,
        forwarded_for=request.headers.getlist("x-forwarded-for"),
        trusted_hops=settings.effective_trusted_proxy_hops,
    )
