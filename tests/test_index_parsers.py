"""The indexer's symbols come from real parsers: a generated tree in seven languages indexed and checked
symbol by symbol (kind, name, lines, parent) against what was generated and against the grammar's own
tags query; a real JavaScript codebase on this machine; languages added by configuration."""

from __future__ import annotations

import importlib
import importlib.resources
import os
import random
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import tree_sitter

from engine import Engine, OperationSpec, Status
from engine.operations._lang import language_of, parsers
from engine.operations._parse import Parsers, load_languages

SEED = int(os.environ.get("OUTLAST_FUZZ_SEED", random.randrange(1 << 30)))

Expected = list[tuple[str, str, int, int, str]]  # kind, name, first line, last line (block-relative), parent
Block = Callable[[Callable[[str], str]], tuple[str, Expected]]


def _js(n: Callable[[str], str]) -> tuple[str, Expected]:
    c, m, f, d = n("C"), n("m"), n("f"), n("decoy")
    text = (
        f"export class {c} {{\n  {m}(a) {{\n    return a;\n  }}\n}}\n"
        f"function {f}() {{\n}}\n// function {d}() {{}}\nconst s{d} = 'function {d}() {{}}';\n"
    )
    return text, [("class", c, 1, 5, ""), ("method", m, 2, 4, c), ("function", f, 6, 7, "")]


def _ts(n: Callable[[str], str]) -> tuple[str, Expected]:
    i, m, c, m2, t = n("I"), n("m"), n("C"), n("m"), n("T")
    text = (
        f"export interface {i} {{\n  {m}(): void;\n}}\n"
        f"export class {c} {{\n  {m2}(): number {{\n    return 1;\n  }}\n}}\ntype {t} = number;\n"
    )
    return text, [
        ("interface", i, 1, 3, ""),
        ("method", m, 2, 2, i),
        ("class", c, 4, 8, ""),
        ("method", m2, 5, 7, c),
        ("type", t, 9, 9, ""),
    ]


def _go(n: Callable[[str], str]) -> tuple[str, Expected]:
    t, m, f, d = n("T"), n("M"), n("f"), n("decoy")
    text = f"type {t} struct{{}}\n\nfunc (x *{t}) {m}() {{\n}}\n\nfunc {f}() {{\n}}\n// func {d}() {{}}\n"
    return text, [("type", t, 1, 1, ""), ("method", m, 3, 4, ""), ("function", f, 6, 7, "")]


def _rust(n: Callable[[str], str]) -> tuple[str, Expected]:
    s, m, f, t = n("S"), n("m"), n("f"), n("T")
    text = f"pub struct {s};\nimpl {s} {{\n    fn {m}(&self) {{}}\n}}\nfn {f}() {{\n}}\ntrait {t} {{}}\n"
    return text, [
        ("class", s, 1, 1, ""),
        ("implementation", s, 2, 4, ""),
        ("method", m, 3, 3, s),
        ("function", f, 5, 6, ""),
        ("interface", t, 7, 7, ""),
    ]


def _java(n: Callable[[str], str]) -> tuple[str, Expected]:
    c, m, i = n("C"), n("m"), n("I")
    text = f"class {c} {{\n  void {m}() {{\n  }}\n  interface {i} {{}}\n}}\n"
    return text, [("class", c, 1, 5, ""), ("method", m, 2, 3, c), ("interface", i, 4, 4, c)]


def _c(n: Callable[[str], str]) -> tuple[str, Expected]:
    s, f, m = n("S"), n("f"), n("M")
    text = f"struct {s} {{ int a; }};\nint {f}(int a) {{\n  return a;\n}}\n#define {m} 1\n"
    return text, [("class", s, 1, 1, ""), ("function", f, 2, 4, ""), ("macro", m, 5, 5, "")]


def _cpp(n: Callable[[str], str]) -> tuple[str, Expected]:
    ns, k, f = n("N"), n("K"), n("f")
    text = f"namespace {ns} {{\nclass {k} {{\n}};\n}}\nint {f}() {{\n  return 0;\n}}\n"
    return text, [("module", ns, 1, 4, ""), ("class", k, 2, 3, ns), ("function", f, 5, 7, "")]


LANGS: dict[str, tuple[str, str, Block]] = {
    # language: (extension, file preamble, block generator)
    "javascript": (".js", "import a from 'alpha';\n", _js),
    "typescript": (".ts", "import { b } from './beta';\n", _ts),
    "go": (".go", 'package p\n\nimport "fmt"\n', _go),
    "rust": (".rs", "use std::collections::HashMap;\n", _rust),
    "java": (".java", "import java.util.Map;\n", _java),
    "c": (".c", "#include <stdio.h>\n", _c),
    "cpp": (".cpp", '#include "gamma.h"\n', _cpp),
}
IMPORTS = {
    "javascript": ["alpha"],
    "typescript": ["./beta"],
    "go": ["fmt"],
    "rust": ["std::collections::HashMap"],
    "java": ["java.util.Map"],
    "c": ["stdio.h"],
    "cpp": ["gamma.h"],
}


def generate(root: Path, rng: random.Random) -> dict[str, set[tuple[str, str, int, int, str]]]:
    """Files of random sizes in every language; the symbols each must give, with absolute lines."""
    expected: dict[str, set[tuple[str, str, int, int, str]]] = {}
    counter = iter(range(10**9))

    def name(prefix: str) -> str:
        return f"{prefix}{rng.randrange(1000)}x{next(counter)}"

    for lang, (ext, preamble, block) in LANGS.items():
        for i in range(rng.randint(1, 3)):
            rel = f"{lang}/f{i}{ext}"
            text, want = preamble, set()
            for _ in range(rng.randint(1, 6)):
                offset = text.count("\n")
                chunk, syms = block(name)
                text += chunk + "\n" * rng.randint(0, 2)
                want |= {(k, nm, a + offset, b + offset, p) for k, nm, a, b, p in syms}
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
            expected[rel] = want
    return expected


async def index(engine: Engine, root: Path, db: Path) -> None:
    op = await engine.submit(OperationSpec(type="codebase_indexing", params={"root": str(root), "output": str(db)}))
    final = await engine.wait(op.id, timeout=120)
    assert final.status is Status.COMPLETED, final.error


def grammar_tags(lang: str, data: bytes) -> set[tuple[str, int]]:
    """(name, first line) of every definition the grammar package's own tags query finds."""
    spec = load_languages()[lang]
    package, _, function = spec.grammar.partition(":")
    language = tree_sitter.Language(getattr(importlib.import_module(package), function)())
    own = (importlib.resources.files(f"tree_sitter_{lang}") / "queries/tags.scm").read_text()
    tree = tree_sitter.Parser(language).parse(data)
    found = set()
    for _, caps in tree_sitter.QueryCursor(tree_sitter.Query(language, own)).matches(tree.root_node):
        if caps.get("name") and any(k.startswith("definition.") for k in caps):
            found.add((caps["name"][0].text.decode(), caps["name"][0].start_point.row + 1))
    return found


async def test_generated_tree_symbol_by_symbol(engine: Engine, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    root = tmp_path / "tree"
    expected = generate(root, rng)
    db = tmp_path / "index.sqlite"
    await index(engine, root, db)
    con = sqlite3.connect(db)
    for rel, want in expected.items():
        got = set(con.execute("SELECT kind, name, line, end_line, parent FROM symbols WHERE path=?", (rel,)))
        assert got == want, f"seed {SEED}: {rel}: missing {want - got}, unexpected {got - want}"
        lang = rel.split("/")[0]
        imports = [m for (m,) in con.execute("SELECT module FROM imports WHERE path=? ORDER BY 1", (rel,))]
        assert imports == IMPORTS[lang], f"seed {SEED}: {rel}"
        # Everything the grammar's own tags query calls a definition is in the index, at the same line
        # (the configuration only adds to it).
        own = grammar_tags(lang if lang != "typescript" else "javascript", (root / rel).read_bytes())
        assert own <= {(nm, line) for _, nm, line, _, _ in got}, f"seed {SEED}: {rel}"
    assert not con.execute("SELECT name FROM symbols WHERE name LIKE 'decoy%'").fetchall()  # comments, strings


def _npm_lib() -> Path | None:
    """A large real JavaScript codebase installed on this machine: npm's own lib/, if npm is here."""
    npm = shutil.which("npm")
    if npm is None:
        return None
    lib = Path(npm).resolve().parent.parent / "lib"
    return lib if lib.is_dir() and any(lib.rglob("*.js")) else None


async def test_real_javascript_codebase(engine: Engine, tmp_path: Path) -> None:
    lib = _npm_lib()
    if lib is None:
        pytest.skip("no npm installation with a lib/ of JavaScript on this machine")
    db = tmp_path / "npm.sqlite"
    await index(engine, lib, db)
    con = sqlite3.connect(db)
    files = con.execute("SELECT COUNT(*) FROM files WHERE language='javascript'").fetchone()[0]
    kinds = dict(con.execute("SELECT kind, COUNT(*) FROM symbols GROUP BY kind").fetchall())
    print(f"\nnpm lib/: {files} JavaScript files, symbols by kind {kinds}, {sum(kinds.values()) / files:.1f} per file")
    assert files > 20
    assert kinds.get("method", 0) > files  # npm's commands are classes with methods: regexes found none
    assert set(kinds) <= {"class", "method", "function", "constant"}  # no "var" noise
    # Every method sits in a class (the index knows where each definition lives).
    orphans = con.execute("SELECT COUNT(*) FROM symbols WHERE kind='method' AND parent=''").fetchone()[0]
    assert orphans == 0


def test_a_language_added_by_configuration(tmp_path: Path) -> None:
    """A user's languages.toml maps a new extension to an installed grammar: no code changes."""
    user = tmp_path / "languages.toml"
    user.write_text(
        '[es6]\nextensions = [".es6"]\ngrammar = "tree_sitter_javascript:language"\n'
        'tags = ["tree_sitter_javascript:queries/tags.scm"]\n'
        'imports = "(import_statement source: (string (string_fragment) @import))"\n'
    )
    p = Parsers(load_languages(user))
    assert p.by_extension[".es6"] == "es6"
    syms, imps = p.parse(b"import x from 'y';\nclass A { b() {} }\n", "es6") or ([], [])
    assert [(s.kind, s.name, s.parent) for s in syms] == [("class", "A", ""), ("method", "b", "A")]
    assert imps == ["y"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[x\n", "cannot be read as TOML"),
        ('[x]\ngrammar = "nope"\n', 'grammar must be "package:function"'),
        ('[x]\ngrammar = "tree_sitter_javascript:language"\ncolour = 1\n', "unknown key(s): colour"),
        ('[x]\ngrammar = "a:b"\nextensions = ["js"]\n', "extensions must be a list"),
    ],
)
def test_a_wrong_user_file_is_one_line(tmp_path: Path, text: str, says: str) -> None:
    user = tmp_path / "languages.toml"
    user.write_text(text)
    with pytest.raises(Exception) as e:
        load_languages(user)
    assert says in str(e.value) and str(user) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('grammar = "no_such_grammar_pkg:language"', "grammar package 'no_such_grammar_pkg' is not installed"),
        ('grammar = "tree_sitter_javascript:language"\ntags = ["(no_such_node) @x"]', "a query does not compile"),
    ],
)
def test_a_grammar_that_cannot_load_gives_no_symbols_and_says_why(tmp_path: Path, table: str, says: str) -> None:
    user = tmp_path / "languages.toml"
    user.write_text(f'[x]\nextensions = [".xx"]\n{table}\n')
    p = Parsers(load_languages(user))
    assert p.parse(b"class A {}", "x") is None
    assert says in p.problems["x"]
    assert p.parse(b"class A {}\n", "javascript") is not None  # the others still work


def test_process_parsers_are_the_configured_ones() -> None:
    assert set(LANGS) <= set(parsers().specs) and not parsers().problems
    assert language_of("a/b.tsx") == "tsx" and language_of("x.hxx") == "cpp"
