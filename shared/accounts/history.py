"""Chat sessions and messages of signed-in users: keyword-only service functions over a DB session.

Ownership is enforced here: a session that belongs to someone else is `NotFound`, exactly like one
that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from shared.platform.errors import BadRequest, NotFound
from shared.stores.db.models import ChatMessage, ChatSession, new_id, utcnow

__all__ = [
    "HISTORY_MESSAGES",
    "SessionSummary",
    "clear_history",
    "delete_session",
    "export_session",
    "get_owned_session",
    "list_messages",
    "list_sessions",
    "message_dict",
    "recent_messages",
    "rename_session",
    "session_dict",
    "start_session",
    "store_exchange",
    "title_from_query",
]

#: How many earlier messages of a session the model sees as history.
HISTORY_MESSAGES = 10
TITLE_MAX = 60
EXPORT_FORMATS = ("text", "json")


@dataclass(frozen=True)
class SessionSummary:
    """A session with its message count (the list view)."""

    session: ChatSession
    message_count: int


def title_from_query(query: str) -> str:
    """A short session title from the first question (whitespace collapsed, cut at a word)."""
    text = " ".join(query.split())
    if len(text) <= TITLE_MAX:
        return text or "New chat"
    cut = text[:TITLE_MAX].rsplit(" ", 1)[0] or text[:TITLE_MAX]
    return cut.rstrip(" ,.;:") + "…"


def _iso(value: datetime) -> str:
    return value.isoformat()


def session_dict(session: ChatSession, message_count: int = 0) -> dict[str, Any]:
    """The API's session object."""
    return {
        "id": session.id,
        "user_id": session.user_id,
        "title": session.title,
        "created_at": _iso(session.created_at),
        "updated_at": _iso(session.updated_at),
        "is_active": session.is_active,
        "message_count": message_count,
    }


def message_dict(message: ChatMessage) -> dict[str, Any]:
    """The API's message object (`sources` are display strings, `citations` the objects)."""
    return {
        "id": message.id,
        "session_id": message.session_id,
        "role": message.role,
        "content": message.content,
        "selected_text": message.selected_text,
        "created_at": _iso(message.created_at),
        "sources": [str(s) for s in message.sources or []],
        "citations": list(message.citations or []),
    }


async def _deactivate_others(db: AsyncSession, *, user_id: str, keep: str) -> None:
    await db.exec(
        sa.update(ChatSession)
        .where(col(ChatSession.user_id) == user_id, col(ChatSession.id) != keep, col(ChatSession.is_active))
        .values(is_active=False)
    )


async def start_session(
    *, db: AsyncSession, user_id: str, title: str | None, session_id: str | None = None
) -> ChatSession:
    """Create a session (optionally with a pre-chosen id) and make it the user's active one; commits."""
    session = ChatSession(id=session_id or new_id(), user_id=user_id, title=(title or "New chat")[:200])
    db.add(session)
    await db.flush()
    await _deactivate_others(db, user_id=user_id, keep=session.id)
    await db.commit()
    return session


async def get_owned_session(*, db: AsyncSession, user_id: str, session_id: str) -> ChatSession:
    """The user's session, or `NotFound` (also for someone else's)."""
    session = await db.get(ChatSession, session_id)
    if session is None or session.user_id != user_id:
        raise NotFound("Chat session not found.", code="session_not_found")
    return session


async def list_sessions(
    *, db: AsyncSession, user_id: str, limit: int = 20, offset: int = 0
) -> tuple[list[SessionSummary], int]:
    """The user's sessions newest first, with message counts, and the total number of sessions."""
    counts = select(ChatMessage.session_id, sa.func.count().label("n")).group_by(col(ChatMessage.session_id)).subquery()
    query = (
        select(ChatSession, sa.func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.session_id == ChatSession.id)
        .where(col(ChatSession.user_id) == user_id)
        .order_by(col(ChatSession.updated_at).desc(), col(ChatSession.created_at).desc())
        .limit(limit)
        .offset(offset)
    )
    rows = (await db.exec(query)).all()
    total = (
        await db.exec(select(sa.func.count()).select_from(ChatSession).where(col(ChatSession.user_id) == user_id))
    ).one()
    return [SessionSummary(session=row[0], message_count=int(row[1])) for row in rows], int(total)


async def list_messages(*, db: AsyncSession, session_id: str) -> list[ChatMessage]:
    """Every message of a session, oldest first."""
    query = (
        select(ChatMessage)
        .where(col(ChatMessage.session_id) == session_id)
        .order_by(col(ChatMessage.created_at), col(ChatMessage.role).desc())
    )
    return list((await db.exec(query)).all())


async def recent_messages(*, db: AsyncSession, session_id: str, limit: int = HISTORY_MESSAGES) -> list[dict[str, str]]:
    """The last `limit` messages of a session as model history (oldest first)."""
    query = (
        select(ChatMessage)
        .where(col(ChatMessage.session_id) == session_id)
        .order_by(col(ChatMessage.created_at).desc(), col(ChatMessage.role))
        .limit(limit)
    )
    rows = list((await db.exec(query)).all())
    rows.reverse()
    return [{"role": m.role, "content": m.content} for m in rows if m.role in ("user", "assistant")]


async def store_exchange(
    *,
    db: AsyncSession,
    user_id: str,
    session_id: str,
    create_title: str | None,
    query: str,
    selected_text: str,
    answer: str,
    sources: Sequence[str],
    citations: Sequence[dict[str, Any]],
) -> ChatMessage:
    """Store a question and its answer in one transaction; returns the assistant message.

    `create_title` set means the session does not exist yet: it is created with that title. Either way
    the session becomes the user's (only) active one. The assistant message is stamped after the user message so ordering by
    time is stable.
    """
    now = utcnow()
    if create_title is not None:
        session = ChatSession(id=session_id, user_id=user_id, title=create_title[:200], created_at=now)
        db.add(session)
        await db.flush()
        await _deactivate_others(db, user_id=user_id, keep=session_id)
    else:
        session = await get_owned_session(db=db, user_id=user_id, session_id=session_id)
        if not session.is_active:
            await _deactivate_others(db, user_id=user_id, keep=session_id)
    session.updated_at = now
    session.is_active = True
    question = ChatMessage(
        session_id=session_id, role="user", content=query, selected_text=selected_text or None, created_at=now
    )
    reply = ChatMessage(
        session_id=session_id,
        role="assistant",
        content=answer,
        sources=[str(s) for s in sources],
        citations=list(citations),
        created_at=utcnow(),
    )
    db.add(session)
    db.add(question)
    db.add(reply)
    await db.commit()
    return reply


async def rename_session(*, db: AsyncSession, user_id: str, session_id: str, title: str) -> ChatSession:
    """Rename a session the user owns."""
    session = await get_owned_session(db=db, user_id=user_id, session_id=session_id)
    session.title = title[:200]
    session.updated_at = utcnow()
    db.add(session)
    await db.commit()
    return session


async def delete_session(*, db: AsyncSession, user_id: str, session_id: str) -> None:
    """Delete a session the user owns, with its messages."""
    session = await get_owned_session(db=db, user_id=user_id, session_id=session_id)
    await db.exec(sa.delete(ChatMessage).where(col(ChatMessage.session_id) == session.id))
    await db.delete(session)
    await db.commit()


async def clear_history(*, db: AsyncSession, user_id: str) -> int:
    """Delete every session of the user; returns how many were deleted."""
    ids = list((await db.exec(select(ChatSession.id).where(col(ChatSession.user_id) == user_id))).all())
    if ids:
        await db.exec(sa.delete(ChatMessage).where(col(ChatMessage.session_id).in_(ids)))
        await db.exec(sa.delete(ChatSession).where(col(ChatSession.id).in_(ids)))
    await db.commit()
    return len(ids)


async def export_session(*, db: AsyncSession, user_id: str, session_id: str, fmt: str) -> dict[str, Any]:
    """`{"format", "content"}`: a readable transcript (text) or the session and messages (json)."""
    if fmt not in EXPORT_FORMATS:
        raise BadRequest(f"Unsupported export format {fmt[:20]!r}; use 'text' or 'json'.", code="unsupported_format")
    session = await get_owned_session(db=db, user_id=user_id, session_id=session_id)
    messages = await list_messages(db=db, session_id=session.id)
    if fmt == "json":
        content: Any = {
            "session": session_dict(session, len(messages)),
            "messages": [message_dict(m) for m in messages],
        }
        json.dumps(content)  # fail here, not in the response, if anything is not serialisable
        return {"format": "json", "content": content}
    lines = [f"# {session.title}", f"Exported {utcnow().isoformat()}", ""]
    for message in messages:
        who = "You" if message.role == "user" else "Lectern"
        lines.append(f"[{_iso(message.created_at)}] {who}:")
        if message.selected_text:
            lines.append(f"(selected text) {message.selected_text}")
        lines.append(message.content)
        if message.sources:
            lines.append("Sources: " + "; ".join(str(s) for s in message.sources))
        lines.append("")
    return {"format": "text", "content": "\n".join(lines)}
