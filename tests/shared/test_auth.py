"""Auth primitives: scrypt hashes, tokens, better-auth cookie signatures, cookie policy."""

from __future__ import annotations

import statistics
import time
from urllib.parse import unquote

import pytest
from fastapi import Response

from api.auth_support import COOKIE_NAME, SECURE_COOKIE_NAME, CookiePolicy
from shared.accounts.auth import (
    SCRYPT_PARAMS,
    hash_password,
    hash_token,
    looks_like_token,
    new_token,
    sign_cookie_value,
    unsign_cookie_value,
    verify_password,
)

# Produced by better-call 1.1.8 (better-auth 1.4's cookie signer):
# serializeSignedCookie("better-auth.session_token", BETTER_CALL_TOKEN, BETTER_CALL_SECRET)
BETTER_CALL_TOKEN = "tok_ABCdef0123456789-_abcdefghijklmnopqrstu"
BETTER_CALL_SECRET = "better-auth-secret-123"
BETTER_CALL_VALUE = "tok_ABCdef0123456789-_abcdefghijklmnopqrstu.EJbcxtm0BKILnHN%2BNMVuRunhzAM8aUFcrE7w5R%2FDxLw%3D"


def test_hash_round_trip_and_wrong_password() -> None:
    """A hash verifies its own password only."""
    stored = hash_password("correct horse")
    assert stored.startswith(f"scrypt${SCRYPT_PARAMS.n}${SCRYPT_PARAMS.r}${SCRYPT_PARAMS.p}$")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsf", stored)
    assert not verify_password("", stored)


def test_salts_are_per_hash() -> None:
    """The same password hashes differently each time (per-user salt)."""
    assert hash_password("same password") != hash_password("same password")


def test_unknown_email_and_malformed_hashes_never_verify() -> None:
    """No stored hash (unknown email) or a malformed one is a failure, never an exception."""
    assert verify_password("anything", None) is False
    for bad in ("", "plain", "scrypt$1$2$3$!!$!!", "bcrypt$x$y$z$a$b", "scrypt$abc$8$1$AAAA$AAAA"):
        assert verify_password("anything", bad) is False


def test_unknown_email_costs_a_real_scrypt() -> None:
    """The dummy-hash path takes about as long as a real check (generous bounds: 0.2x to 5x)."""
    stored = hash_password("pw-123456")
    verify_password("warm-up", None)

    def median(stored_hash: str | None) -> float:
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            verify_password("wrong-password", stored_hash)
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    known, unknown = median(stored), median(None)
    assert 0.2 < unknown / known < 5, (known, unknown)


def test_tokens_are_long_random_and_hashed() -> None:
    """Tokens carry 32 random bytes; only a SHA-256 hex digest is stored."""
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert len(token) >= 43
    assert looks_like_token(token)
    assert len(hash_token(token)) == 64
    assert token not in hash_token(token)
    assert not looks_like_token("short")
    assert not looks_like_token("x" * 40 + "<script>")


def test_cookie_signature_matches_better_call() -> None:
    """Our signed cookie value is byte-for-byte what better-auth's server would set."""
    assert sign_cookie_value(BETTER_CALL_TOKEN, BETTER_CALL_SECRET) == BETTER_CALL_VALUE
    assert unsign_cookie_value(BETTER_CALL_VALUE, BETTER_CALL_SECRET) == BETTER_CALL_TOKEN
    assert unsign_cookie_value(unquote(BETTER_CALL_VALUE), BETTER_CALL_SECRET) == BETTER_CALL_TOKEN


@pytest.mark.parametrize(
    "value",
    [
        BETTER_CALL_VALUE.replace("EJbc", "EJbd"),  # signature tampered
        BETTER_CALL_VALUE.replace("tok_A", "tok_B"),  # token tampered
        sign_cookie_value(BETTER_CALL_TOKEN, "another-secret"),  # signed with another secret
        BETTER_CALL_TOKEN,  # unsigned
        BETTER_CALL_TOKEN + ".",
        "." + BETTER_CALL_VALUE,
        "%%%not-encoded%%%",
        "x" * 5000,
        "é.ü" * 20,
        "",
    ],
)
def test_tampered_cookie_values_are_rejected(value: str) -> None:
    """Any change to the token, the signature or the secret makes the cookie worthless."""
    assert unsign_cookie_value(value, BETTER_CALL_SECRET) is None


def test_cookie_policy_development_and_production() -> None:
    """Development: plain name, SameSite=Lax, HttpOnly. Production: __Secure-, Secure, SameSite=None."""
    dev, prod = CookiePolicy(secret="s" * 32, secure=False), CookiePolicy(secret="s" * 32, secure=True)
    response = Response()
    dev.set(response, "t" * 43)
    header = response.headers["set-cookie"]
    assert header.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in header
    assert "samesite=lax" in header.lower()
    assert "Secure" not in header
    assert "Max-Age=604800" in header
    response = Response()
    prod.set(response, "t" * 43, remember=False)
    header = response.headers["set-cookie"]
    assert header.startswith(f"{SECURE_COOKIE_NAME}=")
    assert "Secure" in header
    assert "HttpOnly" in header
    assert "samesite=none" in header.lower()
    assert "Max-Age" not in header
    response = Response()
    prod.clear(response)
    assert (
        response.headers["set-cookie"].startswith(f'{SECURE_COOKIE_NAME}=""')
        or "Max-Age=0" in (response.headers["set-cookie"])
    )
