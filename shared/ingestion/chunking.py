"""Markdown -> chunks: front matter, heading paths, code-fence-safe splitting, Docusaurus URLs, section kinds.

`chunk_markdown` parses the document with markdown-it-py (CommonMark, tables, YAML front matter) and cuts the
author's original markdown into blocks along the token stream's source line ranges, so chunk text is the
author's text rather than a re-rendering. Front matter is read with `yaml.safe_load` and kept as metadata;
MDX `import`/`export` statements are dropped (code is never touched). The document is cut into sections at
headings; each section is packed into chunks of about `chunk_size` characters from whole blocks (paragraphs,
lists, tables, code fences), and consecutive chunks of one section share about `overlap` characters of
prose. A block is split only when it does not fit: a code fence by lines with each piece re-fenced, a table
by rows with its header repeated, a list by items, prose by sentences. A heading never makes a chunk alone:
a heading with no text of its own lives on in its subsections' heading paths.

Every chunk knows its `heading_path` (`# > ## > ###`), its `heading` (the deepest one), a citation `url`
(`SITE_URL/docs/<path without .md>#<Docusaurus heading slug>`) and its `section_kind`: whether the section
explains the subject or asks something of the reader (review questions, objectives, exercises, further
reading), so retrieval can prefer explanations when answering.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.front_matter import front_matter_plugin

__all__ = [
    "ASKS",
    "CHUNKER_VERSION",
    "EXPLAINS",
    "Chunk",
    "ParsedDocument",
    "chunk_markdown",
    "docs_url",
    "heading_slug",
    "parse_front_matter",
]

#: Bumped when chunk boundaries or payload fields change, so re-ingesting an unchanged document rewrites its
#: chunks (ingestion compares it with what the document was stored with).
CHUNKER_VERSION = 2
EXPLAINS = "explains"
"""`Chunk.section_kind` of a section that teaches its subject."""
ASKS = "asks"
"""`Chunk.section_kind` of a section that tests the reader or sends them elsewhere."""

_MD = MarkdownIt("commonmark").enable("table").use(front_matter_plugin)

_EXPLICIT_ID = re.compile(r"\s*\{#(?P<id>[^}\s]+)\}\s*$")
_MDX_LINE = re.compile(r"^(import|export)\s")
_HTML_COMMENT = re.compile(r"^\s*<!--.*-->\s*$", re.DOTALL)
_NUMBER_PREFIX = re.compile(r"^\d+\s*[-_.]+\s*(?=[^-_.\s])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Chunk:
    """One retrievable piece of a document, with everything the vector store's payload needs."""

    source: str
    title: str
    heading: str | None
    heading_path: list[str]
    chunk_index: int
    url: str | None
    content: str
    content_hash: str = ""
    section_kind: str = EXPLAINS

    def __post_init__(self) -> None:
        if not self.content_hash:
            parts = [self.content, self.title, " > ".join(self.heading_path), self.url or "", self.section_kind]
            self.content_hash = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    @property
    def context(self) -> str:
        """Where the chunk sits: `title > heading > subheading`."""
        return " > ".join([self.title, *[h for h in self.heading_path if h != self.title]])

    @property
    def embed_text(self) -> str:
        """The text to embed and index: the title and heading path give the chunk its context."""
        return f"{self.context}\n\n{self.content}"

    def payload(self) -> dict[str, Any]:
        """The vector store payload."""
        return {
            "source": self.source,
            "title": self.title,
            "heading": self.heading,
            "heading_path": list(self.heading_path),
            "chunk_index": self.chunk_index,
            "url": self.url,
            "content": self.content,
            "content_hash": self.content_hash,
            "section_kind": self.section_kind,
        }


@dataclass
class ParsedDocument:
    """A document's metadata and chunks."""

    source: str
    title: str
    url: str | None
    metadata: dict[str, Any]
    chunks: list[Chunk] = field(default_factory=list)


@dataclass
class _Block:
    """A run of the author's markdown that is kept whole unless it alone is too big for a chunk."""

    text: str
    kind: str  # "heading" | "text" | "list" | "code" | "table"
    head: str = ""  # code: the opening fence line, repeated on every piece of a split fence
    tail: str = ""  # code: the closing fence line
    items: list[str] = field(default_factory=list)  # list: the top-level items' markdown
    item_joiner: str = "\n"  # list: "\n\n" for a loose list


@dataclass
class _Unit:
    """A paragraph or top-level list item, as plain text plus the inline structure the classifier needs."""

    text: str
    is_item: bool
    link_chars: int = 0  # characters of link text
    checkbox: bool = False  # a task-list item, `- [ ]` / `- [x]`
    title_led: bool = False  # starts with an emphasised span, like a cited book title
    term_led: bool = False  # `**Term**: explanation` - a definition or feature, not a task


@dataclass
class _Section:
    level: int
    path: list[str]
    slug: str | None
    heading: str | None  # the heading as it opens the section's first chunk
    blocks: list[_Block] = field(default_factory=list)
    units: list[_Unit] = field(default_factory=list)
    kind: str = EXPLAINS


# --- front matter -----------------------------------------------------------------------------------------


def _plain_value(value: Any) -> Any:
    """YAML values as JSON-friendly Python (dates become ISO strings, keys strings)."""
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain_value(v) for v in value]
    return value


def _load_front_matter(source: str) -> dict[str, Any]:
    """The front matter as a dict; malformed YAML or a non-mapping is no metadata (the body still counts)."""
    try:
        loaded = yaml.safe_load(source)
    except yaml.YAMLError:
        return {}
    if not isinstance(loaded, dict):
        return {}
    plain: dict[str, Any] = _plain_value(loaded)
    return plain


def _split_front_matter(tokens: list[Token]) -> tuple[dict[str, Any], int]:
    """The front matter's metadata and the line its body starts on (0 without front matter)."""
    if tokens and tokens[0].type == "front_matter" and tokens[0].map:
        return _load_front_matter(tokens[0].content), tokens[0].map[1]
    return {}, 0


def parse_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split YAML front matter (between `---` lines at the very top) from the body.

    Returns the metadata and the body. Without front matter, or when it is never closed, the metadata is
    empty and the text is returned unchanged; malformed YAML gives empty metadata and the body after it.
    """
    stripped = text.lstrip("\ufeff")
    if not stripped.startswith("---"):
        return {}, text
    meta, start = _split_front_matter(_MD.parse(stripped))
    if not start:
        return {}, text
    return meta, "\n".join(stripped.split("\n")[start:])


# --- headings and URLs ------------------------------------------------------------------------------------


def _plain_heading(text: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images -> their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML/JSX tags
    text = re.sub(r"(\*\*|\*|~~|`)", "", text)
    text = re.sub(r"(?<!\w)(__|_)(\S(?:.*?\S)?)\1(?!\w)", r"\2", text)  # _emphasis_, not snake_case
    return text.strip()


def heading_slug(text: str) -> str:
    """The anchor Docusaurus gives a heading (github-slugger rules on the rendered text)."""
    plain = _plain_heading(text).lower()
    plain = re.sub(r"[^\w\- ]", "", plain)
    return plain.replace(" ", "-")


def docs_url(site_url: str, source: str, metadata: dict[str, Any]) -> str:
    """The page URL Docusaurus publishes for a docs file (number prefixes, `id` and `slug` honoured)."""
    path = PurePosixPath(source.lstrip("/"))
    parts = [_NUMBER_PREFIX.sub("", p) for p in path.parts[:-1]]
    stem = path.name
    for suffix in (".mdx", ".md", ".markdown", ".txt"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = _NUMBER_PREFIX.sub("", stem)
    if metadata.get("id"):
        stem = str(metadata["id"])
    slug = str(metadata.get("slug") or "")
    if slug.startswith("/"):
        route = slug.strip("/")
    else:
        last = slug or ("" if stem.lower() in {"index", "readme"} or stem == (parts[-1] if parts else None) else stem)
        route = "/".join([*parts, last] if last else parts)
    return f"{site_url.rstrip('/')}/docs/{route}".rstrip("/") if route else f"{site_url.rstrip('/')}/docs"


# --- inline structure -------------------------------------------------------------------------------------


def _inline_plain(inline: Token) -> str:
    """The rendered text of an inline token: text, code spans and image alt text, markup dropped."""
    parts: list[str] = []
    for child in inline.children or []:
        if child.type in ("text", "code_inline", "image"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return " ".join("".join(parts).split())


def _unit(inline: Token, *, is_item: bool) -> _Unit:
    """A paragraph or list item's plain text and the inline shapes that tell a citation or a definition."""
    text = _inline_plain(inline)
    children = [c for c in inline.children or [] if not (c.type == "text" and not c.content.strip())]
    link_depth = 0
    link_chars = 0
    for child in children:
        if child.type == "link_open":
            link_depth += 1
        elif child.type == "link_close":
            link_depth -= 1
        elif link_depth and child.type in ("text", "code_inline", "image"):
            link_chars += len(child.content)
    first = children[0].type if children else ""
    term, after = "", ""
    if first == "strong_open":
        close = next((i for i, c in enumerate(children) if c.type == "strong_close"), len(children))
        term = "".join(c.content for c in children[1:close])
        after = children[close + 1].content if close + 1 < len(children) else ""
    elif first == "code_inline":
        term = children[0].content
        after = children[1].content if len(children) > 1 else ""
    term_led = bool(term) and (term.rstrip().endswith(":") or after.lstrip().startswith((":", "-", "\u2013", "\u2014")))
    return _Unit(
        text=text,
        is_item=is_item,
        link_chars=link_chars,
        checkbox=is_item and re.match(r"\[[ xX]\]\s", text) is not None,
        title_led=first == "em_open",
        term_led=term_led,
    )


# --- parsing ----------------------------------------------------------------------------------------------


def _block_end(tokens: list[Token], start: int) -> int:
    """Index of the token closing the top-level block opened at `start` (itself for a leaf)."""
    if tokens[start].nesting != 1:
        return start
    for index in range(start + 1, len(tokens)):
        if tokens[index].level == tokens[start].level and tokens[index].nesting == -1:
            return index
    return len(tokens) - 1


def _source(lines: list[str], start: int, end: int) -> str:
    """The author's lines [start, end) without the blank lines around them."""
    return "\n".join(lines[start:end]).strip("\n").rstrip()


def _fence_block(token: Token, lines: list[str], start: int, end: int) -> _Block:
    """A fenced code block; an unclosed fence (it runs to the end of the file) gets its closing line."""
    raw = lines[start:end]
    while len(raw) > 1 and not raw[-1].strip():
        raw.pop()
    opener = raw[0]
    indent = opener[: len(opener) - len(opener.lstrip())]
    marker = token.markup
    closed = len(raw) > 1 and raw[-1].strip().startswith(marker) and not raw[-1].strip().strip(marker[0])
    body = raw[1:-1] if closed else raw[1:]
    closer = raw[-1] if closed else f"{indent}{marker}"
    return _Block(text="\n".join([opener, *body, closer]), kind="code", head=opener, tail=closer)


def _list_block(tokens: list[Token], start: int, end: int, lines: list[str]) -> tuple[_Block, list[_Unit]]:
    """A whole list (nested lists stay inside their items) and its top-level items as classifier units."""
    level = tokens[start].level + 1
    items: list[str] = []
    units: list[_Unit] = []
    # markdown-it hides the paragraphs of a tight list; a visible one means blank lines between items.
    loose = any(t.type == "paragraph_open" and t.level == level + 1 and not t.hidden for t in tokens[start:end])
    for index in range(start + 1, end):
        token = tokens[index]
        if token.type != "list_item_open" or token.level != level or not token.map:
            continue
        items.append(_source(lines, token.map[0], token.map[1]))
        inline = next((t for t in tokens[index + 1 : end] if t.type == "inline"), None)
        if inline is not None:
            units.append(_unit(inline, is_item=True))
    map_ = tokens[start].map or [0, 0]
    block = _Block(
        text=_source(lines, map_[0], map_[1]),
        kind="list",
        items=[i for i in items if i],
        item_joiner="\n\n" if loose else "\n",
    )
    return block, units


def _sections(tokens: list[Token], lines: list[str], body_start: int) -> tuple[list[_Section], str | None]:
    """Cut the token stream into sections of the author's blocks; returns them and the first H1's text."""
    sections = [_Section(level=0, path=[], slug=None, heading=None)]
    stack: list[tuple[int, str]] = []
    used_slugs: dict[str, int] = {}
    first_h1: str | None = None
    covered = body_start  # lines up to here belong to a parsed block (or the front matter)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        end = _block_end(tokens, index)
        index_next = end + 1
        if token.level != 0 or token.map is None or token.type == "front_matter":
            index = index_next
            continue
        start_line, end_line = token.map
        if start_line > covered:
            # Lines no block claims are link reference definitions: keep them, links in the text need them.
            orphan = _source(lines, covered, start_line)
            if orphan.strip():
                sections[-1].blocks.append(_Block(text=orphan, kind="text"))
        covered = max(covered, end_line)
        section = sections[-1]
        if token.type == "heading_open":
            level = int(token.tag[1:])
            raw = _inline_plain(tokens[index + 1])
            explicit = _EXPLICIT_ID.search(raw)
            text = _EXPLICIT_ID.sub("", raw).strip() if explicit else raw
            slug = explicit.group("id") if explicit else heading_slug(text)
            if slug in used_slugs:
                used_slugs[slug] += 1
                slug = f"{slug}-{used_slugs[slug]}"
            else:
                used_slugs[slug] = 0
            if level == 1 and first_h1 is None:
                first_h1 = text
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, text))
            sections.append(
                _Section(
                    level=level,
                    path=[t for _, t in stack],
                    slug=None if level == 1 else slug,
                    heading=f"{'#' * level} {text}",
                )
            )
        elif token.type == "fence":
            section.blocks.append(_fence_block(token, lines, start_line, end_line))
        elif token.type == "code_block":
            section.blocks.append(_Block(text=_source(lines, start_line, end_line), kind="code"))
        elif token.type == "table_open":
            section.blocks.append(_Block(text=_source(lines, start_line, end_line), kind="table"))
        elif token.type in ("bullet_list_open", "ordered_list_open"):
            block, units = _list_block(tokens, index, end, lines)
            section.blocks.append(block)
            section.units.extend(units)
        elif token.type == "paragraph_open":
            text = _source(lines, start_line, end_line)
            if not _MDX_LINE.match(text):  # an MDX ESM statement (import/export) is not content
                section.blocks.append(_Block(text=text, kind="text"))
                section.units.append(_unit(tokens[index + 1], is_item=False))
        elif token.type == "hr":
            pass  # a thematic break carries no text
        else:  # blockquotes, HTML/JSX blocks
            text = _source(lines, start_line, end_line)
            if text.strip() and not (token.type == "html_block" and _HTML_COMMENT.match(text)):
                section.blocks.append(_Block(text=text, kind="text"))
        index = index_next
    tail = _source(lines, covered, len(lines))
    if tail.strip():
        sections[-1].blocks.append(_Block(text=tail, kind="text"))
    return sections, first_h1


# --- section kind -----------------------------------------------------------------------------------------

# Head nouns of study aids, singular (`_singular` maps plurals onto them). A heading only counts as
# naming one when it *is* that study aid ("Review Questions", "Exercise 2: Odometry", "Further Reading"),
# not when the word appears in a topic ("Isaac Lab Integration", "Review of Kinematics", "System Resources").
_AID_NOUNS = frozenset(
    {
        "question",
        "review",
        "quiz",
        "exercise",
        "assignment",
        "objective",
        "outcome",
        "reading",
        "reference",
        "resource",
        "bibliography",
        "prerequisite",
        "homework",
        "lab",
        "task",
        "activity",
        "self-check",
        "self-assessment",
        "next-step",
        "what's-next",
    }
)
# Words that may precede or join those nouns in such a heading ("Weekly Hands-On Exercise", "Learning
# Objectives", "Week 3 Review Questions and Exercises").
_AID_MODIFIERS = frozenset(
    {
        "further",
        "additional",
        "recommended",
        "suggested",
        "optional",
        "extra",
        "more",
        "useful",
        "key",
        "weekly",
        "week",
        "chapter",
        "module",
        "unit",
        "section",
        "end-of-chapter",
        "final",
        "learning",
        "hands-on",
        "practice",
        "practical",
        "self",
        "knowledge",
        "and",
        "&",
        "the",
    }
)
# First words of instructions and objectives (Bloom-style verbs): a list of these is a to-do, not a description.
_TASK_VERBS = frozenset(
    """
    add analyse analyze answer apply assess benchmark build calculate calibrate capture change check choose
    classify collect compare compile complete compute conduct configure connect construct convert create debug
    define demonstrate deploy derive describe design determine develop discuss distinguish document draw drive
    edit estimate evaluate examine experiment explain explore extend find fix formulate generate give handle
    identify implement install integrate interpret investigate iterate justify launch learn list load make
    master measure model modify name observe open optimize outline perform plan plot practice predict prepare
    program propose prove read recognize record reflect reproduce research review run save select set show
    simulate sketch solve start state submit summarize test train try tune understand use validate verify
    visualize write
    """.split()  # noqa: SIM905 - a word list reads better as text than one word a line
)
_NOT_IMPERATIVE_NEXT = frozenset({"is", "are", "was", "were", "of", "has", "have", "'s"})
_READER_GOAL = re.compile(
    r"\byou(?:'ll| will| should| can now| must)\b|\byour (?:task|goal|job|assignment)\b|\bby the end\b",
    re.IGNORECASE,
)
_QUOTED_TITLE = re.compile(r"^[\"\u201c\u2018'].{3,}?[\"\u201d\u2019']")
_AUTHORED = re.compile(r"\sby\s+[A-Z]|\(\d{4}\)|\b(?:19|20)\d{2}\b|\bet al\b|\bedited by\b", re.IGNORECASE)
_SCHOLARLY = re.compile(r"\bet al\b|\bdoi\b|\barxiv\b|\bisbn\b", re.IGNORECASE)
_URL = re.compile(r"https?://\S+")


def _words(text: str) -> list[str]:
    """Lower-case words of a heading or tag, with multi-word aid names glued into one word."""
    lowered = text.lower().replace("\u2019", "'")
    lowered = re.sub(r"\bnext\s+steps?\b", "next-step", lowered)
    lowered = re.sub(r"\bwhat'?s\s+next\b", "what's-next", lowered)
    lowered = re.sub(r"\bself[\s-]+(check|assessment)\b", r"self-\1", lowered)
    return re.findall(r"[\w'&-]+|[:(\u2013\u2014]", lowered)


def _singular(word: str) -> str:
    """English plural to singular, enough for the study-aid nouns (activities, quizzes, exercises)."""
    if word.endswith("ies"):
        return f"{word[:-3]}y"
    if word.endswith("zzes"):
        return word[:-3]
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def _names_study_aid(text: str) -> bool:
    """Whether a heading (or a tag) is the name of a study aid: modifiers, then aid nouns, then the end or
    a separator (number, colon, dash, parenthesis) - "Exercise 2: ...", "Learning Objectives"."""
    found = False
    for word in _words(text):
        if word in (":", "(", "\u2013", "\u2014", "-"):
            return found
        if re.fullmatch(r"\d+(\.\d+)*", word):
            if found:  # "Exercise 2: ..." - what follows the number is the exercise's own title
                return True
            continue  # numbering before the name: "3.2 Review Questions", "Week 3 Exercises"
        if _singular(word) in _AID_NOUNS:
            found = True
        elif word not in _AID_MODIFIERS:
            return False
    return found


def _is_question(unit: _Unit) -> bool:
    text = unit.text.rstrip()
    # "What is X? Explain." is still a question; a question answered at length is an explanation.
    return text.endswith("?") or re.search(r"\?\s+[^?.!]{1,60}[.!]?$", text) is not None


def _is_reference(unit: _Unit) -> bool:
    text = unit.text
    if not text:
        return False
    url_chars = sum(len(m) for m in _URL.findall(text))
    if unit.link_chars + url_chars >= 0.5 * len(text):
        return True
    titled = unit.title_led or _QUOTED_TITLE.match(text) is not None
    return (titled and _AUTHORED.search(text) is not None) or _SCHOLARLY.search(text) is not None


def _is_imperative(unit: _Unit) -> bool:
    words = re.findall(r"[a-z']+", re.sub(r"^\[[ xX]\]\s*", "", unit.text).lower())
    if not words or len(words) > 30 or unit.term_led:
        return False
    return words[0] in _TASK_VERBS and (len(words) < 2 or words[1] not in _NOT_IMPERATIVE_NEXT)


def _share(units: list[_Unit], test: Callable[[_Unit], bool]) -> tuple[int, float]:
    """How many units pass `test`, and what share of all units that is."""
    hits = sum(1 for u in units if test(u))
    return hits, (hits / len(units) if units else 0.0)


def _decide_section_kind(
    heading: str | None, blocks: list[_Block], units: list[_Unit], *, page_hint: bool, parent_kind: str
) -> str:
    """Whether a section explains its subject or asks something of the reader ("explains" / "asks").

    A section "asks" when it exists to test the reader or send them elsewhere - review questions,
    objectives, prerequisites, exercises, further reading - so answers should not quote it as an
    explanation. The decision reads the section's structure first; the heading is one signal among several:

    * Inherited: a subsection of an "asks" section asks too ("Exercises > Exercise 1: Odometry").
    * Mostly questions: when most paragraphs/items end with "?", the section poses questions rather than
      answering them; a Q&A that answers its questions mixes in answers and stays below the bar.
    * Mostly references: items that are mostly a link, a URL or a citation (quoted or italic title with
      an author or a year) point the reader elsewhere.
    * Task-list checkboxes (`- [ ]`) are things for the reader to do.
    Each of those decides alone. The rest add up, and no one of them is enough:
    * The heading *is* a study aid's name (1.5) - strong, but "Review of Kinematics" must still explain.
    * Front matter marks the page as an exercise/quiz/lab (1), e.g. `sidebar_class_name` or `tags`.
    * Most items/paragraphs are short instructions starting with a task verb (1): objectives and tasks.
    * A lead-in addresses the reader's goals - "you will", "by the end" (1).
    * Links carry 30% of the text or more (1): a "what's next" pointer.
    * The body is a bare list (0.5): no code or tables, list items carry the text, and they are not
      `**Term**: explanation` definitions. A feature list is also a bare list, hence the low weight.
    "Asks" needs 2: aid name + bare list (prerequisites), aid name + instructions (exercise), or
    instructions + bare list + a reader-goal lead-in (objectives under any heading); a how-to's steps
    (instructions + bare list) or a topic that merely contains an aid word stay "explains".
    A section with no text of its own is judged by its heading alone, so its subsections can inherit.
    """
    if parent_kind == ASKS:
        return ASKS
    items = [u for u in units if u.is_item]
    lead_ins = [u for u in units if not u.is_item and u.text.endswith(":")]
    body_units = [u for u in units if u not in lead_ins]
    questions, question_share = _share(body_units, _is_question)
    references, reference_share = _share(items, _is_reference)
    _, checkbox_share = _share(items, lambda u: u.checkbox)
    if (questions >= 2 and question_share >= 0.6) or (references >= 2 and reference_share >= 0.6):
        return ASKS
    if items and checkbox_share >= 0.5:
        return ASKS
    named = heading is not None and _names_study_aid(heading)
    if not blocks:
        return ASKS if named else EXPLAINS
    score = 1.5 if named else 0.0
    score += 1.0 if page_hint else 0.0
    steps = items if len(items) >= 2 else body_units
    imperatives, imperative_share = _share(steps, _is_imperative)
    if imperatives and imperative_share >= 0.6:
        score += 1.0
    if any(_READER_GOAL.search(u.text) for u in lead_ins or units[:1]):
        score += 1.0
    plain_chars = sum(len(u.text) for u in units)
    if plain_chars and sum(u.link_chars for u in units) >= 0.3 * plain_chars:
        score += 1.0
    list_chars = sum(len(b.text) for b in blocks if b.kind == "list")
    body_chars = sum(len(b.text) for b in blocks)
    _, term_share = _share(items, lambda u: u.term_led)
    bare_list = (
        len(items) >= 2
        and not any(b.kind in ("code", "table") for b in blocks)
        and list_chars >= 0.6 * body_chars
        and term_share < 0.5
    )
    score += 0.5 if bare_list else 0.0
    return ASKS if score >= 2 else EXPLAINS


def _page_hint(meta: dict[str, Any]) -> bool:
    """Whether front matter marks the whole page as a study aid.

    A sidebar class name is a CSS class, so any of its words counts ("sidebar-exercise"); a tag or keyword
    must be an aid's name as a whole ("exercises", "quiz"), as "isaac-lab" is a topic, not a lab.
    """
    css = meta.get("sidebar_class_name")
    if isinstance(css, str) and any(_singular(w) in _AID_NOUNS for w in re.split(r"[\s_-]+", css.lower())):
        return True
    labels: list[Any] = []
    for key in ("tags", "keywords"):
        value = meta.get(key)
        labels.extend(value if isinstance(value, list) else [value])
    for label in labels:
        name = label.get("label") if isinstance(label, dict) else label  # Docusaurus tags may be {label: ...}
        if isinstance(name, str) and _names_study_aid(name):
            return True
    return False


def _classify(sections: list[_Section], page_hint: bool) -> None:
    """Set every section's kind, parents before children so that subsections inherit."""
    stack: list[_Section] = []
    for section in sections:
        while stack and stack[-1].level >= section.level:
            stack.pop()
        parent_kind = stack[-1].kind if stack else EXPLAINS
        heading = section.path[-1] if section.level else None
        section.kind = _decide_section_kind(
            heading, section.blocks, section.units, page_hint=page_hint, parent_kind=parent_kind
        )
        stack.append(section)


# --- splitting and packing --------------------------------------------------------------------------------


def _greedy(units: list[str], first: int, rest: int, sep: int) -> list[list[str]]:
    """Pack units in order: the first group holds up to `first` characters, the others `rest`."""
    groups: list[list[str]] = [[]]
    length = 0
    budget = first
    for unit in units:
        if groups[-1] and length + sep + len(unit) > budget:
            groups.append([])
            length = 0
            budget = rest
        length += (sep if groups[-1] else 0) + len(unit)
        groups[-1].append(unit)
    return groups


def _group(units: list[str], first: int, rest: int, sep: int) -> list[list[str]]:
    """As few groups as greedy packing needs, evened out so the last piece is not a scrap."""
    groups = _greedy(units, first, rest, sep)
    if len(groups) <= 1:
        return groups
    low, high = 1, max(first, rest)
    while low < high:
        cap = (low + high) // 2
        if len(_greedy(units, min(first, cap), min(rest, cap), sep)) <= len(groups):
            high = cap
        else:
            low = cap + 1
    return _greedy(units, min(first, low), min(rest, low), sep)


def _text_units(text: str, limit: int) -> list[str]:
    """Sentences, with any longer than `limit` broken into words (and words longer than that cut)."""
    units: list[str] = []
    limit = max(limit, 1)
    for sentence in (s for s in _SENTENCE_END.split(text) if s):
        if len(sentence) <= limit:
            units.append(sentence)
            continue
        for word in sentence.split():
            units.extend(word[i : i + limit] for i in range(0, len(word), limit))
    return units


def _split_text(text: str, first: int, rest: int) -> list[str]:
    """Prose in pieces at sentence (else word) boundaries: the first up to `first` characters, others `rest`."""
    units = _text_units(text, min(first, rest))
    return [" ".join(g) for g in _group(units, first, rest, 1) if g]


def _trim_blank(lines: list[str]) -> list[str]:
    """Lines without the blank ones at either end (a piece of code should not start or end empty)."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _split_block(block: _Block, first: int, rest: int, overlap: int) -> list[_Block]:
    """The pieces of a block too big for the room left (`first`) or for any chunk (`rest`).

    Code is split by lines and each piece re-fenced; a table by rows with its header repeated; a list by
    items (an item too big alone is split as prose); prose by sentences, leaving room for the overlap.
    """
    first = max(first, 1)
    if block.kind == "code":
        lines = block.text.split("\n")
        head, tail = ([block.head], [block.tail]) if block.head else ([], [])
        body = lines[1:-1] if block.head else lines
        cost = sum(len(x) + 1 for x in head + tail)
        groups = [_trim_blank(g) for g in _group(body, max(first - cost, 1), max(rest - cost, 1), 1)]
        return [
            _Block(text="\n".join(head + g + tail), kind="code", head=block.head, tail=block.tail) for g in groups if g
        ]
    if block.kind == "table":
        lines = block.text.split("\n")
        header = lines[:2] if len(lines) > 2 else []
        cost = sum(len(x) + 1 for x in header)
        groups = _group(lines[len(header) :], max(first - cost, 1), max(rest - cost, 1), 1)
        return [_Block(text="\n".join(header + g), kind="table") for g in groups]
    if block.kind == "list" and len(block.items) > 1:
        items: list[str] = []
        for position, item in enumerate(block.items):
            limit = min(first, rest) if position == 0 else rest
            items.extend(_split_text(item, limit, limit) if len(item) > limit else [item])
        sep = len(block.item_joiner)
        return [_Block(text=block.item_joiner.join(g), kind="list") for g in _group(items, first, rest, sep) if g]
    # Later pieces leave room for the overlap tail the packer puts in front of them.
    later = max(rest - overlap - 2, rest // 2)
    return [_Block(text=t, kind="text") for t in _split_text(block.text, first, later)]


def _overlap_tail(block: _Block, overlap: int) -> str:
    """The last ~`overlap` characters of a prose block, starting at a sentence or word boundary."""
    if overlap <= 0 or block.kind not in ("text", "list"):
        return ""
    text = block.text
    if len(text) <= overlap:
        return text
    window = text[-overlap:]
    sentence = _SENTENCE_END.search(window)
    if sentence and sentence.end() < len(window) - 20:
        return window[sentence.end() :]
    space = window.find(" ")
    return window[space + 1 :] if 0 <= space < len(window) - 1 else window


def _smallest_start(block: _Block) -> int:
    """Length of the smallest first piece a split can make: a fenced line, a table's header and first row
    (prose and lists split at words, so any room will do)."""
    lines = block.text.split("\n")
    if block.kind == "code":
        inner = lines[1:-1] if block.head else lines
        return len(block.head) + len(block.tail) + 2 + (len(inner[0]) if inner else 0)
    if block.kind == "table":
        return sum(len(line) + 1 for line in lines[:3])
    return 0


class _Packer:
    """Greedy packing of one section's blocks into chunk texts, the heading never left alone in a chunk."""

    def __init__(self, heading: str | None, size: int, overlap: int) -> None:
        self.size = size
        self.overlap = overlap
        self.chunks: list[str] = []
        self.current: list[_Block] = [_Block(text=heading, kind="heading")] if heading else []
        self.length = len(heading) if heading else 0
        self.has_body = False  # the current chunk holds more than the heading / an overlap tail

    def room(self) -> int:
        """Characters still free in the current chunk (after the blank line that would precede a block)."""
        return self.size - self.length - (2 if self.current else 0)

    def add(self, block: _Block, *, body: bool = True) -> None:
        """Append a block to the current chunk; `body=False` for an overlap tail, which is no content."""
        self.length += (2 if self.current else 0) + len(block.text)
        self.current.append(block)
        self.has_body = self.has_body or body

    def flush(self, next_length: int | None) -> None:
        """Close the current chunk; the next opens with the overlap tail when `next_length` leaves room."""
        self.chunks.append("\n\n".join(b.text for b in self.current))
        tail = _overlap_tail(self.current[-1], self.overlap)
        self.current, self.length, self.has_body = [], 0, False
        if tail and (next_length is None or len(tail) + 2 + next_length <= self.size):
            self.add(_Block(text=tail, kind="text"), body=False)

    def place(self, block: _Block) -> None:
        """Add the next block: whole where it fits, in a new chunk when it fits one, else split."""
        if len(block.text) <= self.room():
            self.add(block)
            return
        if self.has_body and len(block.text) <= self.size:
            self.flush(len(block.text))
            self.add(block)
            return
        # Too big for any chunk, or too big beside the section heading: split it, the first piece filling
        # what is left of the current chunk unless that is only a sliver.
        if self.has_body and self.room() < max(self.size // 4, _smallest_start(block)):
            self.flush(None)
        for position, piece in enumerate(_split_block(block, self.room(), self.size, self.overlap)):
            if position:
                self.flush(len(piece.text))
            self.add(piece)

    def finish(self) -> list[str]:
        """The section's chunk texts, the last one included."""
        if self.has_body:
            self.chunks.append("\n\n".join(b.text for b in self.current))
        return self.chunks


def _pack(section: _Section, size: int, overlap: int) -> Iterator[str]:
    """The chunk texts of one section."""
    packer = _Packer(section.heading, size, overlap)
    for block in section.blocks:
        packer.place(block)
    for content in packer.finish():
        if content.strip():
            yield content.strip("\n")


def chunk_markdown(
    text: str,
    *,
    source: str,
    site_url: str,
    chunk_size: int = 1200,
    overlap: int = 150,
    title: str | None = None,
    url: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ParsedDocument:
    """Parse one markdown/MDX/text document into chunks with heading paths, citation URLs and section kinds.

    `title` and `url` override the front matter / first H1 and the Docusaurus page URL; `metadata` is
    merged over the front matter.
    """
    normalized = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    tokens = _MD.parse(normalized)
    front, body_start = _split_front_matter(tokens)
    meta: dict[str, Any] = {**front, **(metadata or {})}
    sections, first_h1 = _sections(tokens, normalized.split("\n"), body_start)
    _classify(sections, _page_hint(meta))
    doc_title = title or str(front.get("title") or "") or first_h1 or PurePosixPath(source).stem
    page_url = url or docs_url(site_url, source, meta)
    parsed = ParsedDocument(source=source, title=doc_title, url=page_url, metadata=meta)
    overlap = max(0, min(overlap, chunk_size // 2))
    index = 0
    for section in sections:
        if not section.blocks:
            continue  # a heading with no text of its own lives on in its subsections' heading paths
        anchor = f"#{section.slug}" if section.slug and page_url and "#" not in page_url else ""
        for content in _pack(section, chunk_size, overlap):
            parsed.chunks.append(
                Chunk(
                    source=source,
                    title=doc_title,
                    heading=section.path[-1] if section.path else None,
                    heading_path=list(section.path),
                    chunk_index=index,
                    url=f"{page_url}{anchor}" if page_url else None,
                    content=content,
                    section_kind=section.kind,
                )
            )
            index += 1
    return parsed
