"""`outlast run` in a real terminal (tmux): a live progress display, and Ctrl-C pauses it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.fixtures_cli import REPO, Cli, until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def test_run_shows_live_progress_and_ctrl_c_pauses(cli: Cli) -> None:
    sock = f"outlast-cli-{uuid.uuid4().hex[:10]}"
    tmux = ["tmux", "-L", sock]
    env = " ".join(
        f"{k}={shlex.quote(v)}" for k, v in os.environ.items() if k.startswith(("OUTLAST_", "XDG_")) or k == "PATH"
    )
    cmd = (
        f"env {env} {shlex.quote(sys.executable)} -m engine.cli run demo -p items=2000 -p seconds=0.02 "
        "-p fail_every=50; echo EXIT=$?; sleep 120"
    )
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "40", "-c", str(REPO), cmd], check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout

    def items_shown() -> int | None:
        m = re.search(r"items (\d+)/2000", screen())
        return int(m.group(1)) if m else None

    try:
        first = until(items_shown, 30, what="live panel with items")
        text = screen()
        assert "━" in text  # the progress bar
        for word in ("demo", "running", "rate", "eta", "deadline in", "step item", "Ctrl-C pauses"):
            assert word in text, (word, text)
        assert re.search(r"\d+\.\d%", text)
        until(lambda: (n := items_shown()) is not None and n > first, 30, what="the display updates")
        until(lambda: "failed on purpose" in screen(), 30, what="log lines in the panel")

        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
        until(lambda: "EXIT=" in screen(), 40, what="run to exit after Ctrl-C")
        text = screen()
        assert "EXIT=6" in text, text
        assert "paused" in text and "outlast resume" in text
        assert "Traceback" not in text
        op_id = re.search(r"outlast resume ([0-9a-z]{13})", text).group(1)
        op = cli.op(op_id)
        assert op.status.value == "paused" and op.checkpoint_seq
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
