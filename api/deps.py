"""Typed dependencies for routes: settings, services, database sessions and the other clients."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Header, Request, Response
from sqlmodel.ext.asyncio.session import AsyncSession

from api.auth_support import AuthRuntime, auth_runtime, authenticate, client_ip
from shared.accounts.sessions import AuthContext
from shared.accounts.users import AuthUser
from shared.platform.clients import Services
from shared.platform.config import Settings
from shared.platform.errors import RateLimited, Unauthorized, UpstreamUnavailable
from shared.platform.ratelimit import Limit, RateLimiter
from shared.stores.vectorstore import VectorStore


async def get_settings(request: Request) -> Settings:
    """The process's settings (read once by the app factory)."""
    settings: Settings = request.app.state.settings
    return settings


async def get_services(request: Request) -> Services:
    """The process's clients, built in the lifespan."""
    services: Services = request.app.state.services
    return services


async def get_db(services: Annotated[Services, Depends(get_services)]) -> AsyncIterator[AsyncSession]:
    """A database session for one request."""
    async with services.sessions() as session:
        yield session


async def get_redis(services: Annotated[Services, Depends(get_services)]) -> ArqRedis:
    """The Redis pool (also the arq queue)."""
    return services.redis


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]
DbSession = Annotated[AsyncSession, Depends(get_db)]
RedisDep = Annotated[ArqRedis, Depends(get_redis)]


# ---- auth (see api/auth_support.py and docs/notes/auth.md) ----------------------------------------
AuthRuntimeDep = Annotated[AuthRuntime, Depends(auth_runtime)]


async def get_optional_auth(request: Request, response: Response, runtime: AuthRuntimeDep) -> AuthContext | None:
    """The session of a Bearer token or session cookie; None when absent, empty, invalid or expired."""
    return await authenticate(request, response, runtime)


async def get_current_auth(auth: Annotated[AuthContext | None, Depends(get_optional_auth)]) -> AuthContext:
    """The session, or 401 when not signed in."""
    if auth is None:
        raise Unauthorized("Sign in to continue.", code="UNAUTHORIZED")
    return auth


async def get_optional_user(auth: Annotated[AuthContext | None, Depends(get_optional_auth)]) -> AuthUser | None:
    """The signed-in user, or None (anonymous)."""
    return auth.user if auth is not None else None


async def get_current_user(auth: Annotated[AuthContext, Depends(get_current_auth)]) -> AuthUser:
    """The signed-in user, or 401."""
    return auth.user


OptionalAuth = Annotated[AuthContext | None, Depends(get_optional_auth)]
CurrentAuth = Annotated[AuthContext, Depends(get_current_auth)]
#: `user.id`, `user.email`, `user.name`, `user.proficiency`, profile answers (`shared.accounts.users.AuthUser`).
OptionalUser = Annotated[AuthUser | None, Depends(get_optional_user)]
CurrentUser = Annotated[AuthUser, Depends(get_current_user)]


# ---- rate limits (see shared/platform/ratelimit.py and docs/notes/security.md) -----------------------------
async def enforce_chat_rate_limit(request: Request, auth: OptionalAuth) -> None:
    """Count one chat/translate/adjust request per user (per client IP when anonymous); 429 over RATE_LIMIT_CHAT."""
    state = request.app.state
    settings: Settings = state.settings
    limiter: RateLimiter = state.rate_limiter
    limit: Limit = state.chat_rate_limit
    identity = f"user:{auth.user.id}" if auth is not None else f"ip:{client_ip(request, settings)}"
    decision = await limiter.hit(limit, identity)
    if not decision.allowed:
        raise RateLimited(
            f"Too many requests: the limit is {settings.rate_limit_chat}. Please wait a moment.",
            retry_after=decision.reset_after_s,
            extra={"limit": decision.limit},
        )


#: Add to chat, translate and adjust-content routes: `dependencies=[ChatRateLimitDep]` or `_: ChatRateLimit`.
ChatRateLimitDep = Depends(enforce_chat_rate_limit)
ChatRateLimit = Annotated[None, ChatRateLimitDep]


async def get_vectorstore(services: Annotated[Services, Depends(get_services)]) -> VectorStore:
    """The process's vector store (in embedded mode, the RPC client to the worker's local store)."""
    if services.vectorstore is None:
        raise UpstreamUnavailable("The search index is not available yet.", upstream="qdrant", retry_after=5)
    return services.vectorstore


async def require_admin(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Admin endpoints: `X-API-Key` must equal ADMIN_API_KEY (open in development when it is unset)."""
    expected = settings.admin_api_key
    if expected is None and not settings.is_production:
        return
    if (
        expected is None
        or not x_api_key
        or not hmac.compare_digest(x_api_key.encode(), expected.get_secret_value().encode())
    ):
        raise Unauthorized("A valid X-API-Key header is required for this endpoint.", code="invalid_api_key")


VectorStoreDep = Annotated[VectorStore, Depends(get_vectorstore)]
AdminKey = Annotated[None, Depends(require_admin)]
