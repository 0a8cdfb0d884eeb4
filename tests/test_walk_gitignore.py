"""The walk of a tree without git reads .gitignore files as git does: generated trees and rules with
every hard case (negations, **, anchored and directory-only patterns, nested files, escapes,
character classes, trailing spaces) are listed by the walk and by `git ls-files -co --exclude-standard`
on the same tree, and the two lists must be equal. Seeded (the seed is printed on failure);
OUTLAST_SOAK=1 runs many more trees."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from engine.operations._walk import walk, walk_listing
from tests.fixtures_ops import deep_tree

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

ROUNDS = 400 if os.environ.get("OUTLAST_SOAK") else 25
NAMES = ["a", "b", "build", "keep", "doc", "x.log", "keep.log", "a.py", "b.txt", "[x]", "sp ace", "deep", "out"]
PATTERNS = [
    "*.log", "!keep.log", "build/", "/build", "**/deep", "deep/**", "a/**/b", "doc/*.txt", "!doc/b.txt",
    "*.py", "!a.py", "/a", "a/", "out", "!out/keep", "b", "!b/", "**/keep/", "\\[x]", "[ab].txt", "sp ace",
    "sp\\ ace", "*.log ", "# a comment", "", "!*.py", "x.*", "?.py", "**", "!**/", "keep/**/*.log", "/*/keep",
]  # fmt: skip


def _tree(root: Path, rng: random.Random) -> None:
    for _ in range(rng.randint(4, 14)):
        depth = rng.randint(1, 4)
        parts = [rng.choice(NAMES) for _ in range(depth)]
        path = root.joinpath(*parts)
        try:
            if path.exists() and path.is_dir():
                path = path / rng.choice(NAMES)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_text("x\n")
        except (FileExistsError, NotADirectoryError):
            continue  # a name taken by a file where a directory was wanted: another path
    dirs = [root] + [d for d in root.rglob("*") if d.is_dir()]
    for d in rng.sample(dirs, k=min(len(dirs), rng.randint(1, 3))):
        lines = rng.sample(PATTERNS, k=rng.randint(1, 6))
        (d / ".gitignore").write_text("\n".join(lines) + "\n")


def _git_view(root: Path) -> list[str]:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    subprocess.run(["git", "init", "-q", str(root)], check=True, env=env)
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
        check=True, capture_output=True, env=env,
    ).stdout  # fmt: skip
    shutil.rmtree(root / ".git")
    return sorted(f for f in out.decode().split("\0") if f)


def test_the_walk_lists_what_git_lists_on_generated_trees(tmp_path: Path) -> None:
    seed = int(os.environ.get("OUTLAST_FAULT_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    for n in range(ROUNDS):
        root = tmp_path / f"t{n}"
        root.mkdir()
        _tree(root, rng)
        ours = sorted(walk_listing(root, []))
        theirs = _git_view(root)
        gitignores = {str(p.relative_to(root)): p.read_text() for p in root.rglob(".gitignore")}
        assert ours == theirs, f"seed {seed}, tree {n}: .gitignore files {gitignores}"


async def test_a_folder_inside_a_work_tree_is_listed_as_git_sees_it(tmp_path: Path) -> None:
    """Indexing or scanning a sub-folder of a repository honours the parent's .gitignore,
    .git/info/exclude and core.excludesFile (the walk alone would see none of them)."""
    from engine.operations._walk import list_files

    repo = tmp_path / "repo"
    (repo / "sub" / "build").mkdir(parents=True)
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / ".gitignore").write_text("build/\n*.secret\n")
    (repo / ".git" / "info" / "exclude").write_text("excluded.txt\n")
    for rel in ("sub/a.py", "sub/build/out.py", "sub/key.secret", "sub/excluded.txt"):
        (repo / rel).write_text("x\n")

    class Ctx:
        metrics: dict[str, object] = {}

        @staticmethod
        async def spawn(*args: str, **kw: object) -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(*args, env=env, **kw)  # type: ignore[arg-type]

    assert await list_files(Ctx(), repo / "sub", [], []) == ["a.py"]


def test_walk_is_os_walk_in_both_orders(tmp_path: Path) -> None:
    """The iterative walk yields what os.walk yields, in the same order, top-down (pruned in place too) and
    bottom-up, symlinks to directories listed and not followed, and calls onerror as it does."""
    rng = random.Random(7)
    for n in range(10):
        root = tmp_path / f"t{n}"
        root.mkdir()
        _tree(root, rng)
        (root / "link").symlink_to(root, target_is_directory=True)
        (root / "dangling").symlink_to(root / "nowhere")
        assert list(walk(root)) == list(os.walk(root))
        assert list(walk(root, topdown=False)) == list(os.walk(root, topdown=False))

        def pruned(w: Iterable[tuple[str, list[str], list[str]]]) -> list[tuple[str, list[str], list[str]]]:
            out = []
            for d, dirs, files in w:
                dirs[:] = [x for x in dirs if x != "b"]
                out.append((d, list(dirs), files))
            return out

        assert pruned(walk(root)) == pruned(os.walk(root))
    errors: list[OSError] = []
    assert list(walk(tmp_path / "missing", onerror=errors.append)) == []
    assert len(errors) == 1 and errors[0].filename == str(tmp_path / "missing")


def test_a_tree_deeper_than_the_recursion_limit_is_walked(tmp_path: Path) -> None:
    """1,050 nested directories: Python 3.11's os.walk recursed once per level and failed with RecursionError.
    The walk lists the deep leaf, and a .gitignore at the bottom still applies."""
    with deep_tree(tmp_path / "t") as leaf:
        bottom = tmp_path / "t" / leaf.rsplit("/", 1)[0]
        (bottom / "skip.log").write_text("x")
        (bottom / ".gitignore").write_text("*.log\n")
        unreadable: list[str] = []
        assert sorted(walk_listing(tmp_path / "t", unreadable)) == [leaf.rsplit("/", 1)[0] + "/.gitignore", leaf]
        assert unreadable == []
        assert len(list(walk(tmp_path / "t", topdown=False))) == leaf.count("/") + 1
