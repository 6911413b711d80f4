"""The async engine and session factory (one per process, built by `shared.platform.clients`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.platform.config import Settings
from shared.platform.resilience import Resilience
from shared.stores.db_resilience import connector, translate_errors

SessionFactory = async_sessionmaker[AsyncSession]


def create_engine(settings: Settings, resilience: Resilience | None = None) -> AsyncEngine:
    """Build the async engine: psycopg for PostgreSQL (pre-ping, recycle for Neon), aiosqlite for SQLite.

    With `resilience`, every PostgreSQL connect goes through the `database` breaker and connection-level
    errors become 503s (`shared.stores.db_resilience`).
    """
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_pre_ping=True, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    # Neon closes idle connections after a few minutes: recycle before that, and pre-ping at checkout.
    engine = create_async_engine(
        url,
        async_creator=connector(settings, resilience),
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_recycle=240,
        pool_timeout=10,
    )
    if resilience is not None:
        translate_errors(engine, resilience)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the API workers read while the arq worker writes; foreign keys for ON DELETE CASCADE.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    """A session factory whose sessions keep objects usable after commit."""
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def session_scope(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session that commits on success and rolls back on error."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
