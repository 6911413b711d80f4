"""arq job functions and the worker's ingestion duties: thin wrappers over `shared.ingestion.pipeline`.

arq owns the job's life: the job id is the ingest job id (`_job_id`, so one job is never queued twice),
tries are arq's (`max_tries=INGEST_MAX_TRIES`, `ctx["job_try"]`), an outage defers the job with
`arq.Retry`, SIGTERM puts it back on the queue, and the job of a SIGKILLed worker runs again once arq's
in-progress marker expires (arq sets it to the longest job timeout + 10 s, i.e. INGEST_JOB_TIMEOUT +
`JOB_TIMEOUT_GRACE_S` + 10 s after the job started). Every run continues from the job's checkpoint.

Ingestion jobs run one at a time (redis-py's `Lock`, renewed while held), so two jobs never interleave
writes to one source. Besides the `ingest_documents` job, the worker process:

- owns the embedded-mode Qdrant folder and serves it to the API processes (`VectorStoreRpcServer`);
- every `RECONCILE_S` seconds (and at start) runs `shared.ingestion.pipeline.reconcile_jobs`: a job that arq
  ended without an outcome in its row (tries exhausted, ...) is failed with the reason, a job arq lost is
  queued again;
- in development, on the first start (no documents, no jobs), ingests `DOCS_DIR` (once: the check and
  the submit run under a redis-py `Lock`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from arq import Retry
from arq.connections import ArqRedis
from arq.cron import cron
from arq.worker import Function, func
from redis.asyncio.lock import Lock
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlmodel import func as sql_func
from sqlmodel import select

import shared.accounts.sessions as sessions_service
from shared.ingestion.inputs import load_directory
from shared.ingestion.jobs import STATUS_FAILED, mark_job, reconcile_jobs, submit_ingest
from shared.ingestion.pipeline import run_ingest_job
from shared.platform.clients import Services
from shared.platform.config import Settings
from shared.platform.constants import INGEST_AUTO_LOCK_KEY, INGEST_LOCK_KEY, JOB_INGEST
from shared.platform.errors import UpstreamMisconfigured, UpstreamUnavailable
from shared.platform.logging import bind_context, get_logger
from shared.stores.db.models import Document, IngestJob
from shared.stores.vectorstore import CollectionMismatch, VectorStoreRpcServer

log = get_logger(__name__)

#: arq's own timeout is this much longer than INGEST_JOB_TIMEOUT (ours fails the job with a clear
#: message; arq's is the backstop). A killed worker's job runs again INGEST_JOB_TIMEOUT + this + 10 s
#: after it started (arq's in-progress marker).
JOB_TIMEOUT_GRACE_S = 10.0
RETRY_DEFER_MAX_S = 120.0
#: The ingestion lock's TTL (renewed every third of it while held): a SIGKILLed holder's lock expires.
LOCK_TTL_S = 15.0
LOCK_WAIT_S = 0.5
AUTO_INGEST_LOCK_TTL_S = 60.0
RECONCILE_S = 10.0


async def ping(ctx: dict[str, Any]) -> str:
    """A no-op job used to check the queue round trip."""
    return "pong"


async def _renew(lock: Lock) -> None:
    while True:
        await asyncio.sleep(LOCK_TTL_S / 3)
        try:
            await lock.reacquire()
        except LockNotOwnedError:
            log.error("ingest.lock_lost", ttl_s=LOCK_TTL_S)
            return
        except RedisError as exc:  # a blip: the next renewal may still be in time
            log.warning("ingest.lock_renew_failed", error=type(exc).__name__)


@contextlib.asynccontextmanager
async def ingest_lock(redis: ArqRedis) -> AsyncIterator[None]:
    """Hold the ingestion lock for the body: one job at a time, so two jobs never interleave writes to a
    source. Waits while another job holds it; renewed while held."""
    lock = redis.lock(INGEST_LOCK_KEY, timeout=LOCK_TTL_S, sleep=LOCK_WAIT_S)
    await lock.acquire()
    renewal = asyncio.create_task(_renew(lock), name="ingest-lock-renewal")
    try:
        yield
    finally:
        renewal.cancel()
        with contextlib.suppress(LockError, RedisError):
            await lock.release()


async def _fail(services: Services, job_id: str, message: str) -> None:
    await mark_job(
        sessions=services.sessions, job_id=job_id, status=STATUS_FAILED, error={"source": "", "message": message}
    )


#: Outages: the job waits (`arq.Retry`) and continues from its checkpoint. (TimeoutError is an OSError.)
OUTAGES = (UpstreamUnavailable, OSError, RedisConnectionError, RedisTimeoutError)


async def ingest_documents(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Run one try of an ingestion job (see `shared.ingestion.pipeline.run_ingest_job`).

    Hung past INGEST_JOB_TIMEOUT: the job is failed with a clear error. OpenAI, Qdrant, PostgreSQL or
    Redis unavailable: `arq.Retry` after the breaker's Retry-After, continuing from the checkpoint; on
    the last try arq allows (`ctx["job_try"]` = INGEST_MAX_TRIES) the job is failed with the reason
    instead. Rejected credentials fail it at once. A try that never ends (its worker was killed) is
    counted by arq too; `reconcile_jobs` fails the row of a job whose tries ran out that way.
    """
    services: Services = ctx["services"]
    settings = services.settings
    bind_context(job_id=job_id)
    job_try = int(ctx["job_try"])
    if job_try > 1:
        log.info("ingest.job_try", job_id=job_id, job_try=job_try, max_tries=settings.ingest_max_tries)
    assert services.vectorstore is not None
    deadline = asyncio.timeout(settings.ingest_job_timeout)
    try:
        async with deadline, ingest_lock(services.redis):
            outcome = await run_ingest_job(
                settings=settings,
                sessions=services.sessions,
                store=services.vectorstore,
                embedder=services.embedder,
                job_id=job_id,
            )
    except UpstreamMisconfigured as exc:
        await _fail(services, job_id, exc.detail)
        return {"status": STATUS_FAILED, "error": exc.code}
    except OUTAGES as exc:
        if deadline.expired():  # our own INGEST_JOB_TIMEOUT, not an upstream's timeout
            message = (
                f"The job did not finish within INGEST_JOB_TIMEOUT={settings.ingest_job_timeout:g} s and was "
                "stopped; documents already done are kept. Submit the documents again to finish."
            )
            await _fail(services, job_id, message)
            log.error("ingest.job_timed_out", job_id=job_id, timeout_s=settings.ingest_job_timeout)
            return {"status": STATUS_FAILED, "error": "timeout"}
        if isinstance(exc, UpstreamUnavailable):
            detail, retry_after, upstream = exc.detail, float(exc.retry_after), exc.upstream
        else:
            detail, retry_after, upstream = f"A service was unreachable ({type(exc).__name__}).", 5.0, ""
        if job_try >= settings.ingest_max_tries:
            await _fail(
                services, job_id, f"{detail} Gave up after {settings.ingest_max_tries} tries (INGEST_MAX_TRIES)."
            )
            log.error("ingest.job_gave_up", job_id=job_id, tries=job_try, error=type(exc).__name__)
            return {"status": STATUS_FAILED, "error": "max_tries"}
        defer = min(max(retry_after, 1.0), RETRY_DEFER_MAX_S)
        log.warning(
            "ingest.job_deferred",
            job_id=job_id,
            job_try=job_try,
            defer_s=defer,
            upstream=upstream,
            error=type(exc).__name__,
        )
        raise Retry(defer=defer) from exc
    return {"status": outcome.status, "documents": outcome.documents, "chunks_written": outcome.chunks_written}


async def purge_expired_sessions(ctx: dict[str, Any]) -> int:
    """Cron: delete expired sign-in sessions so the table does not grow forever."""
    services: Services = ctx["services"]
    removed = await sessions_service.purge_expired_sessions(sessions=services.sessions)
    log.info("auth.expired_sessions_purged", sessions=removed)
    return removed


def job_timeout(settings: Settings) -> float:
    """arq's timeout for an ingestion try (and, through arq's in-progress marker, the re-run delay after
    a SIGKILL): INGEST_JOB_TIMEOUT plus a grace for recording the failure."""
    return settings.ingest_job_timeout + JOB_TIMEOUT_GRACE_S


def job_functions(settings: Settings) -> list[Function]:
    """The worker's jobs; ingestion with arq's own try limit and timeout."""
    return [
        func(ping, max_tries=1),
        func(
            ingest_documents,
            name=JOB_INGEST,
            max_tries=settings.ingest_max_tries,
            timeout=job_timeout(settings),
        ),
    ]


#: Hourly maintenance (minute 17, off the hour's peak); arq runs a cron job once across workers.
CRON_JOBS: list[Any] = [cron(purge_expired_sessions, minute={17}, run_at_startup=True, unique=True)]


# ---------------------------------------------------------------------------------------------
# Worker start-up and shutdown duties
# ---------------------------------------------------------------------------------------------


async def reconcile_once(services: Services) -> dict[str, list[str]]:
    """`shared.ingestion.pipeline.reconcile_jobs` with the worker's clients."""
    return await reconcile_jobs(settings=services.settings, sessions=services.sessions, redis=services.redis)


async def _reconcile_forever(services: Services) -> None:
    while True:
        try:
            await reconcile_once(services)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an outage: try again on the next round
            log.warning("ingest.reconcile_failed", error=type(exc).__name__)
        await asyncio.sleep(RECONCILE_S)


async def auto_ingest_sample_docs(*, services: Services) -> str | None:
    """In development, ingest DOCS_DIR once when the service has no documents and no jobs yet.

    The check and the submit run under a lock, so workers starting together queue it once (the next one
    to get the lock sees the job)."""
    settings: Settings = services.settings
    if not settings.auto_ingest_sample_docs or not settings.docs_dir.is_dir():
        return None
    lock = services.redis.lock(INGEST_AUTO_LOCK_KEY, timeout=AUTO_INGEST_LOCK_TTL_S)
    if not await lock.acquire(blocking=False):
        return None
    try:
        async with services.sessions() as session:
            documents = (await session.exec(select(sql_func.count()).select_from(Document))).one()
            jobs = (await session.exec(select(sql_func.count()).select_from(IngestJob))).one()
        if documents or jobs:
            return None
        docs = load_directory(settings.docs_dir)
        if not docs:
            return None
        job = await submit_ingest(sessions=services.sessions, redis=services.redis, documents=docs)
    finally:
        with contextlib.suppress(LockError, RedisError):
            await lock.release()
    log.info("ingest.auto_ingest_queued", job_id=job.id, documents=len(docs), docs_dir=str(settings.docs_dir))
    return job.id


async def on_worker_startup(ctx: dict[str, Any]) -> None:
    """Ingestion duties after `ctx["services"]` exists: store, RPC server, job reconciliation, auto-ingest."""
    services: Services = ctx["services"]
    store = services.vectorstore
    # Told apart by `mode`, not by class: naming a class would import its engine's client (~60 MB).
    mode = getattr(store, "mode", None)
    if store is not None and mode == "local":
        # The embedded shard opens here (a mismatch stops the worker with the reindexing advice) and is
        # served to every other process.
        await store.ensure_collection()
        server = VectorStoreRpcServer(store, redis=services.redis)
        await server.start()
        ctx["vector_rpc_server"] = server
    elif store is not None and mode == "server":
        # A dimension mismatch stops the worker here with a message that says how to reindex. A Qdrant
        # server that is merely unreachable must not: jobs ensure the collection again (and retry).
        try:
            await store.ensure_collection()
        except CollectionMismatch:
            raise
        except Exception as exc:
            log.warning("vectorstore.unavailable_at_startup", error=type(exc).__name__)
    ctx["ingest_reconciler"] = asyncio.create_task(_reconcile_forever(services), name="ingest-reconciler")
    try:
        await auto_ingest_sample_docs(services=services)
    except Exception as exc:  # never keep the worker from starting
        log.warning("ingest.auto_ingest_failed", error=type(exc).__name__, detail=str(exc)[:200])


async def on_worker_shutdown(ctx: dict[str, Any]) -> None:
    """Stop the reconciler and the RPC server (before the clients close)."""
    task = ctx.pop("ingest_reconciler", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    server = ctx.pop("vector_rpc_server", None)
    if server is not None:
        await server.stop()
