"""A stop signal that reaches `outlast run` after its operation completed changes nothing of its outcome.

The event loop's close put back the default handling of SIGINT, SIGTERM and SIGHUP, and the process still had
its exit to make: Ctrl-C pressed as the run ended, or a supervisor's SIGTERM then, ended a run that had said
"completed" in a KeyboardInterrupt traceback or killed by the signal (-2, -15, -1). The handler here leaves a
non-daemon thread, so the exit waits a second for it (``engine.threads.GRACE``): the signal lands there.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from tests.fixtures_cli import Cli

PLUGIN = ("--plugin", "tests.ops_misbehaving")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_after_completion_keeps_exit_0(cli: Cli, tmp_path: Path, sig: signal.Signals) -> None:
    run = cli.start(*PLUGIN, "run", "mb_thread", "-p", f"log={tmp_path}/ledger")
    run.wait_line(lambda ln: " completed at 3/3 items" in ln, 60)
    run.signal(sig)
    assert run.wait(30) == 0, run.err
    assert not [ln for ln in run.err if "Traceback" in ln or "KeyboardInterrupt" in ln], run.err
    [op] = json.loads(cli("ls", "--json").stdout)
    assert op["status"] == "completed"


def test_a_loop_run_again_handles_stop_signals_as_before() -> None:
    """``run --detach`` runs a second loop (waiting for its runner) after the submit's: there a SIGTERM ends
    the command as it did, not once ignored as after an outcome."""
    from engine.threads import outcome_released, run

    saved = signal.getsignal(signal.SIGTERM)

    async def handles_sigterm() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)

    async def handling() -> object:
        return signal.getsignal(signal.SIGTERM)

    try:
        run(handles_sigterm())
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, saved)  # kept from the outcome
        assert run(handling()) is signal.SIG_DFL
        run(handles_sigterm())
        outcome_released()  # as the command line's main returns (to a test, in this process)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, saved)
