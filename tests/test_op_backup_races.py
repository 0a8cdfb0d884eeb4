"""backup_operation against a source that changes under it, found by a hostile tester: a source file named like
another's partial, a file rewritten or grown while it is copied, a directory swapped for a link after the
listing; and a destination on a kernel file system. Each test failed before its fix (changes made in
process, through the module's own functions: no timing)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import engine.operations.backup as backup_mod
from engine import Engine, Status
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params
from tests.test_op_backup import partials, snapshot
from tests.test_op_backup_hostile import after_listing, manifest, run_backup

MB = 1 << 20


def rewrite(path: Path, data: bytes) -> None:
    """Rewrite ``path`` in place (same inode) and move its mtime on by a second: a write one clock tick after
    the last is not always a new mtime, and the tests must not depend on the clock."""
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.write(data)
        fh.truncate(len(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


async def logs(engine: Engine, op_id: str) -> list[str]:
    return [r.message for r in (await engine.store.read_logs(op_id))[0]]


# ---- partials --------------------------------------------------------------------------------------------------


async def test_a_source_file_named_like_a_partial_does_not_take_another_files_copy(
    engine: Engine, tmp_path: Path
) -> None:
    """A tree holding an interrupted backup holds ``.<sha256(photo.jpg)[:16]>.outlast-partial`` beside
    ``photo.jpg``. Both were written to partials beside them and renamed in sorted order: the leftover's copy
    was renamed onto photo.jpg's partial first, so photo.jpg got the leftover's bytes and the leftover was
    missing, completed. The partials now live in a directory no source file can land in."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    for d in (src, src / "sub"):
        (d / "photo.jpg").write_text("THE REAL PHOTO")
        old_style = f".{hashlib.sha256(b'photo.jpg').hexdigest()[:16]}.outlast-partial"
        (d / old_style).write_text("half-written leftover")
    (src / "sub" / ".outlast-partials").mkdir()  # the staging directory's name is reserved at the root only
    (src / "sub" / ".outlast-partials" / "x").write_text("x")
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    assert (dst / "photo.jpg").read_text() == "THE REAL PHOTO"
    assert snapshot(dst) == snapshot(src)  # every file, and no staging directory left behind
    assert final.result["files"] == 5 and not (dst / ".outlast-partials").exists()


async def test_a_source_root_entry_named_like_the_staging_directory_is_skipped(engine: Engine, tmp_path: Path) -> None:
    """``.outlast-partials`` at the source root would be copied into the backup's own staging directory (and
    removed with it): it is skipped, said, like the manifest's name."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / ".outlast-partials").mkdir(parents=True)
    (src / ".outlast-partials" / "f").write_text("f")
    (src / "a").write_text("a")
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    assert set(manifest(dst)) == {"a"} and not (dst / ".outlast-partials").exists()
    assert final.progress.skipped == 1


# ---- a file changed while it is copied ----------------------------------------------------------------------------


def change_during(monkeypatch: pytest.MonkeyPatch, name: str, change: Any, times: int = 1) -> list[int]:
    """Call ``change()`` just after the first ``times`` calls of the function ``name`` of the backup module
    (``_append``: a large file's chunk; ``_copy_range``: a small file's whole read). Returns the call count."""
    real, calls = getattr(backup_mod, name), [0]

    def meddling(*args: Any, **kwargs: Any) -> Any:
        got = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] <= times:
            change()
        return got

    monkeypatch.setattr(backup_mod, name, meddling)
    return calls


async def test_a_large_file_rewritten_during_its_copy_is_copied_again_not_torn(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12 MB file rewritten in place after its first 4 MB chunk was stored old-then-new, with the new mtime
    and the torn bytes' sha256 in the manifest, completed, no warning. It is copied again now."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "big.bin").write_bytes(b"A" * (12 * MB))
    change_during(monkeypatch, "_append", lambda: rewrite(src / "big.bin", b"B" * (12 * MB)))
    final = await run_backup(engine, src, dst, chunk_checkpoint=4 * MB)
    assert final.status is Status.COMPLETED, final.error
    copy = (dst / "big.bin").read_bytes()
    assert copy == b"B" * (12 * MB), sorted(set(copy))
    assert snapshot(dst) == snapshot(src)
    assert manifest(dst)["big.bin"]["sha256"] == hashlib.sha256(copy).hexdigest()
    assert any("big.bin changed while it was copied" in m for m in await logs(engine, final.id))


async def test_a_large_file_that_grows_during_its_copy_is_copied_whole(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log appended to while it was copied was cut at the listing's size rounded to a chunk (its copy
    neither the old file nor the new one), completed."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "log.bin").write_bytes(b"L" * (10 * MB))

    def grow() -> None:
        with open(src / "log.bin", "ab") as fh:
            fh.write(b"M" * (6 * MB))

    change_during(monkeypatch, "_append", grow)
    final = await run_backup(engine, src, dst, chunk_checkpoint=4 * MB)
    assert final.status is Status.COMPLETED, final.error
    assert (dst / "log.bin").read_bytes() == (src / "log.bin").read_bytes()
    assert snapshot(dst) == snapshot(src) and manifest(dst)["log.bin"]["size"] == 16 * MB


async def test_a_block_rewritten_between_its_read_and_its_write_is_copied_again_not_failed(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large block is read (hashed, kept to compare) and then written by the kernel from the source
    (``os.sendfile``): a source rewritten in between makes the copy differ from the bytes read. That is the
    source's change, not a bad copy: the block is given the bytes read, the file is copied again as any file
    changed while it was copied, and the backup completes with the new bytes, no "verification failed"."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "big.bin").write_bytes(b"A" * (6 * MB))
    real, calls = os.sendfile, [0]

    def rewritten_first(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls[0] += 1
        if calls[0] == 1:
            rewrite(src / "big.bin", b"B" * (6 * MB))
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", rewritten_first)
    final = await run_backup(engine, src, dst)
    assert calls[0] > 1  # the large blocks were written by sendfile
    assert final.status is Status.COMPLETED, final.error
    assert final.result["failures"] == 0
    assert (dst / "big.bin").read_bytes() == b"B" * (6 * MB)
    assert snapshot(dst) == snapshot(src)
    assert manifest(dst)["big.bin"]["sha256"] == hashlib.sha256(b"B" * (6 * MB)).hexdigest()


async def test_a_large_file_that_keeps_changing_is_an_item_failure_not_a_torn_copy(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed during every copy: an item failure saying so, no copy under its name, no partial left."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "big.bin").write_bytes(b"A" * (8 * MB))
    (src / "small").write_text("s")
    flips = iter(range(1000))
    calls = change_during(
        monkeypatch, "_append", lambda: rewrite(src / "big.bin", bytes([next(flips) % 256]) * (8 * MB)), 1000
    )
    final = await run_backup(engine, src, dst, chunk_checkpoint=4 * MB)
    assert final.status is Status.COMPLETED, final.error
    assert not (dst / "big.bin").exists() and set(manifest(dst)) == {"small"}
    failures = await engine.store.item_failures(final.id)
    assert [(f.key, f.error) for f in failures] == [("big.bin", backup_mod.CHANGED)]
    assert calls[0] == backup_mod.COPY_TRIES  # each copy stops at the first chunk that finds it changed
    assert partials(dst) == [] and not (dst / ".outlast-partials").exists()


async def test_a_small_file_rewritten_while_it_is_read_is_copied_again(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file (one read) rewritten during its read kept the old bytes under the new mtime: the next
    backup, seeing the same mtime, had no reason to think it stale. It is copied again now; one that changes
    during every copy is an item failure."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a.txt").write_text("old contents\n")
    (src / "b.txt").write_text("steady\n")
    change_during(monkeypatch, "_copy_range", lambda: rewrite(src / "a.txt", b"new contents!\n"))
    final = await run_backup(engine, src, dst)
    assert final.status is Status.COMPLETED, final.error
    assert (dst / "a.txt").read_text() == "new contents!\n"
    assert snapshot(dst) == snapshot(src)

    monkeypatch.undo()
    dst2 = tmp_path / "dst2"
    flips = iter(range(1000))
    change_during(monkeypatch, "_copy_range", lambda: rewrite(src / "a.txt", b"v%03d\n" % next(flips)), 1000)
    final = await run_backup(engine, src, dst2)
    failures = await engine.store.item_failures(final.id)
    assert [(f.key, f.error) for f in failures] == [("a.txt", backup_mod.CHANGED)]
    assert not (dst2 / "a.txt").exists() and (dst2 / "b.txt").read_text() == "steady\n"
    assert partials(dst2) == []


# ---- a directory swapped for a link ----------------------------------------------------------------------------


async def test_a_directory_swapped_for_a_link_after_the_listing_is_not_followed(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``z`` renamed and replaced by a link to a directory outside the source, after the listing: the files
    listed under ``z`` were read through the link, from outside the source, into the backup. They are
    skipped now (a directory on their path is not a real directory any more), small and large alike."""
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    (src / "z" / "deeper").mkdir(parents=True)
    outside.mkdir()
    (outside / "deeper").mkdir()
    for d, what in ((src / "z", b"harmless"), (outside, b"OUTSIDE THE SOURCE")):
        (d / "secret.txt").write_bytes(what)
        (d / "deeper" / "key.txt").write_bytes(what)
        (d / "big.bin").write_bytes(what * (5 * MB // len(what) + 1))
    (src / "keep.txt").write_text("keep\n")

    def swap() -> None:
        (src / "z").rename(src / "z.moved")
        (src / "z").symlink_to(outside)

    for d in (outside / "deeper", outside):  # marks a copy of their metadata would carry
        d.chmod(0o701)
        os.utime(d, (1_000_000_000, 1_000_000_000))
    after_listing(monkeypatch, swap)
    final = await run_backup(engine, src, dst, chunk_checkpoint=4 * MB)
    assert final.status is Status.COMPLETED, final.error
    copied = {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert not any(b"OUTSIDE" in data for data in copied.values()), sorted(copied)
    assert set(manifest(dst)) == {"keep.txt"}
    assert final.progress.skipped == 3 and final.result["failures"] == 0
    assert any("not followed" in m for m in await logs(engine, final.id))
    # Nor the directories' modes and times: read by path, z's copy took those of the directory outside.
    for d in (dst / "z", dst / "z" / "deeper"):
        st = d.stat()
        assert (st.st_mtime, stat.S_IMODE(st.st_mode)) != (1_000_000_000, 0o701), d


def test_a_source_reached_below_a_swapped_directory_is_refused(tmp_path: Path) -> None:
    """The reader itself: a path whose directory became a link raises NotFollowed (never reads through it);
    the directory it keeps open for a batch's siblings is the real one it reached, wherever it was moved."""
    from engine.operations._backup_source import NotFollowed, Source

    (tmp_path / "src" / "a" / "b").mkdir(parents=True)
    (tmp_path / "src" / "a" / "b" / "f").write_text("in")
    (tmp_path / "out" / "b").mkdir(parents=True)
    (tmp_path / "out" / "b" / "f").write_text("out")

    def read(source: Source, rel: str) -> bytes:
        fd = source.open(rel)
        try:
            return os.read(fd, 100)
        finally:
            os.close(fd)

    with Source(tmp_path / "src") as kept:
        assert read(kept, "a/b/f") == b"in"
        (tmp_path / "src" / "a" / "b").rename(tmp_path / "src" / "a" / "b2")
        (tmp_path / "src" / "a" / "b").symlink_to(tmp_path / "out" / "b")
        # The directory kept open is the one reached before the swap (renamed in the source), never the link.
        assert read(kept, "a/b/f") == b"in"
        with Source(tmp_path / "src") as fresh, pytest.raises(NotFollowed):
            read(fresh, "a/b/f")
        (tmp_path / "src" / "a").rename(tmp_path / "src" / "a2")
        (tmp_path / "src" / "a").symlink_to(tmp_path / "out")
        with pytest.raises(NotFollowed):
            read(kept, "a/x")  # another directory: reached from the root again


# ---- the destination ------------------------------------------------------------------------------------------


def test_a_destination_on_a_kernel_file_system_is_refused_at_validation(cli: Cli, tmp_path: Path) -> None:
    """``/proc/hunt``: os.access says /proc is writable, so it was accepted, stored, and the run failed with a
    raw FileNotFoundError from mkdir. Now one line, exit 2, nothing stored, nothing made."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    (tmp_path / "src").mkdir()
    bad_params(
        cli,
        "backup_operation",
        {"source": str(tmp_path / "src"), "destination": "/proc/hunt"},
        "kernel file system",
    )
