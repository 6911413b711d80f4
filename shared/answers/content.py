"""Translation (Urdu) and reading-level adjustment of book text, cached in Redis.

Every reader of a page asks for the same paragraphs, so results are cached by
(operation, target, model, sha256(text)): a cache hit costs no LLM call. A batch reads the cache with
one MGET, sends only the uncached (and de-duplicated) texts upstream, concurrently, and returns the
results in the input order. Fenced code blocks and inline code are swapped for placeholders before the
text goes to the model and put back afterwards, so code is never translated or lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from typing import Literal

from redis.exceptions import RedisError

from shared.inference.llm import complete
from shared.platform.clients import Services
from shared.platform.constants import CONTENT_CACHE_PREFIX
from shared.platform.errors import LlmUnavailable
from shared.platform.logging import get_logger

__all__ = ["Level", "adjust_texts", "cache_key", "protect_code", "restore_code", "translate_texts"]

log = get_logger(__name__)

Level = Literal["beginner", "intermediate", "pro"]
Operation = Literal["translate", "adjust"]

#: A long text can take the model a while; the API answers 503 at 28 s anyway.
CONTENT_DEADLINE_S = 25.0
#: Concurrent upstream calls per batch.
BATCH_CONCURRENCY = 5

_CODE = re.compile(r"(```.*?```|~~~.*?~~~|`[^`\n]+`)", re.DOTALL)
_PLACEHOLDER = "\u27e6CODE{index}\u27e7"  # ⟦CODE0⟧: unlikely in prose and kept by models verbatim
_PLACEHOLDER_RE = re.compile("\u27e6CODE\\d+\u27e7")

TRANSLATE_PROMPT = (
    "You translate passages of a robotics textbook from English into Urdu. Keep technical terms and "
    "names (ROS, ROS 2, Python, Gazebo, NVIDIA Isaac, URDF, API names, units) in English. Keep the markdown "
    "structure exactly: headings, lists, links, emphasis and tables. Tokens like \u27e6CODE0\u27e7 stand for "
    "code: copy them unchanged. Reply with the translation only."
)

LEVEL_PROMPTS = {
    "beginner": (
        "Rewrite this passage of a robotics textbook for a beginner: short sentences, everyday words, "
        "explain each technical term the first time it appears, add a simple analogy where it helps."
    ),
    "intermediate": (
        "Rewrite this passage of a robotics textbook for a reader with some programming and robotics "
        "background: keep the technical terms, make the reasoning explicit, trim jargon that adds nothing."
    ),
}
ADJUST_SUFFIX = (
    " Keep the facts, the markdown structure and any links. Tokens like \u27e6CODE0\u27e7 stand for code: copy "
    "them unchanged. Reply with the rewritten passage only."
)


def cache_key(*, operation: str, target: str, model: str, text: str) -> str:
    """The Redis key of one cached result."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"{CONTENT_CACHE_PREFIX}{operation}:{target}:{model}:{digest}"


def protect_code(text: str) -> tuple[str, list[str]]:
    """Replace code blocks and inline code with numbered placeholders; return the text and the code."""
    blocks: list[str] = []

    def swap(match: re.Match[str]) -> str:
        blocks.append(match.group(0))
        return _PLACEHOLDER.format(index=len(blocks) - 1)

    return _CODE.sub(swap, text), blocks


def restore_code(text: str, blocks: Sequence[str]) -> str:
    """Put the code back; a placeholder the model dropped gets its code appended, so no code is lost."""
    missing: list[str] = []
    for index, block in enumerate(blocks):
        token = _PLACEHOLDER.format(index=index)
        if token in text:
            text = text.replace(token, block)
        else:
            missing.append(block)
    if missing:
        text = text.rstrip() + "\n\n" + "\n\n".join(missing)
    return text


async def _transform_one(*, services: Services, operation: Operation, target: str, text: str) -> str:
    if not text.strip():
        return text
    prose, blocks = protect_code(text)
    if blocks and not _PLACEHOLDER_RE.sub("", prose).strip():
        return text  # nothing but code
    system = TRANSLATE_PROMPT if operation == "translate" else LEVEL_PROMPTS[target] + ADJUST_SUFFIX
    result = await complete(
        services=services,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prose}],
        temperature=0.1,
        deadline_s=CONTENT_DEADLINE_S,
    )
    return restore_code(result.strip() or prose, blocks)


async def _transform_batch(*, services: Services, operation: Operation, target: str, texts: Sequence[str]) -> list[str]:
    if services.openai is None:
        raise LlmUnavailable()
    model = services.settings.openai_chat_model
    keys = [cache_key(operation=operation, target=target, model=model, text=t) for t in texts]
    try:
        cached = await services.redis.mget(keys) if keys else []
    except (RedisError, OSError) as exc:  # the cache saves money; it never fails a request
        log.warning("content.cache_unavailable", op="get", error=type(exc).__name__)
        cached = [None] * len(keys)
    results: list[str | None] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in cached]
    todo: dict[str, str] = {}  # key -> text, de-duplicated
    for key, text, value in zip(keys, texts, results, strict=True):
        if value is None:
            todo.setdefault(key, text)
    if todo:
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def run(text: str) -> str:
            async with gate:
                return await _transform_one(services=services, operation=operation, target=target, text=text)

        outputs = await asyncio.gather(*(run(text) for text in todo.values()))
        fresh = dict(zip(todo.keys(), outputs, strict=True))
        try:
            async with services.redis.pipeline(transaction=False) as pipe:
                for key, value in fresh.items():
                    pipe.set(key, value, ex=services.settings.content_cache_ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("content.cache_unavailable", op="set", error=type(exc).__name__)
        results = [fresh.get(key, value) if value is None else value for key, value in zip(keys, results, strict=True)]
    log.info("content.batch", operation=operation, target=target, texts=len(texts), upstream=len(todo))
    return [r if r is not None else t for r, t in zip(results, texts, strict=True)]


async def translate_texts(*, services: Services, texts: Sequence[str], language: str = "ur") -> list[str]:
    """Translate texts (to Urdu by default), keeping order and length; cached."""
    return await _transform_batch(services=services, operation="translate", target=language, texts=texts)


async def adjust_texts(*, services: Services, texts: Sequence[str], level: Level) -> list[str]:
    """Rewrite texts for a reading level; `pro` returns them unchanged (no LLM needed); cached."""
    if level == "pro":
        return list(texts)
    return await _transform_batch(services=services, operation="adjust", target=level, texts=texts)
