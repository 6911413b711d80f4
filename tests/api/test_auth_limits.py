"""Sign-in brute-force limits (per IP and per email, 429 + Retry-After) and token-free logs, in process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.utils.auth_app import auth_settings, running_app

PASSWORD = "s3cret-pass"


@pytest.fixture
async def limited() -> AsyncIterator[Any]:
    """An app allowing 3 sign-in attempts a minute, trusting one proxy hop of X-Forwarded-For."""
    settings = auth_settings("sqlite", None, rate_limit_sign_in="3/minute", trusted_proxy_hops=1)
    async with running_app(settings) as (_app, client):
        yield client


def _from(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def _net() -> str:
    """A random /16 prefix, so counters left in Redis by an earlier run never meet this one."""
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}"


async def test_sign_in_limited_per_ip(limited: Any) -> None:
    """The 4th attempt in a minute from one IP is 429 with Retry-After, whatever the emails."""
    net = _net()
    statuses = []
    for i in range(4):
        r = await limited.post(
            "/api/auth/sign-in/email",
            json={"email": f"nobody{i}@example.com", "password": "wrong-password"},
            headers=_from(f"{net}.7"),
        )
        statuses.append(r.status_code)
    assert statuses == [401, 401, 401, 429]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert isinstance(r.json()["detail"], str)
    assert r.json()["code"] == "TOO_MANY_REQUESTS"
    # Another IP is not affected.
    other = await limited.post(
        "/api/auth/sign-in/email",
        json={"email": "nobody9@example.com", "password": "x"},
        headers=_from(f"{net}.8"),
    )
    assert other.status_code == 401


async def test_sign_in_limited_per_email(limited: Any) -> None:
    """Attempts on one email from many IPs are limited too; the right password does not bypass it."""
    email = f"target-{uuid.uuid4().hex[:6]}@example.com"
    net = _net()
    r = await limited.post(
        "/api/auth/sign-up", json={"email": email, "name": "T", "password": PASSWORD}, headers=_from(f"{net}.1")
    )
    assert r.status_code == 200
    statuses = []
    for i in range(3):
        r = await limited.post(
            "/api/auth/sign-in/email",
            json={"email": email.upper(), "password": "wrong-password"},
            headers=_from(f"{net}.{10 + i}"),
        )
        statuses.append(r.status_code)
    r = await limited.post(
        "/api/auth/sign-in/email", json={"email": email, "password": PASSWORD}, headers=_from(f"{net}.99")
    )
    statuses.append(r.status_code)
    assert statuses == [401, 401, 401, 429]
    assert "retry-after" in r.headers


async def test_attempts_the_ip_limit_refuses_do_not_use_up_the_email(limited: Any) -> None:
    """An attempt refused by its IP's limit never reaches the password check and is not counted for the
    email: one client trying past its own limit cannot lock the account for everyone else."""
    net, email = _net(), f"victim-{uuid.uuid4().hex[:6]}@example.com"
    for i in range(3):  # the attacker's IP uses up its own budget on other addresses
        r = await limited.post(
            "/api/auth/sign-in/email",
            json={"email": f"other{i}@example.com", "password": "wrong-password"},
            headers=_from(f"{net}.66"),
        )
        assert r.status_code == 401
    for _ in range(3):  # then tries the victim's address: refused by the IP limit each time
        r = await limited.post(
            "/api/auth/sign-in/email", json={"email": email, "password": "wrong-password"}, headers=_from(f"{net}.66")
        )
        assert r.status_code == 429
    statuses = []
    for i in range(3):  # the email's own budget of 3 is still whole for attempts from other addresses
        r = await limited.post(
            "/api/auth/sign-in/email",
            json={"email": email, "password": "wrong-password"},
            headers=_from(f"{net}.{100 + i}"),
        )
        statuses.append(r.status_code)
    assert statuses == [401, 401, 401]


async def test_sign_up_limited_per_ip_before_any_work() -> None:
    """The 3rd sign-up in the window from one IP is 429 with Retry-After (and creates no account); the
    attempts of another IP are counted apart; the limit is documented in the OpenAPI document."""
    settings = auth_settings("sqlite", None, rate_limit_sign_up="2/hour", trusted_proxy_hops=1)
    net = _net()
    async with running_app(settings) as (app, client):
        emails = [f"signup-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(3)]
        statuses = []
        for email in emails:
            r = await client.post(
                "/api/auth/sign-up",
                json={"email": email, "name": "S", "password": PASSWORD},
                headers=_from(f"{net}.5"),
            )
            statuses.append(r.status_code)
        assert statuses == [200, 200, 429]
        assert r.json()["code"] == "TOO_MANY_REQUESTS"
        assert "sign-up" in r.json()["detail"]
        assert 3000 <= int(r.headers["retry-after"]) <= 3600
        refused = await client.post(
            "/api/auth/sign-in/email", json={"email": emails[2], "password": PASSWORD}, headers=_from(f"{net}.6")
        )
        assert refused.status_code == 401  # the refused sign-up created nothing
        other = await client.post(
            "/api/auth/sign-up/email",
            json={"email": f"other-{uuid.uuid4().hex[:6]}@example.com", "name": "O", "password": PASSWORD},
            headers=_from(f"{net}.7"),
        )
        assert other.status_code == 200
        documented = app.openapi()["paths"]["/api/auth/sign-up"]["post"]["responses"]
        assert "429" in documented


async def test_tokens_never_in_logs(capfd: pytest.CaptureFixture[str]) -> None:
    """Sign-up, sign-in, Bearer and cookie use, bad tokens and sign-out log no token value (DEBUG level)."""
    settings = auth_settings("sqlite", None, log_level="DEBUG", log_format="json")
    tokens: list[str] = []
    async with running_app(settings) as (_app, client):
        email = f"log-{uuid.uuid4().hex[:6]}@example.com"
        r = await client.post("/api/auth/sign-up", json={"email": email, "name": "L", "password": PASSWORD})
        tokens.append(r.json()["token"])
        r = await client.post("/api/auth/sign-in/email", json={"email": email, "password": PASSWORD})
        tokens.append(r.json()["token"])
        await client.get("/api/auth/get-session")  # cookie
        for token in tokens:
            await client.get("/api/auth/verify", headers={"Authorization": f"Bearer {token}"})
            await client.get(f"/api/auth/get-session?token={token}")
            await client.get("/api/auth/verify", headers={"Authorization": f"Bearer {token}!"})
        await client.post("/api/auth/sign-out")
        await client.post("/api/auth/sign-out", headers={"Authorization": f"Bearer {tokens[0]}"})
    out, err = capfd.readouterr()
    logs = out + err
    assert "auth.signed_in" in logs
    assert "http.request" in logs
    for token in tokens:
        assert token not in logs
