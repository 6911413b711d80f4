"""The OpenAPI document: FastAPI's schema plus the error envelope on every operation and the auth schemes.

FastAPI documents successful responses and a 422 of its own shape; this module replaces that 422 with
our `ValidationErrorEnvelope`, adds the error statuses an operation can really return (all as
`ErrorEnvelope`), and declares the three ways to authenticate: a bearer session token, the
`better-auth.session_token` cookie, and the admin `X-API-Key`. Which operation needs which is read from
its dependencies (the auth and admin-key dependencies of `api.deps`), so the document follows the code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from api.errors import ErrorEnvelope, ValidationErrorEnvelope

__all__ = ["SECURITY_SCHEMES", "install_openapi"]

SESSION_COOKIE = "better-auth.session_token"

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "SessionBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Session token from sign-in/sign-up (`token`). An empty token means anonymous.",
    },
    "SessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "Set by sign-in/sign-up (`__Secure-` prefixed in production).",
    },
    "AdminApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "ADMIN_API_KEY."},
}

_ERROR_TEXT = {
    400: "The body could not be read (not UTF-8, nested too deeply) or the request cannot be honoured.",
    401: "Authentication missing or invalid.",
    404: "Not found (or not yours).",
    409: "Already exists.",
    413: "The body is over the size limit (1 MiB; 20 MiB for ingestion).",
    422: "Validation failed: one entry per invalid field in `errors`.",
    429: "Rate limit reached: retry after `Retry-After` seconds.",
    500: "Unexpected error (generic message; the traceback is logged with the request id).",
    503: "An upstream (OpenAI, Qdrant, PostgreSQL) is unavailable or not configured: see `Retry-After`.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
#: Errors API.md names for operations whose code cannot be read off their dependencies.
_CONTRACT_ERRORS: dict[tuple[str, str], set[int]] = {
    ("/api/auth/sign-up", "post"): {409, 429},
    ("/api/auth/sign-up/email", "post"): {409, 429},
    ("/api/auth/sign-in/email", "post"): {401, 429},
    ("/api/chat/sessions/{session_id}/export", "get"): {400},
}
_NO_UPSTREAM_PATHS = frozenset({"/", "/health", "/health/circuits", "/metrics", "/v1/models"})


def _dependency_names(dependant: Dependant) -> Iterator[str]:
    for dep in dependant.dependencies:
        name = getattr(dep.call, "__name__", "") or type(dep.call).__name__
        yield name.lower()
        yield from _dependency_names(dep)


def _auth_kind(route: APIRoute) -> str | None:
    """'admin', 'user' (required), 'optional' or None, from the names of the route's dependencies."""
    names = set(_dependency_names(route.dependant))
    if any("admin" in n for n in names):
        return "admin"
    if names & {"get_current_user", "get_current_auth", "require_user", "current_user"}:
        return "user"
    if any("optional" in n and ("user" in n or "auth" in n) for n in names):
        return "optional"
    return None


def _rate_limited(route: APIRoute) -> bool:
    return any("rate_limit" in n for n in _dependency_names(route.dependant))


def _error_responses(route: APIRoute, method: str, operation: dict[str, Any], auth: str | None) -> dict[int, str]:
    codes = {500}
    has_body = "requestBody" in operation
    if has_body:
        codes |= {400, 413, 422}
    if operation.get("parameters"):
        codes.add(422)
    if "{" in route.path_format:
        codes.add(404)
    if auth in {"admin", "user"}:
        codes.add(401)
    if _rate_limited(route):
        codes.add(429)
    if route.path_format not in _NO_UPSTREAM_PATHS:
        codes.add(503)
    codes |= _CONTRACT_ERRORS.get((route.path_format, method), set())
    for status in route.responses:
        if str(status).isdigit() and int(status) >= 400:
            codes.add(int(status))
    return {code: _ERROR_TEXT.get(code, "Error.") for code in sorted(codes)}


def _security(auth: str | None) -> list[dict[str, list[str]]] | None:
    if auth == "admin":
        return [{"AdminApiKey": []}]
    if auth == "user":
        return [{"SessionBearer": []}, {"SessionCookie": []}]
    if auth == "optional":
        return [{"SessionBearer": []}, {"SessionCookie": []}, {}]
    return None


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """Generate the document (uncached): FastAPI's schema, then envelopes and security added."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (ErrorEnvelope, ValidationErrorEnvelope):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(model_schema.pop("$defs", {}))
        schemas[model.__name__] = model_schema
    components["securitySchemes"] = {**components.get("securitySchemes", {}), **SECURITY_SCHEMES}
    routes: dict[tuple[str, str], APIRoute] = {}
    for context in iter_route_contexts(app.routes):
        if isinstance(context.route, APIRoute):
            for method in context.route.methods or ():
                routes[(context.route.path_format, method.lower())] = context.route
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            route = routes.get((path, method))
            if route is None:
                continue
            auth = _auth_kind(route)
            responses = operation.setdefault("responses", {})
            for code, text in _error_responses(route, method, operation, auth).items():
                envelope = "ValidationErrorEnvelope" if code == 422 else "ErrorEnvelope"
                entry: dict[str, Any] = {
                    "description": responses.get(str(code), {}).get("description") or text,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{envelope}"}}},
                }
                if code in {429, 503}:
                    entry["headers"] = _RETRY_AFTER
                responses[str(code)] = entry
            security = _security(auth)
            if security is not None:
                operation["security"] = security
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and f'"#/components/schemas/{unused}"' not in _dumps(schema):
            del schemas[unused]
    return schema


def _dumps(value: Any) -> str:
    return json.dumps(value)


def install_openapi(app: FastAPI) -> None:
    """Serve `build_openapi(app)` at /openapi.json (built on first request, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
