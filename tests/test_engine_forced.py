"""A stop by force reaches a handler that holds the event loop, and never cuts off the attempt's own
final writes.

- A handler doing blocking work on the loop (``time.sleep``, a long computation) held back Ctrl-C: the
  loop that handles the signal never turned, so Ctrl-C, and Ctrl-C again, did nothing until the work
  returned. The second signal now breaks into the handler where it stands.
- A second Ctrl-C while the final checkpoint of a stop was being saved cancelled that save: the attempt
  ended without settling, the operation stayed running, and ``outlast run`` waited for it for ever.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from engine import OperationSpec, Settings, Status
from tests.fixtures_cli import Cli, until
from tests.fixtures_engine import make_engine
from tests.fixtures_engine import until as until_async


@pytest.mark.parametrize("how", ["compute", "sleep"])
def test_ctrl_c_twice_stops_a_handler_that_holds_the_event_loop(cli: Cli, how: str) -> None:
    runner = cli.start("--plugin", "tests.ops_for_tests", "run", "blocker", "-p", f"how={how}")
    op_id = runner.wait_line(lambda ln: " submitted: " in ln).split()[1]
    until(lambda: cli.op(op_id).status is Status.RUNNING, 30)
    time.sleep(0.7)  # in the handler's blocking work by now: the loop no longer turns
    runner.signal(signal.SIGINT)
    time.sleep(0.7)
    runner.signal(signal.SIGINT)
    assert runner.wait(timeout=20) == 6, runner.err  # paused, not the 60 s the work would take
    op = cli.op(op_id)
    assert op.status is Status.PAUSED and "forced: the handler held the event loop" in (op.status_message or "")
    logs = cli("logs", op_id).stdout
    assert "a second signal broke into the handler, which held the event loop at ops_for_tests.py:" in logs


async def test_a_force_while_the_final_checkpoint_is_saved_does_not_cut_it_off(settings: Settings) -> None:
    async with make_engine(settings.model_copy(update={"plugins": ["tests.ops_for_tests"]})) as engine:
        # ``silent`` stops from ctx.progress() outside any item: its final checkpoint is the attempt's own.
        spec = OperationSpec(type="silent", params={"items": 5, "hang_after": 2}, profile={"checkpoint_interval": 3600})
        op = await engine.submit(spec)
        await until_async(lambda: _done(engine, op.id))
        saving, go_on = asyncio.Event(), asyncio.Event()
        real = engine.store.save_checkpoint

        async def slow_save(*args: object, **kw: object) -> object:
            saving.set()
            await go_on.wait()
            return await real(*args, **kw)  # type: ignore[arg-type]

        engine.store.save_checkpoint = slow_save  # type: ignore[method-assign]
        engine.stop_for_signal(signal.SIGINT)  # a stop: the handler reaches a safe point, the final checkpoint
        await asyncio.wait_for(saving.wait(), 10)
        engine.stop_for_signal(signal.SIGINT)  # force, while that checkpoint is being saved
        await asyncio.sleep(0.6)  # several supervisor ticks: one would have cancelled the attempt's task
        go_on.set()
        final = await engine.wait(op.id, timeout=10)
        assert final.status is Status.PAUSED and final.checkpoint_seq == 1, final


async def _done(engine: object, op_id: str) -> bool:
    live = engine.live(op_id)  # type: ignore[attr-defined]
    return live is not None and live.done >= 2
