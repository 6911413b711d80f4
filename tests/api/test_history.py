"""The frontend's chat-history flow on PostgreSQL: chat twice, list, load, export, rename, delete, clear."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from shared.stores.vectorstore import VectorStore
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.chat_corpus import chat_app, chat_settings, corpus_store, sign_up

__all__ = ["corpus_store"]


@pytest.fixture(scope="module")
async def client(
    fake_openai: FakeOpenAI, corpus_store: VectorStore, pg_database_factory: Callable[[], str]
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a fresh PostgreSQL database, reading the indexed corpus."""
    settings = chat_settings(openai_base_url=fake_openai.url, database_url=pg_database_factory())
    async with chat_app(settings, corpus_store) as (_app, http):
        yield http


async def test_frontend_history_flow(client: httpx.AsyncClient) -> None:
    """Two questions in a new session, then every history endpoint the frontend calls."""
    auth = await sign_up(client)
    first = (await client.post("/chat", json={"query": "What is NVIDIA Isaac Sim?"}, headers=auth)).json()
    session_id = first["session_id"]
    second = await client.post(
        "/chat", json={"query": "How does Isaac ROS accelerate perception?", "session_id": session_id}, headers=auth
    )
    assert second.json()["session_id"] == session_id

    listing = (await client.get("/api/chat/sessions?limit=20&offset=0", headers=auth)).json()
    assert listing["total"] == 1
    [summary] = listing["sessions"]
    assert set(summary) == {"id", "user_id", "title", "created_at", "updated_at", "is_active", "message_count"}
    assert summary["id"] == session_id
    assert summary["message_count"] == 4

    loaded = (await client.get(f"/api/chat/sessions/{session_id}", headers=auth)).json()
    assert loaded["session"]["id"] == session_id
    messages = loaded["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "What is NVIDIA Isaac Sim?"
    for message in messages:
        assert set(message) >= {"id", "session_id", "role", "content", "selected_text", "created_at", "sources"}
        assert all(isinstance(source, str) for source in message["sources"])
    assert messages[1]["sources"] == first["sources"]
    assert messages[1]["citations"] == first["citations"]
    assert messages[1]["sources"]

    text = (await client.get(f"/api/chat/sessions/{session_id}/export?format=text", headers=auth)).json()
    assert text["format"] == "text"
    assert "What is NVIDIA Isaac Sim?" in text["content"]
    as_json = (await client.get(f"/api/chat/sessions/{session_id}/export?format=json", headers=auth)).json()
    assert as_json["format"] == "json"
    assert len(as_json["content"]["messages"]) == 4
    bad = await client.get(f"/api/chat/sessions/{session_id}/export?format=pdf", headers=auth)
    assert bad.status_code == 400
    assert bad.json()["code"] == "unsupported_format"

    renamed = await client.patch(f"/api/chat/sessions/{session_id}/title", json={"title": "Isaac"}, headers=auth)
    assert isinstance(renamed.json()["message"], str)
    assert (await client.get(f"/api/chat/sessions/{session_id}", headers=auth)).json()["session"]["title"] == "Isaac"

    deleted = await client.delete(f"/api/chat/sessions/{session_id}", headers=auth)
    assert isinstance(deleted.json()["message"], str)
    assert (await client.get(f"/api/chat/sessions/{session_id}", headers=auth)).status_code == 404

    for question in ("What is URDF?", "What is embodied intelligence?"):
        await client.post("/chat", json={"query": question}, headers=auth)
    created = (await client.post("/api/chat/sessions", json={"title": "Empty"}, headers=auth)).json()
    assert created["message_count"] == 0
    assert created["is_active"] is True
    listing = (await client.get("/api/chat/sessions", headers=auth)).json()
    assert listing["total"] == 3
    assert [s["is_active"] for s in listing["sessions"]].count(True) == 1
    cleared = await client.delete("/api/chat/history", headers=auth)
    assert cleared.json() == {"message": "Cleared 3 sessions"}
    assert (await client.get("/api/chat/sessions", headers=auth)).json() == {"sessions": [], "total": 0}


async def test_other_users_session_is_404_everywhere(client: httpx.AsyncClient) -> None:
    """Every per-session endpoint answers 404 for someone else's session, and changes nothing."""
    owner, other = await sign_up(client), await sign_up(client)
    session_id = (await client.post("/chat", json={"query": "What is URDF?"}, headers=owner)).json()["session_id"]
    base = f"/api/chat/sessions/{session_id}"
    calls = [
        client.get(base, headers=other),
        client.get(f"{base}/export?format=json", headers=other),
        client.patch(f"{base}/title", json={"title": "mine now"}, headers=other),
        client.delete(base, headers=other),
    ]
    for call in calls:
        response = await call
        assert response.status_code == 404
        assert response.json()["code"] == "session_not_found"
    assert (await client.delete("/api/chat/history", headers=other)).json() == {"message": "Cleared 0 sessions"}
    mine = (await client.get(base, headers=owner)).json()
    assert mine["session"]["title"] == "What is URDF?"
    assert len(mine["messages"]) == 2


async def test_history_needs_sign_in(client: httpx.AsyncClient) -> None:
    """Anonymous (including an empty Bearer token) is 401 on history endpoints."""
    for headers in ({}, {"Authorization": "Bearer "}):
        response = await client.get("/api/chat/sessions", headers=headers)
        assert response.status_code == 401
        assert isinstance(response.json()["detail"], str)


async def test_pagination_and_total(client: httpx.AsyncClient) -> None:
    """`limit`/`offset` page newest first while `total` counts all sessions."""
    auth = await sign_up(client)
    titles = [f"Session {i}" for i in range(3)]
    for title in titles:
        await client.post("/api/chat/sessions", json={"title": title}, headers=auth)
    page = (await client.get("/api/chat/sessions?limit=2&offset=0", headers=auth)).json()
    assert page["total"] == 3
    assert [s["title"] for s in page["sessions"]] == ["Session 2", "Session 1"]
    rest = (await client.get("/api/chat/sessions?limit=2&offset=2", headers=auth)).json()
    assert [s["title"] for s in rest["sessions"]] == ["Session 0"]


async def test_chatting_in_an_older_session_makes_it_the_only_active_one(client: httpx.AsyncClient) -> None:
    """Continuing an older session moves `is_active` to it; exactly one session stays active."""
    auth = await sign_up(client)
    older = (await client.post("/chat", json={"query": "What is URDF?"}, headers=auth)).json()["session_id"]
    newer = (await client.post("/chat", json={"query": "What is Physical AI?"}, headers=auth)).json()["session_id"]
    await client.post("/chat", json={"query": "What is Gazebo?", "session_id": older}, headers=auth)
    sessions = (await client.get("/api/chat/sessions", headers=auth)).json()["sessions"]
    active = {s["id"]: s["is_active"] for s in sessions}
    assert active == {older: True, newer: False}
    assert sessions[0]["id"] == older  # newest activity first
