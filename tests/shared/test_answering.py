"""Answer planning: labels, citations, grounding guard, history window, level, extractive text, code guard."""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from collections.abc import AsyncIterator

import pytest

from shared.accounts.history import title_from_query
from shared.answers.answering import (
    LEVELS,
    NOT_COVERED,
    OFFLINE_NOTE,
    citation_of,
    plan_answer,
    source_label,
)
from shared.answers.content import protect_code, restore_code
from shared.answers.retrieval import Passage
from shared.platform.clients import Services, build_services
from shared.platform.config import Settings
from shared.platform.constants import ROLE_API
from shared.platform.upstreams import Upstream
from tests.conftest import REDIS_TEST_URL

CONTENT = (
    "ROS 2 services are synchronous request/response calls. Actions are goal-oriented and send feedback "
    "while they run. A client can cancel an action goal before it finishes. Topics stream messages."
)


def passage(**overrides: object) -> Passage:
    """A passage as retrieval returns it."""
    values: dict[str, object] = {
        "source": "week4/ros2-services-actions.md",
        "title": "ROS 2 Services and Actions",
        "heading": "Actions",
        "url": "https://physical-ai-textbook.vercel.app/docs/week4/ros2-services-actions#actions",
        "content": CONTENT,
        "score": 0.61234567,
    }
    values.update(overrides)
    return Passage(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def services() -> AsyncIterator[Services]:
    """API-role services with an LLM configured (nothing is called here)."""
    settings = Settings(
        _env_file=None,
        data_dir=tempfile.mkdtemp(prefix="lectern-answering-"),
        redis_url=f"{REDIS_TEST_URL}/{1 + uuid.uuid4().int % 15}",
        openai_api_key="sk-test-answering",
        openai_base_url="http://127.0.0.1:9/v1",
    )  # type: ignore[call-arg]
    built = await build_services(settings, role=ROLE_API)
    yield built
    await built.aclose()


def test_source_label_is_a_string_title_and_heading() -> None:
    """Labels are "<title> U+203A <heading>", or the title alone without a heading or when they are equal."""
    assert source_label(passage()) == "ROS 2 Services and Actions \u203a Actions"
    assert source_label(passage(heading=None)) == "ROS 2 Services and Actions"
    assert source_label(passage(heading="ROS 2 Services and Actions")) == "ROS 2 Services and Actions"
    assert source_label(passage(title=None, heading=None)) == "week4/ros2-services-actions.md"


def test_citation_has_exactly_the_contract_fields() -> None:
    """K = {source, title, heading, url, score, snippet}; the snippet is short and flat."""
    citation = citation_of(passage(content="word " * 200))
    assert set(citation) == {"source", "title", "heading", "url", "score", "snippet"}
    assert citation["score"] == 0.6123
    assert len(citation["snippet"]) <= 241
    assert citation["snippet"].endswith("…")


def test_nothing_relevant_is_not_covered(services: Services) -> None:
    """No passages and no selection: the not-covered text, empty lists, no model call planned."""
    plan = plan_answer(services=services, query="best pizza in Naples", passages=[])
    assert plan.text == NOT_COVERED
    assert plan.citations == []
    assert plan.sources == []
    assert not plan.needs_model


def test_prompt_numbers_passages_in_citation_order(services: Services) -> None:
    """Passages are numbered [1], [2] in the prompt in the same order as citations and sources."""
    given = [passage(), passage(heading="Services", content="Services answer requests.")]
    plan = plan_answer(services=services, query="What are actions?", passages=given)
    prompt = plan.messages[-1]["content"]
    assert prompt.index("[1] ROS 2 Services and Actions \u203a Actions") < prompt.index("[2] ROS 2 Services")
    assert [c["heading"] for c in plan.citations] == ["Actions", "Services"]
    assert plan.sources == [source_label(p) for p in given]
    assert prompt.endswith("Question: What are actions?")


def test_history_is_the_last_ten_messages(services: Services) -> None:
    """Only the 10 most recent history messages reach the model, between system and question."""
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(14)]
    plan = plan_answer(services=services, query="q?", passages=[passage()], history=history)
    middle = plan.messages[1:-1]
    assert [m["content"] for m in middle] == [f"m{i}" for i in range(4, 14)]


@pytest.mark.parametrize("level", ["beginner", "intermediate", "pro"])
def test_proficiency_shapes_the_system_prompt(services: Services, level: str) -> None:
    """The reader's level instruction is in the system message; others are not."""
    plan = plan_answer(services=services, query="q?", passages=[passage()], proficiency=level)
    system = plan.messages[0]["content"]
    assert LEVELS[level] in system
    assert all(LEVELS[other] not in system for other in LEVELS if other != level)


def test_offline_plan_is_extractive_and_cited(services: Services) -> None:
    """Without a client the plan quotes the passages with their numbers and keeps the citations."""
    offline = dataclasses.replace(services, openai=None)
    plan = plan_answer(services=offline, query="Can a client cancel an action goal?", passages=[passage()])
    assert plan.mode == "extractive"
    assert plan.text is not None
    assert plan.text.startswith(OFFLINE_NOTE)
    assert "cancel an action goal" in plan.text
    assert "[1]" in plan.text
    assert len(plan.citations) == 1


async def test_open_breaker_plans_extractive(services: Services) -> None:
    """An open openai breaker turns the plan extractive before any call."""
    for _ in range(services.settings.circuit_failure_threshold):
        await services.resilience.record_failure(Upstream.OPENAI, ConnectionError("down"))
    try:
        plan = plan_answer(services=services, query="What are actions?", passages=[passage()])
        assert plan.mode == "extractive"
    finally:
        await services.resilience.reset()


def test_selected_text_alone_is_answered_not_refused(services: Services) -> None:
    """With selected text but no passages, the model answers from the selection (no citations)."""
    plan = plan_answer(services=services, query="Explain", passages=[], selected_text="Zero moment point.")
    assert plan.needs_model
    assert plan.citations == []
    assert "Zero moment point." in plan.messages[-1]["content"]


def test_offline_plan_quotes_matching_sentences_and_cites_what_it_quotes(services: Services) -> None:
    """Offline, the answer is the sentences bearing on the question, and the citations are only the
    sections the answer quotes, once each."""
    offline = dataclasses.replace(services, openai=None)
    twin = passage(content="Topics stream messages between nodes without waiting for an answer.")
    other = passage(heading="Installing ROS 2", content="Install with apt on Ubuntu 22.04 and source the setup file.")
    plan = plan_answer(services=offline, query="cancel goal", passages=[passage(), twin, other])
    assert plan.mode == "extractive"
    assert "A client can cancel an action goal before it finishes. [1]" in (plan.text or "")
    assert len(plan.citations) == len(plan.sources) == 1


def test_code_is_protected_and_restored() -> None:
    """Code becomes placeholders for the model and comes back; a dropped placeholder is appended."""
    text = "Run `ros2 topic list` now.\n\n```bash\nros2 run demo talker\n```\nDone."
    prose, blocks = protect_code(text)
    assert "ros2" not in prose
    assert len(blocks) == 2
    assert restore_code(prose, blocks) == text
    lossy = restore_code(prose.replace("\u27e6CODE1\u27e7", ""), blocks)
    assert lossy.endswith("```bash\nros2 run demo talker\n```")


def test_session_title_from_query() -> None:
    """Titles collapse whitespace and are cut at a word."""
    assert title_from_query("  What   is URDF? ") == "What is URDF?"
    long = title_from_query("word " * 40)
    assert len(long) <= 61
    assert long.endswith("…")
