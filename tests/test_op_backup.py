"""backup_operation on real trees: modes, times, symlinks and checksums kept; a worker SIGKILLed inside a large
file resumes at its offset and ends with the same copy as an uninterrupted run; bad params."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Status
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, kill_worker_when, resume, run_json, submit, unreadable

MB = 1 << 20
OLD = 1_500_000_000_123_456_789  # an mtime in ns the copy must keep exactly


def snapshot(root: Path, skip: tuple[str, ...] = (".outlast-manifest.json",)) -> dict[str, tuple]:
    """Every entry under root (root itself as "."): kind, mode, mtime in ns, owner and group, and sha256 or link
    target."""
    out: dict[str, tuple] = {}
    for d, dirs, files in os.walk(root):
        for name in [".", *dirs, *files] if Path(d) == root else [*dirs, *files]:
            p = Path(d) / name if name != "." else root
            rel = p.relative_to(root).as_posix()
            if rel in skip:
                continue
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what: Any = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir",)
            elif not stat.S_ISREG(st.st_mode):
                what = ("special",)
            else:
                what = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            out[rel] = (*what, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid)
    return out


def make_tree(root: Path, big_mb: int = 0) -> None:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "bin").mkdir()
    for i in range(40):
        (root / "docs" / f"note{i:02d}.txt").write_text(f"note {i}\n" * i)
    (root / "docs" / "empty").write_bytes(b"")
    (root / "docs" / "deep" / "data.bin").write_bytes(os.urandom(300_000))
    (root / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "docs" / "private").write_text("mine\n")
    (root / "docs" / "private").chmod(0o600)
    os.utime(root / "docs" / "note03.txt", ns=(OLD, OLD))
    (root / "link-to-file").symlink_to("docs/note01.txt")
    (root / "link-to-dir").symlink_to("docs/deep")
    (root / "dangling").symlink_to("nowhere")
    os.utime(root / "dangling", ns=(OLD, OLD), follow_symlinks=False)
    if big_mb:
        block = os.urandom(MB)
        with open(root / "big.bin", "wb") as fh:
            for i in range(big_mb):
                fh.write(i.to_bytes(4, "big") + block[4:])
    if os.geteuid() == 0:  # owners as a backup of /home or /srv run as root meets them (the copies were root's)
        for name in ("docs/note05.txt", "docs/deep", "link-to-file", "bin/tool"):
            os.chown(root / name, 1234, 2345, follow_symlinks=False)
        (root / "bin" / "tool").chmod(0o4755)  # setuid, which a chown after the chmod would have cleared
    (root / "bin").chmod(0o750)
    os.utime(root / "docs" / "deep", ns=(OLD, OLD))


def partials(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".outlast-partial")]


def assert_resumed_as_whole(killed: Path, whole: Path, src: Path, final: dict[str, Any], ref: dict[str, Any]) -> None:
    """A backup killed and resumed (``final``, into ``killed``) ended as the uninterrupted one (``ref``, into
    ``whole``): the same tree, the same as the source, the same manifest and result, and nothing half-made."""
    assert final["status"] == "completed", final
    assert snapshot(killed) == snapshot(whole) == snapshot(src)
    assert json.loads((killed / ".outlast-manifest.json").read_text()) == json.loads(
        (whole / ".outlast-manifest.json").read_text()
    )
    assert partials(killed) == [] and not (killed / ".outlast-manifest.partial").exists()
    assert {k: v for k, v in final["result"].items() if k != "manifest"} == {
        k: v for k, v in ref["result"].items() if k != "manifest"
    }


async def test_backup_keeps_modes_times_symlinks_and_checksums(engine: Engine, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    secret = src / "docs" / "secret"
    secret.write_text("s\n")
    cannot_read = unreadable(secret)
    os.mkfifo(src / "docs" / "pipe")  # reading it would block: skipped, not copied
    op = await engine.submit(
        OperationSpec(type="backup_operation", params={"source": str(src), "destination": str(dst)})
    )
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    # Not read where this process cannot read it either (run as a user, not root: the README's command).
    want = snapshot(src, skip=("docs/pipe", "docs/secret") if cannot_read else ("docs/pipe",))
    assert final.progress.skipped == 1 and not (dst / "docs" / "pipe").exists()
    if cannot_read:
        failures = await engine.store.item_failures(op.id)
        assert [f.key for f in failures] == ["docs/secret"] and "Permission" in failures[0].error
    assert snapshot(dst) == want
    assert partials(dst) == [] and not (dst / ".outlast-manifest.partial").exists()
    manifest = json.loads((dst / ".outlast-manifest.json").read_text())["files"]
    files = {k: v for k, v in want.items() if v[0] == "file"}
    assert {k: v["sha256"] for k, v in manifest.items() if k in files} == {k: v[1] for k, v in files.items()}
    assert {k for k, v in manifest.items() if v["sha256"] == "symlink"} == {"link-to-file", "link-to-dir", "dangling"}
    assert final.result["files"] == len(manifest) and final.result["failures"] == (1 if cannot_read else 0)
    assert final.result["bytes"] == sum(v["size"] for v in manifest.values())


def test_sigkill_inside_a_large_file_resumes_at_its_offset(cli: Cli, tmp_path: Path) -> None:
    """A worker copying a 160 MB file is SIGKILLed after two in-file checkpoints: no file sits half-written
    under its final name; `outlast resume` goes on at the saved offset; the copy, the manifest and the result
    equal an uninterrupted run's."""
    src, whole, resumed = tmp_path / "src", tmp_path / "whole", tmp_path / "resumed"
    make_tree(src, big_mb=160)
    params: dict[str, Any] = {"source": str(src), "chunk_checkpoint": 4 * MB}
    # stall_timeout below the large file's copy time: bytes reported inside the item keep it alive.
    code, ref, err = run_json(
        cli,
        "run",
        "backup_operation",
        "--params-json",
        json.dumps({**params, "destination": str(whole)}),
        "--profile",
        "stall_timeout=0.5",
    )
    assert code == 0, err
    op_id = submit(cli, "backup_operation", {**params, "destination": str(resumed)}, "checkpoint_interval=3600")
    kill_worker_when(cli, op_id, lambda op: (op.checkpoint_seq or 0) >= 2)
    assert not (resumed / "big.bin").exists(), "the large file was finished before the kill"
    # its partial, under the name every version resumes it from: the path's sha256, in the staging directory
    name = f"{hashlib.sha256(b'big.bin').hexdigest()[:32]}.outlast-partial"
    assert [Path(p).name for p in partials(resumed)] == [name]
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    logs = cli("logs", op_id).stdout
    offset = int(logs.split("resuming big.bin at byte ")[1].split()[0])
    assert offset >= 8 * MB and offset % (4 * MB) == 0
    assert snapshot(resumed) == snapshot(whole) == snapshot(src)
    assert partials(resumed) == []
    m_ref = json.loads((whole / ".outlast-manifest.json").read_text())
    m_got = json.loads((resumed / ".outlast-manifest.json").read_text())
    assert m_got == m_ref
    assert {k: v for k, v in final["result"].items() if k != "manifest"} == {
        k: v for k, v in ref["result"].items() if k != "manifest"
    }


def test_a_large_file_s_copy_moves_the_percent_and_prints_lines_in_a_pipe(cli: Cli, tmp_path: Path) -> None:
    """A backup of one large file (a disk image) read "0/1 items, 0.0%" for all of its copy, and in a pipe printed
    no line between "listing" and "completed" (lines came only when the count moved): the bytes copied of the
    file in hand are the part of the item done now, the percent moves with them and a pipe prints it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "disk.img").write_bytes(os.urandom(4 * MB) * 4)
    params = {"source": str(src), "destination": str(tmp_path / "dst"), "chunk_checkpoint": 4 * MB}
    env = {**cli.env, "OUTLAST_TEST_SLOW_SYNC": "0.5"}  # each 4 MB chunk's sync: the copy outlasts a line's second
    r = cli("--plugin", "tests.backup_slow", "run", "backup_operation", "--params-json", json.dumps(params), env=env)
    assert r.returncode == 0, r.stderr
    during = [float(m) for m in re.findall(r"running +([0-9.]+)% +0/1 items", r.stdout)]
    assert any(0 < pct < 100 for pct in during), r.stdout
    assert during == sorted(during), r.stdout


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    bad_params(
        cli,
        "backup_operation",
        {"source": str(tmp_path / "src"), "destination": str(tmp_path / "src/b")},
        "inside source",
    )
    bad_params(
        cli, "backup_operation", {"source": str(tmp_path / "nope"), "destination": str(tmp_path / "b")}, "source"
    )


def test_a_file_deleted_since_the_listing_is_skipped(tmp_path: Path) -> None:
    from engine.operations.backup import GONE, _copy_batch

    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "src" / "here").write_text("x")
    out = _copy_batch(tmp_path / "src", tmp_path / "dst", ["gone", "here"], True)
    assert [(r, err) for r, _, err, _ in out] == [("gone", GONE), ("here", None)]
    assert (tmp_path / "dst" / "here").read_text() == "x" and partials(tmp_path / "dst") == []


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
async def test_a_destination_with_file_systems_mounted_inside_is_copied_and_synced(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A destination holding mount points (``dst/docs`` and, inside it, ``dst/docs/deep``: a disk per
    directory, or bind mounts of the same file system, which a rename does not cross either): every partial was
    written at the destination root and renamed into place, so each file under a mount failed "Invalid
    cross-device link"; and the batch sync covered the root's file system only, so files there were counted
    done before their bytes were on disk. Both mounts' files are copied, large ones in chunks too, each mount is
    synced, and no staging directory is left on any of them."""
    import subprocess

    import engine.operations.backup as backup_mod
    from tests.fixtures_disk import mount

    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, big_mb=9)
    (src / "docs" / "deep" / "more.bin").write_bytes(os.urandom(9 * MB + 5))
    mounted: list[Path] = []
    try:
        for d in (dst / "docs", dst / "docs" / "deep"):
            d.mkdir(parents=True)
            (elsewhere := tmp_path / f"bound-{len(mounted)}").mkdir()
            how = ["-t", "tmpfs", "-o", "size=20m", "tmpfs"] if kind == "tmpfs" else ["--bind", str(elsewhere)]
            r = mount(*how, str(d))
            if r.returncode != 0:
                pytest.skip(f"cannot mount here (needs root): {r.stderr.strip()}")
            mounted.append(d)
        synced: list[str] = []
        sync = backup_mod.sync_tree
        monkeypatch.setattr(backup_mod, "sync_tree", lambda path: (synced.append(str(path)), sync(path))[1])
        params = {"source": str(src), "destination": str(dst), "chunk_checkpoint": 4 * MB}
        final = await engine.wait((await engine.submit(OperationSpec(type="backup_operation", params=params))).id, 60)
        assert final.status is Status.COMPLETED and final.result["failures"] == 0, final.error
        assert snapshot(dst) == snapshot(src)
        assert partials(dst) == [] and not [p for p in dst.rglob(".outlast-partials*")]
        assert {str(dst / "docs"), str(dst / "docs" / "deep")} <= set(synced), synced
    finally:
        for d in reversed(mounted):
            subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30)


async def test_a_manifest_temp_a_killed_attempt_left_is_removed(engine: Engine, tmp_path: Path) -> None:
    """An attempt SIGKILLed while it wrote the manifest left its temporary file (``..outlast-manifest.json.PID.
    NS.tmp``) at the destination's root, and the resumed backup kept it: the copy differed from an
    uninterrupted one by that file (test_fault_kill's backup round, seed 3755498780, once). A source file
    of such a name is copied and kept."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    (src / "..outlast-manifest.json.1.2.tmp").write_text("the user's\n")
    dst.mkdir()
    left = dst / "..outlast-manifest.json.4242.1796528422241772651.tmp"
    left.write_text('{"source": "half a manifest')
    op = await engine.submit(
        OperationSpec(type="backup_operation", params={"source": str(src), "destination": str(dst)})
    )
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    assert not left.exists()
    assert snapshot(dst) == snapshot(src)
