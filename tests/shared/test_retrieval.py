"""Retrieval over the real textbook in the real embedded Qdrant (Edge), embedded by the fake OpenAI server."""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from collections.abc import AsyncIterator

import pytest

from shared.answers.passages import Passage
from shared.answers.retrieval import _rank, retrieve, term_coverage
from shared.platform.clients import Services
from shared.platform.config import Settings
from shared.stores.sparse import tokenize
from tests.conftest import REDIS_TEST_URL
from tests.fakes.openai_server import FakeOpenAI
from tests.utils.chat_corpus import corpus_files, indexed_store

IN_BOOK = {
    "How do ROS 2 nodes communicate using topics?": "week3/ros2-nodes-topics.md",
    # Both chapters teach it (week 8 in Isaac Sim); either chapter may come first.
    "What is domain randomization in sim-to-real transfer?": "week10/sim-to-real-transfer.md week8/nvidia-isaac-sim.md",
    "How do ROS 2 actions differ from services?": "week4/ros2-services-actions.md",
    "What is embodied intelligence?": "week2/embodied-intelligence.md",
    "How does Isaac ROS accelerate perception?": "week9/isaac-ros.md",
}
OFF_TOPIC = [
    "best pizza in Naples",
    "What is the best pizza in Naples?",
    "What is the capital of France?",
    "Who won the 2022 football world cup?",
    "How do I bake sourdough bread?",
]


@pytest.fixture(scope="module")
async def services(fake_openai: FakeOpenAI) -> AsyncIterator[Services]:
    """Worker-role services over a fresh local Qdrant holding the whole corpus."""
    settings = Settings(
        _env_file=None,
        data_dir=tempfile.mkdtemp(prefix="lectern-retrieval-"),
        redis_url=f"{REDIS_TEST_URL}/{1 + uuid.uuid4().int % 15}",
        openai_api_key="sk-test-retrieval",
        openai_base_url=fake_openai.url,
    )  # type: ignore[call-arg]
    built, chunks = await indexed_store(settings)
    assert chunks > 100
    yield built
    await built.aclose()


def test_corpus_is_there() -> None:
    """The textbook sits beside the repo (../shared/corpus), 14 chapters."""
    assert len(corpus_files()) == 14


@pytest.mark.parametrize(("question", "chapter"), IN_BOOK.items())
async def test_in_chapter_question_finds_its_chapter(services: Services, question: str, chapter: str) -> None:
    """A question answered in one chapter retrieves that chapter first, with raw scores attached."""
    passages = await retrieve(services=services, query=question)
    assert passages, question
    assert passages[0].source in chapter.split()
    assert passages[0].dense_score is not None
    assert passages[0].coverage >= services.settings.retrieval_min_term_coverage


@pytest.mark.parametrize("question", OFF_TOPIC)
async def test_off_topic_question_finds_nothing(services: Services, question: str) -> None:
    """Nothing clears the relevance gate for questions the book does not cover."""
    assert await retrieve(services=services, query=question) == []


async def test_offline_retrieval_is_bm25_only(services: Services, fake_openai: FakeOpenAI) -> None:
    """Without an embedder no embedding is requested, and BM25 alone still finds the chapter."""
    offline = dataclasses.replace(services, embedder=None, openai=None)
    before = len(fake_openai.requests_to("/embeddings"))
    passages = await retrieve(services=offline, query="How do ROS 2 actions differ from services?")
    assert len(fake_openai.requests_to("/embeddings")) == before
    assert passages[0].source == "week4/ros2-services-actions.md"
    assert passages[0].dense_score is None
    assert await retrieve(services=offline, query="best pizza in Naples") == []


async def test_selected_text_drives_retrieval(services: Services) -> None:
    """A vague question about a selected passage retrieves the passage's chapter."""
    selected = (
        "Sim-to-real transfer refers to the process of taking policies, models, or behaviors learned in "
        "simulation and deploying them on physical robots. The reality gap is the difference between "
        "simulated and real-world conditions."
    )
    passages = await retrieve(services=services, query="Can you explain this?", selected_text=selected)
    assert passages
    assert passages[0].source == "week10/sim-to-real-transfer.md"


async def test_limit_caps_the_passages_one_per_section(services: Services) -> None:
    """At most `limit` passages come back, each from a different section."""
    passages = await retrieve(services=services, query="ROS 2 nodes topics publishers subscribers", limit=3)
    assert len(passages) == 3
    assert len({(p.source, p.url) for p in passages}) == 3


async def test_sections_that_ask_come_after_sections_that_explain(services: Services) -> None:
    """Review questions and objectives repeat a topic's words; they never outrank an explaining section."""
    passages = await retrieve(services=services, query="What is sim-to-real transfer?", limit=8)
    kinds = [p.section_kind for p in passages]
    assert "explains" in kinds
    assert kinds == sorted(kinds, key=lambda kind: kind == "asks")


def test_term_coverage_counts_stemmed_content_terms() -> None:
    """Coverage is the share of stemmed, non-stop-word question terms present in the text."""
    terms = set(tokenize("What are the best pizzas in Naples?"))
    assert terms == {"best", "pizza", "napl"}
    assert term_coverage(terms, "The best practices for robots") == pytest.approx(1 / 3)
    assert term_coverage(set(), "anything") == 0.0


async def test_a_follow_up_s_own_words_lead_among_borrowed_context(services: Services) -> None:
    """ "And a camera?" after a LiDAR question is searched with the LiDAR question's words; with the reader's
    own words as the focus, the section whose heading names the camera comes first."""
    query = "And a camera? LiDAR sensor simulated Gazebo"
    focused = await retrieve(services=services, query=query, focus="And a camera?", limit=3)
    assert focused[0].heading == "Camera Sensor Configuration"
    assert focused[0].heading_focus == 1.0
    unfocused = await retrieve(services=services, query=query, limit=3)
    assert all(p.heading_focus == 0.0 for p in unfocused)


def test_focus_moves_the_section_naming_the_reader_s_words_up() -> None:
    """Ranking: of two explaining sections in the store's order, the second leads once its heading names
    the follow-up's own words (heading_focus 1.0), and not otherwise."""

    def passage(heading: str, focus: float) -> Passage:
        return Passage(
            source="week6/gazebo.md",
            title="Gazebo",
            heading=heading,
            url=f"#{heading}",
            content="...",
            score=0.0,
            heading_focus=focus,
        )

    others = [passage(f"Other section {i}", 0.0) for i in range(18)]  # a store returns ~20 candidates
    plain = _rank([passage("LiDAR", 0.0), passage("Camera", 0.0), *others])
    focused = _rank([passage("LiDAR", 0.0), passage("Camera", 1.0), *others])
    assert [p.heading for p in plain[:2]] == ["LiDAR", "Camera"]
    assert [p.heading for p in focused[:2]] == ["Camera", "LiDAR"]
