"""Schemathesis against the running stack's /openapi.json: no 5xx, nothing outside the documented schema.

Bounded: examples + coverage + fuzzing phases, at most 30 generated cases per operation, fixed seed,
signed in and with the admin key so the protected operations are exercised too (about 15 s).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.utils.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ADMIN_KEY = "schemathesis-admin-key-1"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


@pytest.fixture(scope="module")
def stack(fake_openai: FakeOpenAI) -> Iterator[Stack]:
    """A stack with a (fake) LLM, an admin key and a rate limit high enough not to mask the logic."""
    fake_openai.reset()
    env = {
        "OPENAI_API_KEY": "sk-schemathesis-key",
        "OPENAI_BASE_URL": fake_openai.url,
        "ADMIN_API_KEY": ADMIN_KEY,
        "RATE_LIMIT_CHAT": "100000/minute",
        "RATE_LIMIT_SIGN_UP": "100000/hour",
    }
    with Stack(env=env) as running:
        yield running


def test_schemathesis_finds_no_5xx_and_no_schema_violation(stack: Stack, tmp_path: Path) -> None:
    """Every generated request gets a documented status, content type, headers and body; never a 5xx."""
    signed = httpx.post(
        stack.url("/api/auth/sign-up"),
        json={"email": "fuzz@example.com", "name": "Fuzz", "password": "fuzz-password-1"},
    )
    assert signed.status_code == 200, signed.text
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        stack.url("/openapi.json"),
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "30",
        "--seed",
        "20261126",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--generation-with-security-parameters",
        "false",
        "-H",
        f"Authorization: Bearer {signed.json()['token']}",
        "-H",
        f"X-API-Key: {ADMIN_KEY}",
        "--report-dir",
        str(tmp_path),
        "--no-color",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path)
    summary = run.stdout[-4000:]
    assert run.returncode == 0, summary + run.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated, summary
    assert int(generated.group(1)) >= 300
    assert generated.group(1) == generated.group(2)
    assert "request.unhandled_exception" not in stack.output()
    assert '"status": 500' not in stack.output()
