"""The fake OpenAI server's own shortcuts give what the plain construction gives."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct

import pytest

from tests.fakes.openai_server import (
    _chunk,
    _content_chunk_template,
    _encode_vector,
    fake_embedding,
    fake_embedding_array,
)

TEXTS = [
    "",
    "!!! ???",
    "What is the zero moment point?",
    "ROS 2 nodes, ROS 2 topics and ROS 2 services: nodes talk over topics.",
    "caf\u00e9 na\u00efve \u2014 robots robots robots " * 40,
]


def _reference_embedding(text: str, dims: int) -> list[float]:
    """The fake's embedding built the plain way (one word at a time, Python floats)."""
    vector = [0.0] * dims
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "little") % dims] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@pytest.mark.parametrize("dims", [8, 1536])
@pytest.mark.parametrize("text", TEXTS)
def test_numpy_embedding_equals_the_plain_construction(text: str, dims: int) -> None:
    """The numpy embedding, as a list and as the base64 float32 bytes the SDK asks for, is the plain one."""
    expected = _reference_embedding(text, dims)
    assert fake_embedding(text, dims) == expected
    assert _encode_vector(fake_embedding_array(text, dims), False) == expected
    packed = base64.b64decode(_encode_vector(fake_embedding_array(text, dims), True))  # type: ignore[arg-type]
    assert packed == struct.pack(f"<{dims}f", *expected)


@pytest.mark.parametrize(
    "piece", ["word ", "", 'quote " and \\ backslash\n', "\u00fcml\u00e4ut \U0001f600", "\x00marker\x00"]
)
def test_content_chunk_template_is_byte_for_byte_the_chunk(piece: str) -> None:
    """A streamed token's chunk from the template equals the one `_chunk` builds, escapes included."""
    chunk = _content_chunk_template('model "x"', 1_700_000_000)
    assert chunk(piece) == _chunk('model "x"', 1_700_000_000, {"content": piece}, None)
    assert json.loads(chunk(piece)[len("data: ") :])["choices"][0]["delta"]["content"] == piece
