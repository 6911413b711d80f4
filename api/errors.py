"""One place that turns every error into API.md's envelope: detail, code, message, request_id."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import LecternError
from shared.logging import get_logger

log = get_logger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    503: "upstream_unavailable",
}

_HTTP_DETAILS = {
    404: "Not found.",
    405: "Method not allowed.",
    500: "Something went wrong on our side. Please try again.",
}


def request_id_of(request: Request) -> str:
    """The request id bound by the middleware ('' outside a request)."""
    return str(getattr(request.state, "request_id", "") or request.headers.get("x-request-id", ""))


def error_body(detail: str, code: str, request_id: str, **extra: Any) -> dict[str, Any]:
    """The error envelope."""
    return {"detail": detail, "code": code, "message": detail, "request_id": request_id, **extra}


def error_response(
    request: Request,
    status_code: int,
    detail: str,
    code: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A JSON error response in the envelope, carrying the request id."""
    rid = request_id_of(request)
    all_headers = {"X-Request-ID": rid, **(headers or {})} if rid else dict(headers or {})
    return JSONResponse(error_body(detail, code, rid, **extra), status_code=status_code, headers=all_headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LecternError)
    if exc.status_code >= 500:
        log.warning("request.upstream_error" if exc.status_code == 503 else "request.error", code=exc.code)
    return error_response(request, exc.status_code, exc.detail, exc.code, headers=exc.headers, **exc.extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _HTTP_DETAILS.get(exc.status_code, "Request failed.")
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(request, exc.status_code, detail, code, headers=dict(exc.headers or {}))


def _loc(loc: Any) -> list[Any]:
    return [part if isinstance(part, int | str) else str(part) for part in loc]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": _loc(e.get("loc", ())), "msg": str(e.get("msg", "invalid"))} for e in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "request"
    detail = f"Invalid request: {where}: {first['msg']}"
    return error_response(request, 422, detail, "validation_error", errors=errors)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("request.unhandled_exception", path=request.url.path, exc_info=exc)
    return error_response(request, 500, _HTTP_DETAILS[500], "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the envelope for domain errors, HTTP errors, validation errors and anything else."""
    app.add_exception_handler(LecternError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
