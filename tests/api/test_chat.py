"""POST /chat in-process over the real corpus (local Qdrant, SQLite, Redis) with the fake LLM."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from shared.answers.answering import LEVELS, LLM_DOWN_NOTE, NOT_COVERED
from shared.platform.clients import Services
from shared.platform.upstreams import Upstream
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.chat_corpus import app_client, client, corpus_store, sign_up

__all__ = ["app_client", "client", "corpus_store"]

SEPARATOR = "\u203a"


def _chat_requests(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return fake.requests_to("/chat/completions")


def _flat(text: str) -> str:
    return " ".join(text.split())


async def test_in_chapter_question_cites_the_chapter_and_prompts_its_passage(
    client: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    """A question answered in week 4 cites week 4, and the model's prompt carried that passage."""
    response = await client.post("/chat", json={"query": "How do ROS 2 actions differ from services?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"response", "session_id", "sources", "citations", "mode"}
    assert body["mode"] == "generative"
    assert body["session_id"] is None  # anonymous: nothing stored
    assert body["response"].startswith("According to the book [1]")
    citations = body["citations"]
    assert citations
    assert citations[0]["source"] == "week4/ros2-services-actions.md"
    for citation in citations:
        assert set(citation) == {"source", "title", "heading", "url", "score", "snippet"}
        assert citation["url"].startswith("https://physical-ai-textbook.vercel.app/docs/")
    assert body["sources"] == [
        f"{c['title']} {SEPARATOR} {c['heading']}" if c["heading"] not in ("", c["title"]) else c["title"]
        for c in citations
    ]
    assert all(isinstance(s, str) for s in body["sources"])
    [upstream] = _chat_requests(fake_openai)
    prompt = _flat(upstream["body"]["messages"][-1]["content"])
    for number, citation in enumerate(citations, start=1):
        assert f"[{number}] {body['sources'][number - 1]}" in prompt
        assert citation["snippet"].removesuffix("…") in prompt


async def test_off_topic_question_is_not_covered(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """'best pizza in Naples': no citations, the not-covered reply, and no model call."""
    response = await client.post("/chat", json={"query": "best pizza in Naples"})
    assert response.status_code == 200
    body = response.json()
    assert body["citations"] == []
    assert body["sources"] == []
    assert body["response"] == NOT_COVERED
    assert _chat_requests(fake_openai) == []


async def test_signed_in_exchange_is_stored_with_history_and_level(
    client: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    """A beginner's first question starts a session; the second sees the first as history."""
    auth = await sign_up(client, proficiency="beginner")
    first = await client.post("/chat", json={"query": "What is embodied intelligence?"}, headers=auth)
    session_id = first.json()["session_id"]
    assert session_id
    system = _chat_requests(fake_openai)[0]["body"]["messages"][0]["content"]
    assert LEVELS["beginner"] in system
    second = await client.post(
        "/chat",
        json={"query": "How do ROS 2 nodes communicate using topics?", "session_id": session_id},
        headers=auth,
    )
    assert second.json()["session_id"] == session_id
    messages = _chat_requests(fake_openai)[1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "What is embodied intelligence?"
    assert messages[2]["content"] == first.json()["response"]
    listing = (await client.get("/api/chat/sessions", headers=auth)).json()
    assert listing["total"] == 1
    assert listing["sessions"][0]["message_count"] == 4
    assert listing["sessions"][0]["title"] == "What is embodied intelligence?"
    assert listing["sessions"][0]["is_active"] is True


async def test_someone_elses_or_unknown_session_is_404(client: httpx.AsyncClient) -> None:
    """A session id of another reader, or none at all, is 404 in the envelope."""
    owner = await sign_up(client)
    other = await sign_up(client)
    session_id = (await client.post("/chat", json={"query": "What is embodied intelligence?"}, headers=owner)).json()[
        "session_id"
    ]
    for headers, sid in ((other, session_id), (owner, "no-such-session")):
        response = await client.post(
            "/chat", json={"query": "What is embodied intelligence?", "session_id": sid}, headers=headers
        )
        assert response.status_code == 404
        assert response.json()["code"] == "session_not_found"
        assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize(
    "body",
    [{"query": ""}, {"query": "   "}, {"query": "x" * 4001}, {"query": "ok?", "selected_text": "y" * 10_001}, {}],
)
async def test_input_limits_are_422(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    """Query 1..4000 characters and selected_text <= 10000, else 422 with `errors`."""
    response = await client.post("/chat", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["errors"]


async def test_selected_text_is_primary_context(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """Selected text goes into the prompt first and steers retrieval to its chapter."""
    selected = (
        "Sim-to-real transfer refers to the process of taking policies learned in simulation and deploying "
        "them on physical robots; the reality gap is the difference between simulated and real conditions."
    )
    response = await client.post("/chat", json={"query": "Explain this simply", "selected_text": selected})
    body = response.json()
    assert body["citations"][0]["source"] == "week10/sim-to-real-transfer.md"
    prompt = _chat_requests(fake_openai)[0]["body"]["messages"][-1]["content"]
    assert prompt.index(selected) < prompt.index("Book passages:")


async def test_open_llm_breaker_falls_back_to_extractive(
    app_client: tuple[FastAPI, httpx.AsyncClient], client: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    """With the openai breaker open the answer quotes the passages, cited, and says the model is down."""
    services: Services = app_client[0].state.services
    for _ in range(services.settings.circuit_failure_threshold):
        await services.resilience.record_failure(Upstream.OPENAI, ConnectionError("upstream down"))
    assert services.resilience.is_open(Upstream.OPENAI)
    response = await client.post("/chat", json={"query": "What is NVIDIA Isaac Sim?"})
    body = response.json()
    assert response.status_code == 200
    assert body["mode"] == "extractive"
    assert body["response"].startswith(LLM_DOWN_NOTE)
    assert body["citations"]
    assert "[1]" in body["response"]
    assert "\n> " not in body["response"]
    assert _chat_requests(fake_openai) == []


async def test_rejected_llm_key_is_a_clear_503(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """A model that rejects our key (401) is the operator's problem: 503 naming OPENAI_API_KEY, no fallback."""
    fake_openai.configure(fault="401")
    response = await client.post("/chat", json={"query": "What is NVIDIA Isaac Sim?"})
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"
    assert "OPENAI_API_KEY" in response.json()["detail"]
    assert "sk-test" not in response.text


async def test_blank_selection_is_no_selection(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """Whitespace-only selected text (or null) behaves like none: off-topic is still not covered."""
    for selected in ("   \n", None):
        body = (await client.post("/chat", json={"query": "best pizza in Naples", "selected_text": selected})).json()
        assert body["response"] == NOT_COVERED
    assert _chat_requests(fake_openai) == []
