"""Documents to ingest: validated sources, uploaded files and zips, a directory of markdown.

Every way in (the API's uploads, `DOCS_DIR`, the CLI) produces `DocumentInput`s checked here, so the
limits (count, size, suffixes, zip bombs) hold whichever door the documents came through.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from shared.platform.errors import BadRequest, InvalidInput, PayloadTooLarge
from shared.platform.logging import get_logger

log = get_logger(__name__)

MAX_DOCUMENTS = 500
MAX_DOCUMENT_CHARS = 2_000_000
ALLOWED_SUFFIXES = (".md", ".mdx", ".txt", ".markdown")
MAX_ZIP_FILES = 500
MAX_ZIP_UNCOMPRESSED = 50 * 1024 * 1024
MAX_ZIP_RATIO = 200


@dataclass
class DocumentInput:
    """One document to ingest."""

    source: str
    content: str
    title: str | None = None
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Validation and inputs
# ---------------------------------------------------------------------------------------------


def validate_source(source: str) -> str:
    """Normalise a document source (a relative POSIX path) or raise `InvalidInput`."""
    text = source.strip().replace("\\", "/")
    if not text or len(text) > 512:
        raise InvalidInput("A document source must be 1 to 512 characters.")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in text):
        raise InvalidInput(f"The source {source!r} contains control characters.")
    path = PurePosixPath(text)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or any(p in {"..", "."} for p in text.split("/")):
        raise InvalidInput(f"The source {source!r} must be a relative path without '.' or '..' segments.")
    return str(path)


def check_documents(documents: Sequence[DocumentInput]) -> list[DocumentInput]:
    if not documents:
        raise InvalidInput("Send at least one document.")
    if len(documents) > MAX_DOCUMENTS:
        raise InvalidInput(f"At most {MAX_DOCUMENTS} documents per job; split the upload into several jobs.")
    seen: set[str] = set()
    cleaned: list[DocumentInput] = []
    for doc in documents:
        source = validate_source(doc.source)
        if source in seen:
            raise InvalidInput(f"The source {source!r} appears twice in this job.")
        if len(doc.content) > MAX_DOCUMENT_CHARS:
            raise InvalidInput(f"The document {source!r} is longer than {MAX_DOCUMENT_CHARS} characters.")
        seen.add(source)
        cleaned.append(
            DocumentInput(source=source, content=doc.content, title=doc.title, url=doc.url, metadata=doc.metadata)
        )
    return cleaned


def load_directory(path: Path) -> list[DocumentInput]:
    """Every .md/.mdx/.txt file under `path` (sources are paths relative to it, sorted)."""
    root = path.resolve()
    if not root.is_dir():
        raise InvalidInput(f"{path} is not a directory.")
    documents = []
    for file in sorted(root.rglob("*")):
        if file.is_file() and file.suffix.lower() in ALLOWED_SUFFIXES and not file.name.startswith("."):
            source = file.relative_to(root).as_posix()
            documents.append(DocumentInput(source=source, content=file.read_text(encoding="utf-8", errors="replace")))
    return documents


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{name} is not UTF-8 text.") from None


def extract_uploads(files: Sequence[tuple[str, bytes]]) -> list[DocumentInput]:
    """Documents from uploaded files: .md/.mdx/.txt files, or exactly one .zip of them.

    Refuses path traversal, other file types, and zip bombs (more than `MAX_ZIP_FILES` files, more than
    `MAX_ZIP_UNCOMPRESSED` bytes uncompressed, or a suspicious compression ratio).
    """
    if not files:
        raise InvalidInput("Upload at least one .md, .mdx or .txt file, or one .zip of them.")
    zips = [f for f in files if f[0].lower().endswith(".zip")]
    if zips:
        if len(files) != 1:
            raise BadRequest("Upload either one .zip file or markdown/text files, not both.", code="unsupported_upload")
        return _extract_zip(*zips[0])
    documents = []
    for name, data in files:
        source = validate_source(name)
        if PurePosixPath(source).suffix.lower() not in ALLOWED_SUFFIXES:
            raise BadRequest(
                f"{name}: only .md, .mdx, .txt files or one .zip are accepted.", code="unsupported_file_type"
            )
        documents.append(DocumentInput(source=source, content=_decode(source, data)))
    return documents


def _extract_zip(name: str, data: bytes) -> list[DocumentInput]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise BadRequest(f"{name} is not a valid zip archive.", code="invalid_zip") from None
    with archive:
        entries = [info for info in archive.infolist() if not info.is_dir()]
        if len(entries) > MAX_ZIP_FILES:
            raise PayloadTooLarge(f"{name} holds {len(entries)} files; at most {MAX_ZIP_FILES} are accepted.")
        declared = sum(info.file_size for info in entries)
        if declared > MAX_ZIP_UNCOMPRESSED:
            raise PayloadTooLarge(
                f"{name} expands to {declared} bytes; at most {MAX_ZIP_UNCOMPRESSED} bytes uncompressed are accepted."
            )
        documents = []
        total = 0
        for info in entries:
            source = validate_source(info.filename)
            if PurePosixPath(source).name.startswith(".") or "__MACOSX" in source:
                continue
            if PurePosixPath(source).suffix.lower() not in ALLOWED_SUFFIXES:
                raise BadRequest(f"{name}: {source} is not a .md, .mdx or .txt file.", code="unsupported_file_type")
            if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO and info.file_size > 1 << 20:
                raise PayloadTooLarge(f"{name}: {source} has a suspicious compression ratio.")
            # Read with a hard cap: the declared sizes in a crafted archive can lie.
            with archive.open(info) as handle:
                content = handle.read(MAX_ZIP_UNCOMPRESSED - total + 1)
            total += len(content)
            if total > MAX_ZIP_UNCOMPRESSED:
                raise PayloadTooLarge(f"{name} expands to more than {MAX_ZIP_UNCOMPRESSED} bytes.")
            documents.append(DocumentInput(source=source, content=_decode(source, content)))
    if not documents:
        raise InvalidInput(f"{name} contains no .md, .mdx or .txt files.")
    return documents
