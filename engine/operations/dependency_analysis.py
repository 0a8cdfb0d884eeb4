"""dependency_analysis: a Python project's import graph, import cycles, and declared vs used dependencies.

1. Per file (resumable, batches committed to SQLite like code_analysis): every ``import`` of every ``.py``
   file through ``ast``, relative imports resolved, with its line and whether it runs at import time
   (module level, not under ``if TYPE_CHECKING:``) or later (inside a function, or for type checkers only).
2. Then, from the database: each import is internal (a module of the project), stdlib, or external;
   the internal graph's import-time cycles (strongly connected components, Tarjan); the declared
   requirements (``pyproject.toml``'s ``[project]`` dependencies and optional dependencies,
   ``requirements*.txt``), parsed with ``packaging`` as pip reads them; and for each declared or used
   distribution, its installed version and licence from ``importlib.metadata`` (the environment Outlast
   runs in), so that undeclared imports and declared-but-never-imported requirements stand out.

Modules are named from their path under the source root (``src/`` when the project uses that layout,
else the root; ``source_root`` to choose); one under a directory no import can name (``sub dir``, ``my-tool``)
from that directory, its import root, before a colon (``sub dir:_compat``: see ``module_name``). The database
has tables ``modules``, ``imports``, ``packages``.
"""

from __future__ import annotations

import ast
import asyncio
import json
import keyword
import os
import re
import sqlite3
import stat
import sys
import time
import tomllib
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..context import OperationContext
from ..registry import operation
from ..text import stored_name
from ._common import SQLITE_MAGIC, NotInTree, check_output_file, existing_dir, not_regular, open_in_tree
from ._results_db import check_kind, db_path, exclusive, lacking, open_db, pending_items
from ._walk import list_files, own_files

BATCH = 128
BATCH_SECONDS = 1.0
"""A batch ends sooner once it has taken this long: a stop waits for the batch at most that."""
LIST_MAX = 50
SCHEMA = """
CREATE TABLE IF NOT EXISTS modules (path TEXT PRIMARY KEY, module TEXT, seen TEXT);
CREATE INDEX IF NOT EXISTS modules_module ON modules(module);
CREATE TABLE IF NOT EXISTS imports (
    path TEXT, module TEXT, target TEXT, line INTEGER, import_time INTEGER, kind TEXT,
    PRIMARY KEY (path, target, line)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS imports_target ON imports(target);
CREATE TABLE IF NOT EXISTS packages (
    name TEXT PRIMARY KEY, declared TEXT, declared_in TEXT, imported_as TEXT, version TEXT, license TEXT
);
CREATE TABLE IF NOT EXISTS cycles (id INTEGER, module TEXT, PRIMARY KEY (id, module)) WITHOUT ROWID;
"""
_REQ_FILE = re.compile(r"^requirements[\w.-]*\.(txt|in)$")


def _check_output(value: str | None) -> str | None:
    """A results database of dependency_analysis, or none yet (see ``check_kind``)."""
    return check_kind(value, "output", "dependency_analysis", schema=SCHEMA)


class DependencyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="the project's directory (with pyproject.toml or requirements*.txt)")
    source_root: str | None = Field(
        default=None, description="where module names start (default: src/ if any, else root)"
    )
    exclude: list[str] = Field(default_factory=list, description="glob patterns of files to leave out")
    output: str | None = Field(default=None, description="SQLite database path (default: in the state dir)")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return existing_dir(v, "root")

    @field_validator("output")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        return _check_output(check_output_file(v, "output", SQLITE_MAGIC, "an SQLite database"))

    @model_validator(mode="after")
    def _source(self) -> DependencyParams:
        if self.source_root is not None:
            p = Path(self.root, self.source_root).resolve()
            if not p.is_dir() or not p.is_relative_to(self.root):
                raise ValueError(f"source_root {self.source_root!r} is not a directory inside root")
            self.source_root = str(p)
        return self


def _importable(part: str) -> bool:
    return part.isidentifier() and not keyword.iskeyword(part)


def module_name(rel: Path) -> str:
    """``pkg/sub/mod.py`` -> ``pkg.sub.mod``; ``pkg/__init__.py`` -> ``pkg``.

    A directory no import can name (``sub dir``, ``my-tool``, ``v1.2``) is no package: the files under it
    are reached only with it on ``sys.path`` (run as scripts there), so the deepest such directory is their
    import root, named before a colon: ``sub dir/_compat.py`` -> ``sub dir:_compat``, ``my-tool/pkg/mod.py``
    -> ``my-tool:pkg.mod``. (They were ``sub dir._compat``: a dotted name no Python can import, read as a
    package ``sub dir``.)"""
    dirs = rel.parent.parts
    cut = max((i + 1 for i, d in enumerate(dirs) if not _importable(d)), default=0)
    parts = list(rel.with_suffix("").parts[cut:])
    if parts and parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    dotted = ".".join(parts)
    return f"{'/'.join(dirs[:cut])}:{dotted}" if cut else dotted


def split_root(module: str) -> tuple[str, str]:
    """(``"sub dir:"``, ``"pkg.mod"``) for ``sub dir:pkg.mod``; (``""``, ``module``) for a dotted name (see
    ``module_name``: the dotted part has no colon, so the last one ends the import root's)."""
    at = module.rfind(":")
    return module[: at + 1], module[at + 1 :]


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


_IMPORTERS = frozenset({"import_module", "__import__", "importorskip"})
"""Calls that import the module their first argument names: ``importlib.import_module("x")``,
``__import__("x")``, ``pytest.importorskip("x")`` (how a test suite uses an optional requirement)."""


def _named_imports(node: ast.stmt) -> Iterator[tuple[str, int]]:
    """(module, line) of each call of _IMPORTERS with a literal absolute name in ``node``'s own expressions
    (not those of the statements it holds: ``imports_of`` visits them, each with its own import time)."""
    todo = [c for c in ast.iter_child_nodes(node) if not isinstance(c, ast.stmt)]
    while todo:
        n = todo.pop()
        todo += [c for c in ast.iter_child_nodes(n) if not isinstance(c, ast.stmt)]
        if not isinstance(n, ast.Call) or not n.args:
            continue
        f, first = n.func, n.args[0]
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        literal = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
        if name in _IMPORTERS and literal and all(_importable(p) for p in literal.split(".")):
            yield literal, n.lineno


def imports_of(tree: ast.Module, module: str, is_package: bool, by_name: bool = True) -> list[tuple[str, int, bool]]:
    """(absolute target, line, at import time) of every import in ``tree``; ``from a import b`` gives
    ``a.b`` (a submodule or a name in ``a``: resolved against the project's modules later). ``by_name=False``:
    the source names none of _IMPORTERS, so no expression is looked into for them (a walk of every expression
    took most of the time of this function)."""
    out: list[tuple[str, int, bool]] = []
    root, dotted = split_root(module)  # relative imports stay under the file's import root
    package = dotted if is_package else dotted.rpartition(".")[0]

    def visit(stmts: Iterable[ast.stmt], now: bool) -> None:
        for node in stmts:
            if by_name:
                out.extend((name, line, now) for name, line in _named_imports(node))
            if isinstance(node, ast.Import):
                out.extend((a.name, node.lineno, now) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".") if package else []
                    up = node.level - 1
                    if up > len(parts):
                        continue  # beyond the top: Python would raise; nothing to resolve
                    anchor = ".".join(parts[: len(parts) - up])
                    base = f"{anchor}.{base}".strip(".") if base else anchor
                    base = f"{root}{base}" if base else base
                for a in node.names:
                    out.append((f"{base}.{a.name}" if a.name != "*" and base else base, node.lineno, now))
            elif isinstance(node, ast.If):
                visit(node.body, now and not _type_checking(node.test))
                visit(node.orelse, now)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(node.body, False)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, now)
            else:
                for field in ("body", "orelse", "finalbody"):  # for, while, with, try
                    visit(getattr(node, field, []), now)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body, now)
                if isinstance(node, ast.Match):
                    for case in node.cases:
                        visit(case.body, now)

    visit(tree.body, True)
    return [(t, ln, now) for t, ln, now in out if t]


def _analyze(src_root: Path, root: Path, rel: str) -> tuple[str, Any]:
    """("ok", (module, imports)), ("skip", reason) or ("fail", message)."""
    p = root / rel
    try:
        mode = os.lstat(p).st_mode
        if not stat.S_ISREG(mode):
            return "skip", not_regular(p, mode)
        fh, _st = open_in_tree(root, rel)
        with fh:
            data = fh.read()
    except FileNotFoundError:
        return "skip", "gone since the listing"
    except NotInTree as e:
        return "skip", str(e)
    except OSError as e:
        return "fail", f"unreadable: {e.strerror or e}"
    try:
        tree = ast.parse(data, filename=rel)
    except (SyntaxError, ValueError) as e:  # test data, Python 2, templates: skipped and counted, not a failure
        return "skip", f"does not parse: {getattr(e, 'msg', e)} (line {getattr(e, 'lineno', '?')})"
    except RecursionError:
        return "skip", "does not parse: nested too deeply"
    mod_rel = p.relative_to(src_root) if p.is_relative_to(src_root) else Path(rel)
    module = module_name(mod_rel)
    by_name = any(name.encode() in data for name in _IMPORTERS)
    return "ok", (module, imports_of(tree, module, mod_rel.name == "__init__.py", by_name))


def _process_batch(
    con: sqlite3.Connection, src_root: Path, root: Path, rels: list[str], seen: str
) -> list[tuple[str, str, str | None]]:
    """Parse and store the first files of ``rels`` (up to BATCH_SECONDS) in one transaction; (path, outcome,
    reason) per file parsed. The database names file ``rel`` ``stored_name(rel)``, and so its module and the
    imports resolved against it: a name's bytes that are not UTF-8 as ``\\xNN`` (TEXT stores text only), a
    backslash doubled (two files never share a name, nor two modules)."""
    out: list[tuple[str, str, str | None]] = []
    mods: list[tuple[str, str, str]] = []
    imps: list[tuple[str, str, str, int, int]] = []
    end = time.monotonic() + BATCH_SECONDS
    for rel in rels:
        if out and time.monotonic() > end:
            break
        outcome, got = _analyze(src_root, root, rel)
        if outcome == "ok":
            module, found = got
            name, module = stored_name(rel), stored_name(module)
            mods.append((name, module, seen))
            imps += [(name, module, stored_name(t), ln, int(now)) for t, ln, now in found]
            out.append((rel, "ok", None))
        else:
            out.append((rel, outcome, got))
    with con:
        gone = [(stored_name(r),) for r, _o, _w in out]
        con.executemany("DELETE FROM modules WHERE path=?", gone)
        con.executemany("DELETE FROM imports WHERE path=?", gone)
        con.executemany("INSERT INTO modules VALUES (?,?,?)", mods)
        sql = "INSERT OR IGNORE INTO imports (path, module, target, line, import_time) VALUES (?,?,?,?,?)"
        con.executemany(sql, imps)
    return out


# ---- declared requirements, installed distributions ---------------------------------------------------


def declared_requirements(root: Path) -> tuple[dict[str, tuple[str, str]], list[str], str | None]:
    """{canonical name: (specifier as written, where)}, the problems met, and the project's own name."""
    from packaging.requirements import InvalidRequirement, Requirement  # here: every CLI start imports this module
    from packaging.utils import canonicalize_name

    found: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    own: str | None = None

    def add(text: str, where: str) -> None:
        try:
            req = Requirement(text)
        except InvalidRequirement as e:
            problems.append(f"{where}: {text!r}: {e}")
            return
        found.setdefault(canonicalize_name(req.name), (str(req), where))

    py = root / "pyproject.toml"
    if py.is_file():
        try:
            project = tomllib.loads(py.read_text("utf-8")).get("project", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
            problems.append(f"pyproject.toml: {e}")
            project = {}
        own = project.get("name")
        for text in project.get("dependencies", []) or []:
            add(text, "pyproject.toml")
        for extra, reqs in (project.get("optional-dependencies", {}) or {}).items():
            for text in reqs or []:
                add(text, f"pyproject.toml [{extra}]")
    for f in sorted(root.iterdir()) if root.is_dir() else []:
        if f.is_file() and _REQ_FILE.match(f.name):
            for raw in f.read_text("utf-8", "replace").splitlines():
                line = raw.split(" #", 1)[0].strip()
                if line and not line.startswith(("#", "-")):  # -r, -e, --index-url: options, not requirements
                    add(line, f.name)
    return found, problems, own


def _licence(md: Any) -> str | None:
    """License-Expression, else a short License field, else the License classifiers."""
    expr = md.get("License-Expression")
    if expr:
        return str(expr)
    text = (md.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 80 and text.upper() != "UNKNOWN":
        return text
    classifiers = [c.rsplit(" :: ", 1)[-1] for c in md.get_all("Classifier") or [] if c.startswith("License ::")]
    return ", ".join(classifiers) or (text.splitlines()[0][:80] if text else None)


def installed(name: str) -> tuple[str | None, str | None]:
    """(version, licence) of an installed distribution, (None, None) when it is not installed."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None, None
    return dist.version, _licence(dist.metadata)


# ---- the graph -------------------------------------------------------------------------------------


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def _finish(con: sqlite3.Connection, root: Path, seen: str, listed: set[str]) -> dict[str, Any]:
    """Classify the imports, find cycles, compare declared with used; the summary.

    First drop the files this run did not parse, and those not in the tree now (``listed``: the stored
    names of this attempt's listing): a file an earlier attempt parsed, renamed or deleted since, was
    counted twice or as still there."""
    from packaging.utils import canonicalize_name

    with con:
        gone = [path for path, by in con.execute("SELECT path, seen FROM modules") if by != seen or path not in listed]
        con.executemany("DELETE FROM modules WHERE path=?", [(g,) for g in gone])
        con.executemany("DELETE FROM imports WHERE path=?", [(g,) for g in gone])
    modules = {m for (m,) in con.execute("SELECT module FROM modules")}
    tops: dict[str, set[str]] = {}  # import root ("" for the source root's) -> its top-level names
    for m in modules:
        at, dotted = split_root(m)
        tops.setdefault(at, set()).add(dotted.split(".")[0])

    def internal(target: str, module: str) -> str | None:
        """The project module ``target`` names (itself, or the module it takes a name from); a script's
        ``import sibling`` finds the module beside it (its directory, not a package, is first on sys.path).
        A module under an import root of its own (``sub dir:x``) finds its root's modules first, then the
        source root's (the project installed)."""
        at, dotted = split_root(module)
        beside = dotted.rpartition(".")[0]
        if f"{at}{beside}" in modules:
            beside = ""  # inside a package: imports are absolute
        tried = [(at, target), (at, f"{beside}.{target}" if beside else "")]
        if at:
            tried.append(("", target))
        if ":" in target:  # a relative import, resolved under its import root already
            tried = [split_root(target)]
        for where, name in tried:
            while name:
                if f"{where}{name}" in modules:
                    return f"{where}{name}"
                name = name.rpartition(".")[0]
                if beside and where == at and name == beside:
                    break
        return None

    kinds: list[tuple[str, str, str, int]] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    external: dict[str, set[str]] = {}
    for path, module, target, line, now in con.execute("SELECT path, module, target, line, import_time FROM imports"):
        top = target.split(".")[0]
        hit = internal(target, module)
        mine = tops.get(split_root(module)[0], set())
        if hit is not None or ":" in target or top in tops.get("", ()) or top in mine:
            kind = "internal"
            if hit is not None and hit != module and now:
                graph[module].add(hit)
        elif top in sys.stdlib_module_names or top == "__future__":
            kind = "stdlib"
        else:
            kind = "external"
            external.setdefault(top, set()).add(path)
        kinds.append((kind, path, target, line))
    found = cycles(graph)
    declared, problems, own_name = declared_requirements(root)
    dists_of = metadata.packages_distributions()
    used: dict[str, set[str]] = {}  # distribution -> import names
    unknown: list[str] = []
    for top in sorted(external):
        names = dists_of.get(top)
        if not names:
            unknown.append(top)
            used.setdefault(canonicalize_name(top), set()).add(top)
        for n in names or []:
            used.setdefault(canonicalize_name(n), set()).add(top)
    if own_name:
        used.pop(canonicalize_name(own_name), None)
    rows = []
    for name in sorted(set(declared) | set(used)):
        version, lic = installed(name)
        spec, where = declared.get(name, (None, None))
        rows.append((name, spec, where, ",".join(sorted(used.get(name, ()))) or None, version, lic))
    with con:
        con.executemany("UPDATE imports SET kind=? WHERE path=? AND target=? AND line=?", kinds)
        con.execute("DELETE FROM packages")
        con.executemany("INSERT INTO packages VALUES (?,?,?,?,?,?)", rows)
        con.execute("DELETE FROM cycles")
        con.executemany("INSERT INTO cycles VALUES (?,?)", [(i, m) for i, c in enumerate(found) for m in c])
    counts = dict(con.execute("SELECT kind, COUNT(*) FROM imports GROUP BY kind ORDER BY kind"))
    undeclared = [r[0] for r in rows if r[1] is None and r[0] in used]
    unused = [r[0] for r in rows if r[1] is not None and r[0] not in used]
    return {
        "modules": len(modules),
        "imports": counts,
        "internal_edges": sum(len(v) for v in graph.values()),
        "cycles": len(found),
        "cycle_list": found[:LIST_MAX],
        "external": sorted(external),
        "declared": len(declared),
        "undeclared": undeclared,
        "declared_not_imported": unused,
        "not_installed": [r[0] for r in rows if r[4] is None],
        "not_importable": unknown,
        "packages": {r[0]: {"version": r[4], "license": r[5], "declared": r[1], "imported_as": r[3]} for r in rows},
        "problems": problems,
        "removed": len(gone),
    }


@operation(
    "dependency_analysis", params=DependencyParams, description="import graph, cycles, declared vs used dependencies"
)
async def analyze_dependencies(ctx: OperationContext, p: DependencyParams) -> dict[str, Any]:
    """Parse every Python file's imports (per file, resumable), then build the graph and compare."""
    root = Path(p.root)
    src = Path(p.source_root) if p.source_root else (root / "src" if (root / "src").is_dir() else root)
    db = db_path(ctx, p.output, "dependencies", p.root)
    ctx.progress(step="listing files")
    with exclusive(db, _check_output):
        summary = await _analyze_into(ctx, p, db, root, src)
    for line in summary["problems"]:
        ctx.log.warning(line)
    if summary["cycles"]:
        ctx.log.warning(f"{summary['cycles']} import cycle(s): " + json.dumps(summary["cycle_list"][:3]))
    return {"database": db, "failures": ctx.failures, "skipped": ctx.state.get("skipped", 0), **summary}


async def _analyze_into(ctx: OperationContext, p: DependencyParams, db: str, root: Path, src: Path) -> dict[str, Any]:
    con = await asyncio.to_thread(
        open_db, db, SCHEMA, {"kind": "dependency_analysis", "root": p.root, "source_root": str(src)}
    )
    try:
        files = await list_files(ctx, root, ["*.py"], p.exclude, own_files(db))
        ctx.progress(total=len(files), step="parsing imports")
        pending = await pending_items(ctx, con, db, files, root, lacking("SELECT path FROM modules", stored_name))
        i = 0
        while i < len(pending):
            results = await asyncio.to_thread(_process_batch, con, src, root, pending[i : i + BATCH], ctx.id)
            i += len(results)
            async for rel, outcome, why in ctx.items(results, key=lambda r: r[0]):
                if outcome == "fail":
                    ctx.fail(rel, why or "failed")
                elif outcome == "skip":
                    ctx.skip(rel, why)
                    ctx.advance()  # looked at: a completed run is at 100%, skips or not
                    ctx.state["skipped"] = ctx.state.get("skipped", 0) + 1
                    if why and why.startswith("does not parse") and ctx.state["skipped"] <= 3:
                        ctx.log.info(f"skipped {rel}: {why}")
                else:
                    ctx.step = rel
        ctx.progress(step="graph and metadata")
        return await asyncio.to_thread(_finish, con, root, ctx.id, {stored_name(f) for f in files})
    finally:
        await asyncio.to_thread(con.close)
