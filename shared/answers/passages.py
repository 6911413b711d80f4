"""`Passage`: a retrieved chunk with its display fields and relevance signals.

Its own module because both retrieval (which makes passages) and the extractive answerer (which reads
them, and which retrieval asks whether a passage defines the question's subject) need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Passage"]


@dataclass
class Passage:
    """A retrieved chunk with its display fields and relevance signals."""

    source: str
    title: str | None
    heading: str | None
    url: str | None
    content: str
    score: float
    fused_score: float = 0.0
    dense_score: float | None = None
    sparse_score: float | None = None
    coverage: float = 0.0
    heading_path: list[str] = field(default_factory=list)
    semantic_score: float | None = None
    heading_coverage: float = 0.0
    heading_semantic: float = 0.0
    heading_focus: float = 0.0
    defines_subject: bool = False
    section_kind: str = "explains"
