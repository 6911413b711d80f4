"""The extractive answer: plain prose for a raw-text reader, cited with gap-free markers, from the passages.

Synthetic passages pin the rules (markup, HTML, sentences, markers, code on request); the real book's
sections, cut at their headings the way retrieval's chunks are, show the answers readers would get.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path

import pytest

from shared.answers.extractive import Extract, asks_for_code, compose_extractive, plain_text_blocks
from shared.answers.retrieval import Passage
from tests.utils.corpus import corpus_dir

NOTE = "Here are the most relevant passages from the book."
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^(`{3,}|~{3,})")


def passage(content: str, *, source: str = "doc.md", heading: str | None = None, rank: int = 0) -> Passage:
    return Passage(source=source, title="Doc", heading=heading, url=None, content=content, score=1.0 - rank / 10)


# --- the real book, cut into sections at its headings --------------------------------------------------


@cache
def book_sections(relative: str) -> tuple[Passage, ...]:
    """A chapter's sections (heading line included, as in the indexed chunks), in reading order."""
    path = corpus_dir() / relative
    text = path.read_text(encoding="utf-8")
    if text.startswith("---"):
        text = text.split("---", 2)[2]  # front matter
    sections: list[Passage] = []
    title: str | None = None
    path_stack: list[tuple[int, str]] = []
    lines: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if path_stack and "\n".join(lines).strip():
            sections.append(
                Passage(
                    source=relative,
                    title=title,
                    heading=path_stack[-1][1],
                    url=None,
                    content="\n".join(lines).strip(),
                    score=0.0,
                    heading_path=[h for _, h in path_stack],
                )
            )

    for line in text.splitlines():
        marker = _FENCE.match(line.lstrip())
        if marker and (fence is None or marker.group(1).startswith(fence)):
            fence = marker.group(1)[:3] if fence is None else None
        heading = None if fence else _HEADING.match(line)
        if heading:
            flush()
            level, name = len(heading.group(1)), heading.group(2)
            title = title or name
            path_stack = [(lv, h) for lv, h in path_stack if lv < level] + [(level, name)]
            lines = [line]
        else:
            lines.append(line)
    flush()
    return tuple(sections)


def section(relative: str, heading: str) -> Passage:
    return next(p for p in book_sections(relative) if p.heading == heading)


def retrieved(*picks: tuple[str, str]) -> list[Passage]:
    """Passages as retrieval would return them for a question: real sections, best first."""
    return [section(relative, heading) for relative, heading in picks]


ZMP = [
    ("week11/humanoid-kinematics.md", "Center of Mass and Zero Moment Point Control"),
    ("week12/humanoid-development.md", "Center of Mass and Zero Moment Point Control"),
    ("week12/humanoid-development.md", "Key Challenges in Humanoid Development"),
    ("week11/humanoid-kinematics.md", "Review Questions"),
]
ISAAC = [
    ("week7/nvidia-isaac-sim.md", "Introduction to NVIDIA Isaac Sim"),
    ("week7/nvidia-isaac-sim.md", "Method 1: Docker (Recommended)"),
    ("week8/nvidia-isaac-sim.md", "Introduction to NVIDIA Isaac Platform"),
    ("week7/nvidia-isaac-sim.md", "NVIDIA Isaac Sim Fundamentals"),
]
LIDAR = [
    ("week7/nvidia-isaac-sim.md", "LiDAR Sensor"),
    ("week2/embodied-intelligence.md", "LiDAR Systems"),
    ("week2/embodied-intelligence.md", "Sensor Systems for Physical AI"),
    ("week6/gazebo-simulation.md", "Key Features of Gazebo"),
]
DISCOVERY = [
    ("week3/ros2-nodes-topics.md", "Creating ROS 2 Nodes"),
    ("week3/ros2-nodes-topics.md", "DDS-Based Communication"),
    ("week3/ros2-nodes-topics.md", "Introduction to ROS 2 Architecture"),
    ("week3/ros2-nodes-topics.md", "Key Architectural Components"),
]
PUBLISHER = [
    ("week3/ros2-nodes-topics.md", "setup.py Template"),
    ("week3/ros2-nodes-topics.md", "Topics and Publishers"),
    ("week3/ros2-nodes-topics.md", "Creating a Publisher"),
]


# --- what every answer must be ----------------------------------------------------------------------------


def _without_code(text: str) -> tuple[str, list[str]]:
    """The answer's prose and its fenced code blocks."""
    fenced = re.compile(r"^(`{3,})[^\n]*\n.*?\n\1$", flags=re.DOTALL | re.MULTILINE)
    return fenced.sub("", text), [match.group(0) for match in fenced.finditer(text)]


def assert_plain(text: str) -> None:
    """Raw text a reader can read: no markdown structure, inline markup or HTML outside a code fence."""
    prose, _ = _without_code(text)
    for line in prose.splitlines():
        assert not re.match(r"\s*(#|>|- |\* |\+ |\d+[.)]\s)", line), line
    assert "**" not in prose
    assert "__" not in prose
    assert "`" not in prose
    assert not re.search(r"<[A-Za-z/!?]", prose), prose


def marker_numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\[(\d+)\]", text)]


def assert_markers(extract: Extract, passages: list[Passage]) -> None:
    """Markers 1..k in order of first use, one per cited section, and `used` maps them."""
    first_use = list(dict.fromkeys(marker_numbers(_without_code(extract.text)[0])))
    assert first_use == list(range(1, len(first_use) + 1))
    assert len(first_use) == len(extract.used)
    assert len(set(extract.used)) == len(extract.used)
    sections = [(passages[i].source, passages[i].heading) for i in extract.used]
    assert len(set(sections)) == len(sections), sections
    assert all(0 <= i < len(passages) for i in extract.used)


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def assert_quotes_passages(extract: Extract, passages: list[Passage]) -> None:
    """Each sentence of the answer is text of the section its marker cites."""
    prose, _ = _without_code(extract.text)
    body = prose.split("\n", 2)[2] if prose.count("\n") >= 2 else ""
    for group, number in re.findall(r"(.*?)\s*\[(\d+)\]", body, flags=re.DOTALL):
        cited = passages[extract.used[int(number) - 1]]
        same_section = [p for p in passages if (p.source, p.heading) == (cited.source, cited.heading)]
        source_words = " ".join(_words(" ".join(plain_text_blocks(p.content, keep_code=False))) for p in same_section)
        # A group right after a listing starts with the ":" of "Code from the book [n]:".
        for sentence in re.split(r"(?<=[.!?\u2026])\s+", group.strip().removeprefix(":").strip()):
            if sentence and not sentence.startswith(
                ("Code from the book", "The closest section", "The book shows this in", "See also")
            ):
                assert _words(sentence.rstrip("\u2026")) in source_words, sentence


def assert_answer(extract: Extract, passages: list[Passage], *, code: bool = False) -> None:
    assert extract.text.startswith(NOTE + "\n\n")
    assert_plain(extract.text)
    assert_markers(extract, passages)
    assert_quotes_passages(extract, passages)
    _, fences = _without_code(extract.text)
    assert len(fences) == (1 if code else 0)
    assert extract.text.count("```") == (2 if code else 0)


# --- markdown to plain text ---------------------------------------------------------------------------


def test_plain_text_blocks_keep_text_and_drop_markup() -> None:
    markdown = """# A heading

Some **bold**, _emphasis_, `code span`, a [link](http://example.com) and ![a picture](x.png) here.

> A quoted *line*.

:::note Remember
Admonition body text.
:::

| a | b |
|---|---|
| 1 | 2 |

- first **item**
- second item

```python
print("hi")
```
"""
    assert plain_text_blocks(markdown, keep_code=False) == [
        "Some bold, emphasis, code span, a link and here.",
        "A quoted line.",
        "Admonition body text.",
        "first item",
        "second item",
    ]
    assert plain_text_blocks(markdown, keep_code=True)[-1] == 'print("hi")'


def test_a_lead_in_and_its_short_list_read_as_one_sentence() -> None:
    markdown = "ROS 2 uses DDS as its middleware, providing:\n\n- Real-time performance\n- Security features\n"
    assert plain_text_blocks(markdown, keep_code=False) == [
        "ROS 2 uses DDS as its middleware, providing: real-time performance; security features."
    ]


def test_hostile_html_never_reaches_the_answer_as_tags() -> None:
    hostile = passage(
        "<script>alert(1)</script>\n\n"
        '<div onclick="steal()">\nA div of HTML prose about robots and balance.\n</div>\n\n'
        "Humanoid robots keep their balance with feedback control <img src=x onerror=alert(1)> of the ankles.\n\n"
        "Balance of humanoid robots is also <script>alert(2)</script>kept by stepping &lt;script&gt; reflexes.\n\n"
        "Humanoid [balance](javascript:alert(3)) relies on sensing the <b>center</b> of mass of the robot.\n"
    )
    extract = compose_extractive("How do humanoid robots keep their balance?", [hostile], note=NOTE)
    assert_answer(extract, [hostile])
    assert "alert" not in extract.text
    assert "onerror" not in extract.text
    assert "javascript" not in extract.text
    assert "feedback control of the ankles" in extract.text


# --- sentences ------------------------------------------------------------------------------------------


def test_abbreviations_and_decimals_do_not_end_a_sentence() -> None:
    text = (
        "Walking robots, e.g. humanoids and quadrupeds, reach 2.5 m/s on flat ground, i.e. a brisk walk, "
        "with sensors, actuators, etc. Running gaits of walking robots are another topic entirely."
    )
    extract = compose_extractive("How fast do walking robots reach on flat ground?", [passage(text)], note=NOTE)
    assert "Walking robots, e.g. humanoids and quadrupeds, reach 2.5 m/s on flat ground, i.e. a brisk walk" in (
        extract.text
    )


def test_questions_labels_and_fragments_are_not_quoted() -> None:
    text = (
        "## Review\n\nWhat does a LiDAR sensor measure in a robot?\n\nLiDAR sensor details:\n\n"
        "- LiDAR range\n\n"
        "A LiDAR sensor measures distances to surfaces with pulses of laser light.\n"
    )
    extract = compose_extractive("What does a LiDAR sensor measure?", [passage(text)], note=NOTE)
    assert extract.text == (
        f"{NOTE}\n\nA LiDAR sensor measures distances to surfaces with pulses of laser light. [1]\n"
    )
    assert extract.used == [0]


def test_sections_are_cited_once_and_markers_follow_first_use() -> None:
    passages = [
        passage("Unrelated text about the weather in the lab today.", source="a.md", heading="Weather"),
        passage("Inverse kinematics computes joint angles for a target pose.", source="b.md", heading="IK"),
        passage("Forward kinematics computes the pose from joint angles.", source="c.md", heading="FK"),
        passage("Inverse kinematics solvers are numerical or analytical.", source="b.md", heading="IK"),
    ]
    extract = compose_extractive("How does inverse kinematics compute joint angles?", passages, note=NOTE)
    assert_answer(extract, passages)
    assert extract.used[0] == 1  # the IK section, whose two passages share marker [1]
    assert 3 not in extract.used
    assert "Inverse kinematics computes joint angles for a target pose." in extract.text
    assert "Inverse kinematics solvers are numerical or analytical. [1]" in extract.text
    assert "weather" not in extract.text


def test_a_paraphrased_question_gets_the_best_sections_opening() -> None:
    passages = [
        passage("Gazebo is a robot simulator. It models physics, sensors and worlds. It runs headless too."),
        passage("Isaac Sim renders photorealistic scenes on the GPU.", source="b.md", heading="Isaac"),
    ]
    extract = compose_extractive("Which tool should I pick?", passages, note=NOTE)
    assert extract.text == f"{NOTE}\n\nGazebo is a robot simulator. It models physics, sensors and worlds. [1]\n"
    assert extract.used == [0]


def test_the_answer_stays_short() -> None:
    sentences = [f"Robot balance control number {i} uses the ankle, hip and stepping strategies." for i in range(30)]
    passages = [passage(" ".join(sentences[i : i + 10]), source=f"{i}.md", heading=str(i), rank=i) for i in (0, 10, 20)]
    passages += [passage("Robot balance control is also studied in the gait chapter.", source="x.md", heading="x")]
    extract = compose_extractive("How does robot balance control work?", passages, note=NOTE)
    assert_answer(extract, passages)
    body = extract.text.split("\n", 2)[2]
    assert len(body) <= 760
    assert len(re.findall(r"strategies\.", body)) <= 4
    assert len(extract.used) <= 3


def test_no_sentence_at_all_names_the_section_instead() -> None:
    only_code = passage("## Listing\n\n```python\nx = 1\n```\n", heading="Listing")
    extract = compose_extractive("What is x?", [only_code], note=NOTE)
    assert extract.text == (
        f'{NOTE}\n\nThe closest section of the book, "Listing", is mostly code or tables, with no explanation'
        " to quote here. [1]\n"
    )
    assert extract.used == [0]
    assert compose_extractive("What is x?", [], note=NOTE) == Extract(text=f"{NOTE}\n", used=[])


# --- code on request ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Show me the code for a publisher", True),
        ("Show me example code for a ROS 2 publisher", True),
        ("How do I write a subscriber in Python?", True),
        ("Give me a snippet that spawns a robot", True),
        ("What is the command to build a package?", True),
        ("What is the Zero Moment Point?", False),
        ("Tell me about LiDAR.", False),
        ("How does ROS 2 discover nodes on the network?", False),
    ],
)
def test_asks_for_code(query: str, expected: bool) -> None:
    assert asks_for_code(query) is expected


def test_code_comes_fenced_with_a_marker_only_when_asked() -> None:
    text = (
        "A publisher sends messages on a topic to its subscribers.\n\n```python\nnode.create_publisher(String)\n```\n"
    )
    plain = compose_extractive("What does a publisher do?", [passage(text)], note=NOTE)
    assert_answer(plain, [passage(text)])
    coded = compose_extractive("Show me the code for a publisher", [passage(text)], note=NOTE)
    assert_answer(coded, [passage(text)], code=True)
    assert coded.text.endswith("Code from the book [1]:\n```python\nnode.create_publisher(String)\n```\n")


# --- the real book --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "picks", "expected"),
    [
        ("What is the Zero Moment Point?", ZMP, "Managing center of mass and zero moment point (ZMP)."),
        ("What is Isaac Sim?", ISAAC, "NVIDIA Isaac Sim is an end-to-end simulation application"),
        ("Tell me about LiDAR.", LIDAR, "Light Detection and Ranging (LiDAR) systems provide 3D spatial information"),
        ("How does ROS 2 discover nodes on the network?", DISCOVERY, "A node is an executable that uses ROS 2"),
    ],
)
def test_book_answers_are_plain_cited_prose(query: str, picks: list[tuple[str, str]], expected: str) -> None:
    passages = retrieved(*picks)
    extract = compose_extractive(query, passages, note=NOTE)
    assert_answer(extract, passages)
    assert expected in extract.text
    assert "right_foot_target" not in extract.text  # no fragment of a listing
    assert "?" not in extract.text.split("\n", 2)[2]  # the review questions are not answers
    assert compose_extractive(query, passages, note=NOTE) == extract  # deterministic


def test_book_code_is_quoted_when_asked() -> None:
    passages = retrieved(*PUBLISHER)
    extract = compose_extractive("Show me example code for a ROS 2 publisher", passages, note=NOTE)
    assert_answer(extract, passages, code=True)
    _, (fence,) = _without_code(extract.text)
    assert "self.create_publisher(String, 'topic', 10)" in fence
    cited = re.search(r"Code from the book \[(\d+)\]:", extract.text)
    assert cited is not None
    assert passages[extract.used[int(cited.group(1)) - 1]].heading == "Creating a Publisher"


def test_the_old_answers_faults_are_gone_on_the_zmp_sections() -> None:
    """The ZMP sections are nearly all code: the old extract quoted `'right_foot_target': ...` under a
    bold heading; the new one quotes prose or says the section is code."""
    passages = retrieved(ZMP[0], ZMP[1])
    extract = compose_extractive("What is the Zero Moment Point?", passages, note=NOTE)
    assert_answer(extract, passages)
    assert "'" not in extract.text
    assert "mostly code" in extract.text


def _chapters() -> list[str]:
    return sorted(str(p.relative_to(corpus_dir())) for p in Path(corpus_dir()).rglob("*.md"))


@pytest.mark.parametrize("chapter", _chapters())
def test_every_book_section_gives_a_clean_answer(chapter: str) -> None:
    """Each section, with the two after it as lower-ranked passages, asked about its heading (and for code)."""
    sections = list(book_sections(chapter))
    assert sections
    for i, best in enumerate(sections):
        passages = sections[i : i + 3]
        topic = best.heading or best.title or ""
        for query, code in ((f"What is {topic}?", False), (f"Show me the code for {topic}", True)):
            extract = compose_extractive(query, passages, note=NOTE)
            has_code = any(re.search(r"^(```|~~~)", p.content, flags=re.MULTILINE) for p in passages)
            assert_answer(extract, passages, code=code and has_code)


def test_the_best_section_is_cited_first_even_when_it_is_all_code() -> None:
    """Retrieval's first section teaches the answer in a listing: the answer points at it as [1] rather than
    citing only sections whose prose repeats the question's words; asked how to do it, the listing leads."""
    passages = [
        passage(
            "```python\nnode.create_subscription(String, 'topic', callback, 10)\n```", heading="Creating a Subscriber"
        ),
        passage("A subscriber node receives the messages published to a topic.", heading="Topics"),
    ]
    extract = compose_extractive("What does a subscriber do with a topic?", passages, note=NOTE)
    assert extract.used == [0, 1]
    assert 'The book shows this in "Creating a Subscriber", mostly as code not quoted here. [1]' in extract.text
    assert "A subscriber node receives the messages published to a topic. [2]" in extract.text
    assert "```" not in extract.text

    how = compose_extractive("How do I subscribe to a topic?", passages, note=NOTE)
    assert how.used == [0, 1]
    assert how.text.index("Code from the book [1]:") < how.text.index("published to a topic. [2]")
    assert "create_subscription" in how.text


def test_sections_that_ask_are_not_quoted_when_one_explains() -> None:
    """Learning objectives repeat the question's words; the explaining section is what gets quoted."""
    objectives = dataclasses.replace(
        passage("Understand how an action server sends feedback while it executes a goal.", heading="Objectives"),
        section_kind="asks",
    )
    server = passage("The server publishes progress on the feedback topic as it runs.", heading="Action Server")
    extract = compose_extractive(
        "How does an action server send feedback while executing a goal?", [server, objectives], note=NOTE
    )
    assert extract.used == [0]
    assert "Understand" not in extract.text


def test_a_section_whose_heading_names_the_question_is_quoted_though_its_items_do_not() -> None:
    """ "What are the system requirements?" is answered by the items under "System Requirements" ("NVIDIA GPU
    with RTX ..."), which never repeat the question's words; the introduction that does comes second."""
    passages = retrieved(
        ("week7/nvidia-isaac-sim.md", "System Requirements"),
        ("week7/nvidia-isaac-sim.md", "Introduction to NVIDIA Isaac Sim"),
    )
    extract = compose_extractive("What are the system requirements for Isaac Sim?", passages, note=NOTE)
    assert extract.used[0] == 0
    assert "NVIDIA GPU with RTX or GTX 1080/1080Ti or better. " in extract.text
    assert extract.text.index("[1]") < extract.text.index("[2]")
    assert_answer(extract, passages, code=False)


def test_a_code_only_section_among_the_best_three_is_pointed_at_in_its_place() -> None:
    """Retrieval's second section answers in code only (a troubleshooting table written as a dict): the
    answer points at it after the first section's prose instead of leaving it out."""
    passages = retrieved(
        ("week9/isaac-ros.md", "Isaac ROS DNN Inference"),
        ("week9/isaac-ros.md", "Common Issues and Solutions"),
        ("week9/isaac-ros.md", "Introduction to Isaac ROS"),
    )
    extract = compose_extractive("What should I do when Isaac ROS runs out of GPU memory?", passages, note=NOTE)
    assert extract.used[:2] == [0, 1]
    assert 'See also "Common Issues and Solutions" (code or a table, not quoted here). [2]' in extract.text
    assert "CUDA_ERROR_OUT_OF_MEMORY" not in extract.text
    assert_answer(extract, passages)
