"""What `scripts/start` decides before any program runs, for scale-out (issue 21): the roles -> programs table
agrees with supervisord.conf, each role combination is valid or refused with one clear line and exit 2 (at
once, before supervisord), and migrations started by several containers at once are applied exactly once.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.platform.config import Settings
from shared.platform.roles import PROGRAM_ROLES, autostart, autostart_variable, refusal
from shared.stores.db.migrate import MIGRATION_LOCK_KEY
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.scaleout import Container, base_env, scratch_redis_db
from tests.utils.stack import REPO, wait_for

REDIS = "redis://127.0.0.1:6379/5"
PG = "postgresql://postgres@127.0.0.1:5432/x"
QDRANT = "http://127.0.0.1:6333"


def settings(**values: Any) -> Settings:
    """Settings as a container with these variables would load them."""
    return Settings(_env_file=None, **values)


# -- the table and the defaults (no stack) ----------------------------------------------------------------
def test_program_roles_table_matches_supervisord_conf() -> None:
    """Every supervisord program but `migrate` has its autostart from LECTERN_AUTOSTART_<NAME> and a row in
    PROGRAM_ROLES, and every row is a program: adding a program means one line in each."""
    parser = configparser.RawConfigParser()
    parser.read(REPO / "supervisord.conf")
    programs = {
        section.split(":", 1)[1]: parser.get(section, "autostart")
        for section in parser.sections()
        if section.startswith(("program:", "eventlistener:"))
    }
    programs.pop("migrate")
    assert set(programs) == set(PROGRAM_ROLES)
    for program, value in programs.items():
        assert value == f"%(ENV_{autostart_variable(program)})s", program


def test_default_roles_are_the_single_container_of_today() -> None:
    """Unset (or `all`): every program starts; the embedded Redis only without REDIS_URL, the store only
    without QDRANT_URL."""
    assert settings().roles == {"api", "worker", "store", "redis", "watchdog"}
    assert autostart(settings()) == dict.fromkeys(PROGRAM_ROLES, True)
    assert settings(lectern_roles="all").roles == settings().roles
    shared = settings(redis_url=REDIS, database_url=PG, qdrant_url=QDRANT)
    assert shared.roles == {"api", "worker", "watchdog"}
    assert autostart(shared) == {"redis": False, "api": True, "worker": True, "watchdog": True}
    assert autostart(settings(lectern_roles="store", redis_url=REDIS, database_url=PG)) == {
        "redis": False,
        "api": False,
        "worker": True,  # the worker process serves the store (and runs no jobs)
        "watchdog": False,
    }
    assert settings(lectern_roles=" API , Worker ").roles == {"api", "worker"}


VALID = [
    {},
    {"redis_url": REDIS},
    {"lectern_roles": "api", "redis_url": REDIS, "database_url": PG, "qdrant_url": QDRANT},
    {"lectern_roles": "worker,watchdog", "redis_url": REDIS, "database_url": PG, "qdrant_url": QDRANT},
    {"lectern_roles": "api", "redis_url": REDIS, "database_url": PG},  # reaches a `store` container
    {"lectern_roles": "worker,store,watchdog", "redis_url": REDIS, "database_url": PG},
    {"lectern_roles": "store", "redis_url": REDIS, "database_url": PG},
    {"lectern_roles": "api,worker,watchdog", "redis_url": REDIS, "database_url": PG, "qdrant_url": QDRANT},
]


@pytest.mark.parametrize("values", VALID)
def test_valid_combinations(values: dict[str, str]) -> None:
    """The single container, and the split roles on a shared Redis + PostgreSQL, are accepted."""
    assert refusal(settings(**values)) is None


REFUSED = [
    ({"lectern_roles": "api"}, "without REDIS_URL the embedded Redis is private to this container"),
    ({"lectern_roles": "api,worker,redis"}, "missing: store"),
    ({"lectern_roles": "api,redis", "redis_url": REDIS}, "'redis' starts the embedded Redis, but REDIS_URL is set"),
    ({"lectern_roles": "api", "redis_url": REDIS}, "set DATABASE_URL"),
    ({"lectern_roles": "store", "redis_url": REDIS, "database_url": PG, "qdrant_url": QDRANT}, "QDRANT_URL is set"),
    ({"lectern_roles": "api,watchdog", "redis_url": REDIS, "database_url": PG, "qdrant_url": QDRANT}, "add 'worker'"),
]


@pytest.mark.parametrize(("values", "reason"), REFUSED)
def test_refused_combinations(values: dict[str, str], reason: str) -> None:
    """Each refusal names LECTERN_ROLES and says what to change, in one line."""
    message = refusal(settings(**values))
    assert message is not None
    assert message.startswith("LECTERN_ROLES=")
    assert reason in message
    assert "\n" not in message


# -- migrations, three processes at once --------------------------------------------------------------------
MIGRATE_ONE = """
import sys
from shared.platform.config import Settings
from shared.stores.db.migrate import upgrade
try:
    print("applied" if upgrade(Settings(_env_file=None, database_url=sys.argv[1])).applied else "unchanged")
except Exception as exc:
    print("error", type(exc).__name__)
"""


def test_migrations_started_together_apply_once(pg_database_factory: Callable[[], str]) -> None:
    """Three processes migrate one empty database while the advisory lock is held elsewhere: all three wait
    (nothing is created); once it is released, one applies the migrations, two find them applied, none
    fails. (Without the lock, two of three such processes failed on each other's tables in manual runs.)"""
    database_url = pg_database_factory()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", MIGRATE_ONE, database_url],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(3)
        ]
        try:

            def waiting() -> bool:
                rows = holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchone()
                return bool(rows and rows[0] == 3)

            wait_for(waiting, timeout=60, interval=0.2, message="three migrations waiting for the lock")
            assert all(p.poll() is None for p in procs)
            tables = holder.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            assert tables.fetchone() == (0,)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        outcomes = sorted(p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs)
    assert outcomes == ["applied", "unchanged", "unchanged"]


# -- refusals through scripts/start ---------------------------------------------------------------------------
@pytest.fixture
def shared_backends(pg_database_factory: Callable[[], str]) -> Iterator[tuple[str, str]]:
    """(REDIS_URL, DATABASE_URL) of an empty Redis database and a fresh PostgreSQL database."""
    with scratch_redis_db() as redis_url:
        yield redis_url, pg_database_factory()


START_REFUSALS = [
    ("api", {"DROP": "REDIS_URL"}, "without REDIS_URL the embedded Redis is private"),
    ("api,redis", {}, "'redis' starts the embedded Redis, but REDIS_URL is set"),
    ("api", {"DROP": "DATABASE_URL"}, "set DATABASE_URL"),
    ("store", {"QDRANT_URL": QDRANT}, "'store' is the embedded Qdrant, but QDRANT_URL is set"),
    ("api,watchdog", {"QDRANT_URL": QDRANT}, "'watchdog' restarts this container's arq worker"),
    ("api", {"LECTERN_STORE_WAIT": "1"}, "no container serves the embedded vector store on this Redis"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("roles", "change", "reason"), START_REFUSALS)
def test_invalid_roles_exit_2_at_once(
    shared_backends: tuple[str, str], fake_openai: FakeOpenAI, roles: str, change: dict[str, str], reason: str
) -> None:
    """scripts/start with a combination that cannot work exits 2 within seconds, before supervisord, with
    one line on stderr that names LECTERN_ROLES and the fix (and no secret)."""
    redis_url, database_url = shared_backends
    env = base_env(redis_url, database_url, fake_openai)
    env.pop(change.pop("DROP", ""), None)
    env.update(change)
    container = Container(f"lectern-bad-{uuid.uuid4().hex[:4]}", roles, env=env)
    try:
        started = time.monotonic()
        container.start(wait=False)
        code = container.wait_exit(timeout=60)
        took = time.monotonic() - started
        assert code == 2, container.output_tail()
        refusals = [line for line in container.stderr_lines if line.startswith("lectern: ")]
        assert len(refusals) == 1, container.output_tail()
        assert refusals[0].startswith(f"lectern: LECTERN_ROLES={roles}: ")
        assert reason in refusals[0]
        assert env["OPENAI_API_KEY"] not in container.output()
        assert not (container.data_dir / "run" / "supervisord.pid").exists()
        assert "supervisord started" not in container.output()
        print(f"\n{roles}: exit 2 after {took:.1f} s: {refusals[0]}")
    finally:
        container.cleanup()


@pytest.mark.e2e
def test_unknown_role_is_a_configuration_error(fake_openai: FakeOpenAI) -> None:
    """An unknown role name stops the start with the configuration error naming LECTERN_ROLES and the
    accepted names."""
    container = Container("lectern-typo", "api,wroker", env={"REDIS_URL": REDIS})
    try:
        container.start(wait=False)
        assert container.wait_exit(timeout=60) == 2
        text = "\n".join(container.stderr_lines)
        assert "LECTERN_ROLES: expected 'all' or a comma-separated list of api, worker, store, redis, watchdog" in text
        assert not Path(container.data_dir / "run" / "supervisord.pid").exists()
    finally:
        container.cleanup()
