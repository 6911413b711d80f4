"""Pure-ASGI middleware: request id + access log + security headers, and the streaming body-size limit.

Both are plain ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched and the
per-request cost stays in microseconds.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import PayloadTooLarge
from shared.logging import bind_context, clear_context, get_logger

log = get_logger("api.access")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_QUIET_PATHS = frozenset({"/health", "/metrics", "/health/ready", "/health/circuits"})

SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-resource-policy", "cross-origin"),
)


class RequestContextMiddleware:
    """Assign a request id (honouring a sane incoming `X-Request-ID`), log the request, add headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        clear_context()
        bind_context(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                for name, value in SECURITY_HEADERS:
                    if name not in headers:
                        headers[name] = value
                if "server" in headers:
                    del headers["server"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            if path not in _QUIET_PATHS or status >= 500:
                route = scope.get("route")
                log.info(
                    "http.request",
                    method=scope.get("method"),
                    path=path,
                    route=getattr(route, "path", None),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
            clear_context()


class BodySizeLimitMiddleware:
    """Refuse bodies over the limit with 413, counting bytes as they arrive (never buffering first)."""

    def __init__(self, app: ASGIApp, *, default_limit: int, large_limit: int, large_prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.default_limit = default_limit
        self.large_limit = large_limit
        self.large_prefixes = large_prefixes

    def limit_for(self, path: str) -> int:
        """The byte limit of a path."""
        return self.large_limit if path.startswith(self.large_prefixes) else self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_413(scope, send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(_too_large_detail(limit))
            return message

        await self.app(scope, limited_receive, send)


def _too_large_detail(limit: int) -> str:
    return f"The request body is larger than the {limit // (1024 * 1024)} MiB limit."


async def _send_413(scope: Scope, send: Send, limit: int) -> None:
    import json

    request_id = scope.get("state", {}).get("request_id", "")
    detail = _too_large_detail(limit)
    body = json.dumps(
        {"detail": detail, "code": "payload_too_large", "message": detail, "request_id": request_id}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> Any:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
