"""The production session cookie: `__Secure-` name, Secure, HttpOnly, SameSite=None, and it round-trips."""

from __future__ import annotations

from api.auth_support import SECURE_COOKIE_NAME
from tests.utils.auth_app import auth_settings, running_app


async def test_production_cookie_flags_and_round_trip() -> None:
    """With APP_ENV=production the cookie is __Secure-prefixed and Secure; sending it back signs the user in."""
    settings = auth_settings("sqlite", None, app_env="production")
    async with running_app(settings) as (_app, client):
        r = await client.post(
            "/api/auth/sign-up", json={"email": "prod@example.com", "name": "P", "password": "password-123"}
        )
        assert r.status_code == 200
        header = r.headers["set-cookie"]
        name, _, rest = header.partition("=")
        assert name == SECURE_COOKIE_NAME
        flags = {part.strip().lower() for part in rest.split(";")[1:]}
        assert {"secure", "httponly", "samesite=none", "path=/"} <= flags
        client.cookies.clear()
        cookie = f"{name}={rest.split(';')[0]}"
        r = await client.get("/api/auth/verify", headers={"cookie": cookie})
        assert r.status_code == 200
        assert r.json()["user"]["email"] == "prod@example.com"
        r = await client.post("/api/auth/sign-out", headers={"cookie": cookie})
        assert "max-age=0" in r.headers["set-cookie"].lower()
        assert (await client.get("/api/auth/verify", headers={"cookie": cookie})).status_code == 401
