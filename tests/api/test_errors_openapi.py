"""/docs and /openapi.json: every operation documents its errors (the envelope) and its auth scheme."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.utils.inprocess import make_settings, running_app


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The served OpenAPI document."""
    with running_app(make_settings(tmp_path_factory.mktemp("openapi"))) as (_app, client):
        assert client.get("/docs").status_code == 200
        response = client.get("/openapi.json")
        assert response.status_code == 200
        yield response.json()


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_error_response_is_the_envelope(schema: dict[str, Any]) -> None:
    """Every 4xx/5xx of every operation points at ErrorEnvelope (422: ValidationErrorEnvelope); 500 everywhere."""
    count = 0
    for path, method, operation in _operations(schema):
        responses = operation["responses"]
        assert "500" in responses, (method, path)
        for status, response in responses.items():
            if status.isdigit() and int(status) >= 400:
                ref = response["content"]["application/json"]["schema"]["$ref"]
                expected = "ValidationErrorEnvelope" if status == "422" else "ErrorEnvelope"
                assert ref == f"#/components/schemas/{expected}", (method, path, status)
                count += 1
    assert count > 50
    envelope = schema["components"]["schemas"]["ErrorEnvelope"]
    assert set(envelope["required"]) == {"detail", "code", "message", "request_id"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_bodies_document_413_and_limits_429(schema: dict[str, Any]) -> None:
    """Operations with a body document 413; rate-limited ones 429 with Retry-After."""
    for path, method, operation in _operations(schema):
        if "requestBody" in operation:
            assert "413" in operation["responses"], (method, path)
    for path in ("/chat", "/api/chat/stream", "/translate", "/translate/batch", "/adjust-content"):
        if path in schema["paths"]:
            limited = schema["paths"][path]["post"]["responses"]["429"]
            assert "Retry-After" in limited["headers"]


def test_auth_schemes_declared_and_applied(schema: dict[str, Any]) -> None:
    """Bearer, cookie and admin key are declared; admin, signed-in and optional routes say which they take."""
    schemes = schema["components"]["securitySchemes"]
    assert schemes["SessionBearer"] == {**schemes["SessionBearer"], "type": "http", "scheme": "bearer"}
    assert schemes["SessionCookie"]["in"] == "cookie"
    assert schemes["SessionCookie"]["name"] == "better-auth.session_token"
    assert schemes["AdminApiKey"]["in"] == "header"
    assert schemes["AdminApiKey"]["name"] == "X-API-Key"
    paths = schema["paths"]
    if "/api/ingest" in paths:
        assert paths["/api/ingest"]["post"]["security"] == [{"AdminApiKey": []}]
        assert "401" in paths["/api/ingest"]["post"]["responses"]
    if "/api/chat/sessions" in paths:
        assert paths["/api/chat/sessions"]["get"]["security"] == [{"SessionBearer": []}, {"SessionCookie": []}]
    if "/chat" in paths:
        assert {} in paths["/chat"]["post"]["security"]
    assert "security" not in paths["/health"]["get"]
