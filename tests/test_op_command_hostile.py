"""command against hostile commands: what they leave running, what they print, what they are given."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Settings, Status
from tests.fixtures_engine import make_engine
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


@pytest.mark.parametrize("stop", ["cancel", "pause", "timeout"])
async def test_a_command_that_closed_its_output_stops_at_once(settings: Settings, tmp_path: Path, stop: str) -> None:
    """``echo bye; exec >&- 2>&-; sleep``: the output ended, and the wait for the exit did not look at
    stops: cancel, pause and timeout each waited out the grace period, "forced". With a 60 s grace period
    each now takes effect at once."""
    pids = tmp_path / "pids"
    cmd = f"echo $$ > {pids}; echo bye; exec >&- 2>&-; sleep 300"
    async with make_engine(settings.model_copy(update={"grace_period": 60.0})) as engine:
        spec = OperationSpec(
            type="command", params={"command": cmd, "shell": True}, timeout=2.0 if stop == "timeout" else None
        )
        op = await engine.submit(spec)
        try:
            await until_async(lambda: pids.exists() and pids.read_text().strip(), timeout=20)
            shell = int(pids.read_text())
            if stop == "cancel":
                await engine.cancel(op.id)
            elif stop == "pause":
                await engine.pause(op.id)
            final = await engine.wait(op.id, timeout=15)
            want = {"cancel": Status.CANCELLED, "pause": Status.PAUSED, "timeout": Status.TIMED_OUT}[stop]
            assert final.status is want and "forced" not in (final.status_message or ""), final
            await until_async(lambda: not _alive(shell), timeout=10)
        finally:
            if pids.exists() and pids.read_text().strip():
                _kill([int(pids.read_text())])
