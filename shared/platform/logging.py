"""structlog set-up: JSON in production, console locally, configured once per process.

`configure_logging(settings, role=...)` is called by each process entry point (API factory, arq worker,
CLI, start script). Request and job ids are bound through contextvars (`bind_context`), so every event
logged while handling a request or a job carries them. A redaction processor removes configured secret
values and bearer tokens from every event, whatever logger produced it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars
from structlog.typing import EventDict, Processor

from shared.platform.config import Settings

__all__ = ["Redactor", "ScrubbingFormatter", "bind_context", "clear_context", "configure_logging", "get_logger"]

#: Each token pattern with the substrings one of which any text it matches contains (lower-cased): on
#: ASCII text, a pattern none of whose hints occurs cannot match, so it is not run. Most log values
#: (levels, timestamps, event names) have no hint at all; a line with a `first_token_ms` key runs one
#: pattern instead of five.
_TOKEN_RULES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), ("bearer",)),
    (re.compile(r"(?i)(session_token=)[^;\s\"',]+"), ("session_token=",)),
    # user:password@ in any URL (postgresql+psycopg://, redis://:pw@, https://user:pw@...).
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(@)"), ("://",)),
    (re.compile(r"(?i)(sk-)[A-Za-z0-9_-]{6,}"), ("sk-",)),
    (
        re.compile(
            r"(?i)((?:x-api-key|api[_-]?key|access_?token|token|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]{6,}"
        ),
        ("apikey", "api_key", "api-key", "token", "password", "secret"),
    ),
)
_TOKEN_PATTERNS = tuple(pattern for pattern, _ in _TOKEN_RULES)
_TOKEN_HINTS = tuple(hint for _, hints in _TOKEN_RULES for hint in hints)
#: Event keys whose values are never logged, whatever they hold.
_SENSITIVE_KEY = re.compile(
    r"(?i)(^|_)(password|passwd|secret|token|access_token|authorization|api_key|apikey|cookie|set_cookie)s?$"
)
#: Keys structlog and the stdlib bridge use for objects that must reach the renderer unchanged.
_PASSTHROUGH_KEYS = frozenset({"exc_info", "_record", "_from_structlog", "stack_info"})
REDACTED = "***"


class Redactor:
    """A structlog processor that scrubs secret values and token-looking strings from an event.

    It runs before rendering (on every value, nested ones included; sensitive key names are blanked)
    and again on the rendered line (`ScrubbingFormatter`), which covers tracebacks and lines from
    uvicorn, gunicorn, arq and any other stdlib logger. Secrets are matched raw and JSON-escaped.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if secret:
                variants.add(secret)
                variants.add(json.dumps(secret)[1:-1])
                variants.add(quote(secret, safe=""))
        self._secrets = sorted(variants, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """Return `text` with every known secret and token pattern replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        # ASCII only: `re.IGNORECASE` also folds a few non-ASCII letters onto ASCII ones (long s onto "s").
        if not text.isascii():
            return scrub_token_patterns(text)
        lowered = text.lower()
        if not any(hint in lowered for hint in _TOKEN_HINTS):
            return text
        for pattern, hints in _TOKEN_RULES:
            if any(hint in lowered for hint in hints):
                text = pattern.sub(_redact_match, text)
        return text

    def _scrub_value(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float):  # most values: nothing to scrub
            return value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: REDACTED if _is_sensitive(k, v) else self._scrub_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._scrub_value(v) for v in value]
        if isinstance(value, bytes):
            return self.scrub(value.decode("utf-8", "replace"))
        if isinstance(value, BaseException):
            return self.scrub(repr(value))
        return self.scrub(str(value))

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        for key, value in list(event_dict.items()):
            if key in _PASSTHROUGH_KEYS:
                continue
            event_dict[key] = REDACTED if _is_sensitive(key, value) else self._scrub_value(value)
        return event_dict


def scrub_token_patterns(text: str) -> str:
    """`text` with every token-looking match of `_TOKEN_PATTERNS` replaced (no shortcut)."""
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(_redact_match, text)
    return text


def _redact_match(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED + (match.group(2) if match.lastindex == 2 else "")


def _is_sensitive(key: Any, value: Any) -> bool:
    return isinstance(key, str) and _is_sensitive_key(key) and isinstance(value, str | bytes) and bool(value)


@functools.lru_cache(maxsize=1024)
def _is_sensitive_key(key: str) -> bool:
    # Event keys are few (the code's own names), so each is matched once per process.
    return bool(_SENSITIVE_KEY.search(key))


class ScrubbingFormatter(structlog.stdlib.ProcessorFormatter):
    """The root handler's formatter: renders the event, then scrubs the finished line once more."""

    def __init__(self, *args: Any, redactor: Redactor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        """Render and scrub (a failure to render still yields a scrubbed line, never the raw one)."""
        return self.redactor.scrub(super().format(record))


def _render_exception_then_scrub(redactor: Redactor) -> Processor:
    def processor(logger: Any, method: str, event_dict: EventDict) -> EventDict:
        exc = event_dict.get("exception")
        if isinstance(exc, str):
            event_dict["exception"] = redactor.scrub(exc)
        return event_dict

    return processor


_configured = False


def configure_logging(settings: Settings, *, role: str, extra_secrets: Iterable[str] = ()) -> None:
    """Configure structlog and the standard library's logging for this process (idempotent per process)."""
    global _configured
    redactor = Redactor([*settings.secret_values(), *extra_secrets])
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process(role),
        redactor,
    ]
    json_output = settings.effective_log_format == "json"
    renderer: Processor
    if json_output:
        renderer = structlog.processors.JSONRenderer()
        final: list[Processor] = [
            structlog.processors.format_exc_info,
            _render_exception_then_scrub(redactor),
            renderer,
        ]
    else:
        final = [
            structlog.processors.format_exc_info,
            _render_exception_then_scrub(redactor),
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ]
    formatter = ScrubbingFormatter(
        redactor=redactor,
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn", "gunicorn.error", "arq"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers[:] = []
        lib_logger.propagate = True
    # Another configuration in this process (uvicorn.Config, a dictConfig) may have left levels or
    # disabled flags behind on these libraries' loggers; this function owns the process's logging.
    managed = ("uvicorn", "gunicorn", "arq")
    for name, existing in list(logging.root.manager.loggerDict.items()):
        if isinstance(existing, logging.Logger) and name.split(".")[0] in managed:
            existing.setLevel(logging.NOTSET)
            existing.disabled = False
    # Access lines are emitted by our middleware with the request id; uvicorn's would duplicate them.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "aiosqlite", "asyncio", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        # Level filtering first: a filtered-out event costs no processing (no redaction, no timestamp).
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _configured = True


def _add_process(role: str) -> Processor:
    def processor(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("role", role)
        event_dict.setdefault("pid", os.getpid())
        return event_dict

    return processor


def get_logger(name: str | None = None) -> Any:
    """A structlog logger (events with key-values)."""
    return structlog.get_logger(name)


def bind_context(**values: Any) -> None:
    """Bind key-values (request_id, job_id, ...) to every event logged in this context."""
    bind_contextvars(**values)


def clear_context() -> None:
    """Forget the values bound in this context."""
    clear_contextvars()
