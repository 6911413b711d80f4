"""Apply Alembic migrations: `python -m shared.stores.db.migrate` (run once per container by scripts/start,
before the programs).

Several containers may start at once against one PostgreSQL database (API and worker replicas). Each
holds a transaction-level advisory lock (`pg_advisory_xact_lock`) on a connection of its own while
Alembic runs, so the upgrades are serialised: the first container applies the revisions, the others
wait for its commit and then find the database at head (nothing to do). A transaction-level lock also
holds through a transaction-pooling PgBouncer (Neon's `-pooler` host), where a session lock would not,
and is released by the server if the container dies mid-way.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, NullPool, text
from sqlalchemy import create_engine as create_sync_engine

from shared.platform.config import ConfigError, Settings, load_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: The advisory-lock key (a signed 64-bit number derived from a fixed name, so every version agrees).
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.blake2b(b"lectern:migrations", digest_size=8).digest(), "big", signed=True)
#: How long a container waits for another one's migrations before giving up (exit 3 in the preflight).
LOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class MigrationOutcome:
    """The revision before and after; `applied` is False when another container had already done it."""

    before: str | None
    after: str | None

    @property
    def applied(self) -> bool:
        """True when this call changed the schema."""
        return self.before != self.after


def alembic_config(settings: Settings) -> Config:
    """An Alembic config pointing at this package's migrations and the configured database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["settings"] = settings
    return config


def _revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(settings: Settings, revision: str = "head") -> MigrationOutcome:
    """Migrate the database to `revision`; on PostgreSQL under the advisory lock (one container at a time)."""
    config = alembic_config(settings)
    if settings.uses_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        command.upgrade(config, revision)
        return MigrationOutcome(before=None, after=revision)
    # psycopg's dialect is sync and async alike: the same URL, a plain connection for the lock.
    engine = create_sync_engine(settings.sqlalchemy_url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as lock_conn, lock_conn.begin():
            lock_conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'"))
            lock_conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            before = _revision(lock_conn)
            command.upgrade(config, revision)  # Alembic's own connection; committed before the lock is released
            after = _revision(lock_conn)  # READ COMMITTED: this statement sees Alembic's commit
        return MigrationOutcome(before=before, after=after)
    finally:
        engine.dispose()


def main() -> int:
    """CLI entry point."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    upgrade(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
