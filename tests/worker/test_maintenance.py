"""Worker maintenance cron (expired sign-in sessions are purged, live ones kept) and the arq job settings."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from shared.accounts.sessions import purge_expired_sessions
from shared.platform.clients import build_services
from shared.platform.config import Settings
from shared.platform.constants import JOB_INGEST
from shared.stores.db.migrate import upgrade
from shared.stores.db.models import AuthSession, User, utcnow
from worker.jobs import JOB_TIMEOUT_GRACE_S
from worker.jobs import purge_expired_sessions as purge_job
from worker.settings import build_worker


def _settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(_env_file=None, DATA_DIR=str(tmp_path), REDIS_URL=redis_url, AUTO_INGEST=False)


async def test_cron_job_purges_only_expired_sessions(tmp_path: Path, redis_url: str) -> None:
    """The hourly job deletes sessions past their expiry and keeps every live one."""
    settings = _settings(tmp_path, redis_url)
    await asyncio.to_thread(upgrade, settings)
    services = await build_services(settings, role="worker")
    try:
        now = utcnow()
        async with services.sessions() as db:
            user = User(email="reader@example.com", name="Reader", password_hash="x")
            db.add(user)
            await db.flush()
            for i, delta in enumerate((-2, -1, 1, 7)):
                db.add(AuthSession(token_hash=f"{i:064d}", user_id=user.id, expires_at=now + timedelta(days=delta)))
            await db.commit()
        removed = await purge_job({"services": services})
        assert removed == 2
        async with services.sessions() as db:
            left = (await db.exec(AuthSession.__table__.select())).all()  # type: ignore[attr-defined]
        assert len(left) == 2
        assert await purge_expired_sessions(sessions=services.sessions) == 0
    finally:
        await services.aclose()


def test_worker_registers_the_purge_cron(tmp_path: Path, redis_url: str) -> None:
    """build_worker schedules the purge as a cron job."""
    worker = build_worker(_settings(tmp_path, redis_url))
    assert [job.name for job in worker.cron_jobs] == ["cron:purge_expired_sessions"]


def test_ingestion_job_uses_arqs_tries_and_timeout(tmp_path: Path, redis_url: str) -> None:
    """The ingestion job's tries are arq's (INGEST_MAX_TRIES) and its arq timeout is INGEST_JOB_TIMEOUT plus
    a grace: arq's in-progress marker of a killed worker's job lives that long + 10 s, then the job runs again."""
    settings = Settings(
        _env_file=None,
        DATA_DIR=str(tmp_path),
        REDIS_URL=redis_url,
        AUTO_INGEST=False,
        INGEST_MAX_TRIES=4,
        INGEST_JOB_TIMEOUT=30,
    )
    worker = build_worker(settings)
    ingest = worker.functions[JOB_INGEST]
    assert ingest.max_tries == 4
    assert ingest.timeout_s == 30 + JOB_TIMEOUT_GRACE_S
    # No function runs longer than the ingestion job: it alone sets the re-run delay after a SIGKILL.
    assert all((f.timeout_s or 0) <= ingest.timeout_s for f in worker.functions.values())
