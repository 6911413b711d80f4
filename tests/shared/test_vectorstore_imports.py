"""API processes in embedded mode never import qdrant_client (~56 MB and ~0.8 s per process), nor, on
SQLite, the PostgreSQL driver psycopg (~10 MB)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from tests.conftest import REDIS_TEST_URL

REPO = Path(__file__).resolve().parents[2]

API_PROCESS = textwrap.dedent(
    """
    import asyncio, json, sys

    from api.main import create_app
    from shared.platform.config import Settings
    from shared.stores.vectorstore import RemoteVectorStore

    async def main() -> None:
        settings = Settings(_env_file=None, data_dir=sys.argv[1], redis_url=sys.argv[2], log_level="WARNING")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            store = app.state.services.vectorstore
            loaded = "qdrant_client" in sys.modules
            postgres_driver = "psycopg" in sys.modules
        from shared.stores.vectorstore import QdrantVectorStore  # still importable by name, loaded on access

        print(json.dumps({
            "remote": isinstance(store, RemoteVectorStore),
            "loaded_while_serving": loaded,
            "postgres_driver_loaded": postgres_driver,
            "loaded_on_access": "qdrant_client" in sys.modules and QdrantVectorStore.__name__ == "QdrantVectorStore",
        }))

    asyncio.run(main())
    """
)


def test_api_process_in_embedded_mode_does_not_load_qdrant_client() -> None:
    """A fresh API process (app lifespan run, embedded mode on SQLite) holds a RemoteVectorStore and has
    loaded neither qdrant_client nor psycopg."""
    data_dir = tempfile.mkdtemp(prefix="lectern-imports-")
    done = subprocess.run(
        [sys.executable, "-c", API_PROCESS, data_dir, f"{REDIS_TEST_URL}/14"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "remote": True,
        "loaded_while_serving": False,
        "postgres_driver_loaded": False,
        "loaded_on_access": True,
    }
