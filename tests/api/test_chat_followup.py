"""Follow-ups online, in-process over the real corpus with the fake model: one short rewrite call per
follow-up and none for a question that stands alone; a failing rewrite falls back to the rule; the model
may decline, and a declined answer cites nothing."""

from __future__ import annotations

from typing import Any

import httpx

from shared.answers.answering import NOT_COVERED
from shared.answers.followup import REWRITE_MAX_TOKENS, REWRITE_SYSTEM_PROMPT
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.chat_corpus import app_client, client, corpus_store, sign_up
from tests.utils.sse import iter_events

__all__ = ["app_client", "client", "corpus_store"]

ISAAC_SIM = {"week7/nvidia-isaac-sim.md", "week8/nvidia-isaac-sim.md"}


def _rewrites(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [
        r for r in fake.requests_to("/chat/completions") if r["body"]["messages"][0]["content"] == REWRITE_SYSTEM_PROMPT
    ]


async def _stream(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """meta, citations and the answer of one streamed turn."""
    async with client.stream("POST", "/api/chat/stream", json=body, headers=headers) as response:
        assert response.status_code == 200
        events = [e async for e in iter_events(response)]
    assert events[-1].event == "done", events[-1]
    return {
        "meta": events[0].json(),
        "citations": events[1].json(),
        "text": "".join(e.json()["text"] for e in events if e.event == "delta"),
        "done": events[-1].json(),
    }


async def test_first_question_costs_no_rewrite_and_follow_up_costs_one(
    client: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    """A standalone first question makes no rewrite call; its follow-up makes exactly one short call, and
    retrieval searches the rewritten query (announced in `meta.search_query`), while the reader's own words
    are what is stored."""
    headers = await sign_up(client)
    first = await _stream(client, {"query": "What is Isaac Sim?"}, headers)
    assert _rewrites(fake_openai) == []
    assert "search_query" not in first["meta"]

    fake_openai.configure(rewrite_reply="Isaac Sim GPU requirements RTX")
    follow = await _stream(
        client, {"query": "What GPU does it need?", "session_id": first["meta"]["session_id"]}, headers
    )
    [rewrite] = _rewrites(fake_openai)
    assert rewrite["body"]["max_tokens"] == REWRITE_MAX_TOKENS
    assert "What is Isaac Sim?" in rewrite["body"]["messages"][-1]["content"]
    assert follow["meta"]["search_query"] == "Isaac Sim GPU requirements RTX"
    assert {c["source"] for c in follow["citations"][:2]} <= ISAAC_SIM

    session = (await client.get(f"/api/chat/sessions/{first['meta']['session_id']}", headers=headers)).json()
    questions = [m["content"] for m in session["messages"] if m["role"] == "user"]
    assert questions == ["What is Isaac Sim?", "What GPU does it need?"]


async def test_failing_rewrite_falls_back_to_the_rule(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """A rewrite call that fails does not fail the turn: the rule resolves the follow-up instead."""
    headers = await sign_up(client)
    first = (await client.post("/chat", json={"query": "What is Isaac Sim?"}, headers=headers)).json()
    fake_openai.configure(rewrite_fault="500")
    response = await client.post(
        "/chat", json={"query": "What GPU does it need?", "session_id": first["session_id"]}, headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(_rewrites(fake_openai)) == 1
    assert body["search_query"] == "What GPU does it need? Isaac Sim"
    assert body["mode"] == "generative"
    assert body["citations"][0]["source"] in ISAAC_SIM


async def test_openai_compatible_history_retrieves_for_the_rewritten_question(
    client: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    """`/v1/chat/completions` rewrites its last user message with the earlier ones before retrieving."""
    fake_openai.configure(rewrite_reply="NVIDIA Isaac Sim system requirements GPU")
    messages = [
        {"role": "user", "content": "What is Isaac Sim?"},
        {"role": "assistant", "content": "A robotics simulator [1]."},
        {"role": "user", "content": "What GPU does it need?"},
    ]
    body = (await client.post("/v1/chat/completions", json={"model": "lectern", "messages": messages})).json()
    assert len(_rewrites(fake_openai)) == 1
    assert body["citations"], body
    assert body["citations"][0]["source"] in ISAAC_SIM
    answer_prompt = fake_openai.requests_to("/chat/completions")[-1]["body"]["messages"][-1]["content"]
    assert answer_prompt.endswith("Question: What GPU does it need?")


async def test_off_topic_is_refused_without_any_model_call(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """Clearly off-topic questions are refused before the model, with no citations."""
    for question in ("What is the capital of France?", "How do I bake sourdough bread?"):
        body = (await client.post("/chat", json={"query": question})).json()
        assert body["response"] == NOT_COVERED
        assert body["citations"] == []
        assert body["sources"] == []
    assert fake_openai.requests_to("/chat/completions") == []


async def test_a_declined_answer_is_shown_and_stored_without_citations(
    client: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    """When the model says the passages do not answer, the reply carries no citations (plain and SSE),
    and the stored message has none either."""
    fake_openai.configure(reply=NOT_COVERED, tokens=12)
    headers = await sign_up(client)
    plain = (await client.post("/chat", json={"query": "How fast can a humanoid robot run?"}, headers=headers)).json()
    assert plain["response"] == NOT_COVERED
    assert plain["citations"] == []
    assert plain["sources"] == []
    streamed = await _stream(client, {"query": "How fast can a humanoid robot run?"}, headers)
    assert streamed["text"] == NOT_COVERED
    assert streamed["citations"] == []
    session = (await client.get(f"/api/chat/sessions/{streamed['meta']['session_id']}", headers=headers)).json()
    [answer] = [m for m in session["messages"] if m["role"] == "assistant"]
    assert answer["citations"] == []
    assert answer["sources"] == []
