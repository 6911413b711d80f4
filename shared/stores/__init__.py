"""Where data lives: PostgreSQL (SQLModel + Alembic), the vector store, and the BM25 sparse encoder."""
