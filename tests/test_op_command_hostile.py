"""command against hostile commands: what they leave running, what they print, what they are given."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from engine import Engine, OperationSpec, Status
from tests.fixtures_engine import until as until_async


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _kill(pids: list[int]) -> None:
    """Never leave a test's process behind, even when the test fails."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


async def _logged(engine: Engine, op_id: str, text: str) -> bool:
    records, _ = await engine.logs(op_id)
    return any(text in r.message for r in records)


async def test_a_background_job_that_keeps_printing_ends_2s_after_the_command_exited(
    engine: Engine, tmp_path: Path
) -> None:
    """``(while :; do echo tick; sleep 0.5; done) & exit 0``: the output counted as ended only after 2 s of
    silence following the exit, which a chattering job never gives: the operation ran forever. It now ends
    HELD_OPEN seconds after the exit whatever still writes, and the job is killed."""
    pids = tmp_path / "pids"
    cmd = f"(echo $BASHPID $$ > {pids}; while :; do echo tick; sleep 0.2; done) & echo main-exits; exit 0"
    op = await engine.submit(OperationSpec(type="command", params={"argv": ["bash", "-c", cmd]}))
    try:
        started = time.monotonic()
        final = await engine.wait(op.id, timeout=15)
        assert final.status is Status.COMPLETED and final.result["exit_code"] == 0, final
        assert time.monotonic() - started < 10
        job = int(pids.read_text().split()[0])
        await until_async(lambda: not _alive(job), timeout=10)
        await until_async(lambda: _logged(engine, op.id, "kept its output open"), timeout=10)
    finally:
        if pids.exists():
            _kill([int(p) for p in pids.read_text().split()])
