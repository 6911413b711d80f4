"""Domain errors, mapped to the JSON error envelope by `api.errors` and to arq outcomes by the worker.

    LecternError                      500 internal_error
    ├── BadRequest                    400 bad_request
    ├── Unauthorized                  401 unauthorized
    ├── Forbidden                     403 forbidden
    ├── NotFound                      404 not_found
    ├── Conflict                      409 conflict
    ├── PayloadTooLarge               413 payload_too_large
    ├── InvalidInput                  422 validation_error
    ├── RateLimited                   429 rate_limited        (Retry-After)
    └── UpstreamUnavailable           503 upstream_unavailable (Retry-After)
        ├── LlmUnavailable            503 llm_unavailable     (no LLM configured)
        └── UpstreamMisconfigured     503 upstream_unavailable (credentials rejected)

Every error carries a human-readable `detail` that is safe to show a client: no secrets, hosts with
credentials, SQL or tracebacks.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "LecternError",
    "LlmUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Unauthorized",
    "UpstreamMisconfigured",
    "UpstreamUnavailable",
]


class LecternError(Exception):
    """Base of every error the service raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"
    default_detail: str = "Something went wrong on our side. Please try again."

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.detail)


class BadRequest(LecternError):
    """The request is well-formed but cannot be honoured."""

    status_code = 400
    code = "bad_request"
    default_detail = "The request cannot be processed."


class Unauthorized(LecternError):
    """Authentication is missing or invalid."""

    status_code = 401
    code = "unauthorized"
    default_detail = "Sign in to continue."


class Forbidden(LecternError):
    """Authenticated but not allowed."""

    status_code = 403
    code = "forbidden"
    default_detail = "You are not allowed to do this."


class NotFound(LecternError):
    """The resource does not exist (or belongs to someone else)."""

    status_code = 404
    code = "not_found"
    default_detail = "Not found."


class Conflict(LecternError):
    """The resource already exists."""

    status_code = 409
    code = "conflict"
    default_detail = "This already exists."


class PayloadTooLarge(LecternError):
    """The request body is over the limit."""

    status_code = 413
    code = "payload_too_large"
    default_detail = "The request body is too large."


class InvalidInput(LecternError):
    """Input failed domain validation (beyond schema validation)."""

    status_code = 422
    code = "validation_error"
    default_detail = "The request is invalid."


class RateLimited(LecternError):
    """Too many requests; `retry_after` seconds until the next one is allowed."""

    status_code = 429
    code = "rate_limited"
    default_detail = "Too many requests. Please slow down."

    def __init__(self, detail: str | None = None, *, retry_after: float = 1.0, **kwargs: object) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))
        headers = {"Retry-After": str(self.retry_after)}
        super().__init__(detail, headers=headers, **kwargs)  # type: ignore[arg-type]


class UpstreamUnavailable(LecternError):
    """An upstream (OpenAI, Qdrant, PostgreSQL) is failing or its circuit is open."""

    status_code = 503
    code = "upstream_unavailable"
    default_detail = "A service we depend on is temporarily unavailable. Please try again shortly."

    def __init__(
        self,
        detail: str | None = None,
        *,
        upstream: str = "",
        retry_after: float = 5.0,
        **kwargs: object,
    ) -> None:
        self.upstream = upstream
        self.retry_after = max(1, int(retry_after + 0.999))
        super().__init__(detail, headers={"Retry-After": str(self.retry_after)}, **kwargs)  # type: ignore[arg-type]


class LlmUnavailable(UpstreamUnavailable):
    """No LLM is configured (offline mode), so generative features are off."""

    code = "llm_unavailable"
    default_detail = "This feature needs a language model, and none is configured on this server."


class UpstreamMisconfigured(UpstreamUnavailable):
    """An upstream rejected our credentials: a configuration error, not an outage."""

    default_detail = "A service we depend on rejected our credentials. The operator has been notified."
