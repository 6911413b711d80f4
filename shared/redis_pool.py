"""The Redis connection pool of every process: redis-py's, minus one lock held across an await.

redis-py 5.3 (the newest release arq accepts) takes a connection from its asyncio pool while holding the
pool's one `asyncio.Lock` through `ensure_connection`, whose `can_read_destructive` probe always waits
one event-loop iteration (a read under a zero timeout). So every Redis command of a process queues behind
the others, one loop iteration each (redis/redis-py#3692). In a burst of 50 chat streams that queue, not
Redis, was most of a question's time: the store RPC's push took 30-80 ms to leave the API process.

`ConcurrentConnectionPool` takes the connection under the lock, which `disconnect()` still excludes,
and runs the same check outside it, as redis-py's own `BlockingConnectionPool` of that release does.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

__all__ = ["ConcurrentConnectionPool", "adopt_concurrent_pool"]


class ConcurrentConnectionPool(ConnectionPool):
    """`ConnectionPool` whose connection check does not hold the pool's lock."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> AbstractConnection:
        """A connected connection from the pool (a new one when none is idle)."""
        # (types-redis 4.6 predates these redis 5 members, hence the ignores.)
        async with self._lock:  # type: ignore[attr-defined]
            connection: AbstractConnection = self.get_available_connection()  # type: ignore[attr-defined]
        try:
            await self.ensure_connection(connection)  # type: ignore[attr-defined]
        except BaseException:
            await self.release(connection)
            raise
        return connection


async def adopt_concurrent_pool(redis: Redis) -> None:
    """Give `redis` a `ConcurrentConnectionPool` with its pool's settings, and close the old pool.

    For clients built by a factory that does not take a pool (arq's `create_pool`); the client closes the
    new pool on `aclose()` as it would have closed its own.
    """
    old = redis.connection_pool
    if isinstance(old, ConcurrentConnectionPool):
        return
    redis.connection_pool = ConcurrentConnectionPool(
        connection_class=old.connection_class, max_connections=old.max_connections, **old.connection_kwargs
    )
    await old.disconnect()
