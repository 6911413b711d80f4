"""A small OpenAI-compatible server for tests: embeddings, chat completions (plain and streaming), models.

It is a real HTTP server on loopback, so the real `openai` SDK talks to it. Switches (set through
`FakeOpenAI.configure(...)` in-process, or `POST /_control` from another process) inject faults:
`fault` = "500" | "429" | "401" | "stall" | "drop" for `fault_seconds` (or until cleared), `rewrite_fault` the
same for follow-up rewrite calls only (`rewrite_reply` sets their answer), `latency_ms`
per request, `token_delay_ms` between streamed tokens (on a fixed schedule: token i is due i x delay after
the stream opened, so a busy test machine does not slow the "model" down), `reply` (the text the model answers).
Every request is recorded (`requests`), with the prompts it carried; streams that the client abandoned
are counted in `cancelled_streams`.

Run standalone: `python -m tests.fakes.openai_server --port 8999`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_WORD = re.compile(r"[a-z0-9]+")


def fake_embedding(text: str, dims: int) -> list[float]:
    """A deterministic bag-of-words hashing embedding: texts sharing words get similar vectors."""
    values: list[float] = fake_embedding_array(text, dims).tolist()
    return values


def fake_embedding_array(text: str, dims: int) -> np.ndarray:
    """`fake_embedding` as a float64 array, built with numpy: the fake shares the benchmark machine's 2
    cores with the service it stands in for, so it should cost little. The entries before normalising
    are whole-number counts, so their sum of squares is exact in any order and the values are identical
    to the plain-Python construction."""
    vector = np.zeros(dims, dtype=np.float64)
    words = _WORD.findall(text.lower())
    if words:
        digests = [hashlib.blake2b(word.encode(), digest_size=8).digest() for word in words]
        indices = [int.from_bytes(d[:4], "little") % dims for d in digests]
        signs = [1.0 if d[4] & 1 else -1.0 for d in digests]
        np.add.at(vector, indices, signs)
    norm = math.sqrt(float(vector @ vector)) or 1.0
    return vector / norm


@dataclass
class FakeState:
    """Switches and recordings."""

    fault: str | None = None
    fault_until: float | None = None
    retry_after: int = 1
    latency_ms: float = 0.0
    token_delay_ms: float = 0.0
    tokens: int | None = None
    reply: str | None = None
    rewrite_reply: str | None = None
    rewrite_fault: str | None = None
    dims: int = 1536
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled_streams: int = 0
    completed_streams: int = 0
    fault_responses: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def active_fault(self) -> str | None:
        if self.fault and self.fault_until is not None and time.monotonic() >= self.fault_until:
            self.fault, self.fault_until = None, None
        return self.fault


#: How Lectern's follow-up rewrite prompt starts (shared.answers.followup.REWRITE_SYSTEM_PROMPT).
REWRITE_PROMPT_START = "You rewrite a reader's follow-up question"


def _is_rewrite(messages: list[dict[str, Any]]) -> bool:
    """True for Lectern's follow-up rewrite call (as opposed to an answer)."""
    system = next((str(m.get("content") or "") for m in messages if m.get("role") == "system"), "")
    return system.startswith(REWRITE_PROMPT_START)


def _reply_for(state: FakeState, messages: list[dict[str, Any]]) -> str:
    if _is_rewrite(messages):
        if state.rewrite_reply is not None:
            return state.rewrite_reply
        # A deterministic stand-in for a model's rewrite: the follow-up plus the earlier questions.
        prompt = str(messages[-1].get("content") or "")
        lines = [ln.split(": ", 1)[1] for ln in prompt.splitlines() if ln.startswith(("Earlier question", "Follow-up"))]
        return " ".join(lines[-1:] + lines[:-1])
    if state.reply is not None:
        return state.reply
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {"content": ""})
    content = last_user.get("content") or ""
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    words = str(content).split()[:12]
    return "According to the book [1], " + " ".join(words) + " is explained in the passages."


def _encode_vector(vector: np.ndarray, as_base64: bool) -> list[float] | str:
    if not as_base64:
        values: list[float] = vector.tolist()
        return values
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


def _tokens(text: str, count: int | None) -> list[str]:
    pieces = re.findall(r"\S+\s*", text) or [text]
    if count is None or count <= 0:
        return pieces
    if len(pieces) >= count:
        head = pieces[: count - 1]
        return [*head, "".join(pieces[count - 1 :])]
    return pieces + ["" for _ in range(0)]


def build_app(state: FakeState) -> Starlette:
    """The Starlette app behind the fake server."""

    async def fault_response(kind: str) -> Response | None:
        state.fault_responses += 1
        if kind == "500":
            return JSONResponse({"error": {"message": "fake server error", "type": "server_error"}}, status_code=500)
        if kind == "429":
            return JSONResponse(
                {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                status_code=429,
                headers={"retry-after": str(state.retry_after)},
            )
        if kind == "401":
            return JSONResponse(
                {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
                status_code=401,
            )
        if kind == "stall":
            await asyncio.sleep(3600)
        return None

    async def record(request: Request, body: dict[str, Any]) -> str | None:
        with state.lock:
            state.requests.append(
                {
                    "path": request.url.path,
                    "body": body,
                    "authorization": request.headers.get("authorization", ""),
                    "headers": dict(request.headers),
                    "at": time.time(),
                }
            )
        if state.latency_ms:
            await asyncio.sleep(state.latency_ms / 1000)
        return state.active_fault()

    async def embeddings(request: Request) -> Response:
        body = await request.json()
        fault = await record(request, body)
        if fault == "drop":
            return _DroppedResponse()
        if fault and (response := await fault_response(fault)) is not None:
            return response
        inputs = body.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        dims = int(body.get("dimensions") or state.dims)
        # As the real API: `encoding_format: "base64"` (what the SDK asks for) returns little-endian
        # float32 bytes in base64 instead of a JSON list of floats.
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encode_vector(fake_embedding_array(str(text), dims), as_base64),
            }
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(str(t).split()) for t in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "fake-embed"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def chat(request: Request) -> Response:
        body = await request.json()
        fault = await record(request, body)
        if fault == "drop":
            return _DroppedResponse()
        if fault and (response := await fault_response(fault)) is not None:
            return response
        rewrite_fault = state.rewrite_fault if _is_rewrite(body.get("messages", [])) else None
        if rewrite_fault and (response := await fault_response(rewrite_fault)) is not None:
            return response
        text = _reply_for(state, body.get("messages", []))
        model = body.get("model", "fake-chat")
        created = int(time.time())
        if not body.get("stream"):
            pieces = _tokens(text, state.tokens)
            if state.token_delay_ms:
                await asyncio.sleep(state.token_delay_ms * len(pieces) / 1000)
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(pieces), "total_tokens": 10 + len(pieces)},
                }
            )

        async def stream() -> Any:
            finished = False
            try:
                first = {"role": "assistant", "content": ""}
                yield _chunk(model, created, first, None)
                content_chunk = _content_chunk_template(model, created)
                # Token i is due `i x token_delay_ms` after the stream opened, whatever this process's own
                # lag: a real model's pace does not slow down when the machine running the tests is busy.
                loop = asyncio.get_running_loop()
                due = loop.time()
                for piece in _tokens(text, state.tokens):
                    if state.token_delay_ms:
                        due += state.token_delay_ms / 1000
                        await asyncio.sleep(max(0.0, due - loop.time()))
                    if state.active_fault() == "stall":
                        await asyncio.sleep(3600)
                    yield content_chunk(piece)
                yield _chunk(model, created, {}, "stop")
                yield "data: [DONE]\n\n"
                finished = True
            finally:
                with state.lock:
                    if finished:
                        state.completed_streams += 1
                    else:
                        state.cancelled_streams += 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        fault = await record(request, {})
        if fault and fault != "drop" and (response := await fault_response(fault)) is not None:
            return response
        return JSONResponse({"object": "list", "data": [{"id": "fake-chat", "object": "model", "owned_by": "fake"}]})

    async def control(request: Request) -> Response:
        body = await request.json()
        _apply(state, body)
        return JSONResponse({"ok": True})

    async def recorded(request: Request) -> Response:
        with state.lock:
            return JSONResponse(
                {
                    "requests": state.requests,
                    "cancelled_streams": state.cancelled_streams,
                    "completed_streams": state.completed_streams,
                    "fault_responses": state.fault_responses,
                }
            )

    return Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/_control", control, methods=["POST"]),
            Route("/_requests", recorded, methods=["GET"]),
        ]
    )


def _chunk(model: str, created: int, delta: dict[str, Any], finish: str | None) -> str:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n"


def _content_chunk_template(model: str, created: int) -> Callable[[str], str]:
    """`_chunk(model, created, {"content": piece}, None)` for any piece, byte for byte, with only the piece
    encoded per token (the fake runs on the cores the benchmark measures the service on)."""
    marker = "\u0000marker\u0000"
    head, tail = _chunk(model, created, {"content": marker}, None).split(json.dumps(marker))
    encode = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str (ensure_ascii)

    def chunk(piece: str) -> str:
        return head + encode(piece) + tail

    return chunk


class _DroppedResponse(Response):
    """Announces a body and then drops the connection half-way."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b'{"partial": ', "more_body": True})
        raise ConnectionResetError("fake dropped connection")


def _apply(state: FakeState, options: dict[str, Any]) -> None:
    with state.lock:
        if options.get("reset"):
            state.requests.clear()
            state.cancelled_streams = state.completed_streams = state.fault_responses = 0
            state.fault = state.fault_until = state.reply = state.rewrite_reply = state.rewrite_fault = None
            state.tokens = None
            state.latency_ms = state.token_delay_ms = 0.0
            state.retry_after = 1
        if "fault" in options:
            state.fault = options["fault"]
            seconds = options.get("fault_seconds")
            state.fault_until = time.monotonic() + float(seconds) if seconds else None
        for key in (
            "retry_after",
            "latency_ms",
            "token_delay_ms",
            "tokens",
            "reply",
            "rewrite_reply",
            "rewrite_fault",
            "dims",
        ):
            if key in options:
                setattr(state, key, options[key])
        if options.get("clear_requests"):
            state.requests.clear()


#: uvicorn's C HTTP parser and writer (requirements-dev.txt): the fake stands in for a remote API, so on
#: the 2-core benchmark machine it should take as little CPU from the service as it can (0.42 -> 0.32 s
#: per 50-stream burst against h11).
FAKE_HTTP = "httptools"
#: Idle keep-alive the fake grants, like a real API's front end (uvicorn's own default is 5 s).
SERVER_KEEPALIVE_S = 75


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(port: int, *options: str, quiet: bool = False) -> subprocess.Popen[bytes]:
    """This fake server as its own process (for benchmarks): `python -m tests.fakes.openai_server --port
    PORT *options`, from the repo root; `quiet` drops its output."""
    sink = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server", "--port", str(port), *options],
        cwd=Path(__file__).resolve().parents[2],
        stdout=sink,
        stderr=sink,
    )


class FakeOpenAI:
    """The fake server running in a background thread of the test process."""

    def __init__(self, port: int | None = None) -> None:
        self.state = FakeState()
        self.port = port or free_port()
        config = uvicorn.Config(
            build_app(self.state),
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            lifespan="off",
            http=FAKE_HTTP,
            timeout_keep_alive=SERVER_KEEPALIVE_S,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-openai", daemon=True)

    @property
    def url(self) -> str:
        """Base URL for the SDK (`OPENAI_BASE_URL`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        """Start serving and wait until the port answers."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def configure(self, **options: Any) -> None:
        """Change switches (see module docstring); `reset=True` clears everything first."""
        _apply(self.state, options)

    def reset(self) -> None:
        """Clear faults, replies and recordings."""
        _apply(self.state, {"reset": True})

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recorded requests (copies)."""
        with self.state.lock:
            return list(self.state.requests)

    def requests_to(self, suffix: str) -> list[dict[str, Any]]:
        """Recorded requests whose path ends with `suffix` (e.g. "/embeddings")."""
        return [r for r in self.requests if r["path"].endswith(suffix)]


def main() -> None:
    """Standalone mode for benchmarks."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=None)
    args = parser.parse_args()
    state = FakeState(latency_ms=args.latency_ms, token_delay_ms=args.token_delay_ms, tokens=args.tokens)
    uvicorn.run(
        build_app(state),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        lifespan="off",
        http=FAKE_HTTP,
        timeout_keep_alive=SERVER_KEEPALIVE_S,
    )


if __name__ == "__main__":
    main()
