"""BM25 sparse encoding: tokenising, stemming, stop words, saturation, stable ids."""

from __future__ import annotations

import subprocess
import sys

from shared.stores.sparse import AVG_DOC_LEN, K1, B, encode_document, encode_query, term_id, tokenize


def test_tokenize_lowercases_stems_and_drops_stop_words() -> None:
    """Inflections share a stem; stop words and one-letter words disappear; digits stay."""
    assert tokenize("The Robots were RUNNING the nodes, 2 times!") == ["robot", "run", "node", "2", "time"]
    assert tokenize("a an the of and") == []


def test_query_and_document_share_term_ids() -> None:
    """A query word and its inflected form in a document map to the same sparse index."""
    query = encode_query("publishing topics")
    document = encode_document("The node publishes on a topic.")
    assert set(query.indices) <= set(document.indices)
    assert query.values == [1.0] * len(query.indices)


def test_bm25_saturation_and_length_normalisation() -> None:
    """Term weights follow BM25: more occurrences help less and less; longer documents weigh less."""
    weight = {n: encode_document(" ".join(["gripper"] * n)).values[0] for n in (1, 2, 4, 50)}
    assert weight[1] < weight[2] < weight[4] < weight[50] < K1 + 1
    assert weight[2] - weight[1] > weight[4] - weight[2]
    short = encode_document("gripper torque")
    long = encode_document("gripper " + " ".join(f"filler{i}" for i in range(200)))
    gid = term_id("gripper")
    assert short.values[short.indices.index(gid)] > long.values[long.indices.index(gid)]
    norm = K1 * (1 - B + B * 2 / AVG_DOC_LEN)
    assert abs(short.values[short.indices.index(gid)] - (K1 + 1) / (1 + norm)) < 1e-9


def test_indices_are_sorted_unique_u32() -> None:
    """Indices are sorted, unique and fit Qdrant's unsigned 32-bit sparse index."""
    vector = encode_document("alpha beta gamma alpha delta epsilon beta")
    assert vector.indices == sorted(set(vector.indices))
    assert all(0 <= i < 2**32 for i in vector.indices)
    assert len(vector.indices) == len(vector.values)


def test_term_ids_are_stable_across_processes() -> None:
    """Ids come from a fixed hash, not Python's randomised hash(): another process agrees."""
    code = "from shared.stores.sparse import term_id; print(term_id('robot'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == term_id("robot")


def test_empty_text_gives_empty_vector() -> None:
    """Text with nothing indexable encodes to an empty (falsy) vector."""
    assert not encode_document("the of and")
    assert not encode_query("")
