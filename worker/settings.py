"""Builds the arq `Worker` from settings; `on_startup`/`on_shutdown` build and close the shared clients.

The worker is started by `python -m worker run` (supervisord's `worker` program) instead of
`arq module.WorkerSettings`, because arq's CLI would need settings at import time.
"""

from __future__ import annotations

from typing import Any

from arq.worker import Worker

from shared.platform.clients import build_services, redis_settings
from shared.platform.config import Settings
from shared.platform.constants import HEALTH_CHECK_KEY, QUEUE_NAME, ROLE_WORKER
from shared.platform.logging import get_logger
from shared.platform.metrics import instrument_jobs
from worker.jobs import CRON_JOBS, job_functions, job_timeout, on_worker_shutdown, on_worker_startup

log = get_logger(__name__)

HEALTH_CHECK_INTERVAL_S = 5


async def on_startup(ctx: dict[str, Any]) -> None:
    """Build the same clients the API builds, once per worker process."""
    settings: Settings = ctx["settings"]
    ctx["services"] = await build_services(settings, role=ROLE_WORKER)
    await on_worker_startup(ctx)
    log.info("worker.started", queue=QUEUE_NAME)


async def on_shutdown(ctx: dict[str, Any]) -> None:
    """Close the clients."""
    await on_worker_shutdown(ctx)
    services = ctx.get("services")
    if services is not None:
        await services.aclose()
    log.info("worker.stopped")


def build_worker(settings: Settings, **overrides: Any) -> Worker:
    """The arq worker for the ingestion queue."""
    options: dict[str, Any] = {
        "functions": instrument_jobs(job_functions(settings)),
        "cron_jobs": CRON_JOBS,
        "queue_name": QUEUE_NAME,
        "redis_settings": redis_settings(settings),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "ctx": {"settings": settings},
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "health_check_key": HEALTH_CHECK_KEY,
        "handle_signals": True,
        "retry_jobs": True,
        "max_jobs": 4,
        # The ingestion job has its own timeout and tries (`job_functions`); the default timeout is the
        # same, because arq's in-progress marker lives for the longest timeout + 10 s: that is how long
        # the job of a SIGKILLed worker waits before it runs again.
        "job_timeout": job_timeout(settings),
        "keep_result": 3600,
        "poll_delay": 0.2,
    }
    options.update(overrides)
    return Worker(**options)
