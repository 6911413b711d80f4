"""Gunicorn worker class: `uvicorn_worker.UvicornWorker` with our protocol, event loop and no banner."""

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class LecternUvicornWorker(UvicornWorker):
    """Uvicorn worker with our defaults (no server banner, no uvicorn access log: we log requests)."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "server_header": False,
        "access_log": False,
        # h11 with the JSON error envelope for requests h11 refuses (431 oversized headers, 400 malformed).
        "http": "api.http_protocol:EnvelopeH11Protocol",
        # One accept per loop iteration, so a burst of connections is shared by the workers (api/event_loop.py).
        "loop": "api.event_loop:new_event_loop",
    }
