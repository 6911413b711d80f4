"""Routes: translation to Urdu and reading-level adjustment (no auth; cached; 503 when offline)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import ChatRateLimitDep, ServicesDep
from shared.answers.content import Level, adjust_texts, translate_texts

router = APIRouter(tags=["content"], dependencies=[ChatRateLimitDep])

MAX_TEXT = 10_000
MAX_TEXTS = 20

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Texts = Annotated[list[Text], Field(max_length=MAX_TEXTS)]


class TranslateRequest(BaseModel):
    """One text to translate."""

    text: Text


class TranslateBatchRequest(BaseModel):
    """Up to 20 texts to translate."""

    texts: Texts


class AdjustRequest(BaseModel):
    """One text to rewrite for a reading level."""

    text: Text
    target_level: Level


class AdjustBatchRequest(BaseModel):
    """Up to 20 texts to rewrite for a reading level."""

    texts: Texts
    target_level: Level


_LLM_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"description": "No language model configured (`llm_unavailable`) or upstream down"}
}


@router.post("/translate", responses=_LLM_ERRORS)
async def translate(body: TranslateRequest, services: ServicesDep) -> dict[str, str]:
    """Translate one text to Urdu (technical terms, markdown and code kept)."""
    [translation] = await translate_texts(services=services, texts=[body.text])
    return {"translation": translation}


@router.post("/translate/batch", responses=_LLM_ERRORS)
async def translate_batch(body: TranslateBatchRequest, services: ServicesDep) -> dict[str, list[str]]:
    """Translate up to 20 texts; same length and order as the request."""
    return {"translations": await translate_texts(services=services, texts=body.texts)}


@router.post("/adjust-content", responses=_LLM_ERRORS)
async def adjust_content(body: AdjustRequest, services: ServicesDep) -> dict[str, str]:
    """Rewrite one text for a reading level (`pro` returns it unchanged)."""
    [content] = await adjust_texts(services=services, texts=[body.text], level=body.target_level)
    return {"content": content}


@router.post("/adjust-content/batch", responses=_LLM_ERRORS)
async def adjust_content_batch(body: AdjustBatchRequest, services: ServicesDep) -> dict[str, list[str]]:
    """Rewrite up to 20 texts for a reading level; same length and order."""
    return {"contents": await adjust_texts(services=services, texts=body.texts, level=body.target_level)}
