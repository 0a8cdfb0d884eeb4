"""backup_operation keeps the hard links within the tree (a git objects store after ``git clone --local``, a
Maildir, ``cp -al`` snapshots): names that are one file in the source are one file in the destination, copied
once, as ``cp -a`` does; every name was copied on its own (N times the space, the links lost). A SIGKILL
anywhere resumes to the same links; a destination that refuses a link gets a copy of that name; a name that is
no longer the file it was is copied, not linked."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Status
from engine.operations.backup import SMALL_BATCH
from tests.fixtures_cli import Cli
from tests.fixtures_engine import until
from tests.fixtures_ops import resume, run_json
from tests.test_op_backup import OLD, assert_resumed_as_whole, partials, snapshot
from tests.test_op_backup_hostile import after_listing, manifest, run_backup

MB = 1 << 20


def link_groups(root: Path) -> list[list[str]]:
    """The names under ``root`` (the backup's own files aside) that are one file, sorted: the tree's links."""
    by_inode: dict[tuple[int, int], list[str]] = {}
    for p in root.rglob("*"):
        st = p.lstat()
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".outlast-"):
            by_inode.setdefault((st.st_dev, st.st_ino), []).append(p.relative_to(root).as_posix())
    return sorted(sorted(names) for names in by_inode.values() if len(names) > 1)


def same_file(a: Path, b: Path) -> bool:
    return os.stat(a).st_ino == os.stat(b).st_ino


async def test_names_linked_in_the_source_are_linked_in_the_copy(engine: Engine, tmp_path: Path) -> None:
    """Three names of one small file in three directories, two of a large file (copied in chunks), one of a
    file whose third name is outside the tree: each group is one file in the destination, copied once; the
    result counts every name, the bytes copied once and the names linked; the manifest says which."""
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    for d in ("a", "b", "c/deep"):
        (src / d).mkdir(parents=True)
    outside.mkdir()
    (src / "a" / "obj").write_bytes(b"object\n" * 100)
    (src / "a" / "obj").chmod(0o444)
    os.utime(src / "a" / "obj", ns=(OLD, OLD))
    os.link(src / "a" / "obj", src / "b" / "obj")
    os.link(src / "a" / "obj", src / "c" / "deep" / "obj")
    (src / "big.bin").write_bytes(os.urandom(9 * MB))
    os.link(src / "big.bin", src / "c" / "big.bin")
    (src / "half").write_bytes(b"half in\n")
    os.link(src / "half", src / "b" / "half")
    os.link(src / "half", outside / "half")  # st_nlink 3, two names in the tree
    (src / "solo").write_text("alone\n")
    (src / "link-to-obj").symlink_to("a/obj")

    final = await run_backup(engine, src, dst, chunk_checkpoint=4 * MB)
    assert final.status is Status.COMPLETED, final.error
    assert snapshot(dst) == snapshot(src)
    assert (
        link_groups(dst)
        == link_groups(src)
        == [
            ["a/obj", "b/obj", "c/deep/obj"],
            ["b/half", "half"],
            ["big.bin", "c/big.bin"],
        ]
    )
    assert same_file(dst / "a" / "obj", dst / "c" / "deep" / "obj") and same_file(dst / "big.bin", dst / "c/big.bin")
    assert (dst / "b" / "obj").read_bytes() == (src / "a" / "obj").read_bytes()
    assert os.stat(dst / "half").st_nlink == 2 and not same_file(dst / "solo", dst / "half")
    files = manifest(dst)
    assert {k: v.get("link") for k, v in files.items() if "link" in v} == {
        "b/obj": "a/obj",
        "c/deep/obj": "a/obj",
        "half": "b/half",
        "c/big.bin": "big.bin",
    }
    assert all(
        v["sha256"] == hashlib.sha256((dst / k).read_bytes()).hexdigest()
        for k, v in files.items()
        if k != "link-to-obj"
    )
    assert final.result["files"] == 9 and final.result["links"] == 4 and final.result["failures"] == 0
    copied_once = sum(os.path.getsize(src / k) for k in ("a/obj", "big.bin", "b/half", "solo"))
    assert final.result["bytes"] == copied_once
    assert final.progress.metrics["bytes"] == final.progress.metrics["bytes_total"] == copied_once

    # Again into the same destination (a nightly backup): the links are made again, over the old copies.
    final = await run_backup(engine, src, dst, chunk_checkpoint=4 * MB)
    assert final.status is Status.COMPLETED, final.error
    assert link_groups(dst) == link_groups(src) and snapshot(dst) == snapshot(src)
    assert partials(dst) == []


async def test_names_of_one_symlink_are_one_symlink_in_the_copy(engine: Engine, tmp_path: Path) -> None:
    """``ln`` of a symlink gives it a second name (one inode, st_nlink 2): each name was copied as a symlink of
    its own, the link between them lost. They are grouped as a file's names are: copied once, then linked;
    again into the same destination too; the manifest says which."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    (src / "target").write_text("t\n")
    (src / "sl").symlink_to("target")
    os.link(src / "sl", src / "d" / "sl", follow_symlinks=False)
    (src / "alone").symlink_to("target")
    assert os.lstat(src / "sl").st_nlink == 2
    for _ in range(2):  # the second: into the same destination
        final = await run_backup(engine, src, dst)
        assert final.status is Status.COMPLETED, final.error
        assert snapshot(dst) == snapshot(src)
        assert (dst / "d" / "sl").is_symlink() and os.readlink(dst / "d" / "sl") == "target"
        assert os.lstat(dst / "sl").st_ino == os.lstat(dst / "d" / "sl").st_ino
        assert os.lstat(dst / "sl").st_nlink == 2 and os.lstat(dst / "alone").st_nlink == 1
        assert {k: v.get("link") for k, v in manifest(dst).items() if "link" in v} == {"sl": "d/sl"}
        assert final.result["links"] == 1 and final.result["failures"] == 0
        assert partials(dst) == []


def linked_tree(root: Path) -> None:
    """A large file and its second name (each a step of its own), ``SMALL_BATCH + 72`` files in ``a`` and each
    one's second name in ``b`` (linked in batches after their copies' batches), some a third in ``c``."""
    for d in "abc":
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "a" / "big").write_bytes(os.urandom(5 * MB))
    os.link(root / "a" / "big", root / "b" / "big")
    for i in range(SMALL_BATCH + 72):
        f = root / "a" / f"f{i:03d}"
        f.write_bytes(os.urandom(50 + i))
        if i % 7 == 0:
            f.chmod(0o600)
            os.utime(f, ns=(OLD, OLD + i))
        os.link(f, root / "b" / f"f{i:03d}")
        if i % 10 == 0:
            os.link(f, root / "c" / f"f{i:03d}")


@pytest.mark.parametrize(
    ("die_at", "die_after"),
    [
        ("placed", SMALL_BATCH + 72 + 2),  # just after b/big is linked into place, not yet journaled or counted
        ("placed", SMALL_BATCH + 72 + 2 + SMALL_BATCH // 2),  # halfway through the renames of a batch of links
        ("placed", SMALL_BATCH + 72 + 2 + SMALL_BATCH + 30),  # the next batch, b/big counted and checkpointed
        ("journal", 1),  # at the end: the manifest written (with its links), the journal removed
    ],
)
def test_a_kill_among_the_links_resumes_to_the_same_links(
    cli: Cli, tmp_path: Path, die_at: str, die_after: int
) -> None:
    """SIGKILLed just after the ``die_after``-th rename into place (a copy's or a link's), or at the end:
    the resume makes the links still to make (not copies), and ends with the copy, links, manifest and result
    of an uninterrupted run."""
    src, whole, killed = tmp_path / "src", tmp_path / "whole", tmp_path / "killed"
    linked_tree(src)
    params: dict[str, Any] = {"source": str(src), "chunk_checkpoint": 4 * MB}
    profile = ["--profile", "checkpoint_interval=3600", "--profile", "checkpoint_every=50"]
    code, ref, err = run_json(
        cli, "run", "backup_operation", "--params-json", json.dumps({**params, "destination": str(whole)}), *profile
    )
    assert code == 0, err
    env = {**cli.env, "OUTLAST_TEST_DIE_AT": die_at, "OUTLAST_TEST_DIE_AFTER": str(die_after)}
    args = ["--plugin", "tests.backup_die", "run", "backup_operation", "--params-json"]
    r = cli(*args, json.dumps({**params, "destination": str(killed)}), *profile, env=env)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    op_id = next(op["id"] for op in json.loads(cli("--json", "ls").stdout) if op["id"] != ref["id"])
    assert (killed / "b" / "big").exists() and same_file(killed / "a" / "big", killed / "b" / "big")
    # A power cut can lose the journal's line of a large file counted done (the journal is synced with the
    # batches of small files only): that name is then described from its copy, a link still.
    if (journal := killed / ".outlast-manifest.partial").exists():
        journal.write_text("".join(ln for ln in journal.read_text().splitlines(True) if '"b/big"' not in ln))

    final = resume(cli, op_id)
    assert_resumed_as_whole(killed, whole, src, final, ref)
    assert link_groups(killed) == link_groups(whole) == link_groups(src)
    assert len(link_groups(src)) == SMALL_BATCH + 72 + 1
    names = 2 * (SMALL_BATCH + 72) + (SMALL_BATCH + 72 + 9) // 10
    assert ref["result"]["files"] == names + 2 and ref["result"]["links"] == names - (SMALL_BATCH + 72) + 1


async def test_a_destination_that_refuses_a_link_gets_a_copy(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link refused (EMLINK: the copy has as many names as its file system allows; EPERM where it has no
    links) is a copy of that name, said once; the names after it are linked to that copy."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name in "abcd":
        if name == "a":
            (src / name).write_text("one file, four names\n")
        else:
            os.link(src / "a", src / name)
    real, calls = os.link, [0]

    def link(*args: Any, **kw: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:  # c's
            raise OSError(errno.EMLINK, os.strerror(errno.EMLINK))
        real(*args, **kw)

    monkeypatch.setattr(os, "link", link)
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    assert link_groups(dst) == [["a", "b"], ["c", "d"]] and snapshot(dst) == snapshot(src)
    assert {k: v.get("link") for k, v in manifest(dst).items()} == {"a": None, "b": "a", "c": None, "d": "c"}
    assert final.result["links"] == 2 and final.result["bytes"] == 2 * os.path.getsize(src / "a")
    logs = [r.message for r in (await engine.store.read_logs(final.id))[0]]
    assert sum("refused a hard link" in m for m in logs) == 1, logs

    def refuse(*_args: Any, **_kw: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", refuse)
    final = await run_backup(engine, src, tmp_path / "dst2")
    assert final.status is Status.COMPLETED, final.error
    assert link_groups(tmp_path / "dst2") == [] and snapshot(tmp_path / "dst2") == snapshot(src)
    assert final.result["links"] == 0 and final.result["files"] == 4 and final.result["failures"] == 0
    assert final.progress.metrics["bytes"] == final.progress.metrics["bytes_total"] == final.result["bytes"]
    logs = [r.message for r in (await engine.store.read_logs(final.id))[0]]
    assert sum("refused a hard link" in m for m in logs) == 1, logs


async def test_a_name_that_is_another_file_since_the_listing_is_copied_not_linked(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``b`` was a second name of ``a`` at the listing and is another file when it is reached: it is copied
    with its own bytes (linked, it would be ``a``'s); ``c``, still ``a``, is linked."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a").write_text("the shared file\n")
    os.link(src / "a", src / "b")
    os.link(src / "a", src / "c")

    def replace_b() -> None:
        (src / "b").unlink()
        (src / "b").write_text("a new file under the old name\n")

    after_listing(monkeypatch, replace_b)
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    assert (dst / "b").read_text() == "a new file under the old name\n"
    assert link_groups(dst) == [["a", "c"]] and snapshot(dst) == snapshot(src)


async def test_a_large_file_whose_link_is_refused_resumes_its_copy_at_its_offset(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where links are refused, a large file's second name is copied in chunks: paused inside that copy, the
    resume tries the link again and goes on at the saved offset (the try had removed the partial: every
    resume started that file again from its first byte)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for d in "ab":
        (src / d).mkdir(parents=True)
    (src / "a" / "big").write_bytes(os.urandom(40 * MB))
    os.link(src / "a" / "big", src / "b" / "big")
    refused = threading.Event()
    real_fsync = os.fsync

    def refuse(*_args: Any, **_kw: Any) -> None:
        refused.set()
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    def slow_fsync(fd: int) -> None:  # each chunk takes a while: the pause lands inside the file
        time.sleep(0.05)
        real_fsync(fd)

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(os, "fsync", slow_fsync)
    params = {"source": str(src), "destination": str(dst), "chunk_checkpoint": 4 * MB}
    op = await engine.submit(OperationSpec(type="backup_operation", params=params))
    await until(refused.is_set, timeout=30)
    await engine.pause(op.id)
    paused = await engine.wait(op.id, timeout=30)
    assert paused.status is Status.PAUSED, paused.status_message
    assert not (dst / "b" / "big").exists()
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    logs = [r.message for r in (await engine.store.read_logs(final.id))[0]]
    assert any(m.startswith("resuming b/big at byte ") for m in logs), logs
    assert (dst / "b" / "big").read_bytes() == (src / "a" / "big").read_bytes() and link_groups(dst) == []
    assert final.result["bytes"] == 80 * MB and final.result["links"] == 0
    assert final.progress.metrics["bytes"] == final.progress.metrics["bytes_total"] == 80 * MB
