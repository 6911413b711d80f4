"""Offline mode (no OPENAI_API_KEY): extractive, cited answers from BM25; LLM features are 503."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from shared.answers import retrieval
from shared.answers.answering import OFFLINE_NOTE
from shared.answers.retrieval import retrieve
from shared.stores.vectorstore import VectorStore
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.chat_corpus import chat_app, chat_settings, offline_corpus_store
from tests.utils.sse import iter_events

__all__ = ["offline_corpus_store"]

# The first test's setup embeds the whole book with the bundled e5 model (minutes on a busy 2-core box).
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
async def client(offline_corpus_store: VectorStore) -> AsyncIterator[httpx.AsyncClient]:
    """An app with no LLM configured, over the indexed corpus."""
    async with chat_app(chat_settings(openai_base_url=None, offline=True), offline_corpus_store) as (app, http):
        assert app.state.services.openai is None
        yield http


async def test_chat_is_extractive_with_citations(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """The answer quotes the best passages with numbered citations; nothing reaches any LLM."""
    fake_openai.reset()
    response = await client.post("/chat", json={"query": "How do ROS 2 actions differ from services?"})
    assert response.status_code == 200
    body = response.json()
    assert body["mode"] == "extractive"
    assert body["citations"][0]["source"] == "week4/ros2-services-actions.md"
    assert body["response"].startswith(OFFLINE_NOTE)
    assert "[1]" in body["response"]
    assert "\n> " not in body["response"]
    assert all(isinstance(s, str) for s in body["sources"])
    assert fake_openai.requests == []


async def test_off_topic_offline_is_not_covered(client: httpx.AsyncClient) -> None:
    """Offline, an off-topic question still gets the not-covered reply and no citations."""
    body = (await client.post("/chat", json={"query": "best pizza in Naples"})).json()
    assert body["citations"] == []
    assert body["sources"] == []
    assert "couldn't find" in body["response"]


async def test_what_e5_alone_admits_the_static_model_can_veto(
    offline_corpus_store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """e5 scores "How many calories ...?" over the bar against the course overview (its cosines sit in a
    narrow band); the static model finds that passage plainly unrelated, so the question is refused. A
    paraphrase the book answers, admitted by e5 alone too, keeps its passages."""
    calories = "How many calories should I eat to lose weight?"
    paraphrase = "Does thinking happen only inside the skull?"  # no word of the embodied-cognition sections
    async with chat_app(chat_settings(openai_base_url=None, offline=True), offline_corpus_store) as (app, _):
        services = app.state.services
        assert await retrieve(services=services, query=calories) == []
        kept = await retrieve(services=services, query=paraphrase)
        assert kept
        assert all(p.coverage < 0.6 for p in kept)
        assert {p.source for p in kept} & {"week2/embodied-intelligence.md", "week1/intro-physical-ai.md"}
        monkeypatch.setattr(retrieval, "OFFLINE_MIN_AGREEMENT_SCORE", None)
        admitted = await retrieve(services=services, query=calories)
        assert admitted
        assert admitted[0].dense_score is not None
        assert admitted[0].dense_score >= retrieval.OFFLINE_MIN_DENSE_SCORE


async def test_stream_is_extractive(client: httpx.AsyncClient) -> None:
    """The stream announces `extractive` and its deltas spell the extractive answer."""
    async with client.stream("POST", "/api/chat/stream", json={"query": "What is NVIDIA Isaac Sim?"}) as response:
        events = [e async for e in iter_events(response)]
    assert events[0].json()["mode"] == "extractive"
    assert events[1].json()
    assert events[-1].event == "done"
    assert "".join(e.json()["text"] for e in events if e.event == "delta").startswith(OFFLINE_NOTE)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/translate", {"text": "Hello robots"}),
        ("/translate/batch", {"texts": ["Hello robots"]}),
        ("/adjust-content", {"text": "Hello robots", "target_level": "beginner"}),
    ],
)
async def test_llm_features_are_503_llm_unavailable(
    client: httpx.AsyncClient, path: str, body: dict[str, object]
) -> None:
    """Translation and level adjustment answer 503 with code `llm_unavailable` and a Retry-After."""
    response = await client.post(path, json=body)
    assert response.status_code == 503
    assert response.json()["code"] == "llm_unavailable"
    assert isinstance(response.json()["detail"], str)
    assert "retry-after" in response.headers
