"""Fixtures shared by every test: the fake OpenAI server, PostgreSQL and Redis, whole-stack runners."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis as redis_sync

from tests.fakes.openai_server import FakeOpenAI
from tests.utils.corpus import corpus_dir
from tests.utils.stack import Stack

PG_ADMIN_URL = os.environ.get("LECTERN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("LECTERN_TEST_REDIS", "redis://127.0.0.1:6379")


def pytest_configure(config: pytest.Config) -> None:
    """Fail the run at once, with the fix, when the real textbook is not where the tests expect it."""
    if not corpus_dir().is_dir():
        raise pytest.UsageError(
            f"The textbook corpus is not at {corpus_dir()} (../shared/corpus beside the repo). "
            "Set LECTERN_CORPUS_DIR to the physical-ai-textbook folder."
        )


def _service_missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI and is not reachable")
    pytest.skip(f"{what} not reachable")


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    """The OpenAI-compatible fake server for the whole session (reset it in tests that change it)."""
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[Callable[[], str]]:
    """Creates fresh PostgreSQL databases on the machine's server; drops them at the end."""
    created: list[str] = []
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        _service_missing("PostgreSQL at 127.0.0.1:5432")
        raise

    def create() -> str:
        name = f"lectern_test_{uuid.uuid4().hex[:10]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    for name in created:
        with contextlib.suppress(psycopg.Error):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def pg_url(pg_database_factory: Callable[[], str]) -> str:
    """A fresh, empty PostgreSQL database URL (postgresql://...)."""
    return pg_database_factory()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A URL to a flushed database of the machine's Redis (db 1..15 rotate per test)."""
    client = redis_sync.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis_sync.RedisError:
        _service_missing("Redis at 127.0.0.1:6379")
    db = 1 + (uuid.uuid4().int % 15)
    url = f"{REDIS_TEST_URL}/{db}"
    scoped = redis_sync.Redis.from_url(url)
    scoped.flushdb()
    yield url
    scoped.flushdb()
    scoped.close()
    client.close()


@pytest.fixture
def stack_factory() -> Iterator[Callable[..., Stack]]:
    """Start whole stacks (`scripts/start` under supervisord); all are stopped after the test."""
    stacks: list[Stack] = []

    def start(*, wait: bool = True, timeout: float = 90.0, **kwargs: Any) -> Stack:
        stack = Stack(**kwargs)
        stacks.append(stack)
        return stack.start(wait=wait, timeout=timeout)

    yield start
    for stack in stacks:
        stack.cleanup()
