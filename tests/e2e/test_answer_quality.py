"""What a reader gets offline, on the whole stack with the real book: follow-ups keep their subject,
questions the book answers are answered from the sections that explain them, answers read as prose, and
the quality figures of `bench.quality` do not fall below the levels reached."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.quality import QualityReport, evaluate, ingest_book, load_qa_set
from tests.utils.stack import Stack

# The module's first test also boots the stack and ingests the whole book with the bundled e5 model
# (~3 min here, longer on a busy CI box); pytest-timeout counts fixture setup against that test.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

#: The levels the offline run reached when they were set (docs/notes/quality.md); a drop fails CI.
FLOORS = {
    "r_at_1": 0.65,  # reached: 0.67 (46 of 69); one question of slack for ties between equal sections
    "r_at_3": 0.71,  # reached: 0.72 (50 of 69)
    "follow_up_hit_rate": 0.85,  # reached: 0.90 (18 of 20)
    "max_in_book_refusals": 6,  # reached: 6 of 69, all paraphrases
    "max_off_topic_answered": 0,  # reached: 0 of 18 (the static model vetoes what e5 alone admits)
}
ASKING_HEADINGS = re.compile(r"review questions|learning objectives|further reading|exercise|prerequisites", re.I)
MARKUP = re.compile(r"\*\*|__|`|^\s*(#|>|[-*] |\d+\. )", re.M)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One offline stack (no OpenAI key) with the book ingested through the admin API."""
    running = Stack(env={"RATE_LIMIT_CHAT": "100000/minute", "AUTO_INGEST": "false", "LOG_LEVEL": "WARNING"})
    try:
        running.start(timeout=120)
        running.wait_worker(timeout=60)
        assert ingest_book(running) > 400
        yield running
    finally:
        running.cleanup()


@pytest.fixture(scope="module")
def report(stack: Stack) -> QualityReport:
    """The offline quality run over the repo's question set."""
    return asyncio.run(evaluate(stack.base_url, load_qa_set(), label="offline"))


def _chat(client: httpx.Client, query: str, *, headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    response = client.post("/chat", json={"query": query, **extra}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _sections(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["source"], c["heading"]) for c in body["citations"]]


def _signed_in(client: httpx.Client) -> dict[str, str]:
    response = client.post(
        "/api/auth/sign-up",
        json={"email": f"q-{uuid.uuid4().hex[:10]}@example.com", "name": "Q", "password": "correct horse battery"},
    )
    assert response.status_code == 200, response.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {response.json()['token']}"}


def _assert_reads_as_prose(body: dict[str, Any]) -> None:
    """No heading-only line, no markdown markup, no code fence, each section cited once and only if quoted."""
    text = body["response"]
    assert not MARKUP.search(text), text
    assert "```" not in text
    labels = body["sources"]
    assert len(labels) == len(set(labels)), labels
    markers = [int(n) for n in re.findall(r"\[(\d+)\]", text)]
    assert sorted(set(markers)) == list(range(1, len(body["citations"]) + 1)), (markers, labels)


@pytest.mark.parametrize(
    ("first", "follow_up", "expect"),
    [
        (
            "What is Isaac Sim?",
            "What GPU does it need?",
            {
                ("week7/nvidia-isaac-sim.md", "System Requirements"),
                ("week8/nvidia-isaac-sim.md", "System Requirements"),
            },
        ),
        (
            "What is sim-to-real transfer?",
            "Give me an example.",
            {
                ("week10/sim-to-real-transfer.md", "Introduction to Sim-to-Real Transfer"),
                ("week10/sim-to-real-transfer.md", "Sim-to-Real Transfer: Bridging Simulation and Reality"),
                ("week8/nvidia-isaac-sim.md", "Sim-to-Real Transfer Techniques"),
            },
        ),
        (
            "What are ROS 2 topics?",
            "How are they different from services?",
            {
                ("week4/ros2-services-actions.md", "Introduction to Services"),
                ("week4/ros2-services-actions.md", "When to Use Each Communication Pattern"),
                ("week4/ros2-services-actions.md", "Decision Matrix"),
                ("week3/ros2-nodes-topics.md", "Topics and Publishers"),
            },
        ),
    ],
)
def test_follow_up_keeps_its_subject(stack: Stack, first: str, follow_up: str, expect: set[tuple[str, str]]) -> None:
    """The issue's follow-ups: answered (not refused), from the right sections, never from a section
    that asks; the reader's own words are stored."""
    with stack.client(timeout=30) as client:
        headers = _signed_in(client)
        opened = _chat(client, first, headers=headers)
        assert opened["session_id"], opened
        body = _chat(client, follow_up, session_id=opened["session_id"], headers=headers)
        assert body["citations"], body["response"]
        assert set(_sections(body)[:3]) & expect, (body["search_query"], _sections(body))
        assert not ASKING_HEADINGS.search(body["citations"][0]["heading"])
        _assert_reads_as_prose(body)
        response = client.get(f"/api/chat/sessions/{opened['session_id']}", headers=headers)
        assert response.status_code == 200, response.text
        stored = response.json()
        assert [m["content"] for m in stored["messages"] if m["role"] == "user"] == [first, follow_up]


@pytest.mark.parametrize(
    ("question", "expect"),
    [
        ("Tell me about LiDAR.", {"LiDAR Systems", "LiDAR Sensor", "LiDAR Sensor Configuration"}),
        pytest.param(
            "How do robots stay upright when walking?",
            {"Balance Control and Bipedal Locomotion", "Center of Mass and Zero Moment Point Control"},
            marks=pytest.mark.xfail(
                strict=True,
                reason="answered now (no longer refused), but from 'Walking Pattern Generator': the balance sections "
                "are mostly code and share no word with the question (docs/notes/quality.md)",
            ),
        ),
        ("What is Isaac Sim?", {"Introduction to NVIDIA Isaac Sim", "NVIDIA Isaac Sim Fundamentals", "Key Features"}),
        pytest.param(
            "How does ROS 2 discover nodes on the network?",
            {"DDS-Based Communication"},
            marks=pytest.mark.xfail(
                strict=True,
                reason="the DDS section never mentions discovery: linking them takes world knowledge that neither "
                "BM25 nor the small 4-bit e5 model has (docs/notes/quality.md)",
            ),
        ),
    ],
)
def test_questions_the_book_answers_are_answered_from_explaining_sections(
    stack: Stack, question: str, expect: set[str]
) -> None:
    """Once refused or answered from the wrong section; now the explaining section is among the first
    three, a section that asks is never first, and the answer reads as prose."""
    with stack.client(timeout=30) as client:
        body = _chat(client, question)
    headings = [heading for _, heading in _sections(body)]
    assert headings, body["response"]
    assert set(headings[:3]) & expect, headings
    assert not ASKING_HEADINGS.search(headings[0])
    _assert_reads_as_prose(body)


def test_off_topic_questions_are_refused(stack: Stack) -> None:
    """Offline the gate is the last word: questions outside the book get the not-covered reply."""
    with stack.client(timeout=30) as client:
        for question in (
            "What is the capital of France?",
            "How do I bake sourdough bread?",
            "Who painted the Mona Lisa?",
        ):
            body = _chat(client, question)
            assert body["citations"] == [], question
            assert "couldn't find" in body["response"]


def test_quality_does_not_regress(report: QualityReport) -> None:
    """bench.quality's offline figures stay at or above the levels reached (FLOORS)."""
    metrics = report.metrics()
    assert metrics.errors == 0
    assert metrics.questions.r_at_1 >= FLOORS["r_at_1"]
    assert metrics.questions.r_at_3 >= FLOORS["r_at_3"]
    assert metrics.follow_up_hit_rate >= FLOORS["follow_up_hit_rate"]
    assert metrics.in_book_refusals <= FLOORS["max_in_book_refusals"]
    assert metrics.off_topic_answered <= FLOORS["max_off_topic_answered"]
