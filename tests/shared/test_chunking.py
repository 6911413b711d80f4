"""The markdown chunker on tricky input: fences with # lines, lists, tables, front matter, slugs, sizes."""

from __future__ import annotations

import itertools

import pytest

from shared.chunking import Chunk, chunk_markdown, docs_url, heading_slug, parse_front_matter
from tests.utils.corpus import corpus_dir

SITE = "https://book.example"
CORPUS = corpus_dir()


def chunks_of(text: str, *, chunk_size: int = 1200, overlap: int = 150) -> list[Chunk]:
    return chunk_markdown(text, source="week1/page.md", site_url=SITE, chunk_size=chunk_size, overlap=overlap).chunks


def test_front_matter_is_stripped_and_kept_as_metadata() -> None:
    """Front matter never reaches chunk text; its title wins over the first H1; position is metadata."""
    text = "---\ntitle: 'Custom Title'\nsidebar_position: 3\n---\n\n# Heading One\n\nBody text here."
    parsed = chunk_markdown(text, source="a.md", site_url=SITE)
    assert parsed.title == "Custom Title"
    assert parsed.metadata["sidebar_position"] == 3
    assert all("sidebar_position" not in c.content for c in parsed.chunks)
    assert parsed.chunks[0].title == "Custom Title"


def test_title_falls_back_to_first_h1_then_file_name() -> None:
    """Without front matter title the first H1 is the title; without H1, the file stem."""
    assert chunk_markdown("# The H1\n\nText.", source="x/y.md", site_url=SITE).title == "The H1"
    assert chunk_markdown("Just text.", source="x/plain-notes.txt", site_url=SITE).title == "plain-notes"


def test_hash_lines_inside_code_fences_are_not_headings() -> None:
    """`# comment` lines in a fenced block stay code; the heading path is unaffected."""
    text = "# Title\n\n## Setup\n\n```bash\n# install the tools\n## not a heading either\npip install x\n```\n\nAfter."
    chunks = chunks_of(text)
    assert len(chunks) == 1
    assert chunks[0].heading_path == ["Title", "Setup"]
    assert "# install the tools" in chunks[0].content
    assert chunks[0].content.count("```") == 2


def test_tilde_fences_and_longer_fences_close_correctly() -> None:
    """A ```` fence is only closed by a fence at least as long; ~~~ works too."""
    text = "# T\n\n## A\n\n````md\n```python\n# inner\n```\n````\n\n## B\n\n~~~\n# x\n~~~\n"
    chunks = chunks_of(text)
    assert [c.heading for c in chunks] == ["A", "B"]
    assert "```python" in chunks[0].content


def test_heading_path_is_tracked_per_chunk() -> None:
    """Every chunk carries its own # > ## > ### path, popping levels correctly."""
    text = "# Book\n\n## Part 1\n\n### Sec 1.1\n\nAlpha.\n\n### Sec 1.2\n\nBeta.\n\n## Part 2\n\nGamma."
    chunks = chunks_of(text)
    assert [c.heading_path for c in chunks] == [
        ["Book", "Part 1", "Sec 1.1"],
        ["Book", "Part 1", "Sec 1.2"],
        ["Book", "Part 2"],
    ]
    assert [c.chunk_index for c in chunks] == [0, 1, 2]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Quality of Service (QoS) Settings", "quality-of-service-qos-settings"),
        ("ROS 2: Nodes & Topics!", "ros-2-nodes--topics"),
        ("What's `rclpy`?", "whats-rclpy"),
        ("[Links](https://x.y) and **bold**", "links-and-bold"),
        ("Sim-to-Real Transfer", "sim-to-real-transfer"),
        ("Café & Über", "café--über"),
        ("snake_case_name", "snake_case_name"),
    ],
)
def test_docusaurus_heading_slugs(heading: str, slug: str) -> None:
    """Anchors follow Docusaurus (github-slugger): lowercase, punctuation dropped, spaces to dashes."""
    assert heading_slug(heading) == slug


def test_urls_use_docs_path_and_heading_anchor() -> None:
    """Chunk URLs are SITE_URL/docs/<path without .md>#<slug>; duplicate headings get -1; explicit ids win."""
    text = "# Page\n\nIntro.\n\n## Setup\n\nOne.\n\n## Setup\n\nTwo.\n\n## Custom {#my-anchor}\n\nThree."
    chunks = chunk_markdown(text, source="week3/ros2-nodes.md", site_url=SITE + "/").chunks
    assert [c.url for c in chunks] == [
        f"{SITE}/docs/week3/ros2-nodes",
        f"{SITE}/docs/week3/ros2-nodes#setup",
        f"{SITE}/docs/week3/ros2-nodes#setup-1",
        f"{SITE}/docs/week3/ros2-nodes#my-anchor",
    ]
    assert chunks[3].heading == "Custom"


def test_docs_url_rules() -> None:
    """index pages, number prefixes, front matter id and slug map like Docusaurus does."""
    assert docs_url(SITE, "intro.md", {}) == f"{SITE}/docs/intro"
    assert docs_url(SITE, "guide/index.mdx", {}) == f"{SITE}/docs/guide"
    assert docs_url(SITE, "01-basics/02-motors.md", {}) == f"{SITE}/docs/basics/motors"
    assert docs_url(SITE, "a/b.md", {"id": "renamed"}) == f"{SITE}/docs/a/renamed"
    assert docs_url(SITE, "a/b.md", {"slug": "/elsewhere/page"}) == f"{SITE}/docs/elsewhere/page"


def test_nested_lists_and_tables_stay_whole() -> None:
    """A nested list and a table small enough for one chunk are never cut apart."""
    table = "| a | b |\n|---|---|\n" + "".join(f"| r{i} | v{i} |\n" for i in range(5))
    nested = "- one\n  - one.a\n    - one.a.i\n- two\n"
    chunks = chunks_of(f"# T\n\n## L\n\n{nested}\n## Tab\n\n{table}")
    assert "- one\n  - one.a\n    - one.a.i\n- two" in chunks[0].content
    assert table.strip() in chunks[1].content


def test_oversized_table_is_split_with_header_repeated() -> None:
    """A table over the limit is split by rows and each piece repeats the header."""
    table = "| name | value |\n|---|---|\n" + "".join(f"| row{i:03d} | {'x' * 40} |\n" for i in range(60))
    chunks = chunks_of(f"# T\n\n## Big\n\n{table}", chunk_size=600, overlap=0)
    assert len(chunks) > 2
    for chunk in chunks:
        assert "| name | value |\n|---|---|" in chunk.content
        assert len(chunk.content) <= 600 + len("## Big\n\n")


def test_code_block_is_never_split_unless_it_alone_exceeds_the_limit() -> None:
    """A code block that fits moves whole to the next chunk; an oversized one is re-fenced per piece."""
    prose = "Word " * 150
    small_code = "```python\n" + "\n".join(f"x{i} = {i}  # c" for i in range(20)) + "\n```"
    chunks = chunks_of(f"# T\n\n## S\n\n{prose}\n\n{small_code}", chunk_size=800, overlap=100)
    holders = [c for c in chunks if "x0 = 0" in c.content]
    assert len(holders) == 1
    assert "x19 = 19" in holders[0].content
    big_code = "```python\n" + "\n".join(f"value_{i} = compute({i})  # step" for i in range(100)) + "\n```"
    pieces = chunks_of(f"# T\n\n## Big\n\n{big_code}", chunk_size=500, overlap=100)
    assert len(pieces) > 3
    for piece in pieces:
        body = piece.content.split("\n", 2)[-1] if piece.content.startswith("## ") else piece.content
        assert body.lstrip().startswith("```python")
        assert body.rstrip().endswith("```")
    joined = "\n".join(pieces[i].content for i in range(len(pieces)))
    assert all(f"value_{i} = compute({i})" in joined for i in range(100))


def test_chunks_respect_size_and_overlap() -> None:
    """Prose chunks stay under the size, and consecutive chunks of a section share some text."""
    sentences = " ".join(f"Sentence number {i} explains a robotics idea in plain words." for i in range(80))
    chunks = chunks_of(f"# T\n\n## Long\n\n{sentences}", chunk_size=500, overlap=120)
    assert len(chunks) > 5
    assert all(len(c.content) <= 500 for c in chunks)
    for first, second in itertools.pairwise(chunks):
        tail_words = first.content.split()[-3:]
        assert " ".join(tail_words) in second.content


def test_mdx_imports_are_dropped_but_code_imports_kept() -> None:
    """MDX import lines are not content; `import` inside a code fence is."""
    text = "import Tabs from '@theme/Tabs';\n\n# T\n\n## Code\n\n```python\nimport rclpy\n```\n"
    chunks = chunks_of(text)
    assert "@theme/Tabs" not in "".join(c.content for c in chunks)
    assert "import rclpy" in chunks[0].content


def test_content_hash_changes_with_content_and_context() -> None:
    """content_hash is stable for the same chunk and changes when its text or heading changes."""
    a = chunks_of("# T\n\n## H\n\nSame text.")[0]
    b = chunks_of("# T\n\n## H\n\nSame text.")[0]
    c = chunks_of("# T\n\n## H2\n\nSame text.")[0]
    d = chunks_of("# T\n\n## H\n\nOther text.")[0]
    assert a.content_hash == b.content_hash
    assert len({a.content_hash, c.content_hash, d.content_hash}) == 3
    assert set(a.payload()) == {
        "source",
        "title",
        "heading",
        "heading_path",
        "chunk_index",
        "url",
        "content",
        "content_hash",
    }


def test_front_matter_parser_edge_cases() -> None:
    """Unclosed front matter is body text; quoted values are unquoted."""
    assert parse_front_matter("---\ntitle: x\nno end")[0] == {}
    meta, body = parse_front_matter('---\ntitle: "Q: A"\nslug: /x\n---\nBody')
    assert meta == {"title": "Q: A", "slug": "/x"}
    assert body == "Body"


def test_real_corpus_chunks_are_sane() -> None:
    """Every textbook page chunks into pieces under the limit with balanced fences and real URLs."""
    files = sorted(CORPUS.rglob("*.md"))
    assert len(files) == 14
    for file in files:
        source = file.relative_to(CORPUS).as_posix()
        parsed = chunk_markdown(file.read_text(encoding="utf-8"), source=source, site_url=SITE)
        assert parsed.chunks
        for chunk in parsed.chunks:
            assert len(chunk.content) <= 1200
            assert chunk.content.count("```") % 2 == 0
            assert chunk.url is not None
            assert chunk.url.startswith(f"{SITE}/docs/{source.removesuffix('.md')}")
