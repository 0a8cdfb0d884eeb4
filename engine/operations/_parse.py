"""Symbols and imports of source files from real parsers: Python's ``ast``, tree-sitter for the rest.

Which languages tree-sitter parses, with which grammar and which queries, is configuration
(``languages.toml`` beside this module, and a user's ``languages.toml`` in the config directory), not
code. The queries are the grammar packages' own tags queries (the ones editors and code-navigation
tools use), with the definitions they leave out added in the configuration.
"""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import re
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InvalidInput


class Symbol(NamedTuple):
    """One definition: what it is, its name, its lines (1-based, inclusive) and where it sits
    ("" at the top level, "Outer.method" inside a method of a class)."""

    kind: str
    name: str
    line: int
    end_line: int
    parent: str


@dataclass(frozen=True)
class LanguageSpec:
    """One configured language: see languages.toml for what each field means."""

    name: str
    extensions: tuple[str, ...]
    grammar: str
    tags: tuple[str, ...]
    imports: str


_BUILTIN = Path(__file__).with_name("languages.toml")


def _spec(name: str, table: Any, where: str) -> LanguageSpec:
    if not isinstance(table, dict):
        raise InvalidInput(f"{where}: [{name}] must be a table")
    unknown = set(table) - {"extensions", "grammar", "tags", "imports"}
    if unknown:
        raise InvalidInput(f"{where}: [{name}] has unknown key(s): {', '.join(sorted(unknown))}")
    ext = table.get("extensions", [])
    tags = table.get("tags", [])
    grammar = table.get("grammar")
    imports = table.get("imports", "")
    if not isinstance(grammar, str) or ":" not in grammar:
        raise InvalidInput(f'{where}: [{name}] grammar must be "package:function"')
    if not (isinstance(ext, list) and all(isinstance(e, str) and e.startswith(".") for e in ext)):
        raise InvalidInput(f'{where}: [{name}] extensions must be a list like [".js"]')
    if isinstance(tags, str):
        tags = [tags]
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)) or not isinstance(imports, str):
        raise InvalidInput(f"{where}: [{name}] tags must be a list of strings and imports a string")
    return LanguageSpec(name, tuple(e.lower() for e in ext), grammar, tuple(tags), imports)


def load_languages(user_file: Path | None = None) -> dict[str, LanguageSpec]:
    """The built-in table, with the user's file (if it exists) adding or replacing languages."""
    specs: dict[str, LanguageSpec] = {}
    for path in (_BUILTIN, user_file):
        if path is None or not path.exists():
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise InvalidInput(f"{path}: cannot be read as TOML: {e}") from None
        for name, table in data.items():
            specs[name] = _spec(name, table, str(path))
    return specs


class _Compiled(NamedTuple):
    language: Any  # tree_sitter.Language
    tags: Any  # tree_sitter.Query
    imports: Any  # tree_sitter.Query | None


def _query_text(ref: str) -> str:
    """A "package:path" reference to a query file shipped in a package, or query text itself."""
    m = re.fullmatch(r"([A-Za-z_][\w.]*):([\w./-]+\.scm)", ref.strip())
    if m is None:
        return ref
    return (importlib.resources.files(m[1]) / m[2]).read_text(encoding="utf-8")


def _compile(spec: LanguageSpec) -> _Compiled:
    import tree_sitter

    package, _, function = spec.grammar.partition(":")
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise InvalidInput(f"language {spec.name}: grammar package {package!r} is not installed") from None
    try:
        language = tree_sitter.Language(getattr(module, function)())
    except (AttributeError, TypeError, ValueError) as e:
        raise InvalidInput(f"language {spec.name}: {spec.grammar} is not a tree-sitter grammar: {e}") from None
    try:
        tags = tree_sitter.Query(language, "\n".join(_query_text(t) for t in spec.tags))
        imports = tree_sitter.Query(language, spec.imports) if spec.imports.strip() else None
    except (OSError, ModuleNotFoundError) as e:
        raise InvalidInput(f"language {spec.name}: a query file cannot be read: {e}") from None
    except (tree_sitter.QueryError, ValueError) as e:
        raise InvalidInput(f"language {spec.name}: a query does not compile: {e}") from None
    return _Compiled(language, tags, imports)


class Parsers:
    """Configured languages, compiled on first use and shared by threads (each thread has its own
    tree-sitter parsers: a parser is not thread-safe, a compiled query is)."""

    def __init__(self, specs: dict[str, LanguageSpec]) -> None:
        self.specs = specs
        self.by_extension = {e: s.name for s in specs.values() for e in s.extensions}
        self.problems: dict[str, str] = {}
        """Languages that cannot be parsed, with why (said once by the indexer, then skipped)."""
        self._compiled: dict[str, _Compiled] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def compiled(self, language: str) -> _Compiled | None:
        got = self._compiled.get(language)
        if got is not None or language not in self.specs or language in self.problems:
            return got
        with self._lock:
            if language not in self._compiled and language not in self.problems:
                try:
                    self._compiled[language] = _compile(self.specs[language])
                except InvalidInput as e:
                    self.problems[language] = str(e)
            return self._compiled.get(language)

    def check(self, languages: set[str]) -> dict[str, str]:
        """Compile these languages now (those configured); the ones that cannot be parsed, with why."""
        for language in languages:
            self.compiled(language)
        return {lang: why for lang, why in self.problems.items() if lang in languages}

    def _parser(self, language: str, compiled: _Compiled) -> Any:
        import tree_sitter

        cache: dict[str, Any] = self._local.__dict__.setdefault("parsers", {})
        parser = cache.get(language)
        if parser is None:
            parser = cache[language] = tree_sitter.Parser(compiled.language)
        return parser

    def parse(self, data: bytes, language: str) -> tuple[list[Symbol], list[str]] | None:
        """Symbols and imports, or None if ``language`` is not one tree-sitter parses here."""
        compiled = self.compiled(language)
        if compiled is None:
            return None
        import tree_sitter

        tree = self._parser(language, compiled).parse(data)
        found: dict[tuple[int, int, str], tuple[int, str, Any]] = {}
        for pattern, captures in tree_sitter.QueryCursor(compiled.tags).matches(tree.root_node):
            names = captures.get("name")
            if not names:
                continue
            for cap, nodes in captures.items():
                if cap.startswith("definition."):
                    node = _widen(nodes[0])
                    key = (node.start_byte, node.end_byte, _text(names[0]))
                    if key not in found or pattern < found[key][0]:  # the first pattern wins (method, not function)
                        found[key] = (pattern, cap[len("definition.") :], node)
        symbols = _nest(found)
        imports: set[str] = set()
        if compiled.imports is not None:
            for found_node in tree_sitter.QueryCursor(compiled.imports).captures(tree.root_node).get("import", []):
                module = _module(_text(found_node))
                if module:
                    imports.add(module)
        return symbols, sorted(imports)


def _text(node: Any) -> str:
    return bytes(node.text or b"").decode("utf-8", "replace")


def _widen(node: Any) -> Any:
    """A C/C++ function's definition is its declarator in the tags query: take the whole function
    (so its lines are the body's, and what is inside it nests under it)."""
    n = node
    while n.parent is not None and n.parent.type.endswith("declarator"):
        n = n.parent
    if n.type.endswith("declarator") and n.parent is not None and n.parent.type == "function_definition":
        return n.parent
    return node


def _nest(found: dict[tuple[int, int, str], tuple[int, str, Any]]) -> list[Symbol]:
    """Symbols in file order, each with the dotted names of the definitions around it."""
    out: list[Symbol] = []
    stack: list[tuple[int, str]] = []  # (end byte, dotted name) of the definitions we are inside
    for (start, end, name), (_, kind, node) in sorted(found.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        while stack and stack[-1][0] <= start:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        first, (last, col) = node.start_point.row, node.end_point
        if col == 0 and last > first:  # a node that ends with its line's newline (a #define) ends on that line
            last -= 1
        out.append(Symbol(kind, name, first + 1, last + 1, parent))
        stack.append((end, f"{parent}.{name}" if parent else name))
    return out


def _module(text: str) -> str:
    """An import's module from its captured text: quotes and <> stripped; a Rust use path up to its
    braces or alias ("std::io::{self, Read}" is std::io)."""
    text = text.strip().strip("\"'<>`")
    if "::" in text or "{" in text or " as " in text:
        m = re.match(r"[\w:]+", text)
        text = m[0].rstrip(":") if m else ""
    return text


# ---- Python: the standard library's own parser --------------------------------------------------


def python_symbols(text: str) -> tuple[list[Symbol], list[str]] | None:
    """Definitions at any depth (functions, methods, classes; variables at module level) and imports
    anywhere in nested statement bodies; None if the file does not parse, or nests deeper than the parser
    goes (a generated ``1+1+...`` expression: RecursionError, MemoryError), which failed the whole index."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    symbols: list[Symbol] = []
    imports: set[str] = set()
    _py_walk(tree.body, "", False, symbols, imports)
    return symbols, sorted(imports)


_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def _py_walk(stmts: list[Any], parent: str, in_class: bool, out: list[Symbol], imports: set[str]) -> None:
    """Statement bodies only: expressions (most of a tree) are never visited."""
    for node in stmts:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            kind = "class" if isinstance(node, ast.ClassDef) else "method" if in_class else "function"
            end = node.end_lineno or node.lineno
            out.append(Symbol(kind, node.name, node.lineno, end, parent))
            qual = f"{parent}.{node.name}" if parent else node.name
            _py_walk(node.body, qual, isinstance(node, ast.ClassDef), out, imports)
        elif isinstance(node, ast.Import):
            imports.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.add("." * node.level + (node.module or ""))
        elif not parent and isinstance(node, ast.Assign):
            line, end = node.lineno, node.end_lineno or node.lineno
            out += [Symbol("variable", t.id, line, end, "") for t in node.targets if isinstance(t, ast.Name)]
        elif not parent and isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.append(Symbol("variable", node.target.id, node.lineno, node.end_lineno or node.lineno, ""))
        else:
            for field in _BODIES:
                sub = getattr(node, field, None)
                if sub:
                    _py_walk(sub, parent, in_class, out, imports)


_PY_DEF = re.compile(r"^(?:async\s+)?def\s+(\w+)|^class\s+(\w+)", re.MULTILINE)
_PY_IMPORT = re.compile(r"^(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", re.MULTILINE)


def python_fallback(text: str) -> tuple[list[Symbol], list[str]]:
    """Top-level definitions of a file with a syntax error (one broken function keeps the rest)."""
    symbols = []
    for m in _PY_DEF.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        symbols.append(Symbol("function" if m[1] else "class", m[1] or m[2], line, line, ""))
    return symbols, sorted({a or b for a, b in _PY_IMPORT.findall(text)})
