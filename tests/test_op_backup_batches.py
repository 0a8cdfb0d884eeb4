"""Small files are copied in batches with one sync each, before the batch's renames; the renames are made
durable by the next batch's sync, and only then are the files counted done. A SIGKILL in the middle of a
batch's renames: no file of that batch is in a checkpoint, and the resume ends byte for byte with the copy,
manifest and result of an uninterrupted run. A copy is verified as it is written: one that reads back
different is an item failure and is removed."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Status
from engine.operations import backup
from engine.operations.backup import SMALL_BATCH
from tests.fixtures_cli import Cli
from tests.fixtures_engine import until
from tests.fixtures_ops import done_keys, resume, run_json
from tests.test_op_backup import OLD, assert_resumed_as_whole, partials, snapshot

FILES = SMALL_BATCH * 2 + 40
"""Three batches: the kill lands in the second one's renames."""


def small_tree(root: Path) -> list[str]:
    """``FILES`` small files in three directories, some with their own mode and times; their keys, sorted."""
    for i in range(FILES):
        d = root / f"d{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}").write_bytes(os.urandom(100 + i * 7))
        if i % 17 == 0:
            (d / f"f{i:04d}").chmod(0o640)
            os.utime(d / f"f{i:04d}", ns=(OLD, OLD + i))
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_kill_among_a_batch_renames_counts_none_of_it_and_resumes_byte_identical(cli: Cli, tmp_path: Path) -> None:
    src, whole, killed = tmp_path / "src", tmp_path / "whole", tmp_path / "killed"
    keys = small_tree(src)
    profile = ["--profile", "checkpoint_interval=3600", "--profile", "checkpoint_every=50"]
    params: dict[str, Any] = {"source": str(src)}
    code, ref, err = run_json(
        cli, "run", "backup_operation", "--params-json", json.dumps({**params, "destination": str(whole)}), *profile
    )
    assert code == 0, err
    die_after = SMALL_BATCH + SMALL_BATCH // 2  # half of the second batch renamed into place
    env = {**cli.env, "OUTLAST_TEST_DIE_AT": "placed", "OUTLAST_TEST_DIE_AFTER": str(die_after)}
    args = ["--plugin", "tests.backup_die", "run", "backup_operation", "--params-json"]
    r = cli(*args, json.dumps({**params, "destination": str(killed)}), *profile, env=env)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    op_id = next(op["id"] for op in json.loads(cli("--json", "ls").stdout) if op["id"] != ref["id"])

    first, second = set(keys[:SMALL_BATCH]), set(keys[SMALL_BATCH : 2 * SMALL_BATCH])
    renamed = {k for k in second if (killed / k).exists()}
    assert len(renamed) == SMALL_BATCH // 2, len(renamed)  # killed just after the last of these renames
    done = done_keys(cli.state_dir, op_id)
    assert done and done <= first, sorted(done - first)[:5]  # counted (and checkpointed) after the next sync only

    assert_resumed_as_whole(killed, whole, src, resume(cli, op_id), ref)


def _corrupting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block written to a copy has its first byte flipped (what the verification is there to catch),
    whether written from the bytes read or by the kernel from the source (a large block: ``os.sendfile``)."""
    real, send = backup._pwrite_all, os.sendfile

    def flipped(fd: int, data: bytes | memoryview, at: int) -> None:
        real(fd, bytes([data[0] ^ 0xFF]) + data[1:], at)

    def sent_flipped(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        at = os.lseek(out_fd, 0, os.SEEK_CUR)
        n = send(out_fd, in_fd, offset, count)
        if n:
            os.pwrite(out_fd, bytes([os.pread(out_fd, 1, at)[0] ^ 0xFF]), at)
        return n

    monkeypatch.setattr(backup, "_pwrite_all", flipped)
    monkeypatch.setattr(os, "sendfile", sent_flipped)


def test_a_small_copy_that_reads_back_different_fails_and_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "src" / "a").write_bytes(os.urandom(5000))
    _corrupting(monkeypatch)
    out = backup._copy_batch(tmp_path / "src", tmp_path / "dst", ["a"], True)
    assert [(r, n) for r, n, _err, _ in out] == [("a", 0)]
    assert "verification failed" in (out[0][2] or "") and str(tmp_path / "src" / "a") in (out[0][2] or "")
    assert not (tmp_path / "dst" / "a").exists() and partials(tmp_path / "dst") == []
    monkeypatch.undo()  # written as it was read: the same copy passes
    out = backup._copy_batch(tmp_path / "src", tmp_path / "dst", ["a"], True)
    assert out[0][2] is None and (tmp_path / "dst" / "a").read_bytes() == (tmp_path / "src" / "a").read_bytes()


def test_a_large_chunk_that_reads_back_different_fails_and_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 * backup.CHUNK // 2))
    dst.mkdir()
    copied = os.stat(src / "big")
    offset, h = backup._open_partial(dst, "big", 0)
    _corrupting(monkeypatch)
    with pytest.raises(OSError, match="verification failed"):
        backup._append(src, "big", copied, dst, offset, backup.CHUNK * 4, h, True)
    assert partials(dst) == []
    offset, h = backup._open_partial(dst, "big", 0)
    n = backup._append(src, "big", copied, dst, offset, backup.CHUNK * 4, h, False)
    assert n == copied.st_size  # unchecked: passes


async def test_a_pause_while_the_next_batch_is_written_leaves_no_partial_and_resumes_to_the_same_copy(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next batch is written (in another thread) while the one before is synced and counted. A pause
    noticed there waits for that write, syncs, renames both batches into place without counting them, and
    leaves no partial behind; the resume copies them again and ends with the source's copy."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    keys = small_tree(src)
    real, calls = backup._write_batch, []
    second = threading.Event()

    def slow(*args: Any) -> Any:
        calls.append(len(args[2]))
        if len(calls) == 2:
            second.set()
        time.sleep(0.2)  # long enough for the pause to be asked while it runs
        return real(*args)

    monkeypatch.setattr(backup, "_write_batch", slow)
    op = await engine.submit(
        OperationSpec(
            type="backup_operation",
            params={"source": str(src), "destination": str(dst)},
            profile={"checkpoint_interval": 3600},
        )
    )
    await until(second.is_set, timeout=20)
    await engine.pause(op.id)
    paused = await engine.wait(op.id, timeout=20)
    assert paused.status is Status.PAUSED, paused.status_message
    assert len(calls) == 3  # the third batch was being written when the stop was noticed: waited for
    assert partials(dst) == []
    got = await engine.store.load_checkpoint(op.id)
    done = set(got[1].done) if got else set()
    assert done <= set(keys[:SMALL_BATCH])
    assert all((dst / k).read_bytes() == (src / k).read_bytes() for k in keys if (dst / k).exists())
    monkeypatch.undo()
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED, final.error
    assert snapshot(dst) == snapshot(src)
    assert set(json.loads((dst / ".outlast-manifest.json").read_text())["files"]) == set(keys)
    assert final.result["files"] == len(keys) and final.result["failures"] == 0
