"""Start-up checks run once by scripts/start before supervisord: config, roles, DATA_DIR, migrations, upstreams.

Exit codes (scripts/start acts on them):
- 0: ready to start the programs;
- 2: the configuration is missing or malformed (an operator-facing message that names variables, never
  values), the container's roles (`LECTERN_ROLES`) cannot work together or with the other containers
  (one line: `lectern: LECTERN_ROLES=...: why`), or the database rejected DATABASE_URL's credentials,
  role or database name, so a broken deployment stops here instead of crash-looping three programs;
- 3: the migrations themselves failed (a bug or a database in an unexpected state);
- 75 (EX_TEMPFAIL): the database is unreachable right now. The service still starts (liveness 200,
  readiness `unavailable`) and supervisord's `migrate` program retries the migrations until they apply.

`--migrate-until-done` is that retry loop (supervisord's `migrate` program).

It also logs one `startup.upstream` event per upstream with its status and host (never credentials), and
writes `DATA_DIR/run/autostart.env`: one `LECTERN_AUTOSTART_<PROGRAM>=true|false` line per program of
`shared.platform.roles.PROGRAM_ROLES`, which scripts/start exports for supervisord.conf.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared.platform.config import ConfigError, Settings, load_settings
from shared.platform.logging import configure_logging, get_logger
from shared.platform.roles import autostart, autostart_variable, describe, refusal

EXIT_CONFIG = 2
EXIT_MIGRATIONS = 3
EXIT_DB_UNREACHABLE = 75
CHECK_TIMEOUT_S = 3.0
RETRY_MAX_DELAY_S = 30.0
#: The embedded store's owner claim (`<host>:<DATA_DIR>`), set by the preflight of the container with the
#: `store` role; it expires once the worker's RPC presence key (refreshed while serving) has taken over.
STORE_OWNER_KEY = "lectern:vectorstore:owner"
STORE_OWNER_CLAIM_S = 60
ONE_STORE = "only one container may have the 'store' role (or set QDRANT_URL and drop it)"


def _is_rejected(exc: BaseException) -> bool:
    """True when the database refused our credentials, role or database name (DATABASE_URL is wrong)."""
    from shared.platform.upstreams import ErrorKind, Upstream, classify_error

    return classify_error(Upstream.DATABASE, exc) is ErrorKind.CREDENTIALS


def _is_unreachable(exc: BaseException) -> bool:
    """True when `exc` means "cannot connect to the database" (not a broken migration)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, OSError | TimeoutError | InterfaceError):
        return True
    if isinstance(exc, OperationalError):
        text = str(exc.orig or exc).lower()
        hints = ("connect", "connection", "timeout", "timed out", "could not translate host", "name or service")
        return any(hint in text for hint in hints)
    return False


def migrate(settings: Settings, log: Any) -> int:
    """Apply the migrations once: 0 applied, EXIT_DB_UNREACHABLE unreachable, EXIT_MIGRATIONS failed."""
    from shared.stores.db.migrate import upgrade

    started = time.perf_counter()
    try:
        outcome = upgrade(settings)
    except Exception as exc:
        if not settings.uses_sqlite and _is_rejected(exc):
            # A wrong password, role or database name is a configuration error, not an outage.
            log.error("startup.database_rejected", variable="DATABASE_URL", error=type(exc).__name__)
            print(
                "lectern: configuration error\nDATABASE_URL was rejected by the database (authentication failed, "
                "unknown role or database, or no pg_hba.conf entry): fix the connection string.",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if not settings.uses_sqlite and _is_unreachable(exc):
            log.warning(
                "startup.database_unreachable",
                error=type(exc).__name__,
                detail=str(getattr(exc, "orig", None) or exc)[:300],
                action="starting anyway; the migrate program retries until the database answers",
            )
            return EXIT_DB_UNREACHABLE
        log.error("startup.migrations_failed", error=type(exc).__name__, detail=str(exc)[:300])
        return EXIT_MIGRATIONS
    log.info(
        "startup.migrations_applied",
        database="sqlite" if settings.uses_sqlite else "postgresql",
        duration_ms=round((time.perf_counter() - started) * 1000),
        # False when another container had already applied them (PostgreSQL: under the advisory lock).
        applied=outcome.applied,
        revision=outcome.after,
    )
    return 0


def _check_http(url: str, headers: dict[str, str]) -> str:
    import httpx

    try:
        response = httpx.get(url, headers=headers, timeout=CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"down ({type(exc).__name__})"
    if response.status_code in (401, 403):
        return f"misconfigured (HTTP {response.status_code}: check the API key)"
    return "up" if response.status_code < 400 else f"down (HTTP {response.status_code})"


def _check_redis(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"down ({type(exc).__name__})"
    finally:
        client.close()
    return "up"


def qdrant_client_url(url: str) -> str:
    """The URL qdrant-client really uses: without an explicit port it connects to 6333, not 443."""
    parts = urlsplit(url)
    if parts.port is not None or not parts.hostname:
        return url
    return urlunsplit((parts.scheme, f"{parts.netloc}:6333", parts.path, parts.query, parts.fragment))


def upstream_statuses(settings: Settings, *, database_status: str) -> dict[str, str]:
    """Status of each upstream: up / down (...) / embedded / disabled, checked concurrently."""
    checks: dict[str, Any] = {}
    statuses = {"database": database_status}
    if settings.embedded_qdrant:
        statuses["vector_store"] = "embedded"
    else:
        headers = {"api-key": settings.qdrant_api_key.get_secret_value()} if settings.qdrant_api_key else {}
        checks["vector_store"] = (_check_http, f"{qdrant_client_url(settings.qdrant_url or '')}/readyz", headers)
    if settings.embedded_redis:
        statuses["redis"] = "embedded"
    else:
        checks["redis"] = (_check_redis, settings.effective_redis_url)
    if settings.openai_api_key is None:
        statuses["llm"] = "disabled (offline mode)"
    else:
        base = settings.openai_base_url or "https://api.openai.com/v1"
        auth = {"Authorization": f"Bearer {settings.openai_api_key.get_secret_value()}"}
        checks["llm"] = (_check_http, f"{base}/models", auth)
    if checks:
        with ThreadPoolExecutor(max_workers=len(checks)) as pool:
            futures = {name: pool.submit(fn, *args) for name, (fn, *args) in checks.items()}
            statuses.update({name: future.result() for name, future in futures.items()})
    return statuses


def log_upstreams(settings: Settings, log: Any, *, database_status: str) -> None:
    """One `startup.upstream` event per upstream with its status, mode and host (never credentials)."""
    from shared.platform.clients import describe_upstreams

    described = describe_upstreams(settings)
    for name, status in upstream_statuses(settings, database_status=database_status).items():
        info = described.get(name, {})
        level = log.info if status.split(" ")[0] in {"up", "embedded", "disabled"} else log.warning
        level("startup.upstream", upstream=name, status=status, mode=info.get("mode"), host=info.get("host"))


def retry_migrations(settings: Settings, log: Any) -> int:
    """Retry the migrations with capped exponential backoff until they apply (or fail for real)."""
    delay = 2.0
    while True:
        code = migrate(settings, log)
        if code != EXIT_DB_UNREACHABLE:
            return code
        time.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_DELAY_S)


def _sync_redis(settings: Settings) -> Any:
    import redis

    url = settings.effective_redis_url
    return redis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)


def store_refusal(settings: Settings, log: Any) -> str | None:
    """The checks that need the shared Redis: one owner of the embedded store per Redis, and an API- or
    worker-only container has a store to reach (it waits up to LECTERN_STORE_WAIT for it). Redis being
    down is an outage, not a refusal: it is logged and the start goes on."""
    import redis

    from shared.stores.vectorstore.remote import RPC_SERVER_KEY

    roles = settings.roles
    if not settings.embedded_qdrant or settings.embedded_redis or not roles & {"api", "worker", "store"}:
        return None
    shown = f"LECTERN_ROLES={describe(settings)}"
    client = _sync_redis(settings)
    try:
        if "store" in roles:
            me = f"{settings.hostname}:{settings.data_dir.resolve()}"
            claim = client.get(STORE_OWNER_KEY)
            owner = claim.decode() if claim else None
            if owner is None and client.exists(RPC_SERVER_KEY):
                return f"{shown}: another container already serves the embedded vector store on this Redis; {ONE_STORE}"
            if owner not in (None, me) or not client.set(STORE_OWNER_KEY, me, ex=STORE_OWNER_CLAIM_S, nx=owner is None):
                host = (owner or "another container").split(":", 1)[0]
                return f"{shown}: the embedded vector store on this Redis belongs to host {host}; {ONE_STORE}"
            return None
        deadline = time.monotonic() + settings.store_wait_s
        while not client.exists(RPC_SERVER_KEY):
            if time.monotonic() >= deadline:
                return (
                    f"{shown}: no container serves the embedded vector store on this Redis (waited "
                    f"{settings.store_wait_s:g} s, LECTERN_STORE_WAIT); set QDRANT_URL, or start the container "
                    "with the 'store' role first"
                )
            time.sleep(0.5)
        return None
    except redis.RedisError as exc:
        log.warning("startup.roles_unchecked", reason="redis unreachable", error=type(exc).__name__)
        return None
    finally:
        client.close()


def write_autostart(settings: Settings, run_dir: Path) -> None:
    """`LECTERN_AUTOSTART_<PROGRAM>=true|false` per program, for scripts/start to export."""
    lines = [f"{autostart_variable(program)}={str(on).lower()}" for program, on in autostart(settings).items()]
    (run_dir / "autostart.env").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    """Validate settings and roles, create DATA_DIR, pick the programs, apply migrations, check the store
    arrangement, report upstreams."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"lectern: configuration error\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    if "--migrate-until-done" in argv:
        configure_logging(settings, role="migrate")
        return retry_migrations(settings, get_logger("migrate"))
    if reason := refusal(settings):
        print(f"lectern: {reason}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings, role="start")
    log = get_logger("preflight")
    data_dir = settings.data_dir.resolve()
    for sub in ("", "redis", "run"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    write_autostart(settings, data_dir / "run")
    log.info("startup.roles", roles=describe(settings), host=settings.hostname, programs=autostart(settings))
    code = migrate(settings, log)  # before the store check: containers starting together migrate together
    if code in (0, EXIT_DB_UNREACHABLE) and (reason := store_refusal(settings, log)):
        print(f"lectern: {reason}", file=sys.stderr)
        return EXIT_CONFIG
    database_status = {
        0: "up",
        EXIT_DB_UNREACHABLE: "down (unreachable; migrations deferred)",
        EXIT_CONFIG: "misconfigured (DATABASE_URL rejected)",
    }.get(code, "down")
    log_upstreams(settings, log, database_status=database_status)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
