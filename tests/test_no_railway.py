"""No URL, origin or default anywhere in the repository points at the old Railway deployment."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDLE = "railway" + ".app"  # spelled in two parts so this file does not match itself
#: A Railway host or URL (a subdomain of the needle, or the needle after //); a bare quoted needle is not one.
RAILWAY_URL = re.compile(r"(?:[a-z0-9-]+\.|//)(?:up\.)?" + re.escape(NEEDLE), re.IGNORECASE)
SKIP_DIRS = {".git", ".venv", "node_modules", "data", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def _repo_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = [REPO / name.decode() for name in listed if name]
    return [f for f in files if f.is_file() and not SKIP_DIRS.intersection(f.relative_to(REPO).parts)]


def test_no_railway_url_in_the_tree() -> None:
    """Every tracked or new file (code, docs, config, fixtures) is free of the Railway host."""
    files = _repo_files()
    assert len(files) > 20
    offenders = [
        str(f.relative_to(REPO)) for f in files if RAILWAY_URL.search(f.read_bytes().decode("utf-8", "ignore"))
    ]
    assert offenders == []


def test_pattern_catches_railway_urls() -> None:
    """The pattern matches the shapes a Railway URL takes (so the tree scan can fail)."""
    for text in (f"https://lectern-prod.up.{NEEDLE}/chat", f"origin=https://lectern.{NEEDLE}", f"//{NEEDLE}/x"):
        assert RAILWAY_URL.search(text), text


def test_default_origins_are_not_railway() -> None:
    """The default CORS origins and site URL point at the textbook's real hosts."""
    from shared.platform.config import Settings

    settings = Settings(_env_file=None)
    assert all(NEEDLE not in origin for origin in settings.allowed_origins)
    assert NEEDLE not in settings.site_url
