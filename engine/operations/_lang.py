"""Language facts for the indexer and the scanner: language by extension, line counts, symbols, imports."""

from __future__ import annotations

import ast
import os
import re
from operator import methodcaller

LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
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
for _l in ("javascript", "typescript", "go", "rust", "java", "c", "cpp", "kotlin", "swift", "csharp", "scala"):
    _COMMENTS[_l] = _CLIKE


def language_of(path: str) -> str:
    """The language of a file by its name and extension ("other" when unknown)."""
    name = path.rsplit("/", 1)[-1]
    return _NAMES.get(name) or LANGUAGES.get(os.path.splitext(name)[1].lower(), "other")


def count_lines(text: str, language: str) -> tuple[int, int, int]:
    """(code, comment, blank) line counts; a line with code and a comment counts as code."""
    line_prefixes, block = _COMMENTS.get(language, ((), None))
    if block is None or block[0] not in text:  # the common case, without a per-line Python loop
        stripped = [ln.strip() for ln in text.splitlines()]
        blank = stripped.count("")
        comment = sum(map(methodcaller("startswith", line_prefixes), stripped)) if line_prefixes else 0
        return len(stripped) - blank - comment, comment, blank
    code = comment = blank = 0
    in_block = False
    for raw in text.splitlines():
        s = raw.strip()
        if not s:
            blank += 1
            continue
        if in_block:
            comment += 1
            if block and block[1] in s:
                in_block = False
            continue
        if block and s.startswith(block[0]):
            comment += 1
            in_block = block[1] not in s[len(block[0]) :]
            continue
        if line_prefixes and s.startswith(line_prefixes):
            comment += 1
            continue
        code += 1
    return code, comment, blank


def _python(text: str) -> tuple[list[str], list[str]] | None:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    symbols: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            symbols.append(f"def {node.name}")
        elif isinstance(node, ast.ClassDef):
            symbols.append(f"class {node.name}")
        elif isinstance(node, ast.Assign):
            symbols += [f"var {t.id}" for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            symbols.append(f"var {node.target.id}")
    imports: set[str] = set()
    _imports(tree.body, imports)
    return symbols, sorted(imports)


_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def _imports(stmts: list[ast.stmt], out: set[str]) -> None:
    """Imports anywhere in nested statement bodies; expressions (most of a tree) are not visited."""
    for node in stmts:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        else:
            for field in _BODIES:
                sub = getattr(node, field, None)
                if sub:
                    _imports(sub, out)


_M = re.MULTILINE
_SYMBOL_RX: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    "javascript": [
        ("def", re.compile(r"^(?:export\s+)?(?:default\s+)?(?:async\s+)?function\s*\*?\s*([A-Za-z_$][\w$]*)", _M)),
        ("class", re.compile(r"^(?:export\s+)?(?:default\s+)?(?:abstract\s+)?class\s+([A-Za-z_$][\w$]*)", _M)),
        ("var", re.compile(r"^(?:export\s+)?(?:const|let|var)\s+([A-Za-z_$][\w$]*)", _M)),
        ("type", re.compile(r"^(?:export\s+)?(?:interface|type|enum)\s+([A-Za-z_$][\w$]*)", _M)),
    ],
    "go": [
        ("def", re.compile(r"^func\s+(?:\([^)]*\)\s*)?([A-Za-z_]\w*)", _M)),
        ("type", re.compile(r"^type\s+([A-Za-z_]\w*)", _M)),
        ("var", re.compile(r"^(?:var|const)\s+([A-Za-z_]\w*)", _M)),
    ],
    "rust": [
        ("def", re.compile(r"^(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+([A-Za-z_]\w*)", _M)),
        ("type", re.compile(r"^(?:pub(?:\([^)]*\))?\s+)?(?:struct|enum|trait|type|union)\s+([A-Za-z_]\w*)", _M)),
        ("mod", re.compile(r"^(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_]\w*)", _M)),
        ("impl", re.compile(r"^impl(?:<[^>]*>)?\s+(?:[\w:<>]+\s+for\s+)?([A-Za-z_]\w*)", _M)),
    ],
    "java": [
        (
            "class",
            re.compile(
                r"^(?:(?:public|protected|private|abstract|final|static)\s+)*(?:class|interface|enum|record)\s+(\w+)",
                _M,
            ),
        ),
    ],
    "c": [
        (
            "def",
            re.compile(
                r"^(?:[A-Za-z_][\w*&:<>]*[ \t*&]+){1,6}\**([A-Za-z_]\w*(?:::\w+)*)\s*\([^;{)]*\)\s*(?:const\s*)?\{",
                _M,
            ),
        ),
        ("type", re.compile(r"^(?:typedef\s+)?(?:struct|union|enum|class|namespace)\s+([A-Za-z_]\w*)", _M)),
        ("macro", re.compile(r"^#\s*define\s+([A-Za-z_]\w*)", _M)),
    ],
}
_SYMBOL_RX["typescript"] = _SYMBOL_RX["javascript"]
_SYMBOL_RX["cpp"] = _SYMBOL_RX["c"]

_IMPORT_RX: dict[str, list[re.Pattern[str]]] = {
    "javascript": [
        re.compile(r"""^\s*import\s+(?:[^'";]*?\s+from\s+)?['"]([^'"]+)['"]""", _M),
        re.compile(r"""\brequire\(\s*['"]([^'"]+)['"]\s*\)"""),
        re.compile(r"""^\s*export\s+[^'";]*?\s+from\s+['"]([^'"]+)['"]""", _M),
    ],
    "go": [re.compile(r'^\s*import\s+(?:\w+\s+)?"([^"]+)"', _M), re.compile(r'^\s+(?:\w+\s+)?"([^"]+)"\s*$', _M)],
    "rust": [re.compile(r"^\s*(?:pub\s+)?use\s+([\w:]+)", _M), re.compile(r"^\s*extern\s+crate\s+(\w+)", _M)],
    "java": [re.compile(r"^\s*import\s+(?:static\s+)?([\w.]+(?:\.\*)?)\s*;", _M)],
    "c": [re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', _M)],
}
_IMPORT_RX["typescript"] = _IMPORT_RX["javascript"]
_IMPORT_RX["cpp"] = _IMPORT_RX["c"]
_GO_IMPORT_BLOCK = re.compile(r"^import\s*\((.*?)^\)", _M | re.DOTALL)


def symbols_and_imports(text: str, language: str) -> tuple[list[str], list[str]]:
    """Top-level symbols ("def name", "class name", ...) and imported modules of a source file."""
    if language == "python":
        found = _python(text)
        if found is not None:
            return found
        syms = [f"def {m}" for m in re.findall(r"^(?:async\s+)?def\s+(\w+)", text, _M)]
        syms += [f"class {m}" for m in re.findall(r"^class\s+(\w+)", text, _M)]
        imps = {a or b for a, b in re.findall(r"^(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", text, _M)}
        return syms, sorted(imps)
    symbols: list[str] = []
    for kind, rx in _SYMBOL_RX.get(language, ()):
        symbols += [f"{kind} {m}" for m in rx.findall(text) if m not in ("if", "for", "while", "switch", "return")]
    imports: set[str] = set()
    if language == "go":
        for block in _GO_IMPORT_BLOCK.findall(text):
            imports.update(re.findall(r'"([^"]+)"', block))
        imports.update(_IMPORT_RX["go"][0].findall(text))
    else:
        for rx in _IMPORT_RX.get(language, ()):
            imports.update(rx.findall(text))
    return symbols, sorted(imports)
