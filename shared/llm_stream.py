"""The text deltas of an OpenAI chat-completions stream, read straight from the SSE bytes.

The openai SDK's `AsyncStream` decodes every event into a `ChatCompletionChunk` pydantic object (most
of the API process's CPU per token at 50 concurrent streams). `DeltaParser` keeps only what the chat
needs: it splits the bytes into SSE events, `json.loads` each event's data and returns the
`choices[].delta.content` strings. Its rules are the SDK's: lines end with LF, CRLF or CR; a blank line
ends an event; `data: [DONE]` ends the stream; an event whose JSON has a truthy `error` raises the SDK's
own `APIError` (same message, body and request); comments and other fields are ignored.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
from openai import APIError

__all__ = ["DeltaParser"]


class DeltaParser:
    """Incremental SSE -> text deltas. `feed` bytes as they arrive; `done` turns True at `[DONE]`.

    `events` counts the events seen so far (content or not), so a caller can time the gap between
    events exactly as the SDK's iterator did.
    """

    __slots__ = ("_buffer", "_data", "_request", "_skip_lf", "done", "events")

    def __init__(self, *, request: httpx2.Request) -> None:
        self._request = request
        self._buffer = b""
        self._data: list[bytes] = []
        self._skip_lf = False
        self.done = False
        self.events = 0

    def feed(self, chunk: bytes) -> list[str]:
        """The text deltas completed by `chunk` (raises `APIError` for an error event, ValueError for bad JSON)."""
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":  # the second half of a CRLF split across reads
                chunk = chunk[1:]
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            self._skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        texts: list[str] = []
        start = 0
        find = buffer.find
        while not self.done:
            end = find(b"\n", start)
            if end < 0:
                break
            if end == start:  # a blank line ends the event
                if self._data:
                    self._dispatch(texts)
            elif buffer.startswith(b"data:", start):
                value = buffer[start + 5 : end]
                self._data.append(value[1:] if value[:1] == b" " else value)
            # else: a comment (":"), or an `event`, `id`, `retry` or unknown field: not needed here
            start = end + 1
        self._buffer = b"" if self.done else buffer[start:]
        return texts

    def _dispatch(self, texts: list[str]) -> None:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        self.events += 1
        if data.startswith(b"[DONE]"):
            self.done = True
            return
        payload: Any = json.loads(data)
        if not isinstance(payload, dict):
            return
        if payload.get("error"):
            error = payload["error"]
            message = error.get("message") if isinstance(error, dict) else None
            if not message or not isinstance(message, str):
                message = "An error occurred during streaming"
            raise APIError(message=message, request=self._request, body=error)
        for choice in payload.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            text = delta.get("content") if isinstance(delta, dict) else None
            if text and isinstance(text, str):
                texts.append(text)
