"""Auth primitives: scrypt password hashes, opaque session tokens, better-auth cookie signatures.

Pure functions (no I/O). The session lifecycle lives in `shared.accounts.sessions`, users and profiles in
`shared.accounts.users`.

- Passwords: `hashlib.scrypt` (n=2**14, r=8, p=1, 32-byte key, 16-byte per-user salt), stored as
  `scrypt$<n>$<r>$<p>$<salt b64>$<key b64>` so the cost can be raised later without breaking old hashes.
  Hashing takes ~30 ms of CPU: callers on the event loop use the `*_async` variants (a thread).
- Tokens: `secrets.token_urlsafe(32)` (256 bits); only `sha256(token)` is stored.
- Cookies: better-auth's (better-call's) signed-cookie format, `encodeURIComponent(token + "." +
  base64(HMAC-SHA256(secret, token)))`, so a cookie set here verifies there and vice versa.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = [
    "SCRYPT_PARAMS",
    "ScryptParams",
    "hash_password",
    "hash_password_async",
    "hash_token",
    "looks_like_token",
    "new_token",
    "sign_cookie_value",
    "unsign_cookie_value",
    "verify_password",
    "verify_password_async",
]

TOKEN_BYTES = 32
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_SALT_BYTES = 16


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost parameters (memory = 128 * n * r bytes: 16 MiB for the defaults)."""

    n: int = 2**14
    r: int = 8
    p: int = 1
    dklen: int = 32

    @property
    def maxmem(self) -> int:
        """The memory bound hashlib needs for these parameters (with headroom)."""
        return 128 * self.n * self.r * self.p + 1024 * 1024 * 2


SCRYPT_PARAMS = ScryptParams()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        dklen=params.dklen,
        maxmem=params.maxmem,
    )


def hash_password(password: str, *, params: ScryptParams = SCRYPT_PARAMS) -> str:
    """Hash a password with scrypt and a fresh random salt (CPU-heavy: use `hash_password_async` on a loop)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _derive(password, salt, params)
    return f"scrypt${params.n}${params.r}${params.p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Check a password against a stored hash in constant time.

    `stored=None` (unknown email) checks against a dummy hash so the time spent matches a real check.
    """
    target = stored if stored is not None else _dummy_hash()
    try:
        scheme, n, r, p, salt_b64, key_b64 = target.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key_b64, validate=True)
        params = ScryptParams(n=int(n), r=int(r), p=int(p), dklen=len(expected))
        actual = _derive(password, base64.b64decode(salt_b64, validate=True), params)
    except (ValueError, TypeError):
        return False
    matched = hmac.compare_digest(actual, expected)
    return matched and stored is not None


def _dummy_hash() -> str:
    # Same parameters as real hashes, so checking it costs one real scrypt; nothing can match it because
    # verify_password returns False for stored=None whatever the comparison says.
    p = SCRYPT_PARAMS
    return f"scrypt${p.n}${p.r}${p.p}${_b64(bytes(_SALT_BYTES))}${_b64(bytes(p.dklen))}"


async def hash_password_async(password: str) -> str:
    """`hash_password` in a worker thread, so the event loop keeps serving other requests."""
    return await asyncio.to_thread(hash_password, password)


async def verify_password_async(password: str, stored: str | None) -> bool:
    """`verify_password` in a worker thread."""
    return await asyncio.to_thread(verify_password, password, stored)


def new_token() -> str:
    """A new opaque session token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256 (tokens carry 256 bits of entropy, so no salt is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_token(value: str) -> bool:
    """Cheap shape check that lets obviously forged values skip the cache and the database."""
    return bool(_TOKEN_SHAPE.match(value))


def _signature(value: str, secret: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).digest()
    return _b64(digest)


def sign_cookie_value(token: str, secret: str) -> str:
    """The cookie value better-auth would set: URL-encoded `<token>.<base64 HMAC-SHA256>`."""
    return quote(f"{token}.{_signature(token, secret)}", safe="")


def unsign_cookie_value(raw: str, secret: str) -> str | None:
    """The token inside a signed cookie value, or None when the value is malformed or the signature is wrong."""
    value = unquote(raw.strip().strip('"'))
    cut = value.rfind(".")
    if cut < 1:
        return None
    token, signature = value[:cut], value[cut + 1 :]
    # better-call's check: a base64 SHA-256 MAC is 44 characters ending in '='.
    if len(signature) != 44 or not signature.endswith("="):
        return None
    if not hmac.compare_digest(signature.encode("ascii", "replace"), _signature(token, secret).encode("ascii")):
        return None
    return token
