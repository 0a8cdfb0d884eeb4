"""Language facts for the indexer and the scanner: language by extension, line counts, symbols, imports."""

from __future__ import annotations

import os
import re
import threading
import tokenize
from operator import methodcaller

from ..paths import config_dir
from ._parse import Parsers, Symbol, load_languages, python_fallback, python_symbols

__all__ = ["LANGUAGES", "Symbol", "count_lines", "language_of", "parsers", "symbols_and_imports"]

LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "tsx",
    ".mts": "typescript",
    ".cts": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".rb": "ruby",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".sql": "sql",
    ".md": "markdown",
    ".rst": "text",
    ".txt": "text",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".html": "html",
    ".css": "css",
    ".tcss": "css",
    ".kt": "kotlin",
    ".swift": "swift",
    ".php": "php",
    ".cs": "csharp",
    ".scala": "scala",
    ".lua": "lua",
    ".ini": "ini",
    ".cfg": "ini",
}
_NAMES = {"Makefile": "make", "Dockerfile": "docker", "CMakeLists.txt": "cmake"}

# (line comment prefixes, block comment (open, close) or None)
_HASH = (("#",), None)
_CLIKE = (("//",), ("/*", "*/"))
_COMMENTS: dict[str, tuple[tuple[str, ...], tuple[str, str] | None]] = {
    "python": _HASH,
    "ruby": _HASH,
    "shell": _HASH,
    "toml": _HASH,
    "yaml": _HASH,
    "make": _HASH,
    "docker": _HASH,
    "cmake": _HASH,
    "ini": ((";", "#"), None),
    "sql": (("--",), ("/*", "*/")),
    "lua": (("--",), None),
    "html": ((), ("<!--", "-->")),
    "css": ((), ("/*", "*/")),
    "php": (("//", "#"), ("/*", "*/")),
}
for _l in ("javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp", "kotlin", "swift", "csharp", "scala"):
    _COMMENTS[_l] = _CLIKE


def language_of(path: str) -> str:
    """The language of a file by its name and extension ("other" when unknown)."""
    name = path.rsplit("/", 1)[-1]
    ext = os.path.splitext(name)[1].lower()
    return _NAMES.get(name) or LANGUAGES.get(ext) or parsers().by_extension.get(ext, "other")


def physical_lines(text: str) -> list[str]:
    """The lines of a file as editors, ``wc -l`` and Python's tokenizer see them: ended by LF, CRLF or CR.

    Not ``str.splitlines``, which also ends a line at a form feed (``^L`` between sections of Python and C
    files), a vertical tab or U+2028 in a string: a file counted more lines than it has."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the newline at the end ends the last line; it does not start another
        lines.pop()
    return lines


_FSTRING_START: int = getattr(tokenize, "FSTRING_START", -1)
_FSTRING_END: int = getattr(tokenize, "FSTRING_END", -1)


def _hashes_in_strings(lines: list[str], stripped: list[str]) -> int:
    """How many of a Python file's lines that start with ``#`` are inside a triple-quoted string (a shell
    script or a template in a test's string): text, which tokenize counts as code, not comments.

    A scan of the triple quotes first, so that only a file where such a line may be in a string pays for
    tokenize (ten times the count itself); a file tokenize refuses keeps the count by line starts."""
    quote = ""
    maybe = False
    for s in stripped:
        if quote and s.startswith("#"):
            maybe = True
            break
        if not quote and s.startswith("#"):
            continue
        for q in re.findall(r'"""|\'\'\'', s):
            quote = "" if q == quote else quote or q
    if not maybe:
        return 0
    inside: set[int] = set()
    starts: list[int] = []  # of the f-strings open (3.12 tokenizes them in parts)
    try:
        for tok in tokenize.generate_tokens(iter([*(ln + "\n" for ln in lines), ""]).__next__):
            if tok.type == tokenize.STRING:
                inside.update(range(tok.start[0] + 1, tok.end[0] + 1))
            elif tok.type == _FSTRING_START:
                starts.append(tok.start[0])
            elif tok.type == _FSTRING_END and starts:
                inside.update(range(starts.pop() + 1, tok.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        return 0
    return sum(1 for i in inside if stripped[i - 1].startswith("#"))


def count_lines(text: str, language: str) -> tuple[int, int, int]:
    """(code, comment, blank) line counts; a line with code and a comment counts as code."""
    line_prefixes, block = _COMMENTS.get(language, ((), None))
    lines = physical_lines(text)
    if block is None or block[0] not in text:  # the common case, without a per-line Python loop
        stripped = [ln.strip() for ln in lines]
        blank = stripped.count("")
        comment = sum(map(methodcaller("startswith", line_prefixes), stripped)) if line_prefixes else 0
        if comment and language == "python" and ('"""' in text or "'''" in text):
            comment -= _hashes_in_strings(lines, stripped)
        return len(stripped) - blank - comment, comment, blank
    code = comment = blank = 0
    in_block = False
    for raw in lines:
        s = raw.strip()
        if not s:
            blank += 1
            continue
        has_code, in_block = _scan_line(s, in_block, line_prefixes, block)
        if has_code:
            code += 1
        else:
            comment += 1
    return code, comment, blank


def _scan_line(s: str, in_block: bool, prefixes: tuple[str, ...], block: tuple[str, str]) -> tuple[bool, bool]:
    """Whether a line has code outside comments, and whether a block comment is open at its end.

    A block comment may open after code (``#define X 1 /* a note`` over several lines) and code may follow its
    close (``*/ int y;``): counted by the line's start only, elf.h had 153 comment lines counted as code. In a
    language with line comments (code, not markup) a quoted string is passed over whole, so ``"dist/*"`` opens
    nothing."""
    opener, closer = block
    quotes = "\"'`" if prefixes else ""
    has_code = False
    i, n = 0, len(s)
    while i < n:
        if in_block:
            end = s.find(closer, i)
            if end < 0:
                return has_code, True
            i, in_block = end + len(closer), False
        elif s[i].isspace():
            i += 1
        elif s.startswith(opener, i):
            i, in_block = i + len(opener), True
        elif prefixes and s.startswith(prefixes, i):
            return has_code, False
        else:
            has_code = True
            if opener not in s[i:] and not (prefixes and any(p in s[i:] for p in prefixes)):
                return True, False  # the common code line: no comment in the rest of it
            if s[i] in quotes:
                j = i + 1
                while j < n and s[j] != s[i]:
                    j += 2 if s[j] == "\\" else 1
                i = j + 1
            else:
                i += 1
    return has_code, in_block


_PARSERS: Parsers | None = None
_PARSERS_LOCK = threading.Lock()


def parsers() -> Parsers:
    """The configured tree-sitter languages (built in, plus the user's languages.toml), loaded once
    per process. Raises InvalidInput, naming the file and the language, if the user's file is wrong."""
    global _PARSERS
    if _PARSERS is None:
        with _PARSERS_LOCK:
            if _PARSERS is None:
                _PARSERS = Parsers(load_languages(config_dir() / "languages.toml"))
    return _PARSERS


def symbols_and_imports(text: str, language: str, data: bytes | None = None) -> tuple[list[Symbol], list[str]]:
    """Definitions (kind, name, lines, parent) and imported modules of a source file, from a real
    parser; none for a language no parser is configured for (or whose grammar failed: see
    ``parsers().problems``)."""
    if language == "python":
        return python_symbols(text) or python_fallback(text)
    found = parsers().parse(data if data is not None else text.encode("utf-8"), language)
    return found if found is not None else ([], [])
