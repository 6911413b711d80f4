"""The upstreams Lectern depends on, and how their errors are classified (caller, credentials, transient)."""

from __future__ import annotations

import asyncio
import re
from enum import StrEnum

from shared.platform.errors import LecternError, UpstreamMisconfigured


class Upstream(StrEnum):
    """The external services the breakers guard."""

    OPENAI = "openai"
    QDRANT = "qdrant"
    DATABASE = "database"


#: The variable an operator fixes when an upstream rejects our credentials.
CREDENTIAL_VARIABLE = {
    Upstream.OPENAI: "OPENAI_API_KEY",
    Upstream.QDRANT: "QDRANT_API_KEY",
    Upstream.DATABASE: "DATABASE_URL",
}

FRIENDLY_NAME = {
    Upstream.OPENAI: "The language model service",
    Upstream.QDRANT: "The search index",
    Upstream.DATABASE: "The database",
}


class ErrorKind(StrEnum):
    """How an upstream error is treated."""

    CALLER = "caller"
    CREDENTIALS = "credentials"
    TRANSIENT = "transient"


def _status_of(exc: BaseException) -> int | None:
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def retry_after_of(exc: BaseException | None) -> float | None:
    """Seconds from a `Retry-After` (or `retry-after-ms`) header on the error's response, if any."""
    if exc is None:
        return None
    explicit = getattr(exc, "retry_after", None)
    if isinstance(explicit, int | float):
        return float(explicit)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000.0
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        return None
    return None


#: PostgreSQL connection errors that mean DATABASE_URL is wrong (credentials, role, database, pg_hba).
_DB_CONFIG_MARKERS = (
    "authentication failed",
    "password authentication",
    "no password supplied",
    "no pg_hba.conf entry",
    "permission denied for database",
)


#: `role "x" does not exist` / `database "x" does not exist` (not `relation ... does not exist`).
_DB_MISSING = re.compile(r'\b(role|database) "[^"]*" does not exist')


def classify_error(upstream: Upstream, exc: BaseException) -> ErrorKind:
    """Decide whether an upstream error is the caller's fault, a credential problem or transient."""
    if isinstance(exc, UpstreamMisconfigured):
        return ErrorKind.CREDENTIALS
    if isinstance(exc, LecternError):
        return ErrorKind.CALLER  # our own domain error (e.g. a nested breaker's 503): already accounted for
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | ConnectionError | OSError):
        return ErrorKind.TRANSIENT
    status = _status_of(exc)
    if upstream is Upstream.DATABASE:
        text = str(exc).lower()
        if any(marker in text for marker in _DB_CONFIG_MARKERS) or _DB_MISSING.search(text):
            return ErrorKind.CREDENTIALS
        name = type(exc).__name__
        # (psycopg's ConnectionTimeout: a connect that did not finish within connect_timeout)
        if name in {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError", "ConnectionTimeout"}:
            return ErrorKind.TRANSIENT
        if getattr(exc, "connection_invalidated", False):
            return ErrorKind.TRANSIENT
        return ErrorKind.CALLER
    if status is not None:
        if status in (401, 403):
            return ErrorKind.CREDENTIALS
        if status == 429 or status >= 500 or status == 408:
            return ErrorKind.TRANSIENT
        return ErrorKind.CALLER
    name = type(exc).__name__
    if name in {"APIConnectionError", "APITimeoutError", "ResponseHandlingException", "RpcError", "AioRpcError"}:
        return ErrorKind.TRANSIENT
    if upstream is Upstream.QDRANT:
        # qdrant-client wraps transport errors in several types; anything else from the store is an outage.
        return ErrorKind.TRANSIENT if not isinstance(exc, ValueError | TypeError | KeyError) else ErrorKind.CALLER
    return (
        ErrorKind.TRANSIENT
        if name.endswith(("ConnectError", "ReadTimeout", "RemoteProtocolError"))
        else ErrorKind.CALLER
    )


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of an error for /health/circuits (type and status only)."""
    status = _status_of(exc)
    name = type(exc).__name__
    if status is not None:
        return f"{name}: HTTP {status}"
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    # Connection errors can quote a DSN; never show anything that looks like credentials.
    if "@" in text or "password" in text.lower() or "key" in text.lower():
        text = ""
    return f"{name}: {text}" if text else name
