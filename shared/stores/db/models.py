"""SQLModel tables. Every schema change comes with an Alembic migration in `migrations/versions`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Timezone-aware now (UTC)."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random string id (UUID4 hex with dashes)."""
    return str(uuid.uuid4())


def _ts(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True), **kwargs)


class User(SQLModel, table=True):
    """A reader account. `email` is stored lower-cased, which makes uniqueness case-insensitive."""

    __tablename__ = "users"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    email: str = Field(max_length=320, unique=True, index=True)
    name: str = Field(max_length=200)
    password_hash: str = Field(max_length=512)
    proficiency: str = Field(default="pro", max_length=20)
    email_verified: bool = Field(default=False)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class AuthSession(SQLModel, table=True):
    """A sign-in session. Only the SHA-256 of the opaque token is stored."""

    __tablename__ = "auth_sessions"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    user_id: str = Field(foreign_key="users.id", index=True, ondelete="CASCADE", max_length=36)
    expires_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    ip_address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)


class UserProfile(SQLModel, table=True):
    """Background answers that personalise explanations."""

    __tablename__ = "user_profiles"

    user_id: str = Field(foreign_key="users.id", primary_key=True, ondelete="CASCADE", max_length=36)
    technical_background: str | None = Field(default=None, sa_type=sa.Text)
    hardware_access: str | None = Field(default=None, sa_type=sa.Text)
    learning_goals: str | None = Field(default=None, sa_type=sa.Text)
    updated_at: datetime = _ts()


class ChatSession(SQLModel, table=True):
    """A conversation of a signed-in user."""

    __tablename__ = "chat_sessions"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    user_id: str = Field(foreign_key="users.id", index=True, ondelete="CASCADE", max_length=36)
    title: str = Field(max_length=200)
    is_active: bool = Field(default=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class ChatMessage(SQLModel, table=True):
    """One message of a chat session; assistant messages keep their sources and citations."""

    __tablename__ = "chat_messages"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    session_id: str = Field(foreign_key="chat_sessions.id", index=True, ondelete="CASCADE", max_length=36)
    role: str = Field(max_length=16)
    content: str = Field(sa_type=sa.Text)
    selected_text: str | None = Field(default=None, sa_type=sa.Text)
    sources: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    citations: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON)
    created_at: datetime = _ts(index=True)


class Document(SQLModel, table=True):
    """An ingested document: its latest content hash and how many chunks it has in the vector store."""

    __tablename__ = "documents"

    source: str = Field(primary_key=True, max_length=512)
    title: str | None = Field(default=None, max_length=500)
    url: str | None = Field(default=None, max_length=2048)
    content_hash: str = Field(max_length=64)
    chunks: int = Field(default=0)
    metadata_: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column("metadata", sa.JSON, nullable=False))
    ingested_at: datetime = _ts()


class IngestJob(SQLModel, table=True):
    """An ingestion job and its progress counters."""

    __tablename__ = "ingest_jobs"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    status: str = Field(default="queued", max_length=16, index=True)
    documents_total: int = Field(default=0)
    documents_done: int = Field(default=0)
    documents_skipped: int = Field(default=0)
    chunks_upserted: int = Field(default=0)
    errors: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON)
    created_at: datetime = _ts(index=True)
    started_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class IngestJobDocument(SQLModel, table=True):
    """A document submitted with a job, stored before the job is queued so nothing is lost."""

    __tablename__ = "ingest_job_documents"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="ingest_jobs.id", index=True, ondelete="CASCADE", max_length=36)
    position: int = Field(default=0)
    source: str = Field(max_length=512)
    title: str | None = Field(default=None, max_length=500)
    url: str | None = Field(default=None, max_length=2048)
    content: str = Field(sa_type=sa.Text)
    metadata_: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column("metadata", sa.JSON, nullable=False))
    status: str = Field(default="pending", max_length=16)
    error: str | None = Field(default=None, sa_type=sa.Text)
