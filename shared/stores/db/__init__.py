"""Database: SQLModel tables, the async engine/session helpers and Alembic migrations."""
