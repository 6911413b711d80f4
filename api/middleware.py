"""Pure-ASGI middleware: request context, unhandled-error envelope, streaming body-size limit, HEAD and OPTIONS.

All are plain ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched and the
per-request cost stays in microseconds. `api.main` stacks them, outermost first:

    HeadMiddleware             HEAD is answered by the GET route, without the body (outside even the /health fast path)
    RequestContextMiddleware   request id, access log, security headers (also on CORS preflights)
    EnvelopeCORSMiddleware     Starlette's, so every response below (errors too) has CORS headers; refusals enveloped
    BodySizeLimitMiddleware    413 while the body arrives
    ErrorEnvelopeMiddleware    an exception nobody handled -> logged traceback + generic 500 envelope
    OptionsMiddleware          an OPTIONS that is not a CORS preflight: 204 with `Allow`

Framing: every response gets `X-Frame-Options: DENY` unless it states its own CSP `frame-ancestors` (only
the HTML pages of `api.pages` do).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import get_contextvars

from shared.platform.config import Settings
from shared.platform.logging import bind_context, clear_context, get_logger

log = get_logger("api.access")
error_log = get_logger("api.errors")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_QUIET_PATHS = frozenset({"/health", "/metrics", "/health/ready", "/health/circuits"})

SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-resource-policy", "cross-origin"),
)

GENERIC_500 = "Something went wrong on our side. Please try again."
MiB = 1024 * 1024
#: Total size of the request's header names and values (h11 refuses blocks over 16 KiB read in pieces).
MAX_HEADER_BYTES = 16 * 1024
#: Browsers cache a successful preflight this long (seconds); Chromium caps it at 7200.
CORS_MAX_AGE = 600
CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Request-ID", "X-API-Key", "Accept", "Cache-Control")


def install_middleware(app: FastAPI, *, settings: Settings) -> None:
    """Stack the middleware (see the module docstring for the order and why; `HeadMiddleware` is added by
    `api.main` last, outside the /health fast path)."""
    app.add_middleware(OptionsMiddleware)
    app.add_middleware(ErrorEnvelopeMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware, default_limit=1 * MiB, large_limit=20 * MiB, large_prefixes=("/api/ingest", "/ingest")
    )
    app.add_middleware(
        EnvelopeCORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_origin_regex=settings.cors_origin_regex,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=list(CORS_ALLOW_HEADERS),
        expose_headers=["X-Request-ID", "Retry-After"],
        max_age=CORS_MAX_AGE,
    )
    app.add_middleware(RequestContextMiddleware)


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
        if sum(len(k) + len(v) for k, v in scope.get("headers", ())) > MAX_HEADER_BYTES:
            # h11 refuses oversized headers only when they arrive in pieces; this makes it deterministic.
            send = _with_context_headers(send, request_id)
            await send_json_error(scope, send, 431, "The request headers are too large.", "headers_too_large")
            clear_context()
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = _response_headers(message.get("headers", ()), request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            if (path not in _QUIET_PATHS or status >= 500) and _access_log_enabled():
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


_RAW_SECURITY_HEADERS = tuple((name.encode(), value.encode()) for name, value in SECURITY_HEADERS)
_access_logger = logging.getLogger("api.access")


def _access_log_enabled() -> bool:
    # Checked first so that a filtered access line costs nothing (the stdlib caches the answer).
    return _access_logger.isEnabledFor(logging.INFO)


def _response_headers(headers: Any, request_id: str) -> list[tuple[bytes, bytes]]:
    """The response's raw headers plus X-Request-ID and the security headers, minus any `server` banner."""
    out = [(k, v) for k, v in headers if k.lower() not in {b"server", b"x-request-id"}]
    present = {k.lower() for k, _ in out}
    if any(k.lower() == b"content-security-policy" and b"frame-ancestors" in v for k, v in out):
        present.add(b"x-frame-options")  # the page says who may frame it; DENY would override that in old browsers
    out.append((b"x-request-id", request_id.encode("latin-1")))
    out.extend(item for item in _RAW_SECURITY_HEADERS if item[0] not in present)
    return out


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, except that a refused preflight is the JSON envelope (400
    `cors_rejected`) and carries no `Access-Control-Allow-*` header at all."""

    def preflight_response(self, request_headers: Headers) -> Response:
        """Starlette's preflight answer, or the envelope when it refuses."""
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode()
        detail = f"{reason.replace('Disallowed CORS', 'This cross-origin request is not allowed: disallowed')}."
        request_id = str(get_contextvars().get("request_id", ""))
        body = {"detail": detail, "code": "cors_rejected", "message": detail, "request_id": request_id}
        keep = {
            k: v
            for k, v in response.headers.items()
            if not k.startswith("access-control-") and k != "content-length" and k != "content-type"
        }
        return JSONResponse(body, status_code=400, headers=keep)


def _with_context_headers(send: Send, request_id: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers["x-request-id"] = request_id
            for name, value in SECURITY_HEADERS:
                headers.setdefault(name, value)
        await send(message)

    return wrapped


class ErrorEnvelopeMiddleware:
    """Turn an exception no handler took into a logged traceback and the generic 500 envelope.

    Before the response has started, the client gets `500 internal_error` (never the exception text).
    Once a `text/event-stream` response has started, the stream ends with an SSE `error` event
    (`{"code": "internal_error", "detail": ...}`); other started responses are cut short. The exception
    never reaches the server, so it is logged once, here, with the request id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        event_stream = False
        finished = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started, event_stream, finished
            if message["type"] == "http.response.start":
                started = True
                content_type = MutableHeaders(scope=message).get("content-type", "")
                event_stream = content_type.startswith("text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            error_log.error(
                "request.unhandled_exception",
                method=scope.get("method"),
                path=scope.get("path"),
                response_started=started,
                exc_info=exc,
            )
            if not started:
                await send_json_error(scope, send, 500, GENERIC_500, "internal_error")
            elif event_stream and not finished:
                payload = json.dumps({"code": "internal_error", "detail": GENERIC_500})
                await send({"type": "http.response.body", "body": f"event: error\ndata: {payload}\n\n".encode()})
                await send({"type": "http.response.body", "body": b"", "more_body": False})


class HeadMiddleware:
    """Answer `HEAD` like `GET` (same status and headers, no body) on every GET route.

    FastAPI routes list GET only, so HEAD would be 405. The request runs as GET and the body is dropped.
    The method is changed in the scope itself, not a copy, and set back to HEAD when the response starts:
    the server reads it there to send no body, and the router writes the matched `route` there for the
    access log and the metrics. Outermost, so the /health fast path answers HEAD probes too.
    """

    _BODY_MESSAGES = frozenset({"http.response.body", "http.response.pathsend", "http.response.zerocopysend"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def send_head(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                scope["method"] = "HEAD"
                await send(message)
            elif message["type"] not in self._BODY_MESSAGES:
                await send(message)
            elif not finished and not message.get("more_body", False):
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        scope["method"] = "GET"
        try:
            await self.app(scope, receive, send_head)
        finally:
            scope["method"] = "HEAD"


class OptionsMiddleware:
    """`OPTIONS` that is not a CORS preflight (CORS answers those first): 204 with the path's `Allow`.

    The methods come from the app's routes (FastAPI's `iter_route_contexts`, as `api.openapi` reads them);
    a path no route knows falls through to the usual 404 envelope.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS" or "app" not in scope:
            await self.app(scope, receive, send)
            return
        allowed = allowed_methods(scope["app"].routes, scope["path"])
        if not allowed:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted(allowed)).encode()
        await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow)]})
        await send({"type": "http.response.body", "body": b""})


def allowed_methods(routes: Any, path: str) -> set[str]:
    """Methods the app's routes accept on `path` (HEAD wherever GET is), plus OPTIONS; empty if none."""
    methods: set[str] = set()
    for context in iter_route_contexts(routes):
        regex = getattr(context, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(context.methods or ()) or {"GET"}  # a mount (the static files) serves GET
    if methods and "GET" in methods:
        methods.add("HEAD")
    return methods | {"OPTIONS"} if methods else methods


class PayloadTooLargeError(HTTPException):
    """Raised from `receive()` when the body passes the limit (FastAPI re-raises HTTPExceptions as-is)."""


class BodySizeLimitMiddleware:
    """Refuse bodies over the limit with 413, counting bytes as they arrive (never buffering first).

    A declared `Content-Length` over the limit is refused before the app runs. Otherwise (chunked, or a
    lying Content-Length) the byte count is checked on every `receive()`; past the limit the app gets a
    `PayloadTooLargeError`, and whatever response it then tries to send is replaced by the 413 envelope.
    """

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
            await send_json_error(scope, send, 413, _too_large_detail(limit), "payload_too_large", close=True)
            return
        received = 0
        exceeded = False
        replied = False
        app_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise PayloadTooLargeError(413, _too_large_detail(limit))
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise PayloadTooLargeError(413, _too_large_detail(limit))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replied, app_started
            if not exceeded or app_started:
                # A response the app started before the body passed the limit is left to finish.
                app_started = app_started or message["type"] == "http.response.start"
                await send(message)
            elif not replied:
                replied = True
                await send_json_error(scope, send, 413, _too_large_detail(limit), "payload_too_large", close=True)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded or app_started:
                raise
            if not replied:
                replied = True
                await send_json_error(scope, send, 413, _too_large_detail(limit), "payload_too_large", close=True)


def _too_large_detail(limit: int) -> str:
    return f"The request body is larger than the {limit // (1024 * 1024)} MiB limit."


async def send_json_error(
    scope: Scope, send: Send, status: int, detail: str, code: str, *, close: bool = False
) -> None:
    """Send the error envelope straight from ASGI middleware (outside FastAPI's handlers)."""
    request_id = scope.get("state", {}).get("request_id", "")
    body = json.dumps({"detail": detail, "code": code, "message": detail, "request_id": request_id}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> Any:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
