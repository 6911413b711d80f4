"""Session lifecycle: create at sign-in/up, resolve a token (cache first), renew, revoke.

Sessions last 7 days; a session used more than a day after its last renewal is extended by another
7 days (so the database is written at most once a day per session). Only `sha256(token)` is stored
and cached; the token itself lives only in the client and in the request being served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.accounts.auth import hash_token, looks_like_token, new_token
from shared.accounts.cache import SessionCache
from shared.accounts.users import AuthUser, iso, parse_iso
from shared.platform.resilience import Resilience
from shared.platform.upstreams import Upstream
from shared.stores.db.engine import SessionFactory
from shared.stores.db.models import AuthSession, User, UserProfile, utcnow

SESSION_TTL = timedelta(days=7)
RENEW_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class AuthContext:
    """A resolved sign-in: the user, the session's id and expiry, and the presented token."""

    user: AuthUser
    session_id: str
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    token: str = field(repr=False)
    renewed: bool = False

    def session_api(self) -> dict[str, Any]:
        """API.md's session object S, plus the fields the better-auth client reads (token, userId, ...)."""
        return {
            "accessToken": self.token,
            "tokenType": "Bearer",
            "expiresAt": iso(self.expires_at),
            "token": self.token,
            "id": self.session_id,
            "userId": self.user.id,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        }


def _entry(ctx: AuthContext) -> dict[str, Any]:
    return {
        "user": ctx.user.to_cache(),
        "session_id": ctx.session_id,
        "expires_at": iso(ctx.expires_at),
        "created_at": iso(ctx.created_at),
        "updated_at": iso(ctx.updated_at),
    }


def _from_entry(entry: dict[str, Any], token: str) -> AuthContext | None:
    try:
        return AuthContext(
            user=AuthUser.from_cache(entry["user"]),
            session_id=str(entry["session_id"]),
            expires_at=parse_iso(entry["expires_at"]),
            created_at=parse_iso(entry["created_at"]),
            updated_at=parse_iso(entry["updated_at"]),
            token=token,
        )
    except (KeyError, TypeError, ValueError):
        return None


async def create_session(
    *,
    db: AsyncSession,
    user: User,
    profile: UserProfile | None = None,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> AuthContext:
    """Start a 7-day session for `user` and commit; returns it with the new token (shown once)."""
    token = new_token()
    now = utcnow()
    row = AuthSession(
        token_hash=hash_token(token),
        user_id=user.id,
        expires_at=now + SESSION_TTL,
        created_at=now,
        updated_at=now,
        ip_address=(ip_address or None) and ip_address[:64],
        user_agent=(user_agent or None) and user_agent[:512],
    )
    db.add(row)
    await db.commit()
    return AuthContext(
        user=AuthUser.from_rows(user, profile),
        session_id=row.id,
        expires_at=row.expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        token=token,
    )


async def _load(sessions: SessionFactory, token_hash: str) -> tuple[AuthSession, User, UserProfile | None] | None:
    async with sessions() as db:
        statement = (
            select(AuthSession, User, UserProfile)
            .join(User, User.id == AuthSession.user_id)  # type: ignore[arg-type]
            .outerjoin(UserProfile, UserProfile.user_id == User.id)  # type: ignore[arg-type]
            .where(AuthSession.token_hash == token_hash)
        )
        row = (await db.exec(statement)).first()
        return None if row is None else (row[0], row[1], row[2])


async def _renew(sessions: SessionFactory, session_id: str, now: datetime) -> datetime:
    expires_at = now + SESSION_TTL
    async with sessions() as db:
        row = await db.get(AuthSession, session_id)
        if row is not None:
            row.expires_at = expires_at
            row.updated_at = now
            db.add(row)
            await db.commit()
    return expires_at


async def resolve_session(
    *,
    sessions: SessionFactory,
    cache: SessionCache,
    resilience: Resilience,
    token: str,
    now: datetime | None = None,
) -> AuthContext | None:
    """The session a token belongs to, or None when it is unknown, revoked or expired.

    Looks in the cache first, then the database (one query). Renews the session when its last renewal
    is more than a day old. Raises UpstreamUnavailable when the database is down (not "anonymous").
    """
    if not looks_like_token(token):
        return None
    now = now or utcnow()
    token_hash = hash_token(token)
    ctx: AuthContext | None = None
    entry = await cache.get(token_hash)
    if entry is not None:
        ctx = _from_entry(entry, token)
    if ctx is None:
        loaded = await resilience.call(Upstream.DATABASE, lambda: _load(sessions, token_hash))
        if loaded is None:
            return None
        row, user, profile = loaded
        ctx = AuthContext(
            user=AuthUser.from_rows(user, profile),
            session_id=row.id,
            expires_at=_aware(row.expires_at),
            created_at=_aware(row.created_at),
            updated_at=_aware(row.updated_at),
            token=token,
        )
        if ctx.expires_at > now:
            await cache.set(token_hash, ctx.user.id, _entry(ctx), max_ttl_s=(ctx.expires_at - now).total_seconds())
    if ctx.expires_at <= now:
        await cache.delete(token_hash)
        return None
    if now - ctx.updated_at >= RENEW_AFTER:
        session_id = ctx.session_id
        expires_at = await resilience.call(Upstream.DATABASE, lambda: _renew(sessions, session_id, now), retry=False)
        await cache.delete(token_hash)
        ctx = AuthContext(
            user=ctx.user,
            session_id=ctx.session_id,
            expires_at=expires_at,
            created_at=ctx.created_at,
            updated_at=now,
            token=token,
            renewed=True,
        )
    return ctx


async def revoke_session(*, sessions: SessionFactory, cache: SessionCache, token: str) -> bool:
    """Delete the token's session (if any) and its cache entry; True when a session was revoked."""
    if not looks_like_token(token):
        return False
    token_hash = hash_token(token)
    await cache.delete(token_hash)
    async with sessions() as db:
        result = await db.exec(delete(AuthSession).where(col(AuthSession.token_hash) == token_hash))
        await db.commit()
    return bool(getattr(result, "rowcount", 0))


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; they are UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def purge_expired_sessions(*, sessions: SessionFactory, now: datetime | None = None) -> int:
    """Delete sessions whose expiry has passed (they can never authenticate again); return how many."""
    cutoff = now or utcnow()
    async with sessions() as db:
        result = await db.exec(delete(AuthSession).where(col(AuthSession.expires_at) < cutoff))
        await db.commit()
    return int(getattr(result, "rowcount", 0) or 0)
