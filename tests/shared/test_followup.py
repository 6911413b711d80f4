"""The follow-up rule: which questions stand alone, and what a follow-up searches for offline."""

from __future__ import annotations

import pytest

from shared.answers.followup import is_about_previous_answer, is_standalone, rule_based_query
from shared.inference.llm import Message


def _history(*questions: str) -> list[Message]:
    messages: list[Message] = []
    for question in questions:
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": "An answer from the book [1]."})
    return messages


@pytest.mark.parametrize(
    "question",
    [
        "What is Isaac Sim?",
        "How does ROS 2 discover nodes on the network?",
        "What are the system requirements for Isaac Sim?",
    ],
)
def test_a_question_with_its_own_subject_stands_alone(question: str) -> None:
    """No anaphora, no request about the previous answer: searched as written, even mid-conversation."""
    assert is_standalone(question, _history("What is sim-to-real transfer?"))
    assert rule_based_query(question, _history("What is sim-to-real transfer?")).rewritten is False


def test_a_first_question_always_stands_alone() -> None:
    """Without history nothing is borrowed, whatever the wording."""
    assert is_standalone("What GPU does it need?", [])
    assert rule_based_query("What GPU does it need?", []).text == "What GPU does it need?"


@pytest.mark.parametrize(
    ("earlier", "question", "borrowed"),
    [
        (["What is Isaac Sim?"], "What GPU does it need?", "Isaac Sim"),
        (["What are ROS 2 topics?"], "How are they different from services?", "ROS 2 topics"),
        (["What is LiDAR?"], "And cameras?", "LiDAR"),
        (["What is Isaac Sim?", "What GPU does it need?"], "Why?", "Isaac Sim"),
    ],
)
def test_anaphoric_follow_up_borrows_the_subject(earlier: list[str], question: str, borrowed: str) -> None:
    """The follow-up keeps its own words and gains the subject terms of the earlier questions."""
    query = rule_based_query(question, _history(*earlier))
    assert query.rewritten
    assert query.method == "rule"
    assert query.text.startswith(question)
    assert borrowed in query.text


@pytest.mark.parametrize(
    "question", ["Give me an example.", "Explain that more simply.", "Summarise it.", "Can you elaborate?"]
)
def test_request_about_the_previous_answer_searches_the_previous_query(question: str) -> None:
    """The previous turn's search query is searched again, so the same passages come back."""
    assert is_about_previous_answer(question)
    query = rule_based_query(question, _history("What is sim-to-real transfer?"))
    assert query.method == "previous_answer"
    assert query.text == "What is sim-to-real transfer?"


def test_previous_answer_of_a_follow_up_resolves_through_the_chain() -> None:
    """ "Explain that more simply" after a rewritten follow-up searches that follow-up's resolved query."""
    query = rule_based_query("Explain that more simply.", _history("What is Isaac Sim?", "What GPU does it need?"))
    assert query.text == "What GPU does it need? Isaac Sim"
