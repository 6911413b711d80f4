"""Start-up checks run once by scripts/start before supervisord: config, DATA_DIR, migrations.

Exits 2 with an operator-facing message (variable names, never values) when the configuration is
missing or malformed, so a broken deployment stops here instead of crash-looping three programs.
"""

from __future__ import annotations

import sys
import time

from shared.config import ConfigError, load_settings
from shared.constants import ROLE_API
from shared.db.migrate import upgrade
from shared.logging import configure_logging, get_logger


def main() -> int:
    """Validate settings, create DATA_DIR, apply migrations."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"lectern: configuration error\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings, role="start")
    log = get_logger("preflight")
    data_dir = settings.data_dir.resolve()
    for sub in ("", "redis", "run"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        upgrade(settings)
    except Exception as exc:
        log.error("startup.migrations_failed", error=type(exc).__name__, detail=str(exc)[:300])
        return 3
    log.info(
        "startup.migrations_applied",
        database="sqlite" if settings.uses_sqlite else "postgresql",
        duration_ms=round((time.perf_counter() - started) * 1000),
        role=ROLE_API,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
