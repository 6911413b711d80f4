"""One error envelope for every error path (in-process app, real Redis and SQLite)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from shared.platform.errors import Conflict, RateLimited, UpstreamUnavailable
from tests.utils.inprocess import captured_log, make_settings, running_app

SECRET = "sk-envelope-marker-7f3a9c"
ENVELOPE_KEYS = {"detail", "code", "message", "request_id"}


class Echo(BaseModel):
    """A small body for validation tests."""

    text: str = Field(min_length=1, max_length=50)
    count: int = 1


def _extend(app: FastAPI) -> None:
    async def echo(body: Echo) -> dict[str, Any]:
        return body.model_dump()

    async def boom() -> None:
        raise RuntimeError(f"database password is {SECRET}")

    async def conflict() -> None:
        raise Conflict("Already there.", code="USER_ALREADY_EXISTS")

    async def limited() -> None:
        raise RateLimited(retry_after=7.2)

    async def upstream() -> None:
        raise UpstreamUnavailable(upstream="openai", retry_after=3)

    async def broken_stream() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b'event: meta\ndata: {"session_id": null}\n\n'
            raise RuntimeError(f"stream died holding {SECRET}")

        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_api_route("/_t/echo", echo, methods=["POST"])
    app.add_api_route("/_t/boom", boom, methods=["GET"])
    app.add_api_route("/_t/conflict", conflict, methods=["GET"])
    app.add_api_route("/_t/limited", limited, methods=["GET"])
    app.add_api_route("/_t/upstream", upstream, methods=["GET"])
    app.add_api_route("/_t/stream", broken_stream, methods=["GET"])


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app with test-only routes that fail in every way."""
    settings = make_settings(tmp_path_factory.mktemp("errors"), OPENAI_API_KEY=SECRET)
    with running_app(settings, extend=_extend) as (_app, test_client):
        yield test_client


def assert_envelope(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` with the envelope, its request id equal to the X-Request-ID header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= ENVELOPE_KEYS, body
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["message"] == body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert body["code"] == code
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "server" not in response.headers
    return body


def test_unknown_path_is_404_envelope(client: TestClient) -> None:
    """An unknown path answers 404 in the envelope."""
    assert_envelope(client.get("/no/such/path"), 404, "not_found")


def test_wrong_method_is_405_envelope(client: TestClient) -> None:
    """A wrong method answers 405 in the envelope and keeps the Allow header."""
    response = client.delete("/_t/echo")
    assert_envelope(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_validation_error_lists_fields(client: TestClient) -> None:
    """A schema violation is 422 with one `errors` entry per field, detail a string."""
    body = assert_envelope(client.post("/_t/echo", json={"text": "", "count": "x"}), 422, "validation_error")
    locs = [tuple(e["loc"]) for e in body["errors"]]
    assert ("body", "text") in locs
    assert ("body", "count") in locs
    assert all(isinstance(e["msg"], str) for e in body["errors"])


def test_malformed_json_is_422(client: TestClient) -> None:
    """A body that is not JSON is 422 'not valid JSON'."""
    response = client.post("/_t/echo", content=b'{"text": "a",', headers={"content-type": "application/json"})
    body = assert_envelope(response, 422, "validation_error")
    assert "not valid JSON" in body["detail"]


def test_invalid_utf8_is_4xx_envelope(client: TestClient) -> None:
    """Bytes that are not UTF-8 are refused in the envelope, not a 500."""
    response = client.post(
        "/_t/echo", content=b'{"text": "\xff\xfe\xfa"}', headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500
    assert_envelope(response, response.status_code)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_wrong_content_type_is_422(client: TestClient, content_type: str) -> None:
    """A JSON endpoint given another content type answers 422 in the envelope."""
    response = client.post("/_t/echo", content=b'{"text": "hi"}', headers={"content-type": content_type})
    assert_envelope(response, 422, "validation_error")


def test_deeply_nested_json_is_4xx(client: TestClient) -> None:
    """JSON nested 100k levels deep is refused with a 4xx envelope (no RecursionError 500)."""
    depth = 100_000
    response = client.post(
        "/_t/echo", content=b"[" * depth + b"]" * depth, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert_envelope(response, response.status_code)


def test_unexpected_exception_is_generic_500_and_logged(client: TestClient) -> None:
    """An unexpected exception: generic 500 body; the traceback is logged with the request id, secret-free."""
    with captured_log() as log:
        response = client.get("/_t/boom", headers={"X-Request-ID": "boom-req-1"})
    body = assert_envelope(response, 500, "internal_error")
    assert body["request_id"] == "boom-req-1"
    assert "RuntimeError" not in response.text
    assert SECRET not in response.text
    err = log.getvalue()
    lines = [json.loads(line) for line in err.splitlines() if "request.unhandled_exception" in line]
    assert lines, err
    assert lines[0]["request_id"] == "boom-req-1"
    assert "Traceback" in lines[0]["exception"]
    assert "RuntimeError" in lines[0]["exception"]
    assert SECRET not in err


def test_domain_errors_keep_code_and_headers(client: TestClient) -> None:
    """Domain errors map to their status, code and Retry-After."""
    assert_envelope(client.get("/_t/conflict"), 409, "USER_ALREADY_EXISTS")
    limited = client.get("/_t/limited")
    assert_envelope(limited, 429, "rate_limited")
    assert limited.headers["retry-after"] == "8"
    upstream = client.get("/_t/upstream")
    assert_envelope(upstream, 503, "upstream_unavailable")
    assert upstream.headers["retry-after"] == "3"


def test_error_inside_stream_ends_with_sse_error_event(client: TestClient) -> None:
    """An exception after an SSE stream started ends it with an `error` event, logged, secret-free."""
    with captured_log() as log, client.stream("GET", "/_t/stream") as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert text.startswith("event: meta")
    last = text.strip().split("\n\n")[-1]
    assert last.startswith("event: error")
    payload = json.loads(last.split("data: ", 1)[1])
    assert payload == {"code": "internal_error", "detail": payload["detail"]}
    assert SECRET not in text
    err = log.getvalue()
    assert "request.unhandled_exception" in err
    assert "Traceback" in err
    assert SECRET not in err


def test_oversized_body_with_content_length_is_413(client: TestClient) -> None:
    """A declared Content-Length over 1 MiB is refused with 413 before the body is read."""
    response = client.post("/_t/echo", content=b"x" * (1024 * 1024 + 1), headers={"content-type": "application/json"})
    assert_envelope(response, 413, "payload_too_large")


def test_oversized_chunked_body_is_413(client: TestClient) -> None:
    """A chunked body (no Content-Length) over 1 MiB is refused with 413 while it is read."""

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"y" * 65536

    response = client.post("/_t/echo", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_envelope(response, 413, "payload_too_large")


def test_body_under_limit_passes(client: TestClient) -> None:
    """A body just under the limit reaches the route (the limit does not refuse honest requests)."""
    padding = " " * (1024 * 1024 - 100)
    body = f'{{"text": "ok"{padding}}}'.encode()
    response = client.post("/_t/echo", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json() == {"text": "ok", "count": 1}


def test_huge_headers_are_431_envelope(client: TestClient) -> None:
    """Request headers over 16 KiB in total are refused with 431 in the envelope, before any route runs."""
    response = client.post("/_t/echo", json={"text": "hi"}, headers={"X-Padding": "a" * 20_000})
    assert_envelope(response, 431, "headers_too_large")
    many = {f"X-H{i}": "b" * 200 for i in range(100)}
    assert_envelope(client.get("/", headers=many), 431, "headers_too_large")
    assert client.get("/", headers={"X-Padding": "a" * 4000}).status_code == 200


def test_stream_error_payload_is_safe() -> None:
    """SSE error payloads keep a domain error's code and detail and hide anything else."""
    from api.errors import stream_error_payload

    assert stream_error_payload(RateLimited(retry_after=2)) == {
        "code": "rate_limited",
        "detail": "Too many requests. Please slow down.",
    }
    hidden = stream_error_payload(RuntimeError(f"boom {SECRET}"))
    assert hidden["code"] == "internal_error"
    assert SECRET not in hidden["detail"]
