"""The extractive answer: a few sentences of the retrieved passages that bear on the question, cited.

Used when no LLM is configured or its breaker is open. The book's chat widget shows the answer as RAW
TEXT, so the answer is plain prose: the passages' markdown is parsed (markdown-it-py, CommonMark plus
tables) and only the text of paragraphs and list items is kept; headings, tables, HTML and code are
dropped (code comes back, fenced, only when the question asks for it). Sentences are scored by the
question terms they share, their section heading's counting as theirs (the BM25 analysis of
`shared.stores.sparse.tokenize`, rarer terms weighing more), and at most a few of them, from at most three
sections, are quoted in reading order with [n] markers.

Pure and deterministic: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

from shared.answers.passages import Passage
from shared.ingestion.chunking import ASKS
from shared.stores.sparse import tokenize

__all__ = ["Extract", "asks_for_code", "compose_extractive", "defines_subject", "plain_text_blocks"]

#: Sentences quoted in all, per section, and sections cited (a marker each).
MAX_SENTENCES = 4
MAX_PER_SECTION = 2
MAX_SECTIONS = 3
#: Budget of the quoted prose; a sentence over `MAX_SENTENCE_CHARS` is clipped at a word.
MAX_CHARS = 700
MAX_SENTENCE_CHARS = 400
#: Shorter pieces are labels or fragments ("Real-time performance"), not answers.
MIN_SENTENCE_CHARS = 25
#: A line of at most this many words ending with ":" is a label ("Key features:"), not a sentence.
MAX_LABEL_WORDS = 4
#: A sentence must score at least this share of the best one: a lone shared common word is not relevance.
RELATIVE_FLOOR = 0.4
DEFINITION_BONUS = 0.3
RANK_BONUS = 0.15
LENGTH_NORM = 0.25
#: A sentence that introduced a listing is quoted only when better ones are missing.
WEAK_FACTOR = 0.5
#: Sentences of the best section quoted when none shares a term with the question.
FALLBACK_SENTENCES = 2
#: A list joins the sentence that introduces it ("..., providing:") only while the result stays a sentence.
MAX_JOINED_ITEMS = 8
MAX_JOINED_ITEM_CHARS = 100
MAX_JOINED_CHARS = 450
#: Code quoted on request is cut at a line boundary past this.
MAX_CODE_CHARS = 1500

_md = MarkdownIt("commonmark").enable("table")

BlockKind = Literal["prose", "item", "lead", "code"]


@dataclass(frozen=True)
class Extract:
    """An extractive answer: `text` is plain prose with [n] markers; [n] cites `passages[used[n - 1]]`."""

    text: str
    used: list[int]


@dataclass(frozen=True)
class _Block:
    kind: BlockKind
    text: str
    info: str = ""  # a code block's language


# --- markdown -> plain text ---------------------------------------------------------------------------

# Any "<" that could open a tag once the text reaches an HTML renderer (it can only come from an entity,
# an escape or a code span, since HTML tokens are dropped): shown as a look-alike that never parses.
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
# A plain-text line that a markdown renderer would read as a heading, quote, list item or rule.
_LINE_MARKER = re.compile(r"^(?:[#>*+-]+|\d+[.)])\s+")


def _inline_text(node: SyntaxTreeNode) -> str:
    """The text of an inline run: markup dropped, its text kept; images and HTML dropped."""
    out: list[str] = []
    hidden = False  # inside an inline <script>/<style>: its body is code, not prose

    def walk(n: SyntaxTreeNode) -> None:
        nonlocal hidden
        for child in n.children:
            kind = child.type
            if kind == "html_inline":
                tag = child.content.lower()
                if tag.startswith(("<script", "<style")) and not tag.endswith("/>"):
                    hidden = True
                elif tag.startswith(("</script", "</style")):
                    hidden = False
            elif kind in ("softbreak", "hardbreak"):
                out.append("\n")  # kept as a line break so admonition fence lines can be dropped whole
            elif kind == "image":
                continue  # alt text describes a picture the reader cannot see here
            elif kind in ("text", "text_special", "code_inline"):
                if not hidden:
                    out.append(child.content)
            else:  # em, strong, link, ...: their text is the content
                walk(child)

    walk(node)
    # Docusaurus admonitions (":::note Title" ... ":::") parse as paragraph lines in CommonMark.
    lines = [line for line in "".join(out).split("\n") if not line.strip().startswith(":::")]
    return _TAG_START.sub("\u2039", " ".join(" ".join(lines).split()))


def _paragraph_text(node: SyntaxTreeNode) -> str:
    return " ".join(_inline_text(child) for child in node.children if child.type == "inline").strip()


def _joinable_items(list_node: SyntaxTreeNode) -> list[str] | None:
    """The items of a short flat list of phrases, or None when joining them would not read as a sentence."""
    items: list[str] = []
    for item in list_node.children:
        parts = [child for child in item.children if child.type == "paragraph"]
        if len(parts) != 1 or len(item.children) != 1:
            return None  # nested lists, code or several paragraphs: keep the items as they are
        text = _paragraph_text(parts[0]).rstrip(" .;,")
        if not text or len(text) > MAX_JOINED_ITEM_CHARS or len(_split_sentences(text)) > 1:
            return None
        items.append(text)
    return items if 0 < len(items) <= MAX_JOINED_ITEMS else None


def _lower_first(text: str) -> str:
    """'Real-time performance' -> 'real-time performance'; 'ROS 2 ...' and 'Nodes: ...' stay as they are."""
    word = text.split(" ", 1)[0]
    if ":" in text or not word[:1].isupper() or not word[1:].islower():
        return text
    return text[0].lower() + text[1:]


def _container_blocks(node: SyntaxTreeNode, blocks: list[_Block], *, in_list: bool) -> None:
    """Blocks of a container (document, blockquote, list item), in reading order."""
    children = node.children
    joined: set[int] = set()  # lists already quoted as part of the sentence that introduces them
    for index, child in enumerate(children):
        kind = child.type
        if kind == "paragraph":
            text = _paragraph_text(child)
            following = children[index + 1] if index + 1 < len(children) else None
            if (
                text.endswith(":")
                and len(text.split()) > MAX_LABEL_WORDS  # "Key features:" is a label, not a sentence to finish
                and following is not None
                and following.type in ("bullet_list", "ordered_list")
                and (items := _joinable_items(following)) is not None
            ):
                # "X provides:" + a list of phrases reads best as one sentence "X provides: a; b; c."
                sentence = f"{text} {'; '.join(_lower_first(item) for item in items)}."
                if len(sentence) <= MAX_JOINED_CHARS:
                    blocks.append(_Block("prose", sentence))
                    joined.add(index + 1)
                    continue
            if text:
                # A sentence introducing a list that stays a list says nothing on its own ("... able to:").
                leads_list = text.endswith(":") and following is not None and following.type.endswith("_list")
                blocks.append(_Block("lead" if leads_list else "item" if in_list else "prose", text))
        elif kind in ("bullet_list", "ordered_list"):
            if index not in joined:
                for item in child.children:
                    _container_blocks(item, blocks, in_list=True)
        elif kind in ("blockquote", "list_item"):
            _container_blocks(child, blocks, in_list=in_list or kind == "list_item")
        elif kind in ("fence", "code_block"):
            info = child.info.strip().split(" ", 1)[0] if child.info else ""
            blocks.append(_Block("code", child.content.rstrip("\n"), info))
        # heading, table, html_block, hr: nothing. A heading is a label, not an answer; a table row out
        # of its grid ("Operates in virtual environments: Operates in real ...") reads as nonsense, and
        # the cited section shows the table properly; HTML is never passed on.


def _blocks(markdown: str) -> list[_Block]:
    blocks: list[_Block] = []
    _container_blocks(SyntaxTreeNode(_md.parse(markdown)), blocks, in_list=False)
    return blocks


def plain_text_blocks(markdown: str, *, keep_code: bool) -> list[str]:
    """The plain text of each paragraph and list item of `markdown`, in reading order.

    Inline markup keeps only its text (emphasis, code spans, links); images, HTML, headings, tables
    and admonition fence lines are dropped, and code blocks too unless `keep_code`. A paragraph that
    introduces a short list of phrases ("..., providing:") is joined with it into one sentence, which
    is how the book's many "X offers: a, b, c" passages read as an answer. The result is for a reader
    who sees raw text, so it must not depend on a markdown renderer.
    """
    return [block.text for block in _blocks(markdown) if keep_code or block.kind != "code"]


# --- sentences --------------------------------------------------------------------------------------

_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*\s+")
_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "cf", "approx", "fig", "eq", "no", "al", "dr", "mr", "ms"})


def _split_sentences(text: str) -> list[str]:
    """Sentences of a plain-text block; 'e.g.', 'etc.' and '2.5 m/s' do not end one."""
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        following = text[match.end() : match.end() + 1]
        if not (following.isupper() or following.isdigit() or following in "\"'(["):
            continue  # "e.g. the robot", "i.e. a" and the like: a lower-case word goes on the sentence
        word = text[start : match.start() + 1].rsplit(None, 1)[-1].lstrip("(\"'").rstrip(".").lower()
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            continue  # "etc. ROS 2", "J. Smith"
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _clip(sentence: str) -> str:
    if len(sentence) <= MAX_SENTENCE_CHARS:
        return sentence
    return sentence[:MAX_SENTENCE_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + "\u2026"


def _answer_sentences(block: _Block) -> list[tuple[str, bool]]:
    """The sentences of a block worth quoting, each with whether it introduced a listing or table
    (weak: "X differs in several key ways:" points at what is not quoted). No fragments, labels,
    list lead-ins or questions."""
    if block.kind == "code":
        return []
    sentences = _split_sentences(block.text)
    if block.kind == "lead":
        sentences = sentences[:-1]  # "..., Physical AI systems must:" says nothing without its list
    kept: list[tuple[str, bool]] = []
    for raw in sentences:
        sentence = _LINE_MARKER.sub("", raw).strip()
        weak = sentence.endswith(":")
        if weak and len(sentence.split()) > MAX_LABEL_WORDS:
            # "LiDAR systems provide 3D spatial information ...:" before a listing is often the only prose
            # a section has; it stands as a sentence. "Example:" and other labels do not.
            sentence = sentence[:-1].rstrip() + "."
        elif block.kind == "item" and sentence[-1:] not in ".!?:":
            sentence += "."  # a list item is quoted as a sentence of prose
        if len(sentence) < MIN_SENTENCE_CHARS or sentence.endswith((":", "?")):
            continue
        kept.append((_clip(sentence), weak))
    return kept


# --- questions --------------------------------------------------------------------------------------

_CODE_REQUEST = re.compile(
    r"\b(?:code|snippets?|script|commands?\s+(?:to|for)|(?:which|what)\s+commands?)\b"
    # "How do I install / launch / create ...?" asks for the book's commands or listing, not for prose.
    r"|\bhow\s+(?:do|can|would|should)\s+(?:i|you|we)\s+(?:write|implement|code|program|install|set\s+up|"
    r"configure|launch|run|create|spawn|add|call|load|define|build|subscribe|publish)\b"
    r"|\b(?:in|using|with)\s+(?:python|c\+\+|rclpy|rclcpp|bash)\b",
    re.IGNORECASE,
)
_DEFINITION_QUESTION = re.compile(
    r"^\s*(?:what\s+(?:is|are|was|were)|what's|define|explain|describe|tell\s+me\s+about)\s+(?:an?\s+|the\s+)?(?P<subject>[^?]+?)\s*[?.!]*\s*$",
    re.IGNORECASE,
)


#: Words of the request for code itself, which say nothing about which listing is wanted.
_CODE_WORDS = frozenset(tokenize("show give example sample code snippet script command write implement program"))


def asks_for_code(query: str) -> bool:
    """True when the question asks for code ("show me the code", "snippet", "... in Python", "command to").

    Only then is a code block quoted: elsewhere a fragment of code, out of its listing, answers nothing.
    """
    return _CODE_REQUEST.search(query) is not None


def _definition_subject(query: str) -> list[str]:
    """The analysed terms of X in "what is X?", "tell me about X" (empty for other questions)."""
    # Only the first question counts: a follow-up's resolved subject may be appended after it.
    match = _DEFINITION_QUESTION.match(query.split("?", 1)[0])
    return tokenize(match.group("subject")) if match else []


def _defines(terms: list[str], subject: list[str]) -> bool:
    """The sentence opens by naming the subject: "NVIDIA Isaac Sim is ...", or, for "what are ROS 2
    services?", "Services provide ..." (the subject's head noun first; its qualifiers are often implied)."""
    if not subject or not terms:
        return False
    width = len(subject)
    return terms[0] == subject[-1] or any(terms[i : i + width] == subject for i in range(min(4, len(terms))))


#: How many of a passage's first prose sentences may hold its definition of the subject.
DEFINING_SENTENCES = 2


def defines_subject(query: str, markdown: str) -> bool:
    """True when `query` asks what X is ("what is X?", "tell me about X") and the passage's first prose
    sentences define X ("NVIDIA Isaac Sim is ..."): retrieval puts such a section first, since a page
    that mentions X everywhere (installing it, running it) does not say what it is."""
    subject = _definition_subject(query)
    if not subject:
        return False
    return any(_defines(list(terms), subject) for terms in _opening_sentence_terms(markdown))


@functools.lru_cache(maxsize=4096)
def _opening_sentence_terms(markdown: str) -> tuple[tuple[str, ...], ...]:
    """The analysed terms of a passage's first prose sentences. Cached: the same passages come back for
    many questions, and parsing one costs ~0.3 ms of the API's CPU."""
    return tuple(
        tuple(tokenize(sentence))
        for block in plain_text_blocks(markdown, keep_code=False)[:DEFINING_SENTENCES]
        for sentence in _split_sentences(block)[:DEFINING_SENTENCES]
    )


# --- composing ----------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    section: int  # index of the section (passages sharing source and heading), in rank order
    order: int  # reading order within the section
    text: str
    #: The sentence's analysed terms and its section heading's: under "System Requirements", "8GB+ RAM
    #: (16GB+ recommended)" answers "what are the system requirements?" without repeating its words.
    terms: frozenset[str]
    length: int  # analysed terms of the sentence itself, counting repeats
    defines: bool
    weak: bool  # it introduced a listing or table that is not quoted


def _sections(passages: Sequence[Passage]) -> tuple[list[int], list[list[int]]]:
    """Group passages by (source, heading): each section's first passage and all its passages."""
    first: list[int] = []
    members: list[list[int]] = []
    index_of: dict[tuple[str, str], int] = {}
    for i, passage in enumerate(passages):
        key = (passage.source, (passage.heading or "").strip())
        if key not in index_of:
            index_of[key] = len(first)
            first.append(i)
            members.append([])
        members[index_of[key]].append(i)
    return first, members


def _score(candidates: list[_Candidate], query_terms: set[str]) -> list[float]:
    """Weighted share of the question's terms in each sentence, plus definition and rank bonuses."""
    total = len(candidates)
    df = {term: sum(term in c.terms for c in candidates) for term in query_terms}
    # Rarer question terms say more about what is asked ("ZMP" over "robot"); an absent term weighs most.
    idf = {term: math.log(1.0 + total / max(count, 0.5)) for term, count in df.items()}
    weight = sum(idf.values()) or 1.0
    average = sum(c.length for c in candidates) / max(total, 1) or 1.0
    scores: list[float] = []
    for c in candidates:
        overlap = sum(idf[t] for t in query_terms & c.terms) / weight
        # Mild BM25-style length normalisation, for long sentences only: a run-on ("you will be able to:
        # a; b; c; ...") matches many questions by sheer size; a short fragment is not better for it.
        overlap /= max(1.0, 1 - LENGTH_NORM + LENGTH_NORM * c.length / average)
        if overlap == 0:
            scores.append(0.0)  # bonuses only order sentences that share something with the question
            continue
        score = overlap + DEFINITION_BONUS * c.defines + RANK_BONUS / (1 + c.section)
        scores.append(score * WEAK_FACTOR if c.weak else score)
    return scores


def _choose(candidates: list[_Candidate], scores: list[float]) -> list[_Candidate]:
    """The sentences to quote. Retrieval ranked the sections, so the first `MAX_SECTIONS` sections (in
    that order) that have a sentence bearing on the question each give their best one; the rest of the
    budget goes to the next best sentences of those sections. Picking the best sentences overall instead
    let a broad introduction that repeats the question's words push out the section that answers it."""
    best = max(scores, default=0.0)
    if best <= 0:
        return _fallback(candidates)
    by_section: dict[int, list[int]] = {}
    for i in sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i].order)):
        if scores[i] > 0:
            by_section.setdefault(candidates[i].section, []).append(i)
    chosen: list[int] = []
    size = 0
    for section in sorted(by_section)[:MAX_SECTIONS]:
        lead = by_section[section][0]
        if chosen and size + len(candidates[lead].text) + 1 > MAX_CHARS:
            continue
        chosen.append(lead)
        size += len(candidates[lead].text) + 1
    sections = {candidates[i].section for i in chosen}
    extra = sorted(
        (i for section in sections for i in by_section[section][1:MAX_PER_SECTION]),
        key=lambda i: (-scores[i], candidates[i].section, candidates[i].order),
    )
    for i in extra:
        if len(chosen) == MAX_SENTENCES or scores[i] < RELATIVE_FLOOR * best:
            break
        if size + len(candidates[i].text) + 1 <= MAX_CHARS:
            chosen.append(i)
            size += len(candidates[i].text) + 1
    return [candidates[i] for i in chosen]


def _fallback(candidates: list[_Candidate]) -> list[_Candidate]:
    """A paraphrased question shares no term: the first sentences of the best section usually define it."""
    if not candidates:
        return []
    section = min(c.section for c in candidates)
    opening = sorted((c for c in candidates if c.section == section), key=lambda c: (c.weak, c.order))
    chosen = [opening[0]]
    for c in opening[1:FALLBACK_SENTENCES]:
        if sum(len(x.text) + 1 for x in chosen) + len(c.text) <= MAX_CHARS:
            chosen.append(c)
    return chosen


def _fence(code: str, info: str) -> str:
    """A code block fenced with more backticks than it contains, cut at a line past MAX_CODE_CHARS."""
    lines: list[str] = []
    size = 0
    for line in code.splitlines():
        if size > MAX_CODE_CHARS:
            lines.append("...")
            break
        lines.append(line)
        size += len(line) + 1
    body = "\n".join(lines)
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{body}\n{ticks}"


def compose_extractive(query: str, passages: Sequence[Passage], *, note: str) -> Extract:
    """The extractive answer to `query` from `passages` (best first), as plain text for a raw-text reader.

    `note` is the first line (why this is not a generated answer). Then the chosen sentences as one
    paragraph, grouped by section in rank order, each group followed by its marker [n]; passages with
    the same source and heading are one section with one marker. When the question asks for code, a
    code block follows, fenced, with its marker (the best passage's first, or the first under a heading
    that names the question's topic). `used` maps markers to passages,
    so the citations shown can be exactly the ones the answer quotes.
    """
    first, members = _sections(passages)
    parsed = [_blocks(p.content) for p in passages]
    subject = _definition_subject(query)
    # A section that asks (review questions, objectives) repeats the question's words without answering
    # it: quoted only when no section that explains was retrieved.
    explaining = {s for s, indices in enumerate(members) if passages[indices[0]].section_kind != ASKS}
    quotable = explaining or set(range(len(members)))
    candidates: list[_Candidate] = []
    seen: set[str] = set()
    for section, indices in enumerate(members):
        if section not in quotable:
            continue
        heading_terms = frozenset(tokenize(passages[indices[0]].heading or ""))
        order = 0
        for i in indices:
            for block in parsed[i]:
                if block.kind == "code":
                    continue
                for sentence, weak in _answer_sentences(block):
                    key = " ".join(sentence.lower().split())
                    if key in seen:
                        continue  # consecutive chunks of a section overlap
                    seen.add(key)
                    terms = tokenize(sentence)
                    candidates.append(
                        _Candidate(
                            section,
                            order,
                            sentence,
                            frozenset(terms) | heading_terms,
                            len(terms),
                            _defines(terms, subject),
                            weak,
                        )
                    )
                    order += 1

    chosen = _choose(candidates, _score(candidates, set(tokenize(query))))
    code = _code_block(query, passages, parsed, members, quotable) if asks_for_code(query) else None
    texts = {
        section: " ".join(c.text for c in sorted(chosen, key=lambda c: c.order) if c.section == section)
        for section in {c.section for c in chosen}
    }
    top = min(quotable, default=None)
    with_prose = {c.section for c in candidates}
    shown = code[0] if code is not None else None
    for rank, section in enumerate(sorted(quotable)[:MAX_SECTIONS]):
        if not chosen or section in with_prose or section == shown:
            continue
        # One of retrieval's best sections teaches this in code or tables only: point the reader at it, in
        # its place, rather than cite only the sections whose prose happens to repeat the question's words.
        where = _where(passages[first[section]])
        texts[section] = (
            f'The book shows this in "{where}", mostly as code not quoted here.'
            if rank == 0
            else f'See also "{where}" (code or a table, not quoted here).'
        )
    # Retrieval's best section answering in code comes first, its listing before the prose.
    code_first = code is not None and code[0] == top and top not in texts
    markers: dict[int, int] = {}  # section -> marker number, in order of first use
    parts = [note.strip(), ""]
    listing: list[str] = []
    if code is not None:
        section, block = code
        if code_first:
            markers[section] = 1
        listing = ["Code from the book [{marker}]:", _fence(block.text, block.info)]
    if code_first:
        parts.extend([listing[0].format(marker=1), listing[1]])
    groups: list[str] = []
    for section in sorted(texts):
        markers.setdefault(section, len(markers) + 1)
        groups.append(f"{texts[section]} [{markers[section]}]")
    if groups:
        if code_first:
            parts.append("")
        parts.append(" ".join(groups))
    if code is not None and not code_first:
        section = code[0]
        markers.setdefault(section, len(markers) + 1)
        if groups:
            parts.append("")
        parts.extend([listing[0].format(marker=markers[section]), listing[1]])
    if not markers and passages:
        # Every passage is code or headings: say where to look rather than quote fragments of a listing.
        lead = min(quotable)
        markers[lead] = 1
        parts.append(
            f'The closest section of the book, "{_where(passages[first[lead]])}", is mostly code or tables, '
            "with no explanation to quote here. [1]"
        )
    used = [first[section] for section, _ in sorted(markers.items(), key=lambda item: item[1])]
    return Extract(text="\n".join(parts).rstrip() + "\n", used=used)


def _where(passage: Passage) -> str:
    """A section's name as plain text, for pointing the reader at it."""
    return " ".join(plain_text_blocks(passage.heading or passage.title or "", keep_code=False)) or passage.source


def _code_block(
    query: str,
    passages: Sequence[Passage],
    parsed: list[list[_Block]],
    members: list[list[int]],
    quotable: set[int],
) -> tuple[int, _Block] | None:
    """The code block to quote, with its section: the first of the best passage that has code, unless a
    lower passage's heading names the question's topic ("Creating a Subscriber") and the best one's
    does not; a retrieved chunk's first listing is as often a setup file as the thing asked about.

    Headings, not code, are matched: they are the author's words for what a listing does, while
    identifiers stem poorly ("create_subscription" is not "subscriber").
    """
    wanted = set(tokenize(query)) - _CODE_WORDS
    section_of = {i: section for section, indices in enumerate(members) for i in indices}
    best: tuple[int, int, int] | None = None  # (-heading terms named, passage, block)
    for i, blocks in enumerate(parsed):
        if section_of[i] not in quotable:
            continue
        heading = tokenize(" ".join([*passages[i].heading_path, passages[i].heading or ""]))
        for j, block in enumerate(blocks):
            if block.kind == "code" and block.text.strip():
                key = (-len(wanted & set(heading)), i, j)
                best = key if best is None or key < best else best
    if best is None:
        return None
    _, i, j = best
    return section_of[i], parsed[i][j]
