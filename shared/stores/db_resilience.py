"""The `database` breaker, applied to every PostgreSQL connection and statement of the engine.

Most database work goes through SQLAlchemy sessions rather than `Resilience.call`, so the breaker is
wired into the engine's events instead (PostgreSQL only: SQLite is a local file, not an upstream):

- `do_connect`: refuse at once with `UpstreamUnavailable` (503 + Retry-After) while the breaker is
  open; also sets libpq TCP keepalives so a silently dead server is noticed.
- `handle_error`: a connection-level failure (OperationalError, InterfaceError, disconnect) counts
  against the breaker and is re-raised as `UpstreamUnavailable`; an authentication failure becomes
  `UpstreamMisconfigured` naming `DATABASE_URL` without counting. Errors that are the query's fault
  (IntegrityError, ...) pass through untouched. A failed pool pre-ping is not counted (the pool simply
  reconnects: Neon closes idle connections).
- `after_cursor_execute`: a statement that completed closes a half-open breaker.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.platform.config import Settings
from shared.platform.resilience import Resilience
from shared.platform.upstreams import ErrorKind, Upstream, classify_error

__all__ = ["attach_database_breaker"]

_ATTACHED = "_lectern_breaker_attached"

#: libpq client-side keepalives (safe behind connection poolers, unlike server `options`).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def attach_database_breaker(engine: AsyncEngine, resilience: Resilience, *, settings: Settings) -> bool:
    """Install the breaker hooks on a PostgreSQL engine (once); False for SQLite."""
    if settings.uses_sqlite or getattr(engine.sync_engine, _ATTACHED, False):
        return False
    sync_engine = engine.sync_engine
    breaker = resilience.breaker(Upstream.DATABASE)

    @event.listens_for(sync_engine, "do_connect")
    def _before_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        resilience.ensure_available(Upstream.DATABASE)
        for key, value in KEEPALIVES.items():
            cparams.setdefault(key, value)

    @event.listens_for(sync_engine, "handle_error")
    def _on_error(context: Any) -> BaseException | None:
        if context.is_pre_ping:
            return None
        original = context.original_exception
        if original is None:
            return None
        kind = classify_error(Upstream.DATABASE, original)
        if kind is ErrorKind.CREDENTIALS:
            resilience.release_trial(Upstream.DATABASE)
            return resilience.mark_misconfigured(Upstream.DATABASE)
        if kind is ErrorKind.TRANSIENT:
            return resilience.record_failure(Upstream.DATABASE, original)
        if getattr(context, "is_disconnect", False):
            return resilience.record_failure(Upstream.DATABASE, _AsTransient(original))
        return None

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _on_success(*_args: Any) -> None:
        if not breaker.is_clean() or Upstream.DATABASE in resilience.misconfigured:
            resilience.record_success(Upstream.DATABASE)

    setattr(sync_engine, _ATTACHED, True)
    return True


class _AsTransient(ConnectionError):
    """A database error that the engine judged a disconnect; counted as transient by the breaker."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original).splitlines()[0][:200] if str(original) else type(original).__name__)
        self.original = original

    def __str__(self) -> str:
        return f"{type(self.original).__name__}"
