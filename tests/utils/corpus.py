"""Where the real textbook is: `../shared/corpus` beside the repo (or LECTERN_CORPUS_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def corpus_dir() -> Path:
    """The textbook folder (14 chapters); LECTERN_CORPUS_DIR overrides the `../shared/corpus` default."""
    override = os.environ.get("LECTERN_CORPUS_DIR")
    if override:
        return Path(override)
    return REPO.parent / "shared" / "corpus" / "physical-ai-textbook"


CORPUS = corpus_dir()
