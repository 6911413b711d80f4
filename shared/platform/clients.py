"""Factories for every external client, and `Services`: the bundle one process builds once.

The API builds `Services` in its lifespan, the arq worker in `on_startup(ctx)`, the CLI in `main`;
all through `build_services(settings, role=...)`, so each client is built one way only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
from arq.connections import ArqRedis, RedisSettings, create_pool
from openai import AsyncOpenAI, DefaultAioHttpClient
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.inference.embeddings import DenseEmbedder, create_embedder
from shared.inference.semantic import LocalEmbedder
from shared.platform.circuit_state import start_process_observers
from shared.platform.config import Settings, redact_url
from shared.platform.constants import EMBEDDED_STORE_CONCURRENCY, QUEUE_NAME, ROLE_API
from shared.platform.logging import get_logger
from shared.platform.resilience import Resilience
from shared.stores.db.engine import SessionFactory, create_engine, create_session_factory
from shared.stores.vectorstore import VectorStore, create_vector_store

log = get_logger(__name__)


def redis_settings(settings: Settings) -> RedisSettings:
    """arq/redis connection settings for REDIS_URL or the embedded Redis unix socket."""
    url = settings.effective_redis_url
    if url.startswith("unix://"):
        parts = urlsplit(url)
        rs = RedisSettings(unix_socket_path=parts.path, conn_timeout=2, conn_retries=10, conn_retry_delay=1)
    else:
        rs = RedisSettings.from_dsn(url)
        rs.conn_timeout = 2
        rs.conn_retries = 10
    # Ride out a Redis restart (~1-2 s under supervisord) instead of failing every command meanwhile:
    # each command is retried on a connection error for up to ~5 s (then the error surfaces).
    rs.retry = RedisRetry(ExponentialBackoff(cap=1.0, base=0.1), 8)
    rs.retry_on_error = [RedisConnectionError, RedisTimeoutError]
    return rs


async def create_redis(settings: Settings) -> ArqRedis:
    """The Redis connection pool (an `ArqRedis`, usable for caches and for enqueueing jobs), connected by
    arq with retries."""
    return await create_pool(redis_settings(settings), default_queue_name=QUEUE_NAME)


#: How long an idle connection to OpenAI stays open for the next request. The default of `httpx2.Limits`
#: (5 s, which the aiohttp transport would use too) would make every question after a short lull pay a
#: new TCP + TLS handshake (1-2 round trips and ~1 ms of CPU each, for the query embedding and again for
#: the stream); a connection the server has closed meanwhile is noticed before reuse, and a rare race is
#: retried like any dropped connection.
OPENAI_KEEPALIVE_S = 60.0


def create_openai_client(settings: Settings) -> AsyncOpenAI | None:
    """The shared OpenAI client, or None in offline mode. Retries are ours (`shared.platform.resilience`).

    Its HTTP transport is aiohttp (the SDK's `DefaultAioHttpClient`, the `openai[aiohttp]` extra) rather
    than httpx's own: the same requests, responses and SDK errors, at about half the CPU per request and
    per streamed token (measured: 50 chats of a query embedding plus a 60-token stream, 0.32 vs 0.62 s).
    """
    if settings.openai_api_key is None:
        return None
    timeout = httpx2.Timeout(settings.openai_timeout_s, connect=5.0)
    return AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout=timeout,
        max_retries=0,
        http_client=DefaultAioHttpClient(
            timeout=timeout,
            # The aiohttp transport reads two of these: the connection limit and the keep-alive time.
            limits=httpx2.Limits(max_connections=200, keepalive_expiry=OPENAI_KEEPALIVE_S),
        ),
    )


def describe_upstreams(settings: Settings) -> dict[str, dict[str, str]]:
    """Host and mode of each upstream, for the startup log (never credentials)."""
    db_url = settings.sqlalchemy_url
    db_host = "sqlite" if settings.uses_sqlite else (urlsplit(db_url).hostname or "?")
    return {
        "database": {"mode": "sqlite" if settings.uses_sqlite else "postgresql", "host": db_host},
        "vector_store": {
            "mode": "local" if settings.embedded_qdrant else "server",
            "host": (urlsplit(settings.qdrant_url).hostname or "?")
            if settings.qdrant_url
            else str(settings.qdrant_path),
        },
        "redis": {
            "mode": "embedded" if settings.embedded_redis else "external",
            "host": str(settings.redis_socket_path)
            if settings.embedded_redis
            else (urlsplit(settings.effective_redis_url).hostname or "?"),
        },
        "llm": {
            "mode": "offline" if settings.offline else "openai",
            "host": urlsplit(settings.openai_base_url or "https://api.openai.com/v1").hostname or "?",
        },
        "database_url": {"mode": "redacted", "host": redact_url(db_url)},
    }


@dataclass
class Services:
    """Everything a process talks to, built once and closed once."""

    settings: Settings
    role: str
    engine: AsyncEngine
    sessions: SessionFactory
    redis: ArqRedis
    openai: AsyncOpenAI | None
    resilience: Resilience
    vectorstore: VectorStore | None = None
    embedder: DenseEmbedder | None = None
    #: The bundled semantic model: the relevance gate's signal and the heading similarity, in every mode.
    semantic: LocalEmbedder = field(default_factory=LocalEmbedder)
    extras: dict[str, Any] = field(default_factory=dict)

    async def aclose(self) -> None:
        """Close every client (errors are logged, never raised: shutdown must finish)."""
        closers: list[Any] = []
        if (observers := self.extras.pop("observers", None)) is not None:
            closers.append(observers.aclose())  # shared.platform.circuit_state: leave the shared view first
        if self.vectorstore is not None:
            closers.append(self.vectorstore.close())
        if self.openai is not None:
            closers.append(self.openai.close())
        closers.append(self.redis.aclose())  # type: ignore[attr-defined]  # arq types Redis[bytes] from old stubs
        closers.append(self.engine.dispose())
        for closer in closers:
            try:
                await closer
            except Exception as exc:  # pragma: no cover - best effort on shutdown
                log.warning("services.close_failed", error=type(exc).__name__)


async def open_redis_connections(redis: ArqRedis, count: int) -> None:
    """Open `count` pooled connections now, so a first burst of readers does not open them one by one
    in the middle of its requests (each embedded-store query waits for its reply on a connection of its
    own). If Redis is not reachable yet, the pool opens them on demand as before."""
    pool = redis.connection_pool
    results = await asyncio.gather(*(pool.get_connection() for _ in range(count)), return_exceptions=True)
    failed = 0
    for result in results:
        if isinstance(result, BaseException):
            failed += 1
        else:
            await pool.release(result)
    if failed:
        log.warning("redis.connections_not_opened", failed=failed, of=count)


async def build_services(settings: Settings, *, role: str, resilience: Resilience | None = None) -> Services:
    """Build the process's clients. Nothing connects eagerly except the Redis pool."""
    resilience = resilience or Resilience(settings)
    engine = create_engine(settings, resilience)
    services = Services(
        settings=settings,
        role=role,
        engine=engine,
        sessions=create_session_factory(engine),
        redis=await create_redis(settings),
        openai=create_openai_client(settings),
        resilience=resilience,
    )
    # Embedded mode: the worker opens the local Qdrant folder, every other role reaches it over Redis.
    services.vectorstore = create_vector_store(
        settings, role=role, redis=services.redis, resilience=services.resilience
    )
    services.embedder = create_embedder(settings, services.openai, services.resilience, interactive=role == ROLE_API)
    if role == ROLE_API and settings.embedded_qdrant:
        await open_redis_connections(services.redis, EMBEDDED_STORE_CONCURRENCY)
    services.extras["observers"] = start_process_observers(services)
    # scripts/preflight.py logs the one `startup.upstream` event per upstream (with its status); each
    # process only notes what it uses, at debug level, so the start-up log stays one line per upstream.
    for name, info in describe_upstreams(settings).items():
        if name != "database_url":
            log.debug("process.upstream", upstream=name, role=role, **info)
    return services
