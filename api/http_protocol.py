"""Uvicorn's h11 protocol, except that requests h11 refuses get the JSON error envelope.

h11 rejects a request before any ASGI code runs: header block over 16 KiB ("Receive buffer too long",
status hint 431), malformed request line or header, bad Content-Length... Uvicorn then answers a bare
`400 Invalid HTTP request received.` in text/plain. This subclass answers the status h11 suggests (431 for
oversized headers, else 400) with `{"detail", "code", "message", "request_id"}`, the security headers and
`Connection: close`. The Gunicorn worker (`api.uvicorn_worker`) selects it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.middleware import SECURITY_HEADERS

_DETAILS = {
    431: ("headers_too_large", "The request headers are too large."),
    400: ("bad_request", "The HTTP request is malformed."),
}


class _RecordingConnection(h11.Connection):
    """An h11 connection that remembers the last protocol error it raised."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        """h11's next event, recording a RemoteProtocolError before re-raising it."""
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


class EnvelopeH11Protocol(H11Protocol):
    """H11Protocol whose protocol-error answer is the JSON envelope with h11's status hint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _RecordingConnection(h11.SERVER, self.config.h11_max_incomplete_event_size or 16 * 1024)

    def send_400_response(self, msg: str) -> None:
        """Answer the refused request with the envelope (431 or 400) and close the connection."""
        error = getattr(self.conn, "last_error", None)
        status = getattr(error, "error_status_hint", 400)
        status = status if status in _DETAILS else 400
        code, detail = _DETAILS[status]
        request_id = uuid.uuid4().hex
        body = json.dumps({"detail": detail, "code": code, "message": detail, "request_id": request_id}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"connection", b"close"),
            (b"x-request-id", request_id.encode()),
            *((name.encode(), value.encode()) for name, value in SECURITY_HEADERS),
        ]
        if self.conn.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
            reason = b"Request Header Fields Too Large" if status == 431 else b"Bad Request"
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason)))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()
