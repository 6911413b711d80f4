"""The official `openai` SDK pointed at `<base>/v1` gets a completion and a stream from Lectern."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from openai import OpenAI

from shared.stores.vectorstore import VectorStore
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.chat_corpus import chat_app, chat_settings, corpus_store, served

__all__ = ["corpus_store"]

QUESTION = "What is domain randomization in sim-to-real transfer?"


@pytest.fixture(scope="module")
async def base_url(fake_openai: FakeOpenAI, corpus_store: VectorStore) -> AsyncIterator[str]:
    """The app served on loopback."""
    async with chat_app(chat_settings(openai_base_url=fake_openai.url), corpus_store) as (app, _), served(app) as url:
        yield url


@pytest.fixture
def sdk(base_url: str, fake_openai: FakeOpenAI) -> OpenAI:
    """The official synchronous SDK client (used from a thread so the served app keeps running)."""
    fake_openai.reset()
    return OpenAI(base_url=f"{base_url}/v1", api_key="any-key-works", max_retries=0, timeout=30)


async def test_models_lists_lectern(sdk: OpenAI) -> None:
    """GET /v1/models lists the `lectern` model."""
    models = await asyncio.to_thread(lambda: [m.id for m in sdk.models.list()])
    assert models == ["lectern"]


async def test_completion_with_citations_and_history(sdk: OpenAI, fake_openai: FakeOpenAI) -> None:
    """A non-stream completion: the last user message is the question, earlier ones are history."""
    completion = await asyncio.to_thread(
        sdk.chat.completions.create,
        model="lectern",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is embodied intelligence?"},
            {"role": "assistant", "content": "Intelligence that comes from having a body."},
            {"role": "user", "content": QUESTION},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    extra = completion.model_extra or {}
    # Both chapters teach domain randomization for sim-to-real transfer (week 8 in Isaac Sim).
    assert extra["citations"][0]["source"] in {"week10/sim-to-real-transfer.md", "week8/nvidia-isaac-sim.md"}
    assert "week10/sim-to-real-transfer.md" in {c["source"] for c in extra["citations"]}
    [upstream] = fake_openai.requests_to("/chat/completions")
    sent = upstream["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "What is embodied intelligence?"
    assert sent[-1]["content"].endswith(f"Question: {QUESTION}")


async def test_stream_through_the_sdk(sdk: OpenAI, fake_openai: FakeOpenAI) -> None:
    """A streamed completion: chunks concatenate to the answer; citations ride on the first chunk."""
    fake_openai.configure(tokens=10)

    def run() -> tuple[str, list[dict[str, object]], list[str | None]]:
        stream = sdk.chat.completions.create(
            model="lectern", messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        text, citations, finishes = "", [], []
        for chunk in stream:
            extra = chunk.model_extra or {}
            if "citations" in extra:
                citations = extra["citations"]
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finishes.append(choice.finish_reason)
        return text, citations, finishes

    text, citations, finishes = await asyncio.to_thread(run)
    assert text.startswith("According to the book [1]")
    assert citations
    assert finishes[-1] == "stop"


async def test_raw_stream_ends_with_done(base_url: str) -> None:
    """The wire format ends with `data: [DONE]`."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "lectern", "stream": True, "messages": [{"role": "user", "content": QUESTION}]},
        ) as response,
    ):
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


async def test_no_user_message_is_422(base_url: str) -> None:
    """A conversation without a user message is refused in the error envelope."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "lectern", "messages": [{"role": "system", "content": "hi"}]}
        )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
