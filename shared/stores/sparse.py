"""BM25 sparse vectors computed locally: tokenise, lowercase, stem, drop stop words, saturate TF.

Documents get BM25 term-frequency weights `tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))`;
queries get weight 1 per distinct term. Qdrant multiplies by IDF at query time (`Modifier.IDF` on the
`bm25` sparse vector), so the dot product it computes is the classic BM25 score. Term ids are a stable
32-bit hash (BLAKE2b) of the stem, so every process and every release agree without a vocabulary.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import snowballstemmer

__all__ = ["AVG_DOC_LEN", "K1", "B", "SparseVector", "encode_document", "encode_query", "term_id", "tokenize"]

K1 = 1.2
B = 0.75
#: Average chunk length in indexed terms (~1,200-character chunks after stop words); a constant keeps
#: document weights independent of the rest of the corpus, so re-ingesting one file changes only it.
AVG_DOC_LEN = 120.0

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)

_STOP_WORDS_TEXT = """
    a about above after again against all am an and any are aren't as at be because been before being
    below between both but by can cannot could did do does doing don't down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is isn't it
    its itself just let me more most my myself no nor not of off on once only or other ought our ours
    ourselves out over own same she should so some such than that the their theirs them themselves then
    there these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves s t d ll m re ve also may might
    must shall us via etc
    """
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())

_stemmer = snowballstemmer.stemmer("english")


@dataclass(frozen=True)
class SparseVector:
    """A sparse vector: parallel lists of term ids (unsigned 32-bit) and weights."""

    indices: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[int] | list[float]]:
        """JSON-ready mapping (what Qdrant's `SparseVector` accepts)."""
        return {"indices": list(self.indices), "values": list(self.values)}

    def __bool__(self) -> bool:
        return bool(self.indices)


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return str(_stemmer.stemWord(word))


@lru_cache(maxsize=200_000)
def term_id(term: str) -> int:
    """The stable 32-bit id of a (stemmed) term."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "little")


def tokenize(text: str) -> list[str]:
    """Lower-cased, stemmed terms of `text`, stop words and one-letter words removed."""
    terms: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        word = match.group()
        if word in STOP_WORDS or (len(word) < 2 and not word.isdigit()):
            continue
        terms.append(_stem(word))
    return terms


def _vector(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[weights[i] for i in indices])


def encode_document(text: str, *, k1: float = K1, b: float = B, avg_doc_len: float = AVG_DOC_LEN) -> SparseVector:
    """BM25 document vector: saturated, length-normalised term frequencies (IDF is applied by Qdrant)."""
    terms = tokenize(text)
    if not terms:
        return SparseVector()
    length_norm = k1 * (1.0 - b + b * len(terms) / avg_doc_len)
    weights: dict[int, float] = {}
    for term, tf in Counter(terms).items():
        tid = term_id(term)
        # Two stems sharing a 32-bit id (rare) simply add up.
        weights[tid] = weights.get(tid, 0.0) + tf * (k1 + 1.0) / (tf + length_norm)
    return _vector(weights)


def encode_query(text: str) -> SparseVector:
    """BM25 query vector: weight 1 for each distinct term."""
    return _vector({term_id(term): 1.0 for term in set(tokenize(text))})
