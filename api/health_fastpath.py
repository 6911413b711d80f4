"""`GET /health` answered before routing: the liveness probe costs microseconds, whatever else is stacked.

Uptime monitors, Hugging Face and load balancers poll `/health` constantly. The route in
`api.routers.health` documents it (OpenAPI) and serves it when this middleware is absent; this outermost
middleware answers the same bytes, with the request id and security headers the rest of the API sends,
without FastAPI routing, dependency solving, CORS, metrics or deadline machinery. It never touches an
upstream. Every other request passes through untouched.
"""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Receive, Scope, Send

from api.middleware import _VALID_REQUEST_ID, SECURITY_HEADERS

HEALTH_BODY = b'{"status":"healthy"}'
_STATIC_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(HEALTH_BODY)).encode()),
    (b"cache-control", b"no-store"),
    *((name.encode(), value.encode()) for name, value in SECURITY_HEADERS),
]


class HealthFastPath:
    """Answer `GET /health` directly; pass everything else on."""

    def __init__(self, app: ASGIApp, *, path: str = "/health") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        request_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                text = value.decode("latin-1")
                request_id = text if _VALID_REQUEST_ID.match(text) else None
                break
        rid = (request_id or uuid.uuid4().hex).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*_STATIC_HEADERS, (b"x-request-id", rid)]}
        )
        await send({"type": "http.response.body", "body": HEALTH_BODY})
