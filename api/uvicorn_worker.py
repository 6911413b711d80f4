"""Gunicorn worker class: `uvicorn_worker.UvicornWorker` with uvloop, h11 and no banner."""

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class LecternUvicornWorker(UvicornWorker):
    """Uvicorn worker with our defaults (no server banner, no uvicorn access log: we log requests)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "server_header": False,
        "access_log": False,
        "loop": "uvloop",
        # h11 bounds a request's header block (16 KiB); uvicorn's httptools parser has no such limit.
        "http": "h11",
    }
