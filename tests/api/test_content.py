"""Translation and reading level: order, cache (Redis), code kept, limits, offline 503."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.utils.chat_corpus import chat_app, chat_settings


@pytest.fixture(scope="module")
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process (no vector store needed for content)."""
    async with chat_app(chat_settings(openai_base_url=fake_openai.url), store=None) as (_app, http):
        yield http


@pytest.fixture(autouse=True)
def _reset(fake_openai: FakeOpenAI) -> None:
    fake_openai.reset()


def _unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:8]} describes how robots sense the world."


async def test_same_batch_twice_costs_one_set_of_upstream_calls(
    client: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    """The second identical batch is served from Redis with zero model calls; order and length kept."""
    texts = [_unique("Alpha"), _unique("Bravo"), _unique("Charlie")]
    batch = [texts[0], texts[1], texts[0], texts[2]]  # a duplicate is translated once
    first = await client.post("/translate/batch", json={"texts": batch})
    assert first.status_code == 200, first.text
    calls = fake_openai.requests_to("/chat/completions")
    assert len(calls) == 3
    translations = first.json()["translations"]
    assert len(translations) == 4
    for word, translation in zip(("Alpha", "Bravo", "Alpha", "Charlie"), translations, strict=True):
        assert word in translation  # the fake echoes the text: each answer sits in its slot
    second = await client.post("/translate/batch", json={"texts": batch})
    assert second.json() == first.json()
    assert len(fake_openai.requests_to("/chat/completions")) == 3
    single = await client.post("/translate", json={"text": texts[1]})
    assert single.json() == {"translation": translations[1]}
    assert len(fake_openai.requests_to("/chat/completions")) == 3


async def test_prompt_asks_for_urdu_with_english_terms(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """The translation instruction names Urdu and keeping technical terms in English."""
    await client.post("/translate", json={"text": _unique("Delta")})
    system = fake_openai.requests_to("/chat/completions")[0]["body"]["messages"][0]["content"]
    assert "Urdu" in system
    assert "ROS" in system


async def test_code_survives_translation(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """Fenced and inline code never reach the model and come back verbatim."""
    code = "```python\nimport rclpy\nrclpy.init()\n```"
    text = f"Run `ros2 run demo talker` first. {_unique('Echo')}\n\n{code}\n\nThen *listen*."
    response = await client.post("/translate", json={"text": text})
    translation = response.json()["translation"]
    assert code in translation
    assert "`ros2 run demo talker`" in translation
    sent = fake_openai.requests_to("/chat/completions")[0]["body"]["messages"][1]["content"]
    assert "rclpy" not in sent
    assert "ros2 run" not in sent


async def test_adjust_levels(client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    """`pro` returns the text unchanged without a model call; `beginner` rewrites and is cached."""
    text = _unique("Foxtrot")
    pro = await client.post("/adjust-content", json={"text": text, "target_level": "pro"})
    assert pro.json() == {"content": text}
    assert fake_openai.requests_to("/chat/completions") == []
    body = {"texts": [text, _unique("Golf")], "target_level": "beginner"}
    first = await client.post("/adjust-content/batch", json=body)
    assert len(first.json()["contents"]) == 2
    assert "beginner" in fake_openai.requests_to("/chat/completions")[0]["body"]["messages"][0]["content"]
    await client.post("/adjust-content/batch", json=body)
    assert len(fake_openai.requests_to("/chat/completions")) == 2
    other_level = await client.post("/adjust-content", json={"text": text, "target_level": "intermediate"})
    assert other_level.status_code == 200
    assert len(fake_openai.requests_to("/chat/completions")) == 3  # the level is part of the cache key


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/translate/batch", {"texts": ["x"] * 21}),
        ("/translate/batch", {"texts": ["x" * 10_001]}),
        ("/translate", {"text": "x" * 10_001}),
        ("/adjust-content", {"text": "x", "target_level": "expert"}),
        ("/adjust-content/batch", {"texts": ["x"] * 21, "target_level": "beginner"}),
    ],
)
async def test_limits_are_422(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> None:
    """At most 20 texts of at most 10000 characters, and a known level."""
    response = await client.post(path, json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
