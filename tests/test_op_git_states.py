"""The operations that list a tree through git, on a repository in the states real ones are in: a merge
stopped on a conflict (git lists the conflicted file once per stage) and a submodule (git lists it as one
entry, a directory)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures_cli import Cli
from tests.fixtures_ops import run_json

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_SYSTEM": os.devnull,
        **{f"GIT_{w}_{k}": v for w in ("AUTHOR", "COMMITTER") for k, v in (("NAME", "t"), ("EMAIL", "t@t"))},
    }
    return subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True).stdout


def _mid_merge_with_a_submodule(repo: Path) -> None:
    """Two files (one of them in conflict) and a submodule entry whose directory holds a Python file."""
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("def a():\n    return 1\n")
    (repo / "f.txt").write_text("base\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "base")
    _git(repo, "checkout", "-qb", "other")
    (repo / "f.txt").write_text("theirs\n")
    _git(repo, "commit", "-qam", "theirs")
    _git(repo, "checkout", "-q", "main")
    (repo / "f.txt").write_text("ours\n")
    _git(repo, "commit", "-qam", "ours")
    _git(repo, "merge", "-q", "other")  # stops on the conflict
    (repo / "inner").mkdir()
    (repo / "inner" / "x.py").write_text("x = 1\n")
    (repo / "inner" / ".git").write_text("gitdir: ../.git/modules/inner\n")  # as a checked-out submodule's
    sha = _git(repo, "rev-parse", "HEAD").strip()
    _git(repo, "update-index", "--add", "--cacheinfo", f"160000,{sha},inner")  # a gitlink, as `submodule add`
    listed = _git(repo, "ls-files", "-co", "--exclude-standard").split()
    assert listed.count("f.txt") == 3 and "inner" in listed, listed  # what the listing has to cope with


def test_a_repository_mid_merge_with_a_submodule_is_indexed_and_scanned_once_per_file(cli: Cli, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _mid_merge_with_a_submodule(repo)
    # Before: the index and the kb failed on a UNIQUE constraint, the scan counted 3 files and ended at 33%.
    rc, rec, err = run_json(cli, "run", "codebase_indexing", "-p", f"root={repo}")
    assert rc == 0, err
    assert rec["result"]["files"] == 2 and rec["progress"]["done"] == 3, rec  # a.py, f.txt; the submodule skipped
    log = cli("logs", rec["id"]).stdout
    assert "skipped inner: a git repository of its own" in log, log  # it said "not a regular file"
    rc, rec, err = run_json(cli, "run", "security_scan", "-p", f"root={repo}")
    assert rc == 0, err
    assert (rec["result"]["files"], rec["result"]["scanned"]) == (3, 2), rec
    assert [r.split(":")[0] for r in rec["result"]["skipped"]] == [
        "a git repository of its own (a submodule or a nested clone)"
    ]
    rc, rec, err = run_json(cli, "run", "kb_population", "-p", f"source={repo}", "-p", f"kb={tmp_path / 'kb.db'}")
    assert rc == 0, err
    assert rec["result"]["documents"] == 1, rec  # f.txt: a.py is no document


def test_a_sparse_checkout_lists_only_its_work_tree(cli: Cli, tmp_path: Path) -> None:
    """git lists the files a sparse checkout leaves out (skip-worktree) with the rest: each was an item
    "skipped: gone since the listing", one log line apiece, most of a monorepo's files."""
    repo = tmp_path / "repo"
    for d, n in (("kept", 2), ("out", 3)):
        (repo / d).mkdir(parents=True)
        for i in range(n):
            (repo / d / f"f{i}.py").write_text(f"x = {i}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "all")
    _git(repo, "sparse-checkout", "set", "kept")
    assert not (repo / "out").exists() and len(_git(repo, "ls-files").split()) == 5
    rc, rec, err = run_json(cli, "run", "codebase_indexing", "-p", f"root={repo}")
    assert rc == 0, err
    assert rec["result"]["files"] == 2 and rec["progress"]["done"] == 2 and rec["progress"]["skipped"] == 0, rec
    log = cli("logs", rec["id"]).stdout
    assert "3 file(s) outside this sparse checkout's work tree left out" in log and "gone" not in log, log
