"""arq job functions and the worker's ingestion duties: thin wrappers over `shared.ingestion`.

Ingestion jobs run one at a time (a Redis lock, refreshed while held, taken over at once from a dead
worker or from an earlier run of the same job), so two jobs never interleave writes to one source.

Besides the `ingest_documents` job, the worker process:

- owns the embedded-mode Qdrant folder and serves it to the API processes (`VectorStoreRpcServer`);
- keeps a liveness key (`lectern:worker:alive:<id>`, 15 s TTL, refreshed every 5 s) and stamps each job
  it runs with its owner id; a sweep (at start and every 5 s) releases arq's in-progress marker of a job
  whose owner is dead, so a job of a SIGKILLed worker runs again within seconds instead of after arq's
  job timeout. (SIGTERM needs no help: arq cancels the job and puts it back on the queue.)
- in development, on the first start (no documents, no jobs), ingests `DOCS_DIR`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from typing import Any

from arq import Retry
from arq.constants import in_progress_key_prefix
from arq.cron import cron
from arq.worker import func
from sqlmodel import func as sql_func
from sqlmodel import select

import shared.sessions as sessions_service
from shared.clients import Services
from shared.config import Settings
from shared.constants import (
    INGEST_AUTO_LOCK_KEY,
    INGEST_LOCK_KEY,
    INGEST_OWNER_PREFIX,
    JOB_INGEST,
    WORKER_ALIVE_PREFIX,
)
from shared.db.models import Document, IngestJob
from shared.errors import UpstreamMisconfigured, UpstreamUnavailable
from shared.ingestion import (
    STATUS_FAILED,
    load_directory,
    mark_job,
    run_ingest_job,
    submit_ingest,
)
from shared.logging import bind_context, get_logger
from shared.vectorstore import CollectionMismatch, QdrantVectorStore, VectorStoreRpcServer

log = get_logger(__name__)

ALIVE_TTL_S = 15
HEARTBEAT_S = 5.0
SWEEP_S = 5.0
RETRY_DEFER_MAX_S = 120.0
LOCK_TTL_S = 30
LOCK_WAIT_S = 0.5

# Compare-and-set / compare-and-delete on the ingestion lock (value "<worker id>|<job id>").
_LOCK_SWAP = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return false
"""
_LOCK_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


async def ping(ctx: dict[str, Any]) -> str:
    """A no-op job used to check the queue round trip."""
    return "pong"


async def _owner_dead(services: Services, owner: str) -> bool:
    alive = await services.redis.exists(WORKER_ALIVE_PREFIX + owner)
    return not alive or _pid_dead_here(owner)


async def acquire_ingest_lock(*, services: Services, worker_id: str, job_id: str) -> str:
    """Wait for the ingestion lock: one job at a time, so two jobs never interleave writes to a source.

    A lock held by this same job (a re-run after a crash) or by a dead worker is taken over at once;
    otherwise the lock's TTL (refreshed while the holder runs) bounds the wait after a crash.
    """
    redis = services.redis
    token = f"{worker_id}|{job_id}"
    while True:
        if await redis.set(INGEST_LOCK_KEY, token, nx=True, ex=LOCK_TTL_S):
            return token
        raw = await redis.get(INGEST_LOCK_KEY)
        if raw is not None:
            holder = raw.decode() if isinstance(raw, bytes) else str(raw)
            holder_worker, _, holder_job = holder.rpartition("|")
            if (holder_job == job_id or await _owner_dead(services, holder_worker)) and await redis.eval(
                _LOCK_SWAP, 1, INGEST_LOCK_KEY, holder, token, LOCK_TTL_S
            ):
                log.warning("ingest.lock_taken_over", job_id=job_id, previous=holder)
                return token
        await asyncio.sleep(LOCK_WAIT_S)


async def _keep_lock(services: Services, token: str) -> None:
    while True:
        await asyncio.sleep(LOCK_TTL_S / 3)
        with contextlib.suppress(Exception):
            await services.redis.eval(_LOCK_SWAP, 1, INGEST_LOCK_KEY, token, token, LOCK_TTL_S)


async def ingest_documents(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Run one ingestion job (see `shared.ingestion.run_ingest_job`).

    Hung past INGEST_JOB_TIMEOUT: the job is failed with a clear error. OpenAI or Qdrant unavailable
    (open breaker, retries exhausted): `arq.Retry` after the breaker's Retry-After, continuing from the
    checkpoint; on the last allowed try the job is failed instead. The tries are counted here, not by
    arq (whose own limit is set out of reach): arq would drop an exhausted job without calling us, and
    its row would stay `running` forever (e.g. a worker killed during every try).
    """
    services: Services = ctx["services"]
    settings = services.settings
    bind_context(job_id=job_id)
    redis = services.redis
    job_try = int(ctx.get("job_try", 1))
    if job_try > settings.ingest_max_tries:
        message = (
            f"Gave up after {settings.ingest_max_tries} tries (INGEST_MAX_TRIES): the job was interrupted "
            "every time. Documents already done are kept; submit the documents again to finish."
        )
        await mark_job(
            sessions=services.sessions, job_id=job_id, status=STATUS_FAILED, error={"source": "", "message": message}
        )
        log.error("ingest.job_gave_up", job_id=job_id, tries=job_try - 1)
        return {"status": STATUS_FAILED, "error": "max_tries"}
    await redis.set(INGEST_OWNER_PREFIX + job_id, ctx["worker_id"], ex=int(settings.ingest_job_timeout) + 120)
    assert services.vectorstore is not None
    token = ""
    keeper: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(settings.ingest_job_timeout):
            token = await acquire_ingest_lock(services=services, worker_id=ctx["worker_id"], job_id=job_id)
            keeper = asyncio.create_task(_keep_lock(services, token), name="ingest-lock")
            outcome = await run_ingest_job(
                settings=settings,
                sessions=services.sessions,
                store=services.vectorstore,
                embedder=services.embedder,
                job_id=job_id,
            )
    except TimeoutError:
        message = (
            f"The job did not finish within INGEST_JOB_TIMEOUT={settings.ingest_job_timeout:g} s and was stopped; "
            "documents already done are kept. Submit the documents again to finish."
        )
        await mark_job(
            sessions=services.sessions,
            job_id=job_id,
            status=STATUS_FAILED,
            error={"source": "", "message": message},
        )
        log.error("ingest.job_timed_out", job_id=job_id, timeout_s=settings.ingest_job_timeout)
        return {"status": STATUS_FAILED, "error": "timeout"}
    except UpstreamMisconfigured as exc:
        await mark_job(
            sessions=services.sessions, job_id=job_id, status=STATUS_FAILED, error={"source": "", "message": exc.detail}
        )
        return {"status": STATUS_FAILED, "error": exc.code}
    except UpstreamUnavailable as exc:
        retry_after = float(exc.headers.get("Retry-After", 5) or 5)
        if job_try >= settings.ingest_max_tries:
            message = f"{exc.detail} Gave up after {settings.ingest_max_tries} tries."
            await mark_job(
                sessions=services.sessions,
                job_id=job_id,
                status=STATUS_FAILED,
                error={"source": "", "message": message},
            )
            return {"status": STATUS_FAILED, "error": exc.code}
        defer = min(max(retry_after, 1.0), RETRY_DEFER_MAX_S)
        log.warning("ingest.job_deferred", job_id=job_id, defer_s=defer, upstream=exc.extra.get("upstream"))
        raise Retry(defer=defer) from exc
    finally:
        if keeper is not None:
            keeper.cancel()
        with contextlib.suppress(Exception):
            await redis.delete(INGEST_OWNER_PREFIX + job_id)
            if token:
                await redis.eval(_LOCK_RELEASE, 1, INGEST_LOCK_KEY, token)
    return {"status": outcome.status, "documents": outcome.documents, "chunks_written": outcome.chunks_written}


#: arq's try limit for ingestion is out of reach on purpose: `ingest_documents` enforces INGEST_MAX_TRIES.
ARQ_MAX_TRIES_OUT_OF_REACH = 1_000_000


async def purge_expired_sessions(ctx: dict[str, Any]) -> int:
    """Cron: delete expired sign-in sessions so the table does not grow forever."""
    services: Services = ctx["services"]
    removed = await sessions_service.purge_expired_sessions(sessions=services.sessions)
    log.info("auth.expired_sessions_purged", sessions=removed)
    return removed


JOB_FUNCTIONS: list[Any] = [ping, func(ingest_documents, name=JOB_INGEST, max_tries=ARQ_MAX_TRIES_OUT_OF_REACH)]
#: Hourly maintenance (minute 17, off the hour's peak); arq runs a cron job once across workers.
CRON_JOBS: list[Any] = [cron(purge_expired_sessions, minute={17}, run_at_startup=True, unique=True)]


# ---------------------------------------------------------------------------------------------
# Worker start-up and shutdown duties
# ---------------------------------------------------------------------------------------------


def new_worker_id() -> str:
    """host:pid:nonce, unique per worker process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_dead_here(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def release_orphaned_jobs(*, services: Services, worker_id: str) -> list[str]:
    """Release arq's in-progress marker of ingest jobs whose owning worker is dead; returns their ids."""
    redis = services.redis
    released: list[str] = []
    async for key in redis.scan_iter(match=in_progress_key_prefix + "*", count=200):
        name = key.decode() if isinstance(key, bytes) else str(key)
        job_id = name.removeprefix(in_progress_key_prefix)
        owner_raw = await redis.get(INGEST_OWNER_PREFIX + job_id)
        if owner_raw is None:
            continue  # not ours, or between arq's claim and our stamp: leave it to arq's own expiry
        owner = owner_raw.decode() if isinstance(owner_raw, bytes) else str(owner_raw)
        if owner == worker_id:
            continue
        alive = await redis.exists(WORKER_ALIVE_PREFIX + owner)
        if alive and not _pid_dead_here(owner):
            continue
        await redis.delete(name, INGEST_OWNER_PREFIX + job_id)
        released.append(job_id)
        log.warning("ingest.job_recovered", job_id=job_id, dead_owner=owner)
    return released


async def _heartbeat_and_sweep(services: Services, worker_id: str) -> None:
    while True:
        try:
            await services.redis.set(WORKER_ALIVE_PREFIX + worker_id, "1", ex=ALIVE_TTL_S)
            await release_orphaned_jobs(services=services, worker_id=worker_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("worker.heartbeat_failed", error=type(exc).__name__)
        await asyncio.sleep(min(HEARTBEAT_S, SWEEP_S))


async def auto_ingest_sample_docs(*, services: Services) -> str | None:
    """In development, ingest DOCS_DIR once when the service has no documents and no jobs yet."""
    settings: Settings = services.settings
    if not settings.auto_ingest_sample_docs or not settings.docs_dir.is_dir():
        return None
    async with services.sessions() as session:
        documents = (await session.exec(select(sql_func.count()).select_from(Document))).one()
        jobs = (await session.exec(select(sql_func.count()).select_from(IngestJob))).one()
    if documents or jobs:
        return None
    if not await services.redis.set(INGEST_AUTO_LOCK_KEY, "1", nx=True, ex=300):
        return None
    docs = load_directory(settings.docs_dir)
    if not docs:
        return None
    job = await submit_ingest(sessions=services.sessions, redis=services.redis, documents=docs)
    log.info("ingest.auto_ingest_queued", job_id=job.id, documents=len(docs), docs_dir=str(settings.docs_dir))
    return job.id


async def on_worker_startup(ctx: dict[str, Any]) -> None:
    """Ingestion duties after `ctx["services"]` exists: store, RPC server, heartbeat, auto-ingest."""
    services: Services = ctx["services"]
    worker_id = ctx.setdefault("worker_id", new_worker_id())
    store = services.vectorstore
    if isinstance(store, QdrantVectorStore):
        # A dimension mismatch stops the worker here with a message that says how to reindex. A Qdrant
        # server that is merely unreachable must not: jobs ensure the collection again (and retry).
        try:
            await store.ensure_collection()
        except CollectionMismatch:
            raise
        except Exception as exc:
            if store.mode == "local":
                raise
            log.warning("vectorstore.unavailable_at_startup", error=type(exc).__name__)
        if store.mode == "local":
            server = VectorStoreRpcServer(store, redis=services.redis)
            await server.start()
            ctx["vector_rpc_server"] = server
    await services.redis.set(WORKER_ALIVE_PREFIX + worker_id, "1", ex=ALIVE_TTL_S)
    await release_orphaned_jobs(services=services, worker_id=worker_id)
    ctx["ingest_heartbeat"] = asyncio.create_task(_heartbeat_and_sweep(services, worker_id), name="ingest-heartbeat")
    try:
        await auto_ingest_sample_docs(services=services)
    except Exception as exc:  # never keep the worker from starting
        log.warning("ingest.auto_ingest_failed", error=type(exc).__name__, detail=str(exc)[:200])


async def on_worker_shutdown(ctx: dict[str, Any]) -> None:
    """Stop the heartbeat and the RPC server (before the clients close)."""
    task = ctx.pop("ingest_heartbeat", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    server = ctx.pop("vector_rpc_server", None)
    if server is not None:
        await server.stop()
    services = ctx.get("services")
    worker_id = ctx.get("worker_id")
    if services is not None and worker_id:
        with contextlib.suppress(Exception):
            await services.redis.delete(WORKER_ALIVE_PREFIX + worker_id)
