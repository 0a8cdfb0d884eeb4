"""After ``kill -9`` of a run, ``outlast show`` reports the progress of the newest checkpoint, where a resume goes
on from. The record's count is the clock's last write of live progress (every ``progress_flush_interval``), not
a checkpoint's: a run killed between two writes showed fewer items done than its newest checkpoint held
(400/1536 against a checkpoint at 700), which reads as work lost."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

from tests import zygote
from tests.fixtures_cli import REPO, CliAt, until

PLUGIN = ["--plugin", "tests.ops_for_tests"]


def _newest_checkpoint(db: Path) -> int:
    """The newest checkpoint's seq, read as another process would (0: none yet, or no store yet)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT MAX(seq) FROM checkpoints").fetchone()
    except sqlite3.OperationalError:  # the tables are not made yet
        return 0
    return int(row[0] or 0)


def test_show_after_kill_agrees_with_newest_checkpoint(state_dir: Path) -> None:
    # The clock writes live progress at the attempt's start and then once a minute: every checkpoint after the
    # first write is ahead of the record's count when the process is killed.
    cli = CliAt(state_dir, OUTLAST_PROGRESS_FLUSH_INTERVAL="60")
    args = [*PLUGIN, "run", "ledger", "-p", "items=1536", "-p", "seconds=0.002", "-p", "explicit_every=1"]
    run = zygote.popen(
        [*args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=REPO, env=cli.env,
    )  # fmt: skip
    try:
        until(lambda: _newest_checkpoint(state_dir / "outlast.db") >= 40, timeout=60, every=0.02, what="40 checkpoints")
        run.send_signal(signal.SIGKILL)
        run.wait(10)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    listed = cli("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    (op,) = json.loads(listed.stdout)
    shown = cli(*PLUGIN, "show", op["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["status"] == "interrupted"
    newest = record["checkpoints"][0]
    assert newest["processed_items"] >= 40
    assert record["progress"]["done"] == newest["processed_items"], (record["progress"], newest)
    text = cli(*PLUGIN, "show", op["id"]).stdout
    n = newest["processed_items"]
    # The total is the record's as the clock last wrote it (1536, or none if it never wrote before the kill).
    assert re.search(rf"^progress .* {n}(/1536)? items", text, re.M), text
    assert f"newest #{newest['seq']} at {n} items" in text, text
