"""Routes: `/api/auth/*` for the textbook frontend (Bearer) and the better-auth client (cookies)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel.ext.asyncio.session import AsyncSession

from api.auth_support import AuthRuntime, client_ip, presented_tokens
from api.deps import AuthRuntimeDep, CurrentAuth, OptionalAuth
from shared.accounts.auth import hash_password_async, verify_password_async
from shared.accounts.sessions import AuthContext, create_session, revoke_session
from shared.accounts.users import (
    PROFILE_FIELDS,
    Proficiency,
    create_user,
    find_user_by_email,
    get_profile,
    normalise_email,
    update_profile,
)
from shared.platform.errors import Unauthorized
from shared.platform.logging import get_logger
from shared.platform.upstreams import Upstream
from shared.stores.db.models import User, UserProfile

router = APIRouter(prefix="/api/auth", tags=["auth"])
log = get_logger(__name__)

# Deliberately simple: one @, no spaces, a dot in the domain. Real validation is the mailbox itself.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
MAX_EMAIL = 320
MAX_PASSWORD = 256
MAX_PROFILE_FIELD = 4000


class _Body(BaseModel):
    # Clients send extra keys (better-auth: callbackURL, image, ...); they are ignored.
    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        # NUL and lone surrogates cannot be stored by PostgreSQL or encoded as UTF-8: refuse them (422).
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError("must not contain NUL characters")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text") from None
        return value


class SignUpBody(_Body):
    """Sign-up request."""

    email: str = Field(max_length=MAX_EMAIL)
    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=8, max_length=MAX_PASSWORD)
    proficiency: Proficiency | None = "pro"
    # Optional: a sign-up form may ask the background questions up front (else profile/update later).
    technical_background: str | None = Field(None, max_length=MAX_PROFILE_FIELD)
    hardware_access: str | None = Field(None, max_length=MAX_PROFILE_FIELD)
    learning_goals: str | None = Field(None, max_length=MAX_PROFILE_FIELD)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = normalise_email(value)
        if not _EMAIL.match(value):
            raise ValueError("enter a valid email address")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("enter your name")
        return value.strip()


class SignInBody(_Body):
    """Sign-in request."""

    email: str = Field(max_length=MAX_EMAIL)
    password: str = Field(max_length=MAX_PASSWORD)
    rememberMe: bool | None = None  # noqa: N815 - the client's field name


class ProfileBody(_Body):
    """Profile update: any subset of the fields (plus `proficiency`, which lives on the user)."""

    technical_background: str | None = Field(None, max_length=MAX_PROFILE_FIELD)
    hardware_access: str | None = Field(None, max_length=MAX_PROFILE_FIELD)
    learning_goals: str | None = Field(None, max_length=MAX_PROFILE_FIELD)
    proficiency: Proficiency | None = None


def _signed_in(ctx: AuthContext) -> dict[str, Any]:
    return {"user": ctx.user.to_api(), "session": ctx.session_api(), "token": ctx.token}


def _user_agent(request: Request) -> str | None:
    return request.headers.get("user-agent")


def _email_ref(email: str) -> str:
    # Logs identify an email by a short hash: enough to correlate, no address in the logs.
    return hashlib.sha256(email.encode("utf-8")).hexdigest()[:12]


async def _open_session(
    db: AsyncSession, *, user: User, profile: UserProfile | None, request: Request, runtime: AuthRuntime
) -> AuthContext:
    """A new session for `user`, stamped with the client's IP and user agent."""
    return await create_session(
        db=db,
        user=user,
        profile=profile,
        ip_address=client_ip(request, runtime.settings),
        user_agent=_user_agent(request),
    )


async def _sign_up(body: SignUpBody, request: Request, response: Response, runtime: AuthRuntime) -> dict[str, Any]:
    await runtime.sign_up_limiter.hit(ip=client_ip(request, runtime.settings))  # before the scrypt it costs
    password_hash = await hash_password_async(body.password)
    services = runtime.services

    async def insert() -> AuthContext:
        async with services.sessions() as db:
            user = await create_user(
                db=db,
                email=body.email,
                name=body.name,
                password_hash=password_hash,
                proficiency=body.proficiency or "pro",
            )
            answers = {name: getattr(body, name) for name in PROFILE_FIELDS if getattr(body, name) is not None}
            profile = UserProfile(user_id=user.id, **answers) if answers else None
            if profile is not None:
                db.add(profile)
            return await _open_session(db, user=user, profile=profile, request=request, runtime=runtime)

    ctx = await services.resilience.call(Upstream.DATABASE, insert, retry=False)
    runtime.cookies.set(response, ctx.token)
    log.info("auth.signed_up", user_id=ctx.user.id)
    return _signed_in(ctx)


@router.post("/sign-up")
async def sign_up(body: SignUpBody, request: Request, response: Response, runtime: AuthRuntimeDep) -> dict[str, Any]:
    """Create an account and sign it in: `{user, session, token}` plus the session cookie."""
    return await _sign_up(body, request, response, runtime)


@router.post("/sign-up/email")
async def sign_up_email(
    body: SignUpBody, request: Request, response: Response, runtime: AuthRuntimeDep
) -> dict[str, Any]:
    """The better-auth client's path for sign-up (same behaviour)."""
    return await _sign_up(body, request, response, runtime)


@router.post("/sign-in/email")
async def sign_in_email(
    body: SignInBody, request: Request, response: Response, runtime: AuthRuntimeDep
) -> dict[str, Any]:
    """Sign in with email and password; unknown email and wrong password look the same (401)."""
    email = normalise_email(body.email)
    await runtime.sign_in_limiter.hit(ip=client_ip(request, runtime.settings), email=email)
    services = runtime.services

    async def lookup() -> tuple[Any, Any]:
        async with services.sessions() as db:
            user = await find_user_by_email(db=db, email=email)
            profile = await get_profile(db=db, user_id=user.id) if user is not None else None
            return user, profile

    user, profile = await services.resilience.call(Upstream.DATABASE, lookup)
    # The dummy hash for an unknown email makes both failures cost one scrypt.
    valid = await verify_password_async(body.password, user.password_hash if user is not None else None)
    if user is None or not valid:
        log.info("auth.sign_in_failed", email_ref=_email_ref(email))
        raise Unauthorized("Invalid email or password.", code="INVALID_EMAIL_OR_PASSWORD")

    async def start() -> AuthContext:
        async with services.sessions() as db:
            return await _open_session(db, user=user, profile=profile, request=request, runtime=runtime)

    ctx = await services.resilience.call(Upstream.DATABASE, start, retry=False)
    runtime.cookies.set(response, ctx.token, remember=body.rememberMe is not False)
    log.info("auth.signed_in", user_id=ctx.user.id)
    return {**_signed_in(ctx), "redirect": False, "url": None}


@router.post("/sign-out")
async def sign_out(request: Request, response: Response, runtime: AuthRuntimeDep) -> dict[str, Any]:
    """Revoke the presented session(s) and clear the cookie; always `{"success": true}`."""
    services = runtime.services
    for token, _source in presented_tokens(request, runtime.cookies):

        async def revoke(token: str = token) -> bool:
            return await revoke_session(sessions=services.sessions, cache=runtime.cache, token=token)

        if await services.resilience.call(Upstream.DATABASE, revoke, retry=False):
            log.info("auth.signed_out")
    runtime.cookies.clear(response)
    return {"success": True}


@router.get("/get-session")
async def get_session(auth: OptionalAuth) -> dict[str, Any]:
    """`{user, session}` of the presented token or cookie, or both null when not signed in."""
    if auth is None:
        return {"user": None, "session": None}
    return {"user": auth.user.to_api(), "session": auth.session_api()}


@router.get("/verify")
async def verify(auth: CurrentAuth) -> dict[str, Any]:
    """`{"valid": true, "user"}` for a live session; 401 otherwise."""
    return {"valid": True, "user": auth.user.to_api(), "session": auth.session_api()}


@router.post("/profile/update")
async def profile_update(body: ProfileBody, auth: CurrentAuth, runtime: AuthRuntimeDep) -> dict[str, Any]:
    """Save the given profile fields; the user's cached sessions are dropped so reads see them at once."""
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    services = runtime.services

    async def save() -> None:
        async with services.sessions() as db:
            await update_profile(db=db, user_id=auth.user.id, changes=changes)

    await services.resilience.call(Upstream.DATABASE, save, retry=False)
    await runtime.cache.invalidate_user(auth.user.id)
    return {"success": True}


@router.get("/profile")
async def profile(auth: CurrentAuth) -> dict[str, Any]:
    """`{"profile": {technical_background, hardware_access, learning_goals} | null}`."""
    return {"profile": auth.user.profile}
