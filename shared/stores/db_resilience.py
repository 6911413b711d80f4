"""The `database` breaker on the PostgreSQL engine (SQLite is a local file, not an upstream).

Most database work goes through SQLAlchemy sessions rather than `Resilience.call`, so the breaker sits
where every one of them must pass, the pool's connect (`create_async_engine(async_creator=...)`):

- `connector` opens each psycopg connection inside `resilience.call(Upstream.DATABASE, ...,
  retry=False)`: an open breaker refuses at once with `UpstreamUnavailable` (503 + Retry-After) and no
  connect attempt; a failed connect counts; a successful one (the half-open trial included) closes it; a
  rejected login becomes `UpstreamMisconfigured` naming `DATABASE_URL`. A server that died under open
  connections is counted at the next connect: `pool_pre_ping` finds the dead connection at checkout and
  the pool reconnects through the breaker.
- `translate_errors` (`handle_error`) only translates, never counts: a connection-level failure of a
  statement becomes `UpstreamUnavailable` (503 instead of a 500), a rejected login
  `UpstreamMisconfigured`. Errors that are the query's fault (IntegrityError, ...) pass through, and a
  failed pre-ping is left to the pool (Neon closes idle connections; the pool simply reconnects).

A route's own `resilience.call(Upstream.DATABASE, fn)` may open a pool connection inside `fn`: that nested
call runs in the same asyncio task (SQLAlchemy awaits the creator from its greenlet on the caller's task),
so while the outer call holds the half-open trial the connect goes ahead as part of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.platform.config import Settings
from shared.platform.resilience import Resilience
from shared.platform.upstreams import ErrorKind, Upstream, classify_error

if TYPE_CHECKING:
    import psycopg

__all__ = ["KEEPALIVES", "connector", "conninfo", "translate_errors"]

#: libpq client-side keepalives, so a silently dead server is noticed (safe behind connection poolers,
#: unlike server `options`).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
#: A connect that hangs must fail (and count) well within a request's deadline.
CONNECT_TIMEOUT_S = 5


def conninfo(settings: Settings) -> str:
    """libpq connection string for the configured PostgreSQL URL, read the way SQLAlchemy's psycopg dialect
    reads it (its query parameters win over our defaults)."""
    # psycopg is imported only for PostgreSQL: SQLite deployments never load it (~10 MB in each process).
    from psycopg.conninfo import make_conninfo

    url = make_url(settings.sqlalchemy_url)
    params: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, **KEEPALIVES, **url.query}
    params.update(url.translate_connect_args(username="user", database="dbname"))
    return make_conninfo("", **params)


def connector(settings: Settings, resilience: Resilience | None) -> Callable[[], Awaitable[Any]]:
    """The engine's `async_creator`: a psycopg `AsyncConnection`, behind the breaker when given one."""
    import psycopg  # PostgreSQL only, as in `conninfo`

    info = conninfo(settings)

    async def connect() -> psycopg.AsyncConnection[Any]:
        if resilience is None:
            return await psycopg.AsyncConnection.connect(info)
        return await resilience.call(Upstream.DATABASE, lambda: psycopg.AsyncConnection.connect(info), retry=False)

    return connect


def translate_errors(engine: AsyncEngine, resilience: Resilience) -> None:
    """Raise a statement's connection-level failure as 503 and a rejected login as a misconfiguration."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _translate(context: ExceptionContext) -> BaseException | None:
        original = context.original_exception
        if context.is_pre_ping:
            return None
        kind = classify_error(Upstream.DATABASE, original)
        if kind is ErrorKind.CREDENTIALS:
            return resilience.mark_misconfigured(Upstream.DATABASE)
        if kind is ErrorKind.TRANSIENT or context.is_disconnect:
            return resilience.unavailable(Upstream.DATABASE)
        return None
