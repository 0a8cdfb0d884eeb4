"""backup_operation against a hostile or changing world: stale links and wrong kinds in the destination, a
destination around the source, kills at the end, unreadable and very deep trees, long names, FIFOs and
growing files swapped in after the listing, sparse files. Each test failed before its fix."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import engine.operations.backup as backup_mod
from engine import Engine, Operation, OperationSpec, Status
from tests.fixtures_cli import CLI, REPO, Cli
from tests.fixtures_ops import as_user_who_cannot_read, bad_params, deep_tree, resume, run_json
from tests.test_op_backup import OLD, assert_resumed_as_whole, partials, snapshot

MB = 1 << 20


async def run_backup(engine: Engine, src: Path, dst: Path, timeout: float = 30, **params: Any) -> Operation:
    op = await engine.submit(
        OperationSpec(type="backup_operation", params={"source": str(src), "destination": str(dst), **params})
    )
    return await engine.wait(op.id, timeout=timeout)


def manifest(dst: Path) -> dict[str, Any]:
    return json.loads((dst / ".outlast-manifest.json").read_text())["files"]


def after_listing(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Make ``change`` to the source just after the backup has listed it (as a user or a tool could)."""
    real = backup_mod._list

    def listed(src: Path) -> Any:
        got = real(src)
        change()
        return got

    monkeypatch.setattr(backup_mod, "_list", listed)


# ---- the destination is the backup's own: replaced, never written through ---------------------------------------


async def test_a_stale_symlink_in_the_destination_is_replaced_not_written_through(
    engine: Engine, tmp_path: Path
) -> None:
    """The first backup copies ``data -> elsewhere`` as a link; the source's ``data`` then becomes a directory.
    The second backup must replace the link by a directory: it wrote through it, into ``elsewhere``, and gave
    ``elsewhere`` the source directory's mode."""
    src, dst, elsewhere = tmp_path / "src", tmp_path / "dst", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "config.txt").write_text("precious\n")
    (src / "data").symlink_to(elsewhere)
    assert (await run_backup(engine, src, dst)).status is Status.COMPLETED
    assert (dst / "data").is_symlink()
    (src / "data").unlink()
    (src / "data").mkdir(mode=0o755)
    (src / "data" / "config.txt").write_text("new\n")
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    assert (elsewhere / "config.txt").read_text() == "precious\n"
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o700
    assert not (dst / "data").is_symlink() and (dst / "data" / "config.txt").read_text() == "new\n"
    assert snapshot(dst) == snapshot(src)


async def test_a_file_that_became_a_directory_and_back_is_replaced(engine: Engine, tmp_path: Path) -> None:
    """A path that was a file in an earlier backup and is a directory now (and the reverse) is replaced in the
    destination; it failed the whole backup (FileExistsError), and every resume, with nothing else copied."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "was-dir").mkdir(parents=True)
    (src / "was-dir" / "inner").write_text("i\n")
    (src / "x").write_text("f\n")
    (src / "other").write_text("g\n")
    assert (await run_backup(engine, src, dst)).status is Status.COMPLETED
    (src / "x").unlink()
    (src / "x").mkdir()
    (src / "x" / "y").write_text("inner\n")
    (src / "was-dir" / "inner").unlink()
    (src / "was-dir").rmdir()
    (src / "was-dir").write_text("a file now\n")
    (src / "other").write_text("g changed\n")
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    assert final.result["failures"] == 0
    assert (dst / "other").read_text() == "g changed\n"
    assert snapshot(dst) == snapshot(src)
    assert set(manifest(dst)) == {"x/y", "was-dir", "other"}


def test_a_destination_that_is_or_contains_the_source_is_refused(cli: Cli, tmp_path: Path) -> None:
    """A destination containing the source made the copy overwrite the source's own files; refused like one
    inside it: one line, exit 2, nothing stored. Paths are compared resolved (through symlinks)."""
    src = tmp_path / "backup" / "src"
    src.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "backup")
    for dest, says in [
        (tmp_path / "backup", "contains source"),
        (tmp_path, "contains source"),
        (tmp_path / "alias", "contains source"),
        (src, "is the source"),
        (tmp_path / "alias" / "src", "is the source"),
        (tmp_path / "alias" / "src" / "in", "inside source"),
    ]:
        bad_params(cli, "backup_operation", {"source": str(src), "destination": str(dest)}, says)


# ---- the end: a kill anywhere resumes to the same manifest --------------------------------------------------------


def end_tree(root: Path) -> None:
    """Small files before and after a large one (its in-file checkpoints save the files done before it, not
    the ones after), and a directory with its own mode and times."""
    (root / "d").mkdir(parents=True)
    for i in range(20):
        (root / f"a{i:02d}").write_text(f"a {i}\n")
        (root / f"z{i:02d}").write_text(f"z {i}\n" * i)
    (root / "d" / "x").write_text("x\n")
    (root / "m-big.bin").write_bytes(os.urandom(5 * MB))
    (root / "d").chmod(0o750)
    os.utime(root / "d", ns=(OLD, OLD))


@pytest.mark.parametrize("die_at", ["dirstat", "manifest", "journal"])
def test_a_kill_at_the_end_resumes_to_the_same_manifest(cli: Cli, tmp_path: Path, die_at: str) -> None:
    """SIGKILLed while directory modes are set, just after the manifest is written, or just after the journal
    is removed: the resume completes with the copy, manifest and result of an uninterrupted run. The journal
    was removed before the directories' pass: a resume then failed (FileNotFoundError on the journal) or
    completed with a manifest listing only the files copied since the last checkpoint."""
    src, whole, killed = tmp_path / "src", tmp_path / "whole", tmp_path / "killed"
    end_tree(src)
    params = {"source": str(src), "chunk_checkpoint": 4 * MB}
    profile = ["--profile", "checkpoint_interval=3600"]
    code, ref, err = run_json(
        cli, "run", "backup_operation", "--params-json", json.dumps({**params, "destination": str(whole)}), *profile
    )
    assert code == 0, err
    env = {**cli.env, "OUTLAST_TEST_DIE_AT": die_at}
    args = ["--plugin", "tests.backup_die", "run", "backup_operation", "--params-json"]
    r = cli(*args, json.dumps({**params, "destination": str(killed)}), *profile, env=env)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    op_id = next(op["id"] for op in json.loads(cli("--json", "ls").stdout) if op["id"] != ref["id"])
    assert_resumed_as_whole(killed, whole, src, resume(cli, op_id), ref)


async def test_a_source_directory_renamed_during_the_run_is_a_warning(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory renamed after the listing: its files are skipped as gone, and setting its mode and times
    is a warning; it failed the whole backup, every file copied, at that last pass."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "keep").mkdir(parents=True)
    (src / "tmpdir").mkdir()
    (src / "keep" / "a").write_text("a\n")
    (src / "tmpdir" / "b").write_text("b\n")
    after_listing(monkeypatch, lambda: (src / "tmpdir").rename(src / "tmpdir.renamed"))
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    assert set(manifest(dst)) == {"keep/a"} and (dst / "keep" / "a").read_text() == "a\n"
    logs = [r.message for r in (await engine.store.read_logs(final.id))[0]]
    assert any("tmpdir: gone since the listing" in m for m in logs), logs


# ---- what cannot be read is reported ---------------------------------------------------------------------------


def test_an_unreadable_directory_is_an_item_failure(cli: Cli, tmp_path: Path) -> None:
    """A source directory that cannot be listed was left out in silence ("completed", 0 failures): now it is
    an item failure, named, and the rest is copied."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "ok").mkdir(parents=True)
    (src / "secret").mkdir()
    (src / "ok" / "a").write_text("a\n")
    (src / "secret" / "b").write_text("b\n")
    params = json.dumps({"source": str(src), "destination": str(dst)})
    r = as_user_who_cannot_read(
        [*CLI, "--state-dir", str(cli.state_dir), "run", "backup_operation", "--params-json", params],
        src / "secret",
        cwd=REPO,
        env=cli.env,
    )
    (src / "secret").chmod(0o755)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "item failed: secret: cannot list this directory: Permission denied" in out, out
    assert '"failures": 1' in out.splitlines()[-1], out
    assert set(manifest(dst)) == {"ok/a"}
    # Its copy as closed as it is (it was made 0755, more open than the source), and no warning about it.
    assert stat.S_IMODE((dst / "secret").stat().st_mode) == 0, oct((dst / "secret").stat().st_mode)
    assert "secret: Permission denied" not in out, out


# ---- names and depths the file system allows ------------------------------------------------------------------


async def test_a_name_of_255_bytes_is_copied(engine: Engine, tmp_path: Path) -> None:
    """``.NAME.outlast-partial`` of a 239..255-byte name passed NAME_MAX: such a file could never be copied."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for n in (239, 255):
        (src / ("n" * n)).write_text(f"{n}\n")
    (src / ("b" * 250)).write_bytes(os.urandom(5 * MB))  # the large-file path too
    final = await run_backup(engine, src, dst, chunk_checkpoint=4 * MB)
    assert final.status is Status.COMPLETED and final.result["failures"] == 0, final.result
    assert snapshot(dst) == snapshot(src) and partials(dst) == []


async def test_a_tree_1200_levels_deep_is_copied(engine: Engine, tmp_path: Path) -> None:
    """Python 3.11's os.walk recursed once per level: 1200 levels died of RecursionError, nothing copied. (The tree
    is made and removed through directory descriptors: os.makedirs and shutil.rmtree recurse per level too, and
    1200 mkdir and rmdir calls each given the whole path walk it again, 0.7 million lookups.)"""
    src, dst = tmp_path / "src", tmp_path / "dst"
    try:
        with deep_tree(src, 1200) as deep:
            (src / "top.txt").write_text("a\n")
            final = await run_backup(engine, src, dst)
            assert final.status is Status.COMPLETED, final.error
            assert (dst / deep).read_text() == "deep leaf\n"
            assert set(manifest(dst)) == {"top.txt", deep}
    finally:
        subprocess.run(["rm", "-rf", "--", str(dst)], check=True)


async def test_a_path_past_path_max_fails_its_item_and_the_rest_is_copied(engine: Engine, tmp_path: Path) -> None:
    """A directory whose path passes PATH_MAX (4096 bytes) failed the whole listing: nothing copied. Now what
    cannot be reached by its path is one item failure; everything above it is copied."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    name, fd = "d" * 50, os.open(src, os.O_RDONLY)
    try:
        for i in range(100):  # 100 levels x 51 bytes: past PATH_MAX from about level 80
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = sub
            f = os.open("file.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, f"level {i}\n".encode())
            os.close(f)
    finally:
        os.close(fd)
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    failures = await engine.store.item_failures(final.id)
    assert len(failures) == 1 and "File name too long" in failures[0].error, failures
    reached = len(str(src)) + 1  # levels whose file.txt has a path within PATH_MAX
    levels = sum(1 for i in range(100) if reached + (i + 1) * 51 + len("file.txt") < 4096)
    assert final.result["files"] >= levels - 1 > 50, (final.result, levels)
    assert (dst / name / "file.txt").read_text() == "level 0\n"


# ---- the source changes after the listing ---------------------------------------------------------------------


async def test_a_fifo_swapped_in_after_the_listing_is_skipped_not_waited_on(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file replaced by a FIFO after the listing: ``open`` waited for a writer for ever (past any timeout; the
    process never ended). Now it is skipped, as a FIFO found by the listing is."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "pipe-later").write_text("data\n")
    (src / "plain").write_text("p\n")
    fifo = src / "pipe-later"

    def swap() -> None:
        fifo.unlink()
        os.mkfifo(fifo)

    after_listing(monkeypatch, swap)
    try:
        final = await run_backup(engine, src, dst, timeout=15)
    finally:  # without the fix a thread waits in open(): a writer end lets it go
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as e:
            assert e.errno == errno.ENXIO  # nobody waiting: as it should be
    assert final.status is Status.COMPLETED, final.error
    assert final.progress.skipped == 1 and final.result["failures"] == 0
    assert not (dst / "pipe-later").exists() and set(manifest(dst)) == {"plain"}


async def test_the_manifest_size_is_of_the_bytes_copied(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file appended to after the listing: the manifest gave the listing's size with the copy's sha256."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "log.txt").write_text("first line\n")

    def append() -> None:
        with open(src / "log.txt", "a") as fh:
            fh.write("appended line\n")

    after_listing(monkeypatch, append)
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    copy = (dst / "log.txt").read_bytes()
    entry = manifest(dst)["log.txt"]
    assert (entry["size"], entry["sha256"]) == (len(copy), hashlib.sha256(copy).hexdigest())
    assert final.result["bytes"] == len(copy)


# ---- sparse files ----------------------------------------------------------------------------------------------


def make_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(b"head")
        fh.seek(size // 2)
        fh.write(b"middle")
        fh.truncate(size)  # ends in a hole


async def test_sparse_files_are_copied_with_their_holes(engine: Engine, tmp_path: Path) -> None:
    """Holes were copied as written zeros: a sparse file took its full size in the destination."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    make_sparse(src / "small.img", 3 * MB)  # the small-file batch path
    make_sparse(src / "big.img", 64 * MB)  # the large-file path, in 4 MB chunks
    if os.stat(src / "big.img").st_blocks * 512 > 8 * MB:
        pytest.skip("this file system does not keep holes")
    final = await run_backup(engine, src, dst, chunk_checkpoint=4 * MB)
    assert final.status is Status.COMPLETED, final.error
    assert snapshot(dst) == snapshot(src)
    for name in ("small.img", "big.img"):
        got = os.stat(dst / name)
        assert got.st_size == os.stat(src / name).st_size
        assert got.st_blocks * 512 <= 1 * MB, (name, got.st_blocks)
    assert manifest(dst)["big.img"]["size"] == 64 * MB


def test_a_source_on_a_kernel_file_system_is_refused(cli: Cli, tmp_path: Path) -> None:
    """/proc/sys's files say they are empty and hold text: the backup of one was "completed", every copy
    empty (and verified, as the size the source gave)."""
    if not Path("/proc/sys/kernel").is_dir():
        pytest.skip("no /proc")
    bad_params(
        cli, "backup_operation", {"source": "/proc/sys", "destination": str(tmp_path / "d")}, "kernel file system"
    )


async def test_a_kernel_file_system_mounted_in_the_source_is_not_copied(engine: Engine, tmp_path: Path) -> None:
    """A tree holding a mounted /proc or /sys (a chroot's, a bind): its files were copied as empty files, the
    backup "completed". Now the mount point is made, empty, and skipped with one line; the rest is copied."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "kern").mkdir(parents=True)
    (src / "a.txt").write_text("mine\n")
    r = subprocess.run(["mount", "--bind", "/proc/sys/kernel", str(src / "kern")], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {r.stderr.decode().strip()}")
    try:
        op = await run_backup(engine, src, dst)
    finally:
        subprocess.run(["umount", str(src / "kern")], check=True)
    assert op.status is Status.COMPLETED, op.error
    assert op.result["files"] == 1 and op.progress.skipped == 1
    assert (dst / "a.txt").read_text() == "mine\n" and list((dst / "kern").iterdir()) == []
