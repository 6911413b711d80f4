"""Pure-ASGI middleware for operations: request metrics by route template, and a response deadline.

- `MetricsMiddleware` counts every HTTP request by method, route template (e.g.
  `/api/chat/sessions/{session_id}`, or `unmatched` for 404s so label values stay bounded) and status,
  and observes its latency (`shared.platform.metrics`).
- `DeadlineMiddleware` guarantees nothing hangs a request past `RESPONSE_DEADLINE_S`: when no response
  has *started* by then, the handler is cancelled and the client gets 503 `upstream_unavailable` with
  `Retry-After` in the usual envelope. Streams that have started are left alone (they have their own
  idle timeouts).
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

import shared.platform.metrics as metrics
from shared.platform.logging import get_logger

log = get_logger("api.deadline")

RESPONSE_DEADLINE_S = 28.0


class MetricsMiddleware:
    """Record `lectern_http_requests_total` and `lectern_http_request_duration_seconds`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.observe_request(str(scope.get("method", "")), template, status, time.perf_counter() - started)


class DeadlineMiddleware:
    """Answer 503 instead of hanging when no response has started within the deadline.

    Time spent waiting for the *client's* body (a slow 20 MiB upload) does not count: the deadline is
    about our upstreams, not the caller's bandwidth.
    """

    def __init__(self, app: ASGIApp, *, deadline_s: float = RESPONSE_DEADLINE_S) -> None:
        self.app = app
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = asyncio.Event()
        waited = 0.0  # seconds spent inside receive() so far
        receiving_since: float | None = None

        async def receive_wrapper() -> Message:
            nonlocal waited, receiving_since
            receiving_since = time.perf_counter()
            try:
                return await receive()
            finally:
                waited += time.perf_counter() - receiving_since
                receiving_since = None

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        begin = time.perf_counter()
        task = asyncio.ensure_future(self.app(scope, receive_wrapper, send_wrapper))
        waiter = asyncio.ensure_future(started.wait())
        try:
            while True:
                now = time.perf_counter()
                client_time = waited + (now - receiving_since if receiving_since is not None else 0.0)
                remaining = self.deadline_s - (now - begin - client_time)
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait({task, waiter}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if done:
                    await task
                    return
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            log.warning("request.deadline_exceeded", path=scope.get("path"), deadline_s=self.deadline_s)
            await _send_503(scope, send, self.deadline_s)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()


async def _send_503(scope: Scope, send: Send, deadline_s: float) -> None:
    request_id = str(scope.get("state", {}).get("request_id", ""))
    detail = f"A service we depend on did not answer within {deadline_s:.0f} s. Please try again shortly."
    body = json.dumps(
        {"detail": detail, "code": "upstream_unavailable", "message": detail, "request_id": request_id}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"5"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_observability(app: ASGIApp) -> None:
    """Place the metrics middleware just inside `RequestContextMiddleware` (so it sees every response,
    the request id already bound) and the deadline just inside CORS (so its 503 carries CORS headers).
    Called once, after `api.middleware.install_middleware`."""
    from fastapi import FastAPI
    from starlette.middleware import Middleware

    assert isinstance(app, FastAPI)
    stack = app.user_middleware
    names = [getattr(m.cls, "__name__", "") for m in stack]
    cors = next((i for i, name in enumerate(names) if "CORS" in name), None)
    stack.insert(len(stack) if cors is None else cors + 1, Middleware(DeadlineMiddleware))
    context = names.index("RequestContextMiddleware") if "RequestContextMiddleware" in names else -1
    stack.insert(context + 1, Middleware(MetricsMiddleware))
