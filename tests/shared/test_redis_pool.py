"""`shared.redis_pool` against the machine's Redis: concurrent commands do not queue behind each other's
connection check, and the services' client uses the pool with its settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import ConnectionPool

from shared.clients import build_services
from shared.config import Settings
from shared.constants import ROLE_API
from shared.redis_pool import ConcurrentConnectionPool, adopt_concurrent_pool

COMMANDS = 24


def _counting(pool_class: type[ConnectionPool]) -> type[ConnectionPool]:
    """`pool_class` that records how many connection checks were in progress at once."""

    class Counting(pool_class):  # type: ignore[valid-type,misc]
        active = 0
        peak = 0

        async def ensure_connection(self, connection: Any) -> None:
            type(self).active += 1
            type(self).peak = max(type(self).peak, type(self).active)
            try:
                await super().ensure_connection(connection)
            finally:
                type(self).active -= 1

    return Counting


async def _peak_checks_for_concurrent_pings(pool_class: type[ConnectionPool], url: str) -> int:
    """The most connection checks in progress at once while `COMMANDS` PINGs run concurrently."""
    counting = _counting(pool_class)
    pool = counting.from_url(url)
    client = Redis(connection_pool=pool)
    try:
        assert all(await asyncio.gather(*(client.ping() for _ in range(COMMANDS))))
        return int(counting.peak)  # type: ignore[attr-defined]
    finally:
        await client.aclose()  # type: ignore[attr-defined]  # types-redis 4.6 predates aclose
        await pool.disconnect()


async def test_concurrent_commands_do_not_wait_for_each_others_connection_check(redis_url: str) -> None:
    """redis-py's own pool holds its lock across each check (which always waits a loop iteration): one
    check at a time, so concurrent commands leave one per iteration. Ours runs the checks side by side."""
    assert await _peak_checks_for_concurrent_pings(ConnectionPool, redis_url) == 1
    assert await _peak_checks_for_concurrent_pings(ConcurrentConnectionPool, redis_url) == COMMANDS


async def test_a_connection_the_server_closed_is_replaced_before_use(redis_url: str) -> None:
    """The check still runs: an idle connection that Redis dropped (CLIENT KILL) is reconnected, and the
    command succeeds on the first try without a retry policy."""
    pool = ConcurrentConnectionPool.from_url(redis_url)
    client = Redis(connection_pool=pool)
    admin = Redis.from_url(redis_url)
    try:
        assert await client.set("lectern:pool-probe", "1")
        client_id = await client.client_id()
        assert await admin.client_kill_filter(_id=client_id) == 1
        await asyncio.sleep(0.05)
        assert await client.get("lectern:pool-probe") == b"1"
        assert await client.client_id() != client_id
    finally:
        await client.delete("lectern:pool-probe")
        await client.aclose()  # type: ignore[attr-defined]  # types-redis 4.6 predates aclose
        await admin.aclose()  # type: ignore[attr-defined]


async def test_services_use_the_concurrent_pool_with_their_settings(redis_url: str, tmp_path: Path) -> None:
    """`build_services` adopts the pool for arq's client, keeping its URL, database and retry settings."""
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=redis_url)
    services = await build_services(settings, role=ROLE_API)
    try:
        pool = services.redis.connection_pool
        assert isinstance(pool, ConcurrentConnectionPool)
        assert pool.connection_kwargs["db"] == int(redis_url.rsplit("/", 1)[1])
        assert pool.connection_kwargs["retry"] is not None
        assert await services.redis.ping()
        await adopt_concurrent_pool(services.redis)  # a second adoption keeps the pool it has
        assert services.redis.connection_pool is pool
    finally:
        await services.aclose()
