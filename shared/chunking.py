"""Markdown -> chunks: front matter, heading paths, code-fence-safe splitting, Docusaurus URLs.

`chunk_markdown` strips YAML front matter (keeping `title`, `sidebar_position`, `id`, `slug` as metadata),
drops MDX `import`/`export` lines (outside code), and cuts the document into sections at headings (ATX and
setext; `#` lines inside fenced code are content). Each section is packed into chunks of about
`chunk_size` characters from whole blocks (paragraphs, lists, tables, code fences); consecutive chunks of
one section share about `overlap` characters of prose. A fenced code block is split only when it alone
exceeds the limit, and each piece is re-fenced so it stays valid markdown; an oversized table is split by
rows with its header repeated.

Every chunk knows its `heading_path` (`# > ## > ###`), its `heading` (the deepest one) and a citation
`url`: `SITE_URL/docs/<path without .md>#<Docusaurus heading slug>`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

__all__ = ["Chunk", "ParsedDocument", "chunk_markdown", "docs_url", "heading_slug", "parse_front_matter"]

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_ATX = re.compile(r"^ {0,3}(?P<level>#{1,6})(?:[ \t]+(?P<text>.*?))?[ \t]*(?:[ \t]#+[ \t]*)?$")
_SETEXT = re.compile(r"^ {0,3}(?P<mark>=+|-+)[ \t]*$")
_EXPLICIT_ID = re.compile(r"\s*\{#(?P<id>[^}\s]+)\}\s*$")
_MDX_LINE = re.compile(r"^(import|export)\s")
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

    def __post_init__(self) -> None:
        if not self.content_hash:
            self.content_hash = hashlib.sha256(
                "\x1f".join([self.content, self.title, " > ".join(self.heading_path), self.url or ""]).encode()
            ).hexdigest()

    @property
    def embed_text(self) -> str:
        """The text to embed and index: the title and heading path give the chunk its context."""
        context = " > ".join([self.title, *[h for h in self.heading_path if h != self.title]])
        return f"{context}\n\n{self.content}"

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
    text: str
    kind: str  # "text" | "code" | "table"
    fence: str = ""
    info: str = ""
    indent: str = ""


@dataclass
class _Section:
    level: int
    path: list[str]
    slug: str | None
    blocks: list[_Block] = field(default_factory=list)


def parse_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split YAML front matter (simple `key: value` lines) from the body."""
    stripped = text.lstrip("\ufeff")
    if not stripped.startswith("---"):
        return {}, text
    lines = stripped.split("\n")
    if lines[0].strip() != "---":
        return {}, text
    for end in range(1, len(lines)):
        if lines[end].strip() in {"---", "..."}:
            meta: dict[str, Any] = {}
            for line in lines[1:end]:
                key, sep, value = line.partition(":")
                if not sep or not key.strip() or key.startswith((" ", "\t", "-")):
                    continue
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                    value = value[1:-1]
                meta[key.strip()] = int(value) if value.isdigit() else value
            return meta, "\n".join(lines[end + 1 :])
    return {}, text


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


def _blocks_and_sections(body: str, title_hint: str | None) -> tuple[list[_Section], str | None]:
    """Parse the body into sections of blocks; returns the sections and the first H1 text."""
    sections = [_Section(level=0, path=[], slug=None)]
    stack: list[tuple[int, str]] = []
    used_slugs: dict[str, int] = {}
    first_h1: str | None = None
    paragraph: list[str] = []
    lines = body.split("\n")
    i = 0

    def flush() -> None:
        if paragraph:
            text = "\n".join(paragraph).strip("\n")
            if text.strip():
                is_table = all(line.lstrip().startswith("|") for line in paragraph if line.strip())
                sections[-1].blocks.append(_Block(text=text, kind="table" if is_table else "text"))
            paragraph.clear()

    def open_heading(level: int, raw: str) -> None:
        nonlocal first_h1
        flush()
        explicit = _EXPLICIT_ID.search(raw)
        text = _plain_heading(_EXPLICIT_ID.sub("", raw)) if explicit else _plain_heading(raw)
        slug = explicit.group("id") if explicit else heading_slug(raw)
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
        section = _Section(level=level, path=[t for _, t in stack], slug=None if level == 1 else slug)
        section.blocks.append(_Block(text=f"{'#' * level} {text}", kind="text"))
        sections.append(section)

    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            flush()
            marker = fence.group("fence")
            body_lines: list[str] = []
            i += 1
            closer = re.compile(rf"^\s*{re.escape(marker[0])}{{{len(marker)},}}\s*$")
            while i < len(lines) and not closer.match(lines[i]):
                body_lines.append(lines[i])
                i += 1
            i += 1  # the closing fence (or the end of an unclosed block)
            indent = fence.group("indent")
            info = fence.group("info").strip()
            code = "\n".join([f"{indent}{marker}{info}", *body_lines, f"{indent}{marker}"])
            sections[-1].blocks.append(_Block(text=code, kind="code", fence=marker, info=info, indent=indent))
            continue
        atx = _ATX.match(line)
        if atx and not line.startswith(("    ", "\t")):
            open_heading(len(atx.group("level")), atx.group("text") or "")
            i += 1
            continue
        setext = _SETEXT.match(line)
        if (
            setext
            and len(paragraph) == 1
            and paragraph[0].strip()
            and not paragraph[0].lstrip().startswith(("-", "*", "|", ">"))
        ):
            text = paragraph.pop()
            open_heading(1 if setext.group("mark")[0] == "=" else 2, text.strip())
            i += 1
            continue
        if not line.strip():
            flush()
        elif _MDX_LINE.match(line) and not paragraph:
            pass  # MDX import/export statements are not content
        else:
            paragraph.append(line)
        i += 1
    flush()
    return sections, first_h1 or title_hint


def _split_long_text(text: str, size: int) -> list[str]:
    """Split prose longer than `size` at sentence, then word boundaries."""
    pieces: list[str] = []
    current = ""
    units = [u for u in _SENTENCE_END.split(text) if u]
    for unit in units:
        while len(unit) > size:
            cut = unit.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            if current:
                pieces.append(current)
                current = ""
            pieces.append(unit[:cut].rstrip())
            unit = unit[cut:].lstrip()
        if current and len(current) + 1 + len(unit) > size:
            pieces.append(current)
            current = unit
        else:
            current = f"{current} {unit}" if current else unit
    if current:
        pieces.append(current)
    return pieces


def _split_lines(lines: list[str], size: int, *, head: list[str], tail: list[str]) -> list[str]:
    """Pack lines into pieces of at most `size` characters, each wrapped in `head`/`tail` lines."""
    overhead = sum(len(x) + 1 for x in head + tail)
    budget = max(size - overhead, 1)
    pieces: list[str] = []
    current: list[str] = []
    length = 0
    for line in lines:
        if current and length + len(line) + 1 > budget:
            pieces.append("\n".join(head + current + tail))
            current, length = [], 0
        current.append(line)
        length += len(line) + 1
    if current:
        pieces.append("\n".join(head + current + tail))
    return pieces


def _split_block(block: _Block, size: int) -> list[_Block]:
    """A block small enough, or the pieces of an oversized one (code re-fenced, table header repeated)."""
    if len(block.text) <= size:
        return [block]
    if block.kind == "code":
        lines = block.text.split("\n")[1:-1]
        head = [f"{block.indent}{block.fence}{block.info}"]
        tail = [f"{block.indent}{block.fence}"]
        return [_Block(text=t, kind="code") for t in _split_lines(lines, size, head=head, tail=tail)]
    if block.kind == "table":
        lines = block.text.split("\n")
        header = lines[:2] if len(lines) > 2 else []
        return [_Block(text=t, kind="table") for t in _split_lines(lines[len(header) :], size, head=header, tail=[])]
    return [_Block(text=t, kind="text") for t in _split_long_text(block.text, size)]


def _overlap_tail(block: _Block, overlap: int) -> str:
    """The last ~`overlap` characters of a prose block, starting at a sentence or word boundary."""
    if overlap <= 0 or block.kind != "text" or block.text.lstrip().startswith("#"):
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


def _pack(section: _Section, size: int, overlap: int) -> list[str]:
    """Greedy packing of a section's blocks into chunk texts with prose overlap between them."""
    blocks = [piece for block in section.blocks for piece in _split_block(block, size)]
    chunks: list[str] = []
    current: list[_Block] = []
    length = 0
    for block in blocks:
        if current and length + 2 + len(block.text) > size:
            chunks.append("\n\n".join(b.text for b in current))
            tail = _overlap_tail(current[-1], overlap)
            current, length = [], 0
            if tail and len(tail) + 2 + len(block.text) <= size:
                current.append(_Block(text=tail, kind="text"))
                length = len(tail)
        current.append(block)
        length += (2 if length else 0) + len(block.text)
    if current:
        chunks.append("\n\n".join(b.text for b in current))
    return chunks


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
    """Parse one markdown/MDX/text document into chunks with heading paths and citation URLs.

    `title` and `url` override the front matter / first H1 and the Docusaurus page URL.
    """
    front, body = parse_front_matter(text.replace("\r\n", "\n").replace("\r", "\n"))
    meta: dict[str, Any] = {**front, **(metadata or {})}
    sections, first_h1 = _blocks_and_sections(body, None)
    doc_title = title or str(front.get("title") or "") or first_h1 or PurePosixPath(source).stem
    page_url = url or docs_url(site_url, source, meta)
    parsed = ParsedDocument(source=source, title=doc_title, url=page_url, metadata=meta)
    index = 0
    for section in sections:
        if not any(b.text.strip() for b in section.blocks):
            continue
        if len(section.blocks) == 1 and section.level > 0:
            continue  # a heading with nothing under it: it lives on in its subsections' heading paths
        anchor = f"#{section.slug}" if section.slug and page_url and "#" not in page_url else ""
        for content in _pack(section, chunk_size, overlap):
            if not content.strip():
                continue
            parsed.chunks.append(
                Chunk(
                    source=source,
                    title=doc_title,
                    heading=section.path[-1] if section.path else None,
                    heading_path=list(section.path),
                    chunk_index=index,
                    url=f"{page_url}{anchor}" if page_url else None,
                    content=content.strip("\n"),
                )
            )
            index += 1
    return parsed
