"""File listing shared by indexing and scanning: git's view of a work tree, else a walk that reads
.gitignore files as git does (pathspec's gitignore flavour, nested files taking precedence)."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pathspec import GitIgnoreSpec

from ._common import skipped_dir, skipped_path

Rules = list[tuple[str, GitIgnoreSpec]]
"""The .gitignore files that apply in a directory: (the directory's prefix, its patterns), outermost first."""


MAX_WILDCARDS = 4
"""Wildcards (``*``, a run of them counting as one) one path segment of a gitignore pattern may hold: matched
as pathspec compiles it, a name of 255 characters took 0.2 s against ``*a*a*a*b``, 15 s against ``*a*a*a*a*b``,
and minutes against one more."""


def tamed(line: str) -> tuple[str, int]:
    """A gitignore pattern with each run of ``*`` inside a path segment made one ``*`` (the same pattern to
    git: consecutive asterisks are regular ones, but for a whole ``**`` segment), and the most wildcards
    any one of its segments holds. pathspec compiles each ``*`` to ``[^/]*``: a .gitignore line of fifty
    stars and a ``b`` took hours on every name of twenty characters, and the walk never ended."""
    out: list[str] = []
    most = 0
    for segment in line.split("/"):
        if segment in ("**", "!**"):
            out.append(segment)
            continue
        kept: list[str] = []
        runs, i = 0, 0
        while i < len(segment):
            c = segment[i]
            if c == "\\":  # an escaped character, a literal star among them
                kept.append(segment[i : i + 2])
                i += 2
            elif c == "*":
                while i < len(segment) and segment[i] == "*":
                    i += 1
                kept.append("*")
                runs += 1
            else:
                kept.append(c)
                i += 1
        most = max(most, runs)
        out.append("".join(kept))
    return "/".join(out), most


def _ignore_rules(directory: Path) -> GitIgnoreSpec | None:
    """The patterns of ``directory``'s .gitignore, read as git reads them (pathspec's gitignore flavour); a
    line with more than ``MAX_WILDCARDS`` wildcards in one segment is passed over, as one git takes as no
    pattern is (matching it against a long name could take hours: the walk would never end)."""
    try:
        text = (directory / ".gitignore").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    lines = [line for line, most in map(tamed, text.splitlines()) if most <= MAX_WILDCARDS]
    try:
        spec = GitIgnoreSpec.from_lines(lines)
    except ValueError:  # a line git takes as no pattern ("!", a trailing "\\"): git passes over it, so do we
        spec = GitIgnoreSpec.from_lines([ln for ln in lines if _valid_pattern(ln)])
    return spec if len(spec) else None


def _valid_pattern(line: str) -> bool:
    try:
        GitIgnoreSpec.from_lines([line])
    except ValueError:
        return False
    return True


def _ignored(rel: str, is_dir: bool, rules: Rules) -> bool:
    """Git's precedence: a deeper .gitignore decides before its parents; in a file the last match wins."""
    for prefix, spec in reversed(rules):
        decided = _decide(spec, rel[len(prefix) :], is_dir)
        if decided is not None:
            return decided
    return False


def _decide(spec: GitIgnoreSpec, path: str, is_dir: bool) -> bool | None:
    """Whether ``spec`` ignores ``path`` itself (True), re-includes it (False) or says nothing (None).

    A pathspec pattern also matches everything below a directory it matches (its ``ps_d`` group
    marks where). The walk never enters an ignored directory, so only a match of the path itself
    counts here: "!keep" must not re-include "keep/a.py" that "*.py" ignores, as git does not.
    """
    for pattern in reversed(spec.patterns):
        if pattern.include is None or pattern.regex is None:
            continue
        if _own_match(pattern.regex, path) or (is_dir and _own_match(pattern.regex, path + "/", at_end=True)):
            return bool(pattern.include)
    return None


def _own_match(regex: re.Pattern[str], text: str, at_end: bool = False) -> bool:
    """``regex`` matches ``text`` itself: with no directory mark (``ps_d``: a match of a parent
    directory), or, ``at_end``, with the mark on the trailing slash (a directory-only pattern)."""
    for m in regex.finditer(text):  # an unanchored "**/" matches at each slash: the last may be ours
        mark = m.groupdict().get("ps_d")
        if (mark is not None and m.start("ps_d") == len(text) - 1) if at_end else mark is None:
            return True
    return False


Walked = tuple[str, list[str], list[str]]
"""What ``walk`` yields for a directory, as ``os.walk`` does: (its path, its subdirectories, its other names)."""


def walk(top: str | Path, topdown: bool = True, onerror: Callable[[OSError], None] | None = None) -> Iterator[Walked]:
    """``os.walk(top, topdown, onerror)`` (symlinks to directories listed, not followed), with an explicit stack.

    Python 3.11's ``os.walk`` recurses once per level, so a tree deeper than the recursion limit (1,000
    nested directories: a 2,000-byte path) failed with RecursionError. This is 3.12's iterative version: the
    same order, the same names, the same errors; top-down, the caller may prune ``dirs`` in place.
    """
    stack: list[str | Walked] = [os.fspath(top)]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):  # bottom-up: a directory whose subdirectories have all been yielded
            yield item
            continue
        dirs: list[str] = []
        nondirs: list[str] = []
        walk_dirs: list[str] = []
        try:
            entries = os.scandir(item)
        except OSError as e:
            if onerror is not None:
                onerror(e)
            continue
        with entries:
            try:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    (dirs if is_dir else nondirs).append(entry.name)
                    if not topdown and is_dir:
                        try:
                            link = entry.is_symlink()
                        except OSError:
                            link = False
                        if not link:
                            walk_dirs.append(entry.path)
            except OSError as e:  # the listing failed part way: the directory is left out, as os.walk does
                if onerror is not None:
                    onerror(e)
                continue
        if topdown:
            yield item, dirs, nondirs
            for name in reversed(dirs):
                path = os.path.join(item, name)
                if not os.path.islink(path):
                    stack.append(path)
        else:
            stack.append((item, dirs, nondirs))
            stack.extend(reversed(walk_dirs))


def walked_rel(path: str, top: str | Path) -> str:
    """``path``, which ``walk(top)`` yielded (so it begins with ``top`` as given), relative to ``top`` as a POSIX
    path; "." for ``top`` itself. By string: from Python 3.12 ``Path.relative_to`` compares the other path with
    every parent of this one (20 ms a call 1,200 directories deep, 2,000 times 3.11's), and a walk calling it
    for each directory of a deep tree took minutes."""
    t = os.fspath(top)
    if path == t:
        return "."
    if not path.startswith(t) or not (t.endswith("/") or path[len(t)] == "/"):
        raise ValueError(f"{path!r} is not under {t!r}")
    return path[len(t) :].lstrip("/")


def walk_listing(root: Path, unreadable: list[str]) -> list[str]:
    """Every file under root but SKIP_DIRS (a package named ``venv`` excepted), virtualenvs and what the
    .gitignore files (at any depth) ignore: ``list_files``' listing where git gives none (the tests hold it to
    git's own on generated trees).

    A directory that cannot be listed is left out and named in ``unreadable`` (with why): one
    unreadable directory must not fail the whole listing.
    """
    top = _ignore_rules(root)
    rules_of: dict[str, Rules] = {"": [("", top)] if top else []}
    out: list[str] = []

    def cannot_read(e: OSError) -> None:
        where = walked_rel(os.fsdecode(e.filename), root) if e.filename else "?"
        unreadable.append(f"{where}: {e.strerror or e}")

    for d, dirs, files in walk(root, onerror=cannot_read):
        base = Path(d)
        rel_d = walked_rel(d, root)
        prefix = "" if rel_d == "." else rel_d + "/"
        rules = rules_of.pop(prefix, [])
        dirs[:] = [x for x in dirs if not skipped_dir(base / x) and not _ignored(prefix + x, True, rules)]
        for x in dirs:
            spec = _ignore_rules(base / x)
            rules_of[prefix + x + "/"] = [*rules, (prefix + x + "/", spec)] if spec else rules
        out += [prefix + f for f in files if not _ignored(prefix + f, False, rules)]
    return out


def own_files(*paths: str | Path) -> list[str]:
    """What an operation writes for each of ``paths``: the file, and SQLite's journals and the temporary
    file of an atomic write beside it (for ``list_files``'s ``leave_out``)."""
    out: list[str] = []
    for p in map(str, paths):
        head, name = os.path.split(p)
        out += [p, f"{p}-wal", f"{p}-shm", f"{p}-journal", os.path.join(head, f".{name}.partial")]
    return out


async def list_files(
    ctx: Any, root: Path, patterns: list[str], exclude: list[str], leave_out: list[str] | None = None
) -> list[str]:
    """Relative POSIX paths of the files under ``root`` to look at, sorted; never one of ``leave_out``
    (absolute paths: the operation's own output inside the tree, which it would read while writing it)."""
    files: list[str] | None = None
    # Inside any git work tree (root itself or a folder of one), git's own view: it also honours the
    # parents' .gitignore files, .git/info/exclude and core.excludesFile. An empty answer (root is
    # itself ignored, or outside a work tree) falls back to the walk.
    if shutil.which("git"):
        proc = await ctx.spawn(
            "git",
            "-C",
            str(root),
            "ls-files",
            "-co",
            "--exclude-standard",
            "-z",
            "-t",  # each path after its status tag and a space: "S " is a file a sparse checkout left out
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            # Once each: git lists a file with a merge conflict once per stage (three times mid-merge), and
            # an item key twice is a duplicate row in every store an operation writes. Not the files a sparse
            # checkout leaves out of the work tree: each was "skipped: gone since the listing", one log line
            # apiece (most of a monorepo's files).
            tagged = [f for f in out.decode("utf-8", "surrogateescape").split("\0") if f]
            present = [f[2:] for f in tagged if not f.startswith("S ")]
            files = list(dict.fromkeys(present))
            if sparse := len(tagged) - len(present):
                ctx.log.info(f"{sparse} file(s) outside this sparse checkout's work tree left out")
            venvs = tuple(f[: -len("pyvenv.cfg")] for f in files if f.endswith("/pyvenv.cfg"))
            listed = frozenset(files)
            files = [f for f in files if not skipped_path(f, listed) and not f.startswith(venvs)]
    if not files:
        unreadable: list[str] = []
        files = await asyncio.to_thread(walk_listing, root, unreadable)
        if unreadable:
            n = len(unreadable)
            ctx.metrics["unreadable_dirs"] = n
            more = f" (and {n - 1} more)" if n > 1 else ""
            ctx.log.warning(f"skipped {n} unreadable director{'y' if n == 1 else 'ies'}: {unreadable[0]}{more}")
    if patterns:
        files = [
            f for f in files if any(fnmatch.fnmatch(f, p) or fnmatch.fnmatch(f.rsplit("/", 1)[-1], p) for p in patterns)
        ]
    if exclude:
        files = [
            f
            for f in files
            if not any(fnmatch.fnmatch(f, p) or fnmatch.fnmatch(f.rsplit("/", 1)[-1], p) for p in exclude)
        ]
    if leave_out:
        base = os.path.join(os.path.realpath(root), "")
        own = {p[len(base) :] for p in map(os.path.realpath, leave_out) if p.startswith(base)}
        files = [f for f in files if f not in own]
    return sorted(files)
