"""The markdown chunker on tricky input: fences, lists, tables, front matter, slugs, sizes, section kinds."""

from __future__ import annotations

import itertools
import re

import pytest

from shared.ingestion.chunking import ASKS, EXPLAINS, Chunk, chunk_markdown, docs_url, heading_slug, parse_front_matter
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
        "section_kind",
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


def kinds_of(text: str) -> dict[str, str]:
    """heading -> section_kind of every chunk of a synthetic page."""
    chunks = chunk_markdown(text, source="week1/page.md", site_url=SITE).chunks
    return {c.heading or "": c.section_kind for c in chunks}


def body_of(chunk: Chunk) -> str:
    """A chunk's content without its heading lines."""
    return "\n".join(line for line in chunk.content.split("\n") if not re.match(r"#{1,6} ", line)).strip()


# --- parsing edge cases ---------------------------------------------------------------------------------


def test_setext_headings_open_sections() -> None:
    """`===` and `---` underlines make H1/H2 headings; a `---` after a blank line is a rule, not a heading."""
    text = "Book Title\n==========\n\nIntro.\n\nFirst Part\n----------\n\nAlpha.\n\n---\n\nStill first part.\n"
    parsed = chunk_markdown(text, source="week1/page.md", site_url=SITE)
    assert parsed.title == "Book Title"
    assert [c.heading_path for c in parsed.chunks] == [["Book Title"], ["Book Title", "First Part"]]
    assert parsed.chunks[1].content == "## First Part\n\nAlpha.\n\nStill first part."
    assert parsed.chunks[1].url == f"{SITE}/docs/week1/page#first-part"


def test_hash_lines_in_an_unclosed_fence_stay_code() -> None:
    """A fence left open runs to the end of the file: its `#` lines are code and the piece is closed again."""
    chunks = chunks_of("# T\n\n## Setup\n\nRun:\n\n```bash\n# install\n## still code\npip install x\n")
    assert [c.heading for c in chunks] == ["Setup"]
    assert chunks[0].content.endswith("## still code\npip install x\n```")


def test_chunk_text_is_the_authors_markdown() -> None:
    """Blocks are cut from the source: emphasis, links, nested lists and table alignment survive as written."""
    body = (
        "Use **bold** and [a link](https://x.y/z) here.\n\n"
        "1. one\n   - nested *item*\n2. two\n\n"
        "| a | b |\n|:--|--:|\n| 1 | 2 |"
    )
    assert chunks_of(f"# T\n\n## S\n\n{body}\n")[0].content == f"## S\n\n{body}"


def test_link_reference_definitions_are_kept() -> None:
    """Reference definitions produce no token but the links in the text need them."""
    chunks = chunks_of("# T\n\nSee [the docs][docs].\n\n[docs]: https://docs.example/ros\n")
    assert "[docs]: https://docs.example/ros" in chunks[0].content


def test_mdx_statements_spanning_lines_are_dropped() -> None:
    """An MDX export block is dropped whole, not just its first line; prose mentioning export stays."""
    text = "export const meta = {\n  level: 2,\n};\n\n# T\n\nWe export the model to ONNX.\n"
    content = "\n".join(c.content for c in chunks_of(text))
    assert "level: 2" not in content
    assert "We export the model to ONNX." in content


def test_front_matter_with_lists_quotes_and_blocks() -> None:
    """Front matter is real YAML: lists, quoted strings with colons, folded text; dates become ISO strings."""
    text = (
        "---\n"
        "title: \"Nodes: the 'basics'\"\n"
        "sidebar_position: 2\n"
        "id: nodes-basics\n"
        "tags: [ros2, 'nodes']\n"
        'keywords:\n  - ROS 2\n  - "DDS"\n'
        "description: >\n  Nodes, topics\n  and more.\n"
        "last_update: 2025-03-01\n"
        "---\n\n# Heading\n\nBody.\n"
    )
    parsed = chunk_markdown(text, source="week3/nodes.md", site_url=SITE)
    assert parsed.title == "Nodes: the 'basics'"
    assert parsed.metadata["sidebar_position"] == 2
    assert parsed.metadata["tags"] == ["ros2", "nodes"]
    assert parsed.metadata["keywords"] == ["ROS 2", "DDS"]
    assert parsed.metadata["description"] == "Nodes, topics and more.\n"
    assert parsed.metadata["last_update"] == "2025-03-01"
    assert parsed.url == f"{SITE}/docs/week3/nodes-basics"
    assert all("sidebar_position" not in c.content and "keywords" not in c.content for c in parsed.chunks)


@pytest.mark.parametrize(
    "front",
    ["title: [unclosed\nslug: x", "- just\n- a list", "title: 'a' 'b'", ": : :"],
    ids=["bad-flow", "not-a-mapping", "bad-quote", "colons"],
)
def test_malformed_front_matter_is_no_metadata_but_keeps_the_body(front: str) -> None:
    """YAML that does not parse to a mapping gives no metadata; the body is still chunked, the YAML is not."""
    parsed = chunk_markdown(f"---\n{front}\n---\n\n# Body H1\n\nThe text.", source="a/b.md", site_url=SITE)
    assert parsed.metadata == {}
    assert parsed.title == "Body H1"
    assert [c.content for c in parsed.chunks] == ["# Body H1\n\nThe text."]
    assert parse_front_matter(f"---\n{front}\n---\nBody") == ({}, "Body")


# --- packing --------------------------------------------------------------------------------------------


def test_no_chunk_is_a_heading_alone() -> None:
    """A heading over an oversized code block shares a chunk with its first piece; a heading with only
    subsections (or only a rule) makes no chunk and lives on in the subsections' paths."""
    code = "```python\n" + "\n".join(f"value_{i} = compute({i})" for i in range(80)) + "\n```"
    text = f"# T\n\n## Parent\n\n### Child\n\n{code}\n\n## Ruled\n\n---\n\n## Last\n\nText."
    chunks = chunks_of(text, chunk_size=600, overlap=100)
    assert all(body_of(c) for c in chunks)
    assert chunks[0].content.startswith("### Child\n\n```python\nvalue_0")
    assert {c.heading for c in chunks} == {"Child", "Last"}
    assert chunks[0].heading_path == ["T", "Parent", "Child"]


def test_split_code_pieces_are_even() -> None:
    """An oversized fence is cut into even pieces, not full pieces and a scrap of a line or two."""
    code = "```python\n" + "\n".join(f"line_{i:03d} = {i}" for i in range(100)) + "\n```"
    sizes = [len(c.content) for c in chunks_of(f"# T\n\n{code}", chunk_size=1000)]
    assert len(sizes) == 2
    assert min(sizes) > 0.8 * max(sizes)


def test_split_prose_really_overlaps() -> None:
    """Each piece of a long paragraph starts with the tail (a sentence or so) of the piece before it."""
    sentences = " ".join(f"Sentence {i} explains idea {i * 7} of the chapter." for i in range(60))
    chunks = chunks_of(f"# T\n\n## Long\n\n{sentences}", chunk_size=500, overlap=120)
    assert len(chunks) > 4
    for first, second in itertools.pairwise(chunks):
        shared = next(n for n in range(len(second.content), 0, -1) if first.content.endswith(second.content[:n]))
        assert 40 <= shared <= 120
        assert len(second.content) <= 500


def test_oversized_list_is_split_between_items() -> None:
    """A list too big for a chunk is cut between items, never inside one."""
    items = "".join(f"- Item {i} describes one more property of the robot arm in a sentence.\n" for i in range(40))
    chunks = chunks_of(f"# T\n\n## Props\n\n{items}", chunk_size=700, overlap=0)
    assert len(chunks) > 2
    for chunk in chunks:
        assert all(line.startswith(("- Item", "## Props")) for line in chunk.content.split("\n") if line)
        assert len(chunk.content) <= 700


# --- section kinds --------------------------------------------------------------------------------------

SYNTHETIC = """# Mobile Robots

A mobile robot moves through its world with wheels or legs.

## Sensors on the robot

The robot carries these sensors:

- A 2D LiDAR scanning at 10 Hz over 270 degrees
- A stereo camera giving depth up to 10 m
- An IMU reporting acceleration and angular rate
- Wheel encoders counting ticks for odometry

## Check your understanding

1. Why does a mobile robot need more than one sensor?
2. What does the IMU measure that the encoders cannot?
3. How would you detect wheel slip?

## Where to go from here

- [Nav2 documentation](https://docs.nav2.org/)
- [ROS 2 tutorials](https://docs.ros.org/en/humble/Tutorials.html)
- *Probabilistic Robotics* by Thrun, Burgard and Fox (2005)

## Mission checklist

- [ ] Charge the battery
- [ ] Calibrate the camera
- [x] Flash the firmware

## What this chapter covers

After reading it, you will be able to:

- Explain how wheel odometry drifts
- Fuse IMU and encoder readings
- Tune a complementary filter

## Installing the driver

To get the LiDAR running:

1. Download the driver package
2. Install it with apt
3. Restart the robot

## Frequently asked

**Why two encoders?** One per wheel: the difference between them gives the turn rate.

**Why not GPS?** Indoors its signal is too weak and its error of metres is larger than a corridor.

## Review of kinematics

A differential drive turns by running its wheels at different speeds; the turn rate is the speed
difference over the track width, and the forward speed is their mean.

## Isaac Lab Integration

Isaac Lab builds reinforcement learning environments on top of the simulator, so a policy trained
there can drive the same robot model.

## Exercises

### Odometry from wheel ticks

Integrate the encoder ticks into a pose and compare it with the simulator's ground truth.

```python
def integrate(ticks_left, ticks_right):
    ...
```
"""


def test_section_kind_follows_structure_not_headings() -> None:
    """Headings outside any vocabulary are classified by their bodies: questions, references, checkboxes and
    reader objectives ask; a feature list, a how-to, a Q&A with answers and plain prose explain."""
    kinds = kinds_of(SYNTHETIC)
    assert kinds == {
        "Mobile Robots": EXPLAINS,
        "Sensors on the robot": EXPLAINS,
        "Check your understanding": ASKS,
        "Where to go from here": ASKS,
        "Mission checklist": ASKS,
        "What this chapter covers": ASKS,
        "Installing the driver": EXPLAINS,
        "Frequently asked": EXPLAINS,
        "Review of kinematics": EXPLAINS,
        "Isaac Lab Integration": EXPLAINS,
        "Odometry from wheel ticks": ASKS,  # inherited from the (textless) Exercises section
    }


def test_study_aid_names_need_a_fitting_body() -> None:
    """A heading naming a study aid tips a bare list or a task into "asks", but not an explanation."""
    page = (
        "# T\n\n## Prerequisites\n\n- Basic Python\n- Linear algebra\n\n"
        "## Lab 2: Teleoperation\n\nDrive the robot around the arena with the keyboard node.\n\n"
        "## Resources\n\nThe controller shares CPU time with perception, so the loop rate is capped at 100 Hz "
        "and the planner runs at a tenth of that to leave headroom for the camera pipeline.\n"
    )
    assert kinds_of(page) == {"Prerequisites": ASKS, "Lab 2: Teleoperation": ASKS, "Resources": EXPLAINS}


def test_front_matter_can_mark_a_page_as_exercises() -> None:
    """A page tagged as an exercise turns its instructions into "asks"; its background prose still explains."""
    page = (
        "---\ntags: [exercise, ros2]\n---\n\n# Teleop\n\nThe keyboard node maps keys to velocity commands.\n\n"
        "## Part A\n\nRecord a bag of the robot driving a square.\n"
    )
    assert kinds_of(page) == {"Teleop": EXPLAINS, "Part A": ASKS}
    assert kinds_of(page.replace("exercise", "isaac-lab"))["Part A"] == EXPLAINS


def test_section_kind_is_in_the_payload_and_the_hash() -> None:
    """The kind reaches the vector store payload, and a chunk whose kind changes is re-stored."""
    asks = chunks_of("# T\n\n## Check\n\n- Why is the sky blue?\n- Why is grass green?")[0]
    assert asks.payload()["section_kind"] == ASKS
    twin = Chunk(**{**asks.payload(), "content_hash": "", "section_kind": EXPLAINS})
    assert twin.content_hash != asks.content_hash


# --- the real book --------------------------------------------------------------------------------------


def real_chunks() -> list[Chunk]:
    chunks: list[Chunk] = []
    for file in sorted(CORPUS.rglob("*.md")):
        source = file.relative_to(CORPUS).as_posix()
        chunks.extend(chunk_markdown(file.read_text(encoding="utf-8"), source=source, site_url=SITE).chunks)
    return chunks


def test_real_corpus_has_no_heading_only_chunk() -> None:
    """Every chunk of the book carries text beyond its heading lines."""
    assert all(body_of(c) for c in real_chunks())


def test_real_corpus_study_aids_ask_and_topics_explain() -> None:
    """The book's review questions, objectives, prerequisites, exercises and reading lists ask; nothing else
    does, and the sections on Isaac Sim, LiDAR and DDS explain."""
    chunks = real_chunks()
    aids = ("Review Questions", "Learning Objectives", "Prerequisites", "Further Reading", "Hands-on Exercise")
    for chunk in chunks:
        heading = chunk.heading or ""
        is_aid = any(aid.lower() in heading.lower() for aid in aids)
        assert chunk.section_kind == (ASKS if is_aid else EXPLAINS), (chunk.source, heading)
    review = [c for c in chunks if "Review Questions" in (c.heading or "")]
    objectives = [c for c in chunks if "Learning Objectives" in (c.heading or "")]
    assert len(review) == 13
    assert len(objectives) == 14
    topics = [c for c in chunks if re.search(r"Isaac Sim|LiDAR|DDS", " > ".join(c.heading_path[1:]))]
    assert len(topics) > 20
    assert {c.section_kind for c in topics} == {EXPLAINS}


@pytest.mark.parametrize(
    ("source", "heading", "url"),
    [
        (
            "week3/ros2-nodes-topics.md",
            "Quality of Service (QoS) Settings",
            "week3/ros2-nodes-topics#quality-of-service-qos-settings",
        ),
        ("week3/ros2-nodes-topics.md", "DDS-Based Communication", "week3/ros2-nodes-topics#dds-based-communication"),
        (
            "week7/nvidia-isaac-sim.md",
            "Method 1: Docker (Recommended)",
            "week7/nvidia-isaac-sim#method-1-docker-recommended",
        ),
        (
            "week8/nvidia-isaac-sim.md",
            "Isaac ROS VSLAM (Visual SLAM)",
            "week8/nvidia-isaac-sim#isaac-ros-vslam-visual-slam",
        ),
        ("week1/intro-physical-ai.md", "What is Physical AI?", "week1/intro-physical-ai#what-is-physical-ai"),
        (
            "week10/sim-to-real-transfer.md",
            "Humanoid-Specific Sim-to-Real Considerations",
            "week10/sim-to-real-transfer#humanoid-specific-sim-to-real-considerations",
        ),
        (
            "week5/ros2-fundamentals-advanced.md",
            "Composable Nodes (Components)",
            "week5/ros2-fundamentals-advanced#composable-nodes-components",
        ),
        ("week4/ros2-services-actions.md", "Review Questions", "week4/ros2-services-actions#review-questions"),
        (
            "week12/humanoid-development.md",
            "Humanoid Robot Development: Kinematics, Dynamics, and Control",
            "week12/humanoid-development",
        ),
    ],
)
def test_real_corpus_anchors_are_unchanged(source: str, heading: str, url: str) -> None:
    """Citation URLs of known headings are the ones the book's chunks have always had."""
    parsed = chunk_markdown((CORPUS / source).read_text(encoding="utf-8"), source=source, site_url=SITE)
    assert {c.url for c in parsed.chunks if c.heading == heading} == {f"{SITE}/docs/{url}"}


@pytest.mark.parametrize(
    ("heading", "kind"),
    [
        ("Learning Outcomes", ASKS),
        ("3.2 Review Questions", ASKS),
        ("Week 3 Exercises", ASKS),
        ("Quizzes", ASKS),
        ("What's Next?", ASKS),
        ("Additional Resources", ASKS),
        ("Self-Check", ASKS),
        ("Isaac Lab Integration", EXPLAINS),
        ("Reinforcement Learning with Isaac Lab", EXPLAINS),
        ("System Resources", EXPLAINS),
        ("Questions and Answers", EXPLAINS),
        ("Key Features", EXPLAINS),
    ],
)
def test_a_study_aid_is_named_by_the_whole_heading(heading: str, kind: str) -> None:
    """Over the same bare list, a heading that is an aid's name (plurals, numbering, modifiers) asks; a topic
    that merely contains an aid word explains."""
    page = f"# T\n\n## {heading}\n\n- GPU with 8 GB of memory\n- Ubuntu 22.04 on the workstation\n"
    assert kinds_of(page)[heading] == kind
