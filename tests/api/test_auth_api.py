"""`/api/auth/*` in process (real Redis, real SQLite and PostgreSQL): contract, bad input, forged tokens."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from api.auth_support import COOKIE_NAME
from shared.accounts.auth import hash_token, new_token, sign_cookie_value
from shared.platform.constants import SESSION_CACHE_PREFIX
from shared.stores.db.models import AuthSession, utcnow
from tests.utils.auth_app import BACKENDS, auth_settings, running_app

PASSWORD = "s3cret-pass"
USER_KEYS = {
    "id",
    "email",
    "name",
    "proficiency",
    "emailVerified",
    "createdAt",
    "updatedAt",
    "technical_background",
    "hardware_access",
    "learning_goals",
}


class AuthApp:
    """One running app plus helpers."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def secret(self) -> str:
        return str(self.app.state.auth_runtime.cookies.secret)

    async def sign_up(self, **fields: Any) -> dict[str, Any]:
        body = {"email": f"u-{uuid.uuid4().hex[:10]}@example.com", "name": "Reader", "password": PASSWORD, **fields}
        r = await self.client.post("/api/auth/sign-up", json=body)
        assert r.status_code == 200, r.text
        self.client.cookies.clear()
        return dict(r.json())

    async def expire_in_db(self, token: str) -> None:
        services = self.app.state.services
        async with services.sessions() as db:
            past = utcnow() - timedelta(minutes=1)
            await db.exec(
                update(AuthSession).where(AuthSession.token_hash == hash_token(token)).values(expires_at=past)
            )  # type: ignore[arg-type]
            await db.commit()


@pytest.fixture(scope="module", params=BACKENDS)
async def auth_app(request: pytest.FixtureRequest, pg_database_factory: Callable[[], str]) -> AsyncIterator[AuthApp]:
    """The app on SQLite and on PostgreSQL (sign-in limit raised so only the limiter test meets it)."""
    settings = auth_settings(request.param, pg_database_factory, rate_limit_sign_in="1000/minute")
    async with running_app(settings) as (app, client):
        yield AuthApp(app, client)


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


async def test_frontend_flow(auth_app: AuthApp) -> None:
    """Sign-up with proficiency -> get-session -> verify -> profile/update -> get-session -> sign-out."""
    c = auth_app.client
    email = f"Mixed.Case-{uuid.uuid4().hex[:6]}@Example.COM"
    r = await c.post(
        "/api/auth/sign-up", json={"email": email, "name": " Ada ", "password": PASSWORD, "proficiency": "beginner"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    token = body["token"]
    assert set(body["user"]) >= USER_KEYS
    assert body["user"]["email"] == email.lower()
    assert body["user"]["name"] == "Ada"
    assert body["user"]["proficiency"] == "beginner"
    assert body["user"]["emailVerified"] is False
    assert body["session"].items() >= {"accessToken": token, "tokenType": "Bearer"}.items()
    assert body["session"]["expiresAt"].endswith("Z")
    assert len(token) >= 43
    assert r.headers["set-cookie"].startswith(f"{COOKIE_NAME}=")
    c.cookies.clear()

    r = await c.get("/api/auth/get-session", headers=bearer(token))
    assert r.json()["user"]["id"] == body["user"]["id"]
    assert r.json()["session"]["accessToken"] == token
    r = await c.get("/api/auth/verify", headers=bearer(token))
    assert r.status_code == 200
    assert r.json()["valid"] is True
    assert set(r.json()["user"]) >= USER_KEYS
    assert (await c.get("/api/auth/profile", headers=bearer(token))).json() == {"profile": None}

    r = await c.post("/api/auth/profile/update", headers=bearer(token), json={"technical_background": "ROS 2"})
    assert r.json() == {"success": True}
    r = await c.post("/api/auth/profile/update", headers=bearer(token), json={"learning_goals": "humanoids"})
    user = (await c.get("/api/auth/get-session", headers=bearer(token))).json()["user"]
    assert (user["technical_background"], user["hardware_access"], user["learning_goals"]) == (
        "ROS 2",
        None,
        "humanoids",
    )
    profile = (await c.get("/api/auth/profile", headers=bearer(token))).json()["profile"]
    assert profile == {"technical_background": "ROS 2", "hardware_access": None, "learning_goals": "humanoids"}

    assert (await c.post("/api/auth/sign-out", headers=bearer(token))).json() == {"success": True}
    assert (await c.get("/api/auth/get-session", headers=bearer(token))).json() == {"user": None, "session": None}
    r = await c.get("/api/auth/verify", headers=bearer(token))
    assert r.status_code == 401
    assert isinstance(r.json()["detail"], str)
    assert r.json()["code"]

    r = await c.post("/api/auth/sign-in/email", json={"email": email.upper(), "password": PASSWORD})
    assert r.status_code == 200
    assert r.json()["redirect"] is False
    assert r.json()["url"] is None
    assert r.json()["user"]["learning_goals"] == "humanoids"
    assert r.json()["session"]["accessToken"] == r.json()["token"]
    c.cookies.clear()


async def test_unknown_email_and_wrong_password_look_the_same(auth_app: AuthApp) -> None:
    """Both give 401 INVALID_EMAIL_OR_PASSWORD with the same message."""
    known = (await auth_app.sign_up())["user"]["email"]
    c = auth_app.client
    wrong = await c.post("/api/auth/sign-in/email", json={"email": known, "password": "wrong-password"})
    unknown = await c.post("/api/auth/sign-in/email", json={"email": "nobody@example.com", "password": PASSWORD})
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert r.json()["code"] == "INVALID_EMAIL_OR_PASSWORD"
    assert wrong.json()["detail"] == unknown.json()["detail"] == wrong.json()["message"]


BIG = "x" * 200_000
SIGN_UP_OK = {"email": "someone@example.com", "name": "N", "password": PASSWORD}

BAD_INPUT: list[tuple[str, str, Any, int]] = [
    # (id, path, JSON body or raw bytes, expected status)
    ("malformed email", "/api/auth/sign-up", {**SIGN_UP_OK, "email": "not-an-email"}, 422),
    ("email without domain dot", "/api/auth/sign-up/email", {**SIGN_UP_OK, "email": "a@b"}, 422),
    ("email with spaces", "/api/auth/sign-up", {**SIGN_UP_OK, "email": "a b@example.com"}, 422),
    ("short password", "/api/auth/sign-up", {**SIGN_UP_OK, "password": "short"}, 422),
    ("unknown proficiency", "/api/auth/sign-up", {**SIGN_UP_OK, "proficiency": "expert"}, 422),
    ("proficiency wrong type", "/api/auth/sign-up", {**SIGN_UP_OK, "proficiency": 3}, 422),
    ("huge name", "/api/auth/sign-up", {**SIGN_UP_OK, "name": BIG}, 422),
    ("huge email", "/api/auth/sign-up", {**SIGN_UP_OK, "email": BIG + "@example.com"}, 422),
    ("huge password", "/api/auth/sign-up", {**SIGN_UP_OK, "password": BIG}, 422),
    ("body over 1 MiB", "/api/auth/sign-up", {**SIGN_UP_OK, "name": "x" * 1_100_000}, 413),
    ("blank name", "/api/auth/sign-up", {**SIGN_UP_OK, "name": "   "}, 422),
    ("NUL in name", "/api/auth/sign-up", {**SIGN_UP_OK, "name": "a\x00b"}, 422),
    ("NUL in email", "/api/auth/sign-up", {**SIGN_UP_OK, "email": "a\x00@example.com"}, 422),
    ("lone surrogate", "/api/auth/sign-up", b'{"email":"s@example.com","name":"\\ud800","password":"pppppppp"}', 422),
    ("lone surrogate password", "/api/auth/sign-in/email", b'{"email":"s@example.com","password":"\\udfff"}', 422),
    ("missing email", "/api/auth/sign-up", {"name": "N", "password": PASSWORD}, 422),
    ("missing password", "/api/auth/sign-up", {"email": "a@example.com", "name": "N"}, 422),
    ("missing name", "/api/auth/sign-up", {"email": "a@example.com", "password": PASSWORD}, 422),
    ("empty object", "/api/auth/sign-up", {}, 422),
    ("JSON array", "/api/auth/sign-up", [1, 2], 422),
    ("not JSON", "/api/auth/sign-up", b"email=a@example.com", 422),
    ("truncated JSON", "/api/auth/sign-in/email", b'{"email": "a@exa', 422),
    ("email wrong type", "/api/auth/sign-in/email", {"email": 12, "password": PASSWORD}, 422),
    ("password null", "/api/auth/sign-in/email", {"email": "a@example.com", "password": None}, 422),
    ("sign-in missing password", "/api/auth/sign-in/email", {"email": "a@example.com"}, 422),
    ("sign-in huge password", "/api/auth/sign-in/email", {"email": "a@example.com", "password": BIG}, 422),
    ("sign-in malformed email", "/api/auth/sign-in/email", {"email": "nope", "password": PASSWORD}, 401),
    ("rememberMe wrong type", "/api/auth/sign-in/email", {**SIGN_UP_OK, "rememberMe": "maybe"}, 422),
    ("profile anonymous", "/api/auth/profile/update", {"learning_goals": "x"}, 401),
]


@pytest.mark.parametrize(("case", "path", "payload", "status"), BAD_INPUT, ids=[row[0] for row in BAD_INPUT])
async def test_bad_input_is_a_4xx_with_string_detail(
    auth_app: AuthApp, case: str, path: str, payload: Any, status: int
) -> None:
    """Every malformed request gets its 4xx and the error envelope; never a 500."""
    kwargs: dict[str, Any] = (
        {"content": payload, "headers": {"content-type": "application/json"}}
        if isinstance(payload, bytes)
        else {"json": payload}
    )
    r = await auth_app.client.post(path, **kwargs)
    assert r.status_code == status, (case, r.text[:300])
    body = r.json()
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert isinstance(body["code"], str)
    assert isinstance(body["message"], str)
    if status == 422:
        assert body["code"] == "validation_error"
        assert body["errors"]


@pytest.mark.parametrize(
    "payload",
    [
        {"technical_background": "x" * 100_000},
        {"hardware_access": ["a list"]},
        {"learning_goals": "nul\x00here"},
        {"proficiency": "guru"},
    ],
    ids=["huge field", "wrong type", "NUL", "unknown proficiency"],
)
async def test_bad_profile_updates_are_422(auth_app: AuthApp, payload: dict[str, Any]) -> None:
    """Profile updates are validated (size, type, storable text) before touching the database."""
    token = (await auth_app.sign_up())["token"]
    r = await auth_app.client.post("/api/auth/profile/update", headers=bearer(token), json=payload)
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str)


async def test_duplicate_email_is_409_whatever_the_case(auth_app: AuthApp) -> None:
    """A second sign-up with the same email (any case) is 409 USER_ALREADY_EXISTS."""
    email = (await auth_app.sign_up())["user"]["email"]
    for variant in (email, email.upper(), f"  {email.title()} "):
        r = await auth_app.client.post("/api/auth/sign-up/email", json={**SIGN_UP_OK, "email": variant})
        assert r.status_code == 409
        assert r.json()["code"] == "USER_ALREADY_EXISTS"
        assert isinstance(r.json()["detail"], str)


def _forged_headers(secret: str, real_token: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    other = new_token()
    signed = sign_cookie_value(real_token, secret)
    tampered = signed[:-8] + ("A" if signed[-8] != "A" else "B") + signed[-7:]
    return [
        ("no credentials", {}, {}),
        ("empty bearer", {"Authorization": "Bearer "}, {}),
        ("bare Bearer", {"Authorization": "Bearer"}, {}),
        ("basic auth", {"Authorization": "Basic dXNlcjpwYXNz"}, {}),
        ("random token", bearer(other), {}),
        ("garbage token", bearer("not a token; drop table users"), {}),
        ("very long token", bearer("A" * 8000), {}),
        ("token hash as token", bearer(hash_token(real_token)), {}),
        ("real token plus a char", bearer(real_token + "x"), {}),
        ("unsigned cookie", {}, {COOKIE_NAME: real_token}),
        ("tampered cookie", {}, {COOKIE_NAME: tampered}),
        ("cookie, wrong secret", {}, {COOKIE_NAME: sign_cookie_value(real_token, "wrong-secret")}),
        ("cookie for unknown token", {}, {COOKIE_NAME: sign_cookie_value(other, secret)}),
        ("cookie garbage", {}, {COOKIE_NAME: "%E0%A4%A.%%%"}),
    ]


async def test_forged_tokens_and_tampered_cookies(auth_app: AuthApp) -> None:
    """Forged or tampered credentials are anonymous on optional routes and 401 on required ones."""
    c = auth_app.client
    real = (await auth_app.sign_up())["token"]
    for case, headers, cookies in _forged_headers(auth_app.secret, real):
        c.cookies.clear()
        for name, value in cookies.items():
            c.cookies.set(name, value)
        r = await c.get("/api/auth/get-session", headers=headers)
        assert r.status_code == 200, case
        assert r.json() == {"user": None, "session": None}, case
        for path in ("/api/auth/verify", "/api/auth/profile"):
            r = await c.get(path, headers=headers)
            assert r.status_code == 401, (case, path)
            assert isinstance(r.json()["detail"], str), (case, path)
    # Control: the genuine signed cookie works.
    c.cookies.clear()
    c.cookies.set(COOKIE_NAME, sign_cookie_value(real, auth_app.secret))
    assert (await c.get("/api/auth/verify")).status_code == 200
    c.cookies.clear()


async def test_expired_session_is_anonymous(auth_app: AuthApp) -> None:
    """A session past its expiry is anonymous on get-session and 401 on verify (Bearer and cookie)."""
    token = (await auth_app.sign_up())["token"]
    await auth_app.expire_in_db(token)
    c = auth_app.client
    assert (await c.get("/api/auth/get-session", headers=bearer(token))).json()["user"] is None
    assert (await c.get("/api/auth/verify", headers=bearer(token))).status_code == 401
    c.cookies.set(COOKIE_NAME, sign_cookie_value(token, auth_app.secret))
    assert (await c.get("/api/auth/verify")).status_code == 401
    c.cookies.clear()


async def test_cookie_sign_in_and_sign_out_clear_the_cookie(auth_app: AuthApp) -> None:
    """Cookie sessions work like Bearer ones; sign-out revokes the session and expires the cookie."""
    c = auth_app.client
    email = (await auth_app.sign_up())["user"]["email"]
    r = await c.post("/api/auth/sign-in/email", json={"email": email, "password": PASSWORD, "rememberMe": False})
    assert r.status_code == 200
    assert "Max-Age" not in r.headers["set-cookie"]
    token = r.json()["token"]
    assert (await c.get("/api/auth/verify", headers={"Authorization": "Bearer "})).status_code == 200
    r = await c.post("/api/auth/sign-out", json={})
    assert r.json() == {"success": True}
    assert "Max-Age=0" in r.headers["set-cookie"] or "expires=Thu, 01 Jan 1970" in r.headers["set-cookie"]
    assert (await c.get("/api/auth/verify", headers=bearer(token))).status_code == 401
    # Signing out again (nothing to revoke) is still a success.
    assert (await c.post("/api/auth/sign-out")).json() == {"success": True}


async def test_session_cache_is_used_and_revocation_is_immediate(auth_app: AuthApp) -> None:
    """A cached session answers without the database; sign-out removes it from the cache at once."""
    c = auth_app.client
    token = (await auth_app.sign_up())["token"]
    redis = auth_app.app.state.services.redis
    key = SESSION_CACHE_PREFIX + hash_token(token)
    assert await redis.get(key) is None
    assert (await c.get("/api/auth/verify", headers=bearer(token))).status_code == 200
    assert await redis.get(key) is not None
    assert token.encode() not in await redis.get(key)
    ttl = await redis.ttl(key)
    assert 0 < ttl <= 60
    # Expire it in the database behind the cache's back: the cached entry still answers (no DB trip)...
    await auth_app.expire_in_db(token)
    assert (await c.get("/api/auth/verify", headers=bearer(token))).status_code == 200
    # ...until the cache entry goes, which sign-out does at once.
    await c.post("/api/auth/sign-out", headers=bearer(token))
    assert await redis.get(key) is None
    assert (await c.get("/api/auth/verify", headers=bearer(token))).status_code == 401


async def test_profile_update_refreshes_cached_sessions(auth_app: AuthApp) -> None:
    """Every cached session of the user is dropped on a profile update, so all of them see the change."""
    c = auth_app.client
    email = (await auth_app.sign_up())["user"]["email"]
    tokens = []
    for _ in range(2):
        r = await c.post("/api/auth/sign-in/email", json={"email": email, "password": PASSWORD})
        tokens.append(r.json()["token"])
        c.cookies.clear()
    for token in tokens:
        await c.get("/api/auth/verify", headers=bearer(token))  # cache both
    await c.post(
        "/api/auth/profile/update",
        headers=bearer(tokens[0]),
        json={"hardware_access": "Unitree G1", "proficiency": "pro"},
    )
    user = (await c.get("/api/auth/verify", headers=bearer(tokens[1]))).json()["user"]
    assert user["hardware_access"] == "Unitree G1"
    assert user["proficiency"] == "pro"


async def test_sign_up_may_carry_profile_answers(auth_app: AuthApp) -> None:
    """Profile fields sent with sign-up are stored and returned at once (profile/update stays the usual way)."""
    answers = {"technical_background": "C++ and ROS", "hardware_access": None, "learning_goals": "walk a biped"}
    body = await auth_app.sign_up(proficiency=None, **answers)
    assert body["user"]["proficiency"] == "pro"
    assert {k: body["user"][k] for k in answers} == answers
    r = await auth_app.client.get("/api/auth/profile", headers=bearer(body["token"]))
    assert r.json() == {"profile": answers}
