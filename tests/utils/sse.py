"""A small, strict Server-Sent Events parser over httpx streaming responses (per the WHATWG spec)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    """One dispatched event (`comment` set for `:` lines, which carry no event)."""

    event: str
    data: str
    comment: str | None = None

    def json(self) -> Any:
        """The data decoded as JSON."""
        return json.loads(self.data)


async def iter_events(response: httpx.Response, *, comments: bool = False) -> AsyncIterator[Event]:
    """Parse the stream line by line: `event:`/`data:` fields, blank line dispatches, `:` comments."""
    event, data = "", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield Event(event=event or "message", data="\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            if comments:
                yield Event(event="", data="", comment=line[1:].strip())
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield Event(event=event or "message", data="\n".join(data))
