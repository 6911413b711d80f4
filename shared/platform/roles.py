"""Container roles (`LECTERN_ROLES`): which supervisord programs a container runs, and which combinations
are refused at start.

One image, several shapes (README "Topology"): the single Space runs every role; past one container, API
replicas and worker replicas share a Redis (`REDIS_URL`), PostgreSQL (`DATABASE_URL`) and, ideally, a
Qdrant server (`QDRANT_URL`). Roles:

- `api`: Gunicorn + Uvicorn workers serving the HTTP API;
- `worker`: the arq worker (ingestion jobs, the job reconciler, cron);
- `store`: the embedded Qdrant (a Qdrant Edge shard in `DATA_DIR/qdrant`), opened by this container's worker process
  and served to every other process over the Redis RPC. One container per Redis; never with `QDRANT_URL`.
  Without `worker` the worker process serves the store only and runs no jobs;
- `redis`: the embedded Redis (unix socket in `DATA_DIR`); reachable from its own container only;
- `watchdog`: restarts this container's arq worker when it hangs.

`PROGRAM_ROLES` is the one table from programs to roles: a program starts when any of its roles is
selected. A new supervisord program gets one line here and `autostart=%(ENV_LECTERN_AUTOSTART_<NAME>)s`
in supervisord.conf (`autostart_variable` names it); a test checks that the two agree.
"""

from __future__ import annotations

from shared.platform.config import ROLE_NAMES, Settings

__all__ = ["PROGRAM_ROLES", "autostart", "autostart_variable", "describe", "refusal"]

#: supervisord program -> the roles that start it. `migrate` is not here: scripts/start enables it only
#: when the database was unreachable at start (see scripts/preflight.py).
PROGRAM_ROLES: dict[str, frozenset[str]] = {
    "redis": frozenset({"redis"}),
    "api": frozenset({"api"}),
    "worker": frozenset({"worker", "store"}),
    "watchdog": frozenset({"watchdog"}),
}


def describe(settings: Settings) -> str:
    """The selected roles in a fixed order, e.g. `api,worker` (for messages and logs)."""
    return ",".join(name for name in ROLE_NAMES if name in settings.roles)


def refusal(settings: Settings) -> str | None:
    """Why this container's roles cannot work with this configuration (checked without any network),
    or None when the combination is valid."""
    roles = settings.roles
    shown = f"LECTERN_ROLES={describe(settings) or '(none)'}"
    if not roles:
        return f"{shown}: choose at least one role"
    if "redis" in roles and not settings.embedded_redis:
        return f"{shown}: 'redis' starts the embedded Redis, but REDIS_URL is set; drop 'redis' from LECTERN_ROLES"
    if settings.embedded_redis:
        # The embedded Redis listens on a unix socket in this container's DATA_DIR: nothing outside the
        # container can share its queue, breakers or rate limits, so this container must be the whole service.
        needed = {"api", "worker", "redis"} | ({"store"} if settings.embedded_qdrant else set())
        missing = sorted(needed - roles)
        if missing:
            return (
                f"{shown}: without REDIS_URL the embedded Redis is private to this container, so it must run "
                f"every role (missing: {', '.join(missing)}) and be the only replica; to split roles or run "
                "replicas, point every container at one shared Redis with REDIS_URL"
            )
    whole = {"api", "worker"} | ({"store"} if settings.embedded_qdrant else set())
    if settings.uses_sqlite and not whole <= roles:
        return (
            f"{shown}: a container that runs only some roles shares the database with the others, but without "
            "DATABASE_URL the database is SQLite in this container's DATA_DIR; set DATABASE_URL (PostgreSQL)"
        )
    if "store" in roles and not settings.embedded_qdrant:
        return f"{shown}: 'store' is the embedded Qdrant, but QDRANT_URL is set; drop 'store' from LECTERN_ROLES"
    if "watchdog" in roles and "worker" not in roles:
        return f"{shown}: 'watchdog' restarts this container's arq worker; add 'worker' or drop 'watchdog'"
    return None


def autostart(settings: Settings) -> dict[str, bool]:
    """Program -> whether supervisord starts it in this container."""
    return {program: bool(roles & settings.roles) for program, roles in PROGRAM_ROLES.items()}


def autostart_variable(program: str) -> str:
    """The environment variable supervisord.conf reads for `program`'s autostart."""
    return "LECTERN_AUTOSTART_" + program.upper().replace("-", "_")
