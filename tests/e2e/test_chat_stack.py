"""Chat on the whole supervisord stack: corpus ingested through the API, answers through Gunicorn and the
worker's vector-store RPC (embedded Qdrant), streams cancelled end to end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.utils.chat_corpus import CORPUS
from tests.utils.stack import Stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(fake_openai: FakeOpenAI) -> Iterator[Stack]:
    """One stack for the module, with the textbook ingested through POST /api/ingest."""
    fake_openai.reset()
    running = Stack(
        env={
            "OPENAI_API_KEY": "sk-e2e-chat-key",
            "OPENAI_BASE_URL": fake_openai.url,
            "RATE_LIMIT_CHAT": "100000/minute",
            "AUTO_INGEST": "false",
        }
    )
    try:
        running.start(timeout=120)
        running.wait_worker(timeout=60)
        documents = [
            {"source": path.relative_to(CORPUS).as_posix(), "content": path.read_text(encoding="utf-8")}
            for path in sorted(CORPUS.rglob("*.md"))
        ]
        with running.client(timeout=60) as client:
            response = client.post("/api/ingest", json={"documents": documents})
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            wait_for(
                lambda: client.get(f"/api/ingest/jobs/{job_id}").json()["status"] == "succeeded",
                timeout=240,
                interval=0.5,
                message="ingestion of the corpus",
            )
        yield running
    finally:
        running.cleanup()


def test_in_chapter_question_is_cited_and_prompted(stack: Stack, fake_openai: FakeOpenAI) -> None:
    """Through the real stack, the chapter is cited and its passage reached the model's prompt."""
    fake_openai.reset()
    with stack.client() as client:
        body = client.post("/chat", json={"query": "How do ROS 2 actions differ from services?"}).json()
    assert body["mode"] == "generative"
    assert body["citations"][0]["source"] == "week4/ros2-services-actions.md"
    assert all(isinstance(s, str) for s in body["sources"])
    [request] = fake_openai.requests_to("/chat/completions")
    prompt = " ".join(request["body"]["messages"][-1]["content"].split())
    assert body["citations"][0]["snippet"].removesuffix("…") in prompt


def test_off_topic_is_not_covered(stack: Stack) -> None:
    """No citations and the not-covered reply for a question outside the book."""
    with stack.client() as client:
        body = client.post("/chat", json={"query": "best pizza in Naples"}).json()
    assert body["citations"] == []
    assert body["sources"] == []
    assert "couldn't find" in body["response"]


def test_stream_and_disconnect_through_gunicorn(stack: Stack, fake_openai: FakeOpenAI) -> None:
    """A full stream ends with done; an abandoned one is cancelled upstream."""
    fake_openai.reset()
    fake_openai.configure(tokens=8)
    with stack.client() as client:
        with client.stream("POST", "/api/chat/stream", json={"query": "What is NVIDIA Isaac Sim?"}) as response:
            assert response.headers["x-accel-buffering"] == "no"
            kinds = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
        assert kinds[:2] == ["meta", "citations"]
        assert kinds[-1] == "done"
        fake_openai.reset()
        fake_openai.configure(tokens=60, token_delay_ms=100)
        with client.stream("POST", "/api/chat/stream", json={"query": "What is NVIDIA Isaac Sim?"}) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and "text" in json.loads(line[6:]):
                    break
    deadline = time.monotonic() + 15
    while fake_openai.state.cancelled_streams < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fake_openai.state.cancelled_streams == 1


def test_openai_compatible_models(stack: Stack) -> None:
    """GET /v1/models answers on the stack."""
    models = httpx.get(stack.url("/v1/models"), timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["lectern"]


def test_programs_run_with_one_blas_thread(stack: Stack) -> None:
    """The API and the worker run with one BLAS thread: numpy's OpenBLAS otherwise busy-waits on every
    core after each vector search (~100 ms of CPU per query, taken from the API on a 2-core Space)."""
    states = stack.program_states()
    for program in ("api", "worker"):
        pid = states[program][1]
        assert pid is not None, states
        environ = dict(
            item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item
        )
        assert environ.get(b"OPENBLAS_NUM_THREADS") == b"1", program
        assert environ.get(b"OMP_NUM_THREADS") == b"1", program
