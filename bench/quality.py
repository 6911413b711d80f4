"""Answer quality on the whole stack: does the chat cite the section of the book that answers?

Run: .venv/bin/python -m bench.quality [--modes offline online] [--json PATH]
     .venv/bin/python -m bench.quality --base-url http://127.0.0.1:7860   (a stack already running)

The questions are `bench/quality_set.json`: single questions, each with the book sections (source file,
deepest heading) that answer it, some of them paraphrases sharing no content word with their sections;
multi-turn conversations whose follow-ups lean on the previous turn ("What GPU does it need?", "Give me an
example."); and off-topic questions the book does not cover.

Without `--base-url`, for each mode it boots the stack the way `bench.chat` does (`scripts/start` under
supervisord, embedded Redis and local Qdrant in a temporary DATA_DIR, `RATE_LIMIT_CHAT` raised), ingests
the real book through `POST /api/ingest` and waits for the job:
- `offline`: no OPENAI_API_KEY (extractive answers, sparse-only retrieval);
- `online`: OPENAI_BASE_URL pointing at the fake OpenAI server (`tests/fakes/openai_server.py`), as the
  chat stack tests do. Its embeddings are hashed bags of words, so paraphrases score like offline here;
  only a stack with a real embedding model (`--base-url`) shows what dense retrieval adds.

Each question is one `POST /api/chat/stream`, one at a time (concurrency would inflate the latency). What is
measured, from the client's side:
- r@1 / r@3: an expected section is the first / among the first three citations; MRR: 1 / rank of the
  first expected section in the citation list (0 when none). A section matches on (source, heading).
- in-book refusals: in-book questions answered with no citations (the "the book does not cover it" reply).
- off-topic answered: off-topic questions that got citations (they should be refused).
- follow-up hit rate: follow-up turns (signed-in user, same session, so the server has the history) whose
  first three citations contain an expected section; the `meta` event's `search_query` (the rewritten
  standalone query, when the server sends one) is printed for the misses.
- retrieval latency p50/p95: request sent -> SSE `citations` event received. The server sends `meta` and
  `citations` once the answer stream is open, so in `online` mode this includes opening the model's stream.

With `--base-url`, the stack must already hold the book and allow the request rate: start it with
`RATE_LIMIT_CHAT=100000/minute` (the default 20/minute turns the run into 429s, which abort it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.openai_server import free_port, spawn
from tests.utils.corpus import corpus_dir
from tests.utils.sse import iter_events
from tests.utils.stack import REPO, Stack, wait_for

QA_SET_PATH = Path(__file__).resolve().parent / "quality_set.json"
MODES = ("offline", "online")
#: The stack's default (20/minute) would throttle the run; the benchmarks and the chat stack tests raise it.
RATE_LIMIT_CHAT = "100000/minute"
FOLLOW_UP_KINDS = ("anaphora", "previous_answer")


# -- the question set -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A section of the book: its file (relative to the book root) and the plain text of its deepest heading."""

    source: str
    heading: str

    def label(self) -> str:
        """`source#heading`, for printing."""
        return f"{self.source}#{self.heading}"


@dataclass(frozen=True)
class Question:
    """A single in-book question and the sections that answer it."""

    id: str
    question: str
    expect: tuple[Section, ...]
    paraphrase: bool = False


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation; `kind` is None for the opening turn, else `anaphora` or `previous_answer`."""

    question: str
    expect: tuple[Section, ...]
    kind: str | None = None


@dataclass(frozen=True)
class Conversation:
    """Turns sent in order in one chat session."""

    id: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class QaSet:
    """The whole set: single questions, conversations and off-topic questions."""

    questions: tuple[Question, ...]
    conversations: tuple[Conversation, ...]
    off_topic: tuple[str, ...]


def _sections(raw: Any) -> tuple[Section, ...]:
    return tuple(Section(source=str(item["source"]), heading=str(item["heading"])) for item in raw)


def load_qa_set(path: Path = QA_SET_PATH) -> QaSet:
    """Read the question set (`bench/quality_set.json` by default); raises ValueError on a malformed entry."""
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        questions = tuple(
            Question(
                id=str(item["id"]),
                question=str(item["question"]),
                expect=_sections(item["expect"]),
                paraphrase=bool(item.get("paraphrase", False)),
            )
            for item in data["questions"]
        )
        conversations = tuple(
            Conversation(
                id=str(item["id"]),
                turns=tuple(
                    Turn(question=str(turn["question"]), expect=_sections(turn["expect"]), kind=turn.get("kind"))
                    for turn in item["turns"]
                ),
            )
            for item in data["conversations"]
        )
        off_topic = tuple(str(question) for question in data["off_topic"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: malformed question set ({exc!r})") from exc
    for conversation in conversations:
        for index, turn in enumerate(conversation.turns):
            if (index == 0) != (turn.kind is None) or (turn.kind is not None and turn.kind not in FOLLOW_UP_KINDS):
                raise ValueError(f"{path}: {conversation.id} turn {index + 1} has kind {turn.kind!r}")
    return QaSet(questions=questions, conversations=conversations, off_topic=off_topic)


# -- one exchange ------------------------------------------------------------------------------------------


class RateLimited(RuntimeError):
    """The stack answered 429: its RATE_LIMIT_CHAT is too low for a benchmark run."""


@dataclass
class Answer:
    """What the client saw of one streamed answer."""

    citations: list[Section] = field(default_factory=list)
    #: The citation objects as sent (source, title, heading, url, score, snippet), for the JSON report.
    raw_citations: list[dict[str, Any]] = field(default_factory=list)
    session_id: str | None = None
    mode: str | None = None
    search_query: str | None = None
    #: Seconds from sending the request to receiving the `citations` event (None if it never came).
    latency_s: float | None = None
    text: str = ""
    error: str | None = None

    @property
    def refused(self) -> bool:
        """The book-does-not-cover-it reply: an answer without citations (errors are not refusals)."""
        return self.error is None and not self.citations


async def ask(
    client: httpx.AsyncClient, question: str, *, session_id: str | None = None, token: str | None = None
) -> Answer:
    """POST /api/chat/stream and read the whole stream (the server stores the turn only once it is done)."""
    answer = Answer()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    began = time.perf_counter()
    try:
        async with client.stream(
            "POST", "/api/chat/stream", json={"query": question, "session_id": session_id}, headers=headers
        ) as response:
            if response.status_code == 429:
                raise RateLimited(f"429 from {client.base_url}: start the stack with RATE_LIMIT_CHAT={RATE_LIMIT_CHAT}")
            if response.status_code != 200:
                await response.aread()
                answer.error = f"HTTP {response.status_code}: {response.text[:200]}"
                return answer
            done = False
            async for event in iter_events(response):
                if event.event == "meta":
                    meta = event.json()
                    answer.session_id, answer.mode = meta.get("session_id"), meta.get("mode")
                    answer.search_query = meta.get("search_query")
                elif event.event == "citations":
                    answer.latency_s = time.perf_counter() - began
                    answer.raw_citations = [c for c in event.json() if isinstance(c, dict)]
                    answer.citations = [
                        Section(source=str(c.get("source")), heading=str(c.get("heading") or ""))
                        for c in answer.raw_citations
                    ]
                elif event.event == "delta":
                    answer.text += str(event.json().get("text", ""))
                elif event.event == "error":
                    answer.error = f"error event: {event.json().get('code', '?')}"
                elif event.event == "done":
                    done = True
            if answer.error is None and not done:
                answer.error = "stream ended without done"
    except httpx.HTTPError as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    return answer


async def sign_up(client: httpx.AsyncClient) -> str:
    """A fresh user (random email) for the conversations; returns the Bearer token."""
    email = f"quality-{secrets.token_hex(6)}@example.com"
    response = await client.post(
        "/api/auth/sign-up", json={"email": email, "name": "Quality bench", "password": secrets.token_urlsafe(16)}
    )
    response.raise_for_status()
    return str(response.json()["token"])


# -- scoring -----------------------------------------------------------------------------------------------


def first_hit(citations: Sequence[Section], expect: Sequence[Section]) -> int | None:
    """1-based rank of the first citation that is an expected section, None when there is none."""
    wanted = set(expect)
    return next((rank for rank, cited in enumerate(citations, start=1) if cited in wanted), None)


@dataclass
class QuestionResult:
    """A single question's answer and the rank of its first expected section."""

    question: Question
    answer: Answer
    rank: int | None


@dataclass
class TurnResult:
    """One conversation turn's answer."""

    conversation: str
    index: int
    turn: Turn
    answer: Answer
    rank: int | None


@dataclass
class OffTopicResult:
    """An off-topic question's answer (it should have no citations)."""

    question: str
    answer: Answer


@dataclass(frozen=True)
class Ranking:
    """Retrieval figures over a group of questions."""

    n: int
    r_at_1: float
    r_at_3: float
    mrr: float

    @staticmethod
    def of(ranks: Sequence[int | None]) -> Ranking:
        """r@1, r@3 and MRR of the given first-hit ranks (None = no expected section cited)."""
        n = len(ranks)
        if n == 0:
            return Ranking(n=0, r_at_1=0.0, r_at_3=0.0, mrr=0.0)
        return Ranking(
            n=n,
            r_at_1=sum(r == 1 for r in ranks) / n,
            r_at_3=sum(r is not None and r <= 3 for r in ranks) / n,
            mrr=sum(1 / r for r in ranks if r is not None) / n,
        )


@dataclass(frozen=True)
class Metrics:
    """The headline figures of one run."""

    questions: Ranking
    literal: Ranking
    paraphrase: Ranking
    opening_turns: Ranking
    follow_ups: int
    follow_up_hit_rate: float
    in_book_refusals: int
    off_topic: int
    off_topic_answered: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    errors: int


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the same rule as bench.chat)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class QualityReport:
    """Everything one evaluation observed; `metrics()` sums it up."""

    label: str
    base_url: str
    questions: list[QuestionResult] = field(default_factory=list)
    turns: list[TurnResult] = field(default_factory=list)
    off_topic: list[OffTopicResult] = field(default_factory=list)

    def answers(self) -> list[Answer]:
        """Every answer of the run."""
        return [r.answer for r in self.questions] + [t.answer for t in self.turns] + [o.answer for o in self.off_topic]

    def metrics(self) -> Metrics:
        """r@1/r@3/MRR (all, literal, paraphrase, opening turns), follow-up hits, refusals, latency, errors."""
        follow_ups = [t for t in self.turns if t.turn.kind is not None]
        latencies = [a.latency_s * 1000 for a in self.answers() if a.latency_s is not None]
        return Metrics(
            questions=Ranking.of([r.rank for r in self.questions]),
            literal=Ranking.of([r.rank for r in self.questions if not r.question.paraphrase]),
            paraphrase=Ranking.of([r.rank for r in self.questions if r.question.paraphrase]),
            opening_turns=Ranking.of([t.rank for t in self.turns if t.turn.kind is None]),
            follow_ups=len(follow_ups),
            follow_up_hit_rate=(
                sum(t.rank is not None and t.rank <= 3 for t in follow_ups) / len(follow_ups) if follow_ups else 0.0
            ),
            in_book_refusals=sum(r.answer.refused for r in self.questions),
            off_topic=len(self.off_topic),
            off_topic_answered=sum(bool(o.answer.citations) for o in self.off_topic),
            latency_p50_ms=statistics.median(latencies) if latencies else None,
            latency_p95_ms=percentile(latencies, 0.95) if latencies else None,
            errors=sum(a.error is not None for a in self.answers()),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the metrics and every answer's citations (snippets cut to 120 characters, answers to 300)."""

        def answer(a: Answer) -> dict[str, Any]:
            return {
                "citations": [
                    {**c, "snippet": str(c.get("snippet") or "")[:120]} if "snippet" in c else c
                    for c in a.raw_citations
                ],
                "mode": a.mode,
                "search_query": a.search_query,
                "latency_ms": None if a.latency_s is None else round(a.latency_s * 1000, 1),
                "error": a.error,
                "text": a.text[:300],
            }

        return {
            "label": self.label,
            "base_url": self.base_url,
            "metrics": asdict(self.metrics()),
            "questions": [
                {
                    "id": r.question.id,
                    "question": r.question.question,
                    "paraphrase": r.question.paraphrase,
                    "expect": [asdict(s) for s in r.question.expect],
                    "rank": r.rank,
                    **answer(r.answer),
                }
                for r in self.questions
            ],
            "turns": [
                {
                    "conversation": t.conversation,
                    "turn": t.index + 1,
                    "question": t.turn.question,
                    "kind": t.turn.kind,
                    "expect": [asdict(s) for s in t.turn.expect],
                    "rank": t.rank,
                    **answer(t.answer),
                }
                for t in self.turns
            ],
            "off_topic": [{"question": o.question, **answer(o.answer)} for o in self.off_topic],
        }


# -- evaluation --------------------------------------------------------------------------------------------


async def evaluate(base_url: str, qa: QaSet, *, label: str = "", timeout: float = 120.0) -> QualityReport:
    """Ask every question of `qa` on the stack at `base_url` (one at a time) and collect the answers.

    Single and off-topic questions are asked anonymously; each conversation runs in a new session of one
    freshly signed-up user, every follow-up carrying the session id the previous turn's `meta` returned.
    Raises RateLimited when the stack answers 429 (its RATE_LIMIT_CHAT is too low).
    """
    report = QualityReport(label=label or base_url, base_url=base_url)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
        for question in qa.questions:
            answer = await ask(client, question.question)
            report.questions.append(QuestionResult(question, answer, first_hit(answer.citations, question.expect)))
        for off_topic in qa.off_topic:
            report.off_topic.append(OffTopicResult(off_topic, await ask(client, off_topic)))
        if qa.conversations:
            token = await sign_up(client)
            for conversation in qa.conversations:
                session_id: str | None = None
                for index, turn in enumerate(conversation.turns):
                    answer = await ask(client, turn.question, session_id=session_id, token=token)
                    # A turn that failed leaves the session as it was; later turns still go to it.
                    session_id = answer.session_id or session_id
                    report.turns.append(
                        TurnResult(conversation.id, index, turn, answer, first_hit(answer.citations, turn.expect))
                    )
    return report


# -- printing ----------------------------------------------------------------------------------------------


def _got(answer: Answer) -> str:
    if answer.error is not None:
        return f"ERROR {answer.error}"
    if not answer.citations:
        return "(refused: no citations)"
    return " | ".join(f"{i}. {c.label()}" for i, c in enumerate(answer.citations[:3], start=1))


def print_report(report: QualityReport) -> None:
    """The figures as a table, then one line per miss (question, expected, first three citations)."""
    m = report.metrics()
    modes = sorted({a.mode for a in report.answers() if a.mode})
    print(f"\n== {report.label} ({', '.join(modes) or 'no answers'}) ==")
    print(f"  {'':24s} {'n':>4s} {'r@1':>6s} {'r@3':>6s} {'MRR':>6s}")
    for name, ranking in (
        ("in-book questions", m.questions),
        ("  literal", m.literal),
        ("  paraphrase", m.paraphrase),
        ("conversation openers", m.opening_turns),
    ):
        print(f"  {name:24s} {ranking.n:4d} {ranking.r_at_1:6.2f} {ranking.r_at_3:6.2f} {ranking.mrr:6.2f}")
    print(f"  {'follow-up hit rate':24s} {m.follow_ups:4d} {m.follow_up_hit_rate:6.2f}  (expected section in top 3)")
    print(f"  {'in-book refusals':24s} {m.in_book_refusals:4d} of {m.questions.n}")
    print(f"  {'off-topic answered':24s} {m.off_topic_answered:4d} of {m.off_topic}")
    if m.latency_p50_ms is not None and m.latency_p95_ms is not None:
        print(
            f"  {'retrieval latency':24s} p50 {m.latency_p50_ms:.0f} ms, p95 {m.latency_p95_ms:.0f} ms"
            " (request -> citations event)"
        )
    print(f"  {'errors':24s} {m.errors:4d}")

    misses = [r for r in report.questions if r.rank is None or r.rank > 3]
    if misses:
        print(f"\n  misses ({len(misses)} questions without an expected section in the top 3):")
    for r in misses:
        tag = " [paraphrase]" if r.question.paraphrase else ""
        expected = "; ".join(s.label() for s in r.question.expect)
        print(f"  - {r.question.id}{tag} {r.question.question!r} expected [{expected}] got [{_got(r.answer)}]")
    follow_misses = [t for t in report.turns if t.turn.kind is not None and (t.rank is None or t.rank > 3)]
    if follow_misses:
        print(f"\n  follow-up misses ({len(follow_misses)}):")
    for t in follow_misses:
        expected = "; ".join(s.label() for s in t.turn.expect)
        rewritten = f" search_query={t.answer.search_query!r}" if t.answer.search_query else " (no search_query)"
        print(
            f"  - {t.conversation}.{t.index + 1} [{t.turn.kind}] {t.turn.question!r}{rewritten}"
            f" expected [{expected}] got [{_got(t.answer)}]"
        )
    answered = [o for o in report.off_topic if o.answer.citations]
    if answered:
        print(f"\n  off-topic questions answered ({len(answered)}):")
    for o in answered:
        print(f"  - {o.question!r} got [{_got(o.answer)}]")


# -- booting a stack ---------------------------------------------------------------------------------------


def ingest_book(stack: Stack) -> int:
    """Ingest every markdown file of the book through `POST /api/ingest`; returns the chunks upserted."""
    book = corpus_dir()
    documents = [
        {"source": path.relative_to(book).as_posix(), "content": path.read_text(encoding="utf-8")}
        for path in sorted(book.rglob("*.md"))
    ]
    if not documents:
        raise RuntimeError(f"no markdown files under {book} (set LECTERN_CORPUS_DIR)")
    with stack.client(timeout=60) as client:
        response = client.post("/api/ingest", json={"documents": documents})
        response.raise_for_status()
        job_id = response.json()["job_id"]

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/api/ingest/jobs/{job_id}").json()
            if job["status"] == "failed":
                raise RuntimeError(f"ingestion failed: {job}")
            return job if job["status"] == "succeeded" else None

        # Offline the e5 embedding of ~500 chunks takes 3-6 min on 2 cores, longer when they are shared.
        job = wait_for(finished, timeout=900, interval=0.5, message="ingestion job")
    print(f"ingested {len(documents)} documents, {job['chunks_upserted']} chunks")
    return int(job["chunks_upserted"])


def run_mode(mode: str, qa: QaSet) -> QualityReport:
    """Boot a stack for `mode` (offline: no OpenAI key; online: the fake OpenAI server), ingest the book,
    evaluate, and stop everything."""
    env = {"RATE_LIMIT_CHAT": RATE_LIMIT_CHAT, "AUTO_INGEST": "false", "LOG_LEVEL": "WARNING"}
    fake = None
    if mode == "online":
        port = free_port()
        fake = spawn(port, quiet=True)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200, timeout=20)
        env.update(OPENAI_API_KEY="sk-bench-not-a-real-key", OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1")
    # Stack passes on only PATH/LANG/LC_ALL/TZ from this environment, so offline really has no key.
    stack = Stack(env=env)
    try:
        stack.start(timeout=120)
        stack.wait_worker(timeout=60)
        ingest_book(stack)
        return asyncio.run(evaluate(stack.base_url, qa, label=mode))
    finally:
        stack.cleanup()
        if fake is not None:
            fake.terminate()
            fake.wait(timeout=10)


def main(argv: Sequence[str] | None = None) -> None:
    """Evaluate each mode (or the stack at --base-url), print the tables and misses, write --json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="evaluate this running stack (book ingested, RATE_LIMIT_CHAT raised)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="stacks to boot")
    parser.add_argument("--qa", type=Path, default=QA_SET_PATH, help="question set (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the full report (every answer's citations) here")
    args = parser.parse_args(argv)
    qa = load_qa_set(args.qa)
    paraphrases = sum(q.paraphrase for q in qa.questions)
    print(
        f"question set: {len(qa.questions)} questions ({paraphrases} paraphrases), "
        f"{len(qa.conversations)} conversations, {len(qa.off_topic)} off-topic"
    )
    reports: list[QualityReport] = []
    if args.base_url:
        reports.append(asyncio.run(evaluate(args.base_url, qa)))
        print_report(reports[-1])
    else:
        for mode in args.modes:
            reports.append(run_mode(mode, qa))
            print_report(reports[-1])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"reports": [r.to_dict() for r in reports]}, indent=2) + "\n")
        print(f"\nreport written to {args.json}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(REPO)))
    main()
