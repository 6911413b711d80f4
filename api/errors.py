"""One place that turns every error into API.md's envelope: detail, code, message, request_id."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.platform.errors import LecternError
from shared.platform.logging import get_logger

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

#: FastAPI's words for a body it could not decode (invalid UTF-8, nesting too deep, ...).
_UNPARSEABLE_BODY = "There was an error parsing the body"


class ErrorEnvelope(BaseModel):
    """The body of every error response (API.md, Conventions)."""

    detail: str = Field(description="Human-readable message, safe to show to a reader.")
    code: str = Field(description="Stable identifier, e.g. not_found, rate_limited, upstream_unavailable.")
    message: str = Field(description="Same text as `detail` (kept for clients that read `message`).")
    request_id: str = Field(description="The X-Request-ID of the request, for support.")


class ValidationIssue(BaseModel):
    """One invalid field."""

    loc: list[str | int]
    msg: str


class ValidationErrorEnvelope(ErrorEnvelope):
    """The error envelope of a 422, with one entry per invalid field."""

    errors: list[ValidationIssue]


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
    extra = dict(exc.extra)
    if exc.status_code == 422 and "errors" not in extra:
        # Every 422 has the same shape (ValidationErrorEnvelope), domain validation included.
        extra["errors"] = [{"loc": [], "msg": exc.detail}]
    return error_response(request, exc.status_code, exc.detail, exc.code, headers=exc.headers, **extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _HTTP_DETAILS.get(exc.status_code, "Request failed.")
    if detail == _UNPARSEABLE_BODY:
        detail = "The request body could not be read: send UTF-8 JSON of reasonable depth."
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(request, exc.status_code, detail, code, headers=dict(exc.headers or {}))


def _loc(loc: Any) -> list[Any]:
    return [part if isinstance(part, int | str) else str(part) for part in loc]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": _loc(e.get("loc", ())), "msg": str(e.get("msg", "invalid"))} for e in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    loc = list(first["loc"])
    where = ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] and len(loc) > 1 else loc)) or "request"
    detail = f"Invalid request: {where}: {first['msg']}"
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        detail = "The request body is not valid JSON."
    return error_response(request, 422, detail, "validation_error", errors=errors)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Normally api.middleware.ErrorEnvelopeMiddleware answers first; this covers a failing middleware.
    log.error("request.unhandled_exception", path=request.url.path, exc_info=exc)
    return error_response(request, 500, _HTTP_DETAILS[500], "internal_error")


def stream_error_payload(exc: BaseException) -> dict[str, str]:
    """The `{"code", "detail"}` of an SSE `error` event for an exception raised inside a stream.

    Domain errors keep their code and safe detail; anything else is logged with its traceback (the
    request id is bound in the logging context) and reported as `internal_error` with the generic text.
    """
    if isinstance(exc, LecternError):
        return {"code": exc.code, "detail": exc.detail}
    log.error("stream.unhandled_exception", exc_info=exc)
    return {"code": "internal_error", "detail": _HTTP_DETAILS[500]}


def install_error_handlers(app: FastAPI) -> None:
    """Register the envelope for domain errors, HTTP errors, validation errors and anything else."""
    app.add_exception_handler(LecternError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
