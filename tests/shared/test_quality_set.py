"""The answer-quality question set (`bench/quality_set.json`) against the real book: sizes, sections that
exist and explain, paraphrases that share no indexed term with their sections. No stack needed."""

from __future__ import annotations

import re
from functools import cache

import pytest

from bench.quality import (
    FOLLOW_UP_KINDS,
    Answer,
    QaSet,
    QualityReport,
    Question,
    QuestionResult,
    Ranking,
    Section,
    first_hit,
    load_qa_set,
)
from shared.stores.sparse import tokenize
from tests.utils.corpus import corpus_dir

#: Sections that list or point elsewhere rather than explain: never an expected answer.
NOT_EXPLAINING = re.compile(
    r"^(review questions|learning objectives|further reading|prerequisites|(weekly )?hands-on exercises?|exercises?)$",
    re.IGNORECASE,
)
ISSUE_QUESTIONS = [
    "What is Isaac Sim?",
    "Tell me about LiDAR.",
    "How do robots stay upright when walking?",
    "How does ROS 2 discover nodes on the network?",
    "What is sim-to-real transfer?",
]
ISSUE_CONVERSATIONS = [
    ["What is Isaac Sim?", "What GPU does it need?"],
    ["What is sim-to-real transfer?", "Give me an example."],
    ["What are ROS 2 topics?", "How are they different from services?"],
]

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")


def _plain(heading: str) -> str:
    """A heading's text without inline markup (links, HTML tags, emphasis, code spans)."""
    heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    heading = re.sub(r"<[^>]+>", "", heading)
    heading = re.sub(r"(\*\*|\*|~~|`)", "", heading)
    return heading.strip()


@cache
def book_sections() -> dict[tuple[str, str], str]:
    """(source, plain heading) -> the text directly under that heading, up to the next heading of any level
    (code included; `#` lines inside fences are not headings). Repeated headings in a file are joined."""
    root = corpus_dir()
    sections: dict[tuple[str, str], str] = {}
    for path in sorted(root.rglob("*.md")):
        source = path.relative_to(root).as_posix()
        key: tuple[str, str] | None = None
        fence: str | None = None
        for line in path.read_text(encoding="utf-8").split("\n"):
            opener = _FENCE.match(line)
            if opener:
                marker = opener.group(1)
                if fence is None:
                    fence = marker
                elif marker[0] == fence[0] and len(marker) >= len(fence):
                    fence = None
            elif fence is None and (heading := _ATX.match(line)):
                key = (source, _plain(heading.group(2)))
                sections.setdefault(key, "")
                continue
            if key is not None:
                sections[key] += line + "\n"
    return sections


@pytest.fixture(scope="module")
def qa() -> QaSet:
    """The question set."""
    return load_qa_set()


def _every_expected(qa: QaSet) -> list[tuple[str, Section]]:
    expected = [(q.id, s) for q in qa.questions for s in q.expect]
    expected += [(f"{c.id}.{i + 1}", s) for c in qa.conversations for i, t in enumerate(c.turns) for s in t.expect]
    return expected


def test_set_loads_and_meets_the_minimums(qa: QaSet) -> None:
    """At least 45 questions (12 paraphrases), 12 conversations of 2-3 turns, 12 off-topic; unique ids."""
    assert len(qa.questions) >= 45
    assert sum(q.paraphrase for q in qa.questions) >= 12
    assert len({q.id for q in qa.questions}) == len(qa.questions)
    assert len({q.question for q in qa.questions}) == len(qa.questions)
    assert all(q.expect for q in qa.questions)
    assert len(qa.conversations) >= 12
    assert len({c.id for c in qa.conversations}) == len(qa.conversations)
    for conversation in qa.conversations:
        assert 2 <= len(conversation.turns) <= 3, conversation.id
        assert conversation.turns[0].kind is None, conversation.id
        assert all(t.kind in FOLLOW_UP_KINDS for t in conversation.turns[1:]), conversation.id
        assert all(t.expect for t in conversation.turns), conversation.id
    assert len(qa.off_topic) >= 12
    assert len(set(qa.off_topic)) == len(qa.off_topic)


def test_issue_questions_and_conversations_are_in_the_set(qa: QaSet) -> None:
    """The questions and conversations from the issue are there word for word."""
    by_text = {q.question: q for q in qa.questions}
    for question in ISSUE_QUESTIONS:
        assert question in by_text, question
    dds = Section("week3/ros2-nodes-topics.md", "DDS-Based Communication")
    assert dds in by_text["How does ROS 2 discover nodes on the network?"].expect
    openings = [[t.question for t in c.turns][:2] for c in qa.conversations]
    for conversation in ISSUE_CONVERSATIONS:
        assert conversation in openings, conversation
    for dog in ("What is the best programming language for web design?", "How do I train my dog to walk on a leash?"):
        assert dog in qa.off_topic


def test_every_expected_section_exists_and_explains(qa: QaSet) -> None:
    """Each expected (source, heading) is a heading of the book with text under it, not a list of questions,
    objectives or reading."""
    sections = book_sections()
    problems = []
    for where, section in _every_expected(qa):
        body = sections.get((section.source, section.heading))
        if body is None:
            problems.append(f"{where}: no heading {section.heading!r} in {section.source}")
        elif not body.strip():
            problems.append(f"{where}: {section.label()} has no text of its own (expect its subsections)")
        elif NOT_EXPLAINING.match(section.heading):
            problems.append(f"{where}: {section.label()} does not explain anything")
    assert not problems, "\n".join(problems)


def test_previous_answer_follow_ups_expect_the_previous_sections(qa: QaSet) -> None:
    """'Give me an example.' is about the previous answer, so it is answered by the same sections."""
    for conversation in qa.conversations:
        for before, turn in zip(conversation.turns, conversation.turns[1:], strict=False):
            if turn.kind == "previous_answer":
                assert set(turn.expect) == set(before.expect), conversation.id


def test_paraphrases_share_no_term_with_their_sections(qa: QaSet) -> None:
    """A paraphrase's BM25 terms (stemmed, stop words dropped) appear nowhere in its expected sections'
    heading or text: only meaning, not words, can lead retrieval to them."""
    sections = book_sections()
    paraphrases = [q for q in qa.questions if q.paraphrase]
    problems = []
    for question in paraphrases:
        terms = set(tokenize(question.question))
        assert terms, question.id
        for section in question.expect:
            shared = terms & set(tokenize(section.heading + "\n" + sections[(section.source, section.heading)]))
            if shared:
                problems.append(f"{question.id} {question.question!r} shares {sorted(shared)} with {section.label()}")
    assert not problems, "\n".join(problems)


def test_non_paraphrases_are_not_marked_by_mistake(qa: QaSet) -> None:
    """A literal question shares at least one term with some expected section (else mark it paraphrase)."""
    sections = book_sections()
    for question in qa.questions:
        if question.paraphrase:
            continue
        section_terms: set[str] = set()
        for section in question.expect:
            section_terms |= set(tokenize(section.heading + "\n" + sections[(section.source, section.heading)]))
        assert set(tokenize(question.question)) & section_terms, question.id


def test_scoring_ranks_citations_by_section() -> None:
    """first_hit is the 1-based rank of the first expected (source, heading); Ranking averages r@1, r@3, MRR."""
    a, b, c = Section("a.md", "A"), Section("b.md", "B"), Section("c.md", "C")
    assert first_hit([b, a, a], [a]) == 2
    assert first_hit([b, c], [a]) is None
    assert first_hit([Section("a.md", "Other")], [a]) is None
    ranking = Ranking.of([1, 2, 4, None])
    assert (ranking.n, ranking.r_at_1, ranking.r_at_3) == (4, 0.25, 0.5)
    assert ranking.mrr == pytest.approx((1 + 1 / 2 + 1 / 4) / 4)
    report = QualityReport(label="t", base_url="http://x")
    question = Question(id="q", question="?", expect=(a,))
    report.questions.append(QuestionResult(question, Answer(citations=[], latency_s=0.01), None))
    report.questions.append(QuestionResult(question, Answer(error="HTTP 500"), None))
    metrics = report.metrics()
    assert (metrics.in_book_refusals, metrics.errors, metrics.latency_p50_ms) == (1, 1, pytest.approx(10.0))
