"""A file read before a kill, changed before the resume, is read again even when the clock of the process that
read it was ahead (libfaketime: a machine whose clock runs fast, a worker on another host, a clock stepped back
by NTP after the run began).

The resume looked for changes by comparing each file's ctime with the wall time the first attempt began reading
(``reading_since``). The kernel stamps a ctime from its own clock: the first attempt's clock an hour ahead, a
change made after the kill had a ctime before that start, and was taken for no change. The backup then ended
"completed" with the copy of the file before the change; the security scan reported the tree without the key
added to it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine import Status
from tests.fixtures_cli import Cli
from tests.fixtures_ops import done_keys, kill_worker_when, resume, submit
from tests.test_op_backup import snapshot
from tests.test_retry_clock import FAKETIME

pytestmark = pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed")


class AheadCli(Cli):
    """The console script with its wall clock an hour ahead (its monotonic clock as it is)."""

    @property
    def env(self) -> dict[str, str]:
        assert FAKETIME is not None
        return {**super().env, "LD_PRELOAD": FAKETIME, "FAKETIME": "+1h", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _killed_ahead(cli: Cli, kind: str, params: dict[str, object], every: str) -> tuple[str, list[str]]:
    """``kind`` submitted, then run by a worker whose clock is an hour ahead, killed once a file is done: its
    id and done keys."""
    op_id = submit(cli, kind, params, "checkpoint_interval=0.1", every)
    ahead = AheadCli(cli.state_dir)
    try:
        killed = kill_worker_when(
            ahead,
            op_id,
            lambda op: op.status.value not in ("queued", "running") or len(done_keys(cli.state_dir, op.id)) > 1,
        )
    finally:
        ahead.close()
    assert killed.status is Status.RUNNING, killed.error
    return op_id, sorted(done_keys(cli.state_dir, op_id))


def _change_keeping_mtime(path: Path, data: bytes) -> None:
    """Write ``data`` (of the file's size) and put its mtime back, as ``rsync -t`` or a checkout does."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_backup_copies_again_a_file_changed_after_a_fast_clock_read_it(cli: Cli, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:04d}.txt").write_bytes(os.urandom(2000))
    params = {"source": str(src), "destination": str(dst)}
    op_id, done = _killed_ahead(cli, "backup_operation", params, "checkpoint_every=64")
    _change_keeping_mtime(src / done[0], os.urandom(2000))

    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert snapshot(dst) == snapshot(src)


def test_a_scan_reads_again_a_file_changed_after_a_fast_clock_read_it(cli: Cli, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    plain, key = b'x = "AAAAAAAAAAAAAAAAAAAA"\n', b'x = "AKIAZ7QW3XK5P2LM9RTB"\n'
    body = "".join(f"def g{i}(v):\n    return v + {i}\n\n" for i in range(8)).encode()
    for i in range(40):
        (root / f"m{i:04d}.py").write_bytes(plain + body)
    out = tmp_path / "scan.sarif"
    op_id, done = _killed_ahead(cli, "security_scan", {"root": str(root), "output": str(out)}, "checkpoint_every=10")
    _change_keeping_mtime(root / done[0], key + body)

    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    findings = json.loads(out.with_suffix(".json").read_text())["findings"]
    assert any(f.get("path", f.get("file")) == done[0] for f in findings), findings


def test_a_knowledge_base_reads_again_a_document_changed_after_a_fast_clock_read_it(cli: Cli, tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(200):
        (root / f"d{i:04d}.md").write_text(f"# Doc {i:04d}\n\nplain words here\n")
    params = {"source": str(root), "kb": str(tmp_path / "kb.db")}
    op_id, done = _killed_ahead(cli, "kb_population", params, "checkpoint_every=50")
    path = root / done[0]
    _change_keeping_mtime(path, path.read_bytes().replace(b"plain words here", b"volcano lava ash"))

    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    searched = cli("kb", "search", "volcano", "--kb", str(tmp_path / "kb.db"))
    assert done[0] in searched.stdout, searched.stdout + searched.stderr
