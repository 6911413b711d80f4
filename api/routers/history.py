"""Routes: chat history of the signed-in reader (another user's session is 404)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import CurrentUser, DbSession
from shared.accounts import history

router = APIRouter(prefix="/api/chat", tags=["history"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not signed in"},
    404: {"description": "The session does not exist or belongs to someone else"},
}


class NewSession(BaseModel):
    """Optional title of a new session."""

    title: str | None = Field(None, max_length=200)


class Rename(BaseModel):
    """The new title."""

    title: str = Field(min_length=1, max_length=200)


@router.get("/sessions", responses=_ERRORS)
async def list_sessions(
    db: DbSession,
    user: CurrentUser,
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    """The reader's sessions, newest first, with message counts and the total."""
    rows, total = await history.list_sessions(db=db, user_id=user.id, limit=limit, offset=offset)
    return {"sessions": [history.session_dict(r.session, r.message_count) for r in rows], "total": total}


@router.post("/sessions", responses=_ERRORS)
async def create_session(db: DbSession, user: CurrentUser, body: NewSession | None = None) -> dict[str, Any]:
    """Start an empty session (it becomes the active one)."""
    title = (body.title if body else None) or "New chat"
    session = await history.start_session(db=db, user_id=user.id, title=title.strip() or "New chat")
    return history.session_dict(session, 0)


@router.get("/sessions/{session_id}", responses=_ERRORS)
async def get_session(session_id: str, db: DbSession, user: CurrentUser) -> dict[str, Any]:
    """A session and its messages, oldest first (`sources` are strings, `citations` objects)."""
    session = await history.get_owned_session(db=db, user_id=user.id, session_id=session_id)
    messages = await history.list_messages(db=db, session_id=session.id)
    return {
        "session": history.session_dict(session, len(messages)),
        "messages": [history.message_dict(m) for m in messages],
    }


@router.patch("/sessions/{session_id}/title", responses=_ERRORS)
async def rename_session(session_id: str, body: Rename, db: DbSession, user: CurrentUser) -> dict[str, str]:
    """Rename a session."""
    await history.rename_session(db=db, user_id=user.id, session_id=session_id, title=body.title.strip())
    return {"message": "Session renamed"}


@router.delete("/sessions/{session_id}", responses=_ERRORS)
async def delete_session(session_id: str, db: DbSession, user: CurrentUser) -> dict[str, str]:
    """Delete a session and its messages."""
    await history.delete_session(db=db, user_id=user.id, session_id=session_id)
    return {"message": "Session deleted"}


@router.get("/sessions/{session_id}/export", responses={**_ERRORS, 400: {"description": "Unknown format"}})
async def export_session(
    session_id: str, db: DbSession, user: CurrentUser, format: str = Query("text", max_length=20)
) -> dict[str, Any]:
    """Export a session as `text` (a transcript) or `json` (session and messages)."""
    return await history.export_session(db=db, user_id=user.id, session_id=session_id, fmt=format)


@router.delete("/history", responses=_ERRORS)
async def clear_history(db: DbSession, user: CurrentUser) -> dict[str, str]:
    """Delete every session of the reader."""
    count = await history.clear_history(db=db, user_id=user.id)
    return {"message": f"Cleared {count} sessions"}
