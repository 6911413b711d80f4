"""Gunicorn settings for the API program under supervisord (read once by the Gunicorn master)."""

import os

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
