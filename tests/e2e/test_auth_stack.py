"""Auth against the whole stack (scripts/start -> supervisord -> Gunicorn), on SQLite and on PostgreSQL.

One stack per database backend for the module: the frontend's request-for-request flow over HTTP, the
official better-auth client (Node) with cookies, and a search of everything the stack logged for the
tokens it handed out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.utils.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SECRET = "e2e-better-auth-secret-" + uuid.uuid4().hex
ISSUED_TOKENS: list[str] = []


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def auth_stack(request: pytest.FixtureRequest, pg_database_factory: Callable[[], str]) -> Iterator[Stack]:
    """A running stack with a known BETTER_AUTH_SECRET, on the parametrised database."""
    env = {"BETTER_AUTH_SECRET": SECRET, "LOG_LEVEL": "DEBUG", "AUTO_INGEST": "false"}
    if request.param == "postgresql":
        env["DATABASE_URL"] = pg_database_factory()
    stack = Stack(env=env)
    try:
        stack.start(timeout=120)
        yield stack
    finally:
        stack.cleanup()


def _node_ready() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI"):
            pytest.fail("Node.js and npm are required in CI for the better-auth client test")
        pytest.skip("Node.js not installed")
    if not (JS_DIR / "node_modules" / "better-auth").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=300, capture_output=True)
    return node, npm


def test_frontend_flow_request_for_request(auth_stack: Stack) -> None:
    """Sign-up -> get-session -> verify -> profile/update -> get-session -> sign-out -> nulls and 401."""
    email = f"Reader.{uuid.uuid4().hex[:8]}@Example.com"
    with auth_stack.client() as http:
        r = http.post(
            "/api/auth/sign-up",
            json={"email": email, "name": "Ada Reader", "password": "s3cret-pass", "proficiency": "intermediate"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        token = body["token"]
        ISSUED_TOKENS.append(token)
        assert body["session"]["accessToken"] == token
        assert body["session"]["tokenType"] == "Bearer"
        assert body["user"]["email"] == email.lower()
        assert body["user"]["proficiency"] == "intermediate"
        bearer = {"Authorization": f"Bearer {token}"}
        http.cookies.clear()  # the frontend uses the Bearer token only

        r = http.get("/api/auth/get-session", headers=bearer)
        assert r.status_code == 200
        assert r.json()["user"]["id"] == body["user"]["id"]
        assert r.json()["session"]["accessToken"] == token

        r = http.get("/api/auth/verify", headers=bearer)
        assert r.status_code == 200
        assert r.json()["valid"] is True
        assert r.json()["user"]["email"] == email.lower()

        profile = {
            "technical_background": "Python, some ROS 2",
            "hardware_access": "Jetson Orin",
            "learning_goals": "VLA",
        }
        r = http.post("/api/auth/profile/update", headers=bearer, json=profile)
        assert r.status_code == 200
        assert r.json() == {"success": True}

        r = http.get("/api/auth/get-session", headers=bearer)
        user = r.json()["user"]
        assert {k: user[k] for k in profile} == profile
        assert http.get("/api/auth/profile", headers=bearer).json() == {"profile": profile}

        r = http.post("/api/auth/sign-out", headers=bearer)
        assert r.status_code == 200
        assert r.json() == {"success": True}

        r = http.get("/api/auth/get-session", headers=bearer)
        assert r.status_code == 200
        assert r.json() == {"user": None, "session": None}
        r = http.get("/api/auth/verify", headers=bearer)
        assert r.status_code == 401
        assert isinstance(r.json()["detail"], str)


def test_better_auth_client_signs_up_in_and_out(auth_stack: Stack) -> None:
    """The official better-auth 1.4 client: signUp.email, getSession, signOut, signIn.email, getSession."""
    node, _npm = _node_ready()
    result = subprocess.run(
        [node, "better_auth_flow.mjs", auth_stack.base_url, SECRET],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    steps = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    names = [step["step"] for step in steps]
    assert names == [
        "signUp.email",
        "getSession",
        "signOut",
        "getSession (signed out)",
        "signIn.email (wrong password)",
        "signIn.email",
        "cookie signed like better-call",
        "getSession (signed in again)",
    ], result.stdout + result.stderr
    failed = [step for step in steps if not step["ok"]]
    assert not failed, failed
    assert result.returncode == 0, result.stderr


def test_sign_in_tokens_never_logged(auth_stack: Stack) -> None:
    """Tokens (Bearer, cookie, response bodies) never appear in any line the stack logged, even at DEBUG."""
    email = f"logs-{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=auth_stack.base_url, timeout=30) as http:
        r = http.post("/api/auth/sign-up/email", json={"email": email, "name": "L", "password": "password-123"})
        assert r.status_code == 200
        ISSUED_TOKENS.append(r.json()["token"])
        r = http.post("/api/auth/sign-in/email", json={"email": email, "password": "password-123"})
        token = r.json()["token"]
        ISSUED_TOKENS.append(token)
        http.get("/api/auth/verify", headers={"Authorization": f"Bearer {token}"})
        http.get(f"/api/auth/get-session?token={token}")
        http.get("/api/auth/verify", headers={"Authorization": f"Bearer {token}x"})
        http.post("/api/auth/sign-out")
    output = auth_stack.output()
    assert "auth.signed_in" in output  # the logs were captured
    leaked = [t for t in ISSUED_TOKENS if t in output]
    assert leaked == []


def test_sign_in_limit_is_shared_by_all_workers(auth_stack: Stack) -> None:
    """Wrong passwords from one client hit 429 + Retry-After within 11 tries, whichever Gunicorn worker serves."""
    statuses = []
    with httpx.Client(base_url=auth_stack.base_url, timeout=30) as http:
        for _ in range(11):
            # A new connection each time, so requests spread over the workers.
            r = http.post(
                "/api/auth/sign-in/email",
                json={"email": "brute@example.com", "password": "guess-guess"},
                headers={"Connection": "close"},
            )
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert 1 <= int(r.headers["retry-after"]) <= 60
                assert isinstance(r.json()["detail"], str)
                break
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {401}, statuses
