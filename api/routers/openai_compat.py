"""Routes: openai_compat (being built)."""

from fastapi import APIRouter

router = APIRouter()
