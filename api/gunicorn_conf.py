"""Gunicorn settings for the API program under supervisord (read once by the Gunicorn master)."""

import gc
import json
import logging
import os
from datetime import UTC, datetime

bind = f"0.0.0.0:{os.environ.get('PORT', '7860')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# uvicorn_worker.UvicornWorker subclass that drops the `server` banner header.
worker_class = "api.uvicorn_worker.LecternUvicornWorker"
# Drain in-flight requests (streams included) on SIGTERM before the worker exits.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "10"))
timeout = 60
keepalive = 5
# No control socket in $HOME (read-only or absent in containers).
control_socket_disable = True
# Logging is configured by the app (structlog); gunicorn's own lines go to stderr.
accesslog = None
errorlog = "-"
capture_output = False
proc_name = "lectern-api"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


class JsonLineFormatter(logging.Formatter):
    """Gunicorn's own lines (master: booting, signals, worker exits) as JSON, like the app's structlog lines.

    The master never imports the app (no preload: each worker builds it), so it cannot use
    `shared.platform.logging`; this formatter needs only the standard library.
    """

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object per line: event, level, logger, timestamp, role, pid."""
        event = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat().replace("+00:00", "Z"),
            "role": "api",
            "pid": record.process,
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event)


_json_logs = (
    os.environ.get("LOG_FORMAT")
    or ("json" if os.environ.get("APP_ENV", "").strip().lower() == "production" else "console")
) == "json"
if _json_logs:
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {
                "level": "INFO",
                "handlers": ["error_console"],
                "propagate": False,
                "qualname": "gunicorn.error",
            },
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False, "qualname": "gunicorn.access"},
        },
        "handlers": {
            "error_console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
        },
        "formatters": {"json": {"()": JsonLineFormatter}},
    }


def post_worker_init(worker: object) -> None:
    """After a worker has loaded the app: take the startup objects out of the cyclic GC's view.

    Imports and the app leave ~240k long-lived objects; without this every full (gen-2) collection walks
    them all, a >100 ms pause that lands in the p99 of whatever requests are in flight.
    """
    gc.freeze()
