"""Documents for an expert's knowledge base: read (Markdown, plain text, HTML, PDF) and split into chunks.

A chunk is a run of whole paragraphs (a long paragraph is split at sentence ends) of about ``CHUNK_CHARS``, prefixed
with the document's title and its section heading, so each chunk says on its own what it is about: the embedder sees
"GDPR Article 33 - Breach notification: ..." rather than a bare "within 72 hours".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from markdown_it import MarkdownIt

from common.errors import BadRequest, TooLarge, UnsupportedMediaType
from common.text import sentences

CHUNK_CHARS = 700
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".html": "html",
            ".htm": "html", ".pdf": "pdf"}


class UnreadableDocument(BadRequest):
    """A file that cannot become knowledge (empty, broken, not UTF-8): reported by name."""


class UnsupportedDocumentType(UnreadableDocument, UnsupportedMediaType):
    """A file of a type the knowledge base does not read."""


class DocumentTooLarge(UnreadableDocument, TooLarge):
    """A file over MAX_DOCUMENT_BYTES."""


@dataclass(frozen=True)
class Section:
    heading: str
    paragraphs: list[str]


@dataclass(frozen=True)
class Document:
    source: str  # the path or name it came from: its identity in the store
    title: str
    sections: list[Section]


def kind_of(name: str) -> str:
    kind = SUFFIXES.get(Path(name).suffix.lower())
    if kind is None:
        raise UnsupportedDocumentType(f"{name}: unsupported file type (use {', '.join(sorted(SUFFIXES))})")
    return kind


def read(name: str, data: bytes) -> Document:
    """A document from a file's bytes; UnreadableDocument says what is wrong with it."""
    kind = kind_of(name)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge(f"{name}: {len(data)} bytes is over the {MAX_DOCUMENT_BYTES} byte limit")
    if kind == "pdf":
        sections = _pdf(name, data)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnreadableDocument(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        sections = {"markdown": _markdown, "text": _plain, "html": _html}[kind](text)
    title = next((s.heading for s in sections if s.heading), Path(name).stem.replace("_", " ").replace("-", " "))
    sections = [s for s in sections if s.paragraphs]
    if not sections:
        raise UnreadableDocument(f"{name}: no text in it")
    return Document(name, title, sections)


def _plain(text: str) -> list[Section]:
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return [Section("", [p for p in paragraphs if p])]


def _markdown(text: str) -> list[Section]:
    """Sections by heading, paragraphs and list items as paragraphs (markdown-it's tokens, not regexes)."""
    sections: list[Section] = [Section("", [])]
    heading = False
    for token in MarkdownIt().parse(text):
        if token.type == "heading_open":
            heading = True
        elif token.type == "heading_close":
            heading = False
        elif token.type == "inline" and token.content.strip():
            content = " ".join(token.content.split())
            if heading:
                sections.append(Section(content, []))
            else:
                sections[-1].paragraphs.append(content)
        elif token.type in ("fence", "code_block") and token.content.strip():
            sections[-1].paragraphs.append(token.content.strip())
    return sections


class _HtmlText(HTMLParser):
    BLOCKS = {"p", "li", "div", "section", "article", "td", "pre", "blockquote", "br", "tr"}
    HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6", "title"}
    SKIP = {"script", "style", "noscript", "template", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = [Section("", [])]
        self._text: list[str] = []
        self._skip = 0
        self._heading = False

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP and tag != "head":
            self._skip += 1
        elif tag in self.BLOCKS or tag in self.HEADINGS:
            self._flush()
            self._heading = tag in self.HEADINGS

    def handle_endtag(self, tag):
        if tag in self.SKIP and tag != "head":
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCKS or tag in self.HEADINGS:
            self._flush()

    def handle_data(self, data):
        if not self._skip:
            self._text.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._text).split())
        self._text = []
        if text:
            if self._heading:
                self.sections.append(Section(text, []))
            else:
                self.sections[-1].paragraphs.append(text)
        self._heading = False


def _html(text: str) -> list[Section]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.sections


def _pdf(name: str, data: bytes) -> list[Section]:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableDocument(f"{name}: not a readable PDF ({exc})") from None
    return [Section(f"page {i}", _plain(text)[0].paragraphs) for i, text in enumerate(pages, 1) if text.strip()]


@dataclass(frozen=True)
class Chunk:
    lead: str  # where it comes from: "Title - Section"
    body: str

    @property
    def text(self) -> str:
        """What is embedded and shown: the body led by where it comes from."""
        return f"{self.lead}: {self.body}"


def chunks(document: Document, size: int = CHUNK_CHARS) -> list[Chunk]:
    """The document as chunks of whole paragraphs (or sentences) of about ``size`` characters, each led by where it
    comes from."""
    out: list[Chunk] = []
    for section in document.sections:
        lead = document.title if section.heading in ("", document.title) else f"{document.title} - {section.heading}"
        pieces = [p for paragraph in section.paragraphs
                  for p in ([paragraph] if len(paragraph) <= size else _sentence_runs(paragraph, size))]
        current: list[str] = []
        for piece in pieces:
            if current and sum(len(c) + 1 for c in current) + len(piece) > size:
                out.append(Chunk(lead, " ".join(current)))
                current = []
            current.append(piece)
        if current:
            out.append(Chunk(lead, " ".join(current)))
    return out


def _sentence_runs(paragraph: str, size: int) -> list[str]:
    runs: list[str] = []
    for sentence in sentences(paragraph) or [paragraph]:
        if runs and len(runs[-1]) + len(sentence) + 1 <= size:
            runs[-1] += " " + sentence
        else:
            runs.extend(sentence[i:i + size] for i in range(0, len(sentence), size))
    return runs
