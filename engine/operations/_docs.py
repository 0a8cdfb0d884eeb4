"""Documents to text sections, and sections to chunks: what kb_population stores.

Formats: Markdown, reStructuredText and plain text (headings recognised, the text kept as written: FTS5's
tokenizer ignores the markup characters), HTML (the standard library's parser: h1-h6 as headings; script,
style, nav, aside and footer dropped as boilerplate) and PDF (pypdf: pure Python, no system library, the
one well-kept reader that needs nothing else; one section per page).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import PurePosixPath

KINDS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "rst",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
"""File suffixes read as documents, and the kind of each."""

IMAGE_SUFFIXES = frozenset({".svg", ".svgz"})
"""Text files that are pictures (an SVG is XML): what a tree's analysis skips, its tags and coordinates no
words of the tree's (a repository's snapshot SVGs made "rect", "fill" and "clip-path" its topics)."""
_TAG = re.compile(r"<[^<>]*>")

Section = tuple[str | None, str]
"""(heading or None, text)."""


class NotADocument(ValueError):
    """The file cannot be read as its kind of document (binary where text was expected, a broken PDF)."""


def kind_of(rel: str) -> str | None:
    return KINDS.get(PurePosixPath(rel).suffix.lower())


def markup_heavy(data: bytes) -> bool:
    """Whether a file without a document suffix is mostly markup (XML, a picture's SVG without its suffix):
    it starts with a tag, and tags are most of its first 64 KiB. Read as HTML, its text without the tags."""
    head = data[:65536].decode("utf-8", "replace").strip()
    if not head.startswith("<"):
        return False
    return 2 * sum(m.end() - m.start() for m in _TAG.finditer(head)) > len(head)


def decode(data: bytes) -> str:
    """UTF-8 (a BOM dropped), else Windows-1252 / Latin-1: old documents are often in one of them."""
    if b"\0" in data[:8192]:
        raise NotADocument("binary content (NUL bytes) in a text document")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            return data.decode("latin-1")


_MD_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
"""A fenced code block's opening or closing line: what it holds is code, not headings (a shell `# comment`)."""
_MD_SETEXT = re.compile(r"^ {0,3}(?:=+|-+)\s*$")
"""A Setext heading's underline (``Title`` over ``=====``, ``Part`` over ``-----``), under a paragraph line."""
_RST_UNDERLINE = re.compile(r"^([=\-`:'\"~^_*+#<>])\1{2,}\s*$")


def sections(kind: str, data: bytes) -> tuple[str | None, list[Section]]:
    """(title, sections) of a document."""
    if kind == "pdf":
        return _pdf(data)
    text = decode(data)
    if kind == "html":
        return _html(text)
    out: list[Section] = []
    heading: str | None = None
    title: str | None = None
    buf: list[str] = []
    lines = text.splitlines()
    fence: str | None = None  # the fence of the Markdown code block the line is in
    i = 0
    while i < len(lines):
        line = lines[i]
        new: str | None = None
        if kind == "markdown" and (f := _MD_FENCE.match(line)):
            mark = f.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence) and not line[f.end() :].strip():
                fence = None
        elif kind == "markdown" and fence is None and (m := _MD_HEADING.match(line)):
            new = m.group(2)
        elif (
            kind == "markdown"
            and fence is None
            and line.strip()
            and (i == 0 or not lines[i - 1].strip())
            and i + 1 < len(lines)
            and _MD_SETEXT.match(lines[i + 1])
        ):
            new = line.strip()  # its underline was kept in the text, the document titled by its file name
            i += 1
        elif (
            kind == "rst"
            and line.strip()
            and i + 1 < len(lines)
            and _RST_UNDERLINE.match(lines[i + 1])
            and len(lines[i + 1].rstrip()) >= len(line.rstrip())
        ):
            new = line.strip()
            i += 1  # the underline
            if buf and _RST_UNDERLINE.match(buf[-1]):
                buf.pop()  # an overline
        if new is not None:
            if "".join(buf).strip():
                out.append((heading, "\n".join(buf)))
            heading, buf = new, []
            title = title or new
        else:
            buf.append(line)
        i += 1
    if "".join(buf).strip():
        out.append((heading, "\n".join(buf)))
    return title, out


class _Html(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "nav", "aside", "footer"})  # no boilerplate
    BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "pre", "blockquote", "section", "article", "table", "dd", "dt", "hr"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.sections: list[Section] = []
        self._heading: str | None = None
        self._buf: list[str] = []
        self._skip = 0
        self._in: str | None = None  # "title" or "h1".."h6" while inside one
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title" or re.fullmatch(r"h[1-6]", tag):
            self._in, self._text = tag, []
        elif tag in self.BLOCK:
            self._buf.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == self._in:
            text = " ".join("".join(self._text).split())
            if tag == "title":
                self.title = text or None
            elif text:
                self._flush()
                self._heading = text
            self._in = None
        elif tag in self.BLOCK:
            self._buf.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        (self._text if self._in else self._buf).append(data)

    def _flush(self) -> None:
        text = "".join(self._buf)
        if text.strip():
            self.sections.append((self._heading, text))
        self._buf = []

    def close(self) -> None:
        super().close()
        self._flush()


def _html(text: str) -> tuple[str | None, list[Section]]:
    p = _Html()
    p.feed(text)
    p.close()
    return p.title or next((h for h, _ in p.sections if h), None), p.sections


def _pdf(data: bytes) -> tuple[str | None, list[Section]]:
    import io

    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise NotADocument(f"PDF support needs pypdf ({e})") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise NotADocument("encrypted PDF")
        title = (reader.metadata.title if reader.metadata else None) or None
        out: list[Section] = [(f"page {n}", page.extract_text() or "") for n, page in enumerate(reader.pages, 1)]
    except NotADocument:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        raise NotADocument(f"unreadable PDF: {type(e).__name__}: {e}") from None
    return (str(title) if title else None), [s for s in out if s[1].strip()]


def chunk(secs: list[Section], size: int) -> list[tuple[str | None, str]]:
    """Sections cut into chunks of at most ``size`` characters, at paragraph, then sentence, then word
    boundaries; whitespace inside a paragraph is collapsed. A chunk never spans two sections."""
    out: list[tuple[str | None, str]] = []
    for heading, text in secs:
        paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
        cur = ""
        for para in (p for p in paras if p):
            for piece in _split(para, size):
                if cur and len(cur) + 2 + len(piece) > size:
                    out.append((heading, cur))
                    cur = ""
                cur = f"{cur}\n\n{piece}" if cur else piece
        if cur:
            out.append((heading, cur))
    return out


def _split(para: str, size: int) -> list[str]:
    """A paragraph in pieces of at most ``size`` characters (sentences, then words, then hard cuts)."""
    if len(para) <= size:
        return [para]
    pieces: list[str] = []
    cur = ""
    for unit in re.split(r"(?<=[.!?])\s+", para):
        words = [unit] if len(unit) <= size else unit.split(" ")
        for w in words:
            while len(w) > size:
                if cur:
                    pieces.append(cur)
                    cur = ""
                pieces.append(w[:size])
                w = w[size:]
            if cur and len(cur) + 1 + len(w) > size:
                pieces.append(cur)
                cur = ""
            cur = f"{cur} {w}" if cur else w
    if cur:
        pieces.append(cur)
    return pieces
