"""File listing shared by indexing and scanning: git's view of a work tree, else a walk with .gitignore rules."""

from __future__ import annotations

import asyncio
import fnmatch
import os
from pathlib import Path
from typing import Any

from ._common import SKIP_DIRS, is_venv

Rule = tuple[str, str, bool, bool, bool]
"""(directory prefix the rule is relative to, pattern, anchored, negated, directory only)"""


def _ignore_rules(directory: Path, prefix: str) -> list[Rule]:
    """The rules of ``directory``'s .gitignore, if it has one: a reasonable subset of gitignore syntax."""
    try:
        text = (directory / ".gitignore").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    rules: list[Rule] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        line = line.lstrip("!")
        dir_only = line.endswith("/")
        pat = line.strip("/")
        # A slash at the start or inside anchors the pattern to the .gitignore's directory; "**/name" does not.
        anchored = line.startswith("/") or "/" in pat
        if pat.startswith("**/") and "/" not in pat[3:]:
            pat, anchored = pat[3:], False
        rules.append((prefix, pat, anchored, neg, dir_only))
    return rules


def _ignored(rel: str, is_dir: bool, rules: list[Rule]) -> bool:
    """The last rule that matches decides (a deeper .gitignore's rules come after its parents')."""
    name = rel.rsplit("/", 1)[-1]
    hit = False
    for prefix, pat, anchored, neg, dir_only in rules:
        if dir_only and not is_dir:
            continue
        matched = fnmatch.fnmatchcase(rel[len(prefix) :] if anchored else name, pat)
        if matched:
            hit = not neg
    return hit


def _walk(root: Path, unreadable: list[str]) -> list[str]:
    """Every file under root but SKIP_DIRS, virtualenvs and what the .gitignore files (at any depth) ignore.

    A directory that cannot be listed is left out and named in ``unreadable`` (with why): one
    unreadable directory must not fail the whole listing.
    """
    rules_of: dict[str, list[Rule]] = {"": _ignore_rules(root, "")}
    out: list[str] = []

    def cannot_read(e: OSError) -> None:
        where = Path(e.filename).relative_to(root).as_posix() if e.filename else "?"
        unreadable.append(f"{where}: {e.strerror or e}")

    for d, dirs, files in os.walk(root, onerror=cannot_read):
        base = Path(d)
        rel_d = base.relative_to(root).as_posix()
        prefix = "" if rel_d == "." else rel_d + "/"
        rules = rules_of.pop(prefix, [])
        dirs[:] = [
            x for x in dirs if x not in SKIP_DIRS and not is_venv(base / x) and not _ignored(prefix + x, True, rules)
        ]
        for x in dirs:
            rules_of[prefix + x + "/"] = rules + _ignore_rules(base / x, prefix + x + "/")
        out += [prefix + f for f in files if not _ignored(prefix + f, False, rules)]
    return out


async def list_files(ctx: Any, root: Path, patterns: list[str], exclude: list[str]) -> list[str]:
    """Relative POSIX paths of the files under ``root`` to look at, sorted."""
    files: list[str] | None = None
    if (root / ".git").exists():
        proc = await ctx.spawn(
            "git",
            "-C",
            str(root),
            "ls-files",
            "-co",
            "--exclude-standard",
            "-z",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            files = [f for f in out.decode("utf-8", "surrogateescape").split("\0") if f]
            venvs = tuple(f[: -len("pyvenv.cfg")] for f in files if f.endswith("/pyvenv.cfg"))
            files = [f for f in files if not (SKIP_DIRS & set(f.split("/")[:-1])) and not f.startswith(venvs)]
    if files is None:
        unreadable: list[str] = []
        files = await asyncio.to_thread(_walk, root, unreadable)
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
    return sorted(files)
