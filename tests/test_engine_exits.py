"""A handler that calls ``sys.exit`` (a script turned operation) ends its own operation, not the worker:
SystemExit went through the attempt to the event loop and took the whole process down, with the exit
code of the handler's script, every other operation there stopped by force and the exiting one left
running, then found interrupted, and with ``auto_resume`` run again into the same exit."""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

import pytest

from engine import Engine, OperationContext, OperationSpec, Status, operation
from tests.fixtures_cli import Cli

PLUGIN = ("--plugin", "tests.ops_for_tests")


def test_sys_exit_in_a_handler_ends_its_operation_and_the_worker_goes_on(cli: Cli) -> None:
    def submit(type_: str, **params: object) -> str:
        r = cli.here(*PLUGIN, "submit", type_, "--params-json", json.dumps(params))
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    others = submit("ledger", items=15, seconds=0.02)
    failing, finishing, with_text = submit("exiter", code=3), submit("exiter", code=0), submit("exiter", code="bad")
    r = cli(*PLUGIN, "worker", "--exit-when-idle", "--concurrency", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr

    def rec(op_id: str) -> dict:
        return json.loads(cli.here("--json", "show", op_id).stdout)

    assert rec(others)["status"] == "completed" and rec(others)["result"] == {"sum": 105}
    done = rec(finishing)
    assert (done["status"], done["result"], done["progress"]["done"]) == ("completed", None, 2), done
    for op_id, code in ((failing, "3"), (with_text, "'bad'")):
        failed = rec(op_id)
        assert failed["status"] == "failed", failed
        assert failed["error"].startswith(f"the handler called sys.exit({code}) (at ops_for_tests.py:"), failed["error"]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


@operation("test_unprintable")
async def unprintable(ctx: OperationContext, p: object) -> None:
    async for i in ctx.items(range(3), key=str):
        if i == 1:
            raise Unprintable()
    raise Unprintable()


async def test_an_exception_whose_str_fails_is_named_not_an_internal_error(engine: Engine) -> None:
    """Its message is what the record and the log say of a failure: the str() failing inside the attempt
    made it "internal error: RuntimeError: no text for this one", with a traceback on stderr."""
    final = await engine.wait((await engine.submit(OperationSpec(type="test_unprintable"))).id, timeout=20)
    assert final.status is Status.FAILED
    assert (final.error or "").startswith("Unprintable: <str() of it failed: RuntimeError> (at "), final.error
    logs = [r.message for r in (await engine.store.read_logs(final.id))[0] if r.level == "warning"]
    assert logs == ["item failed: 1: Unprintable: <str() of it failed: RuntimeError>"], logs


class OwnBase(BaseException):
    """A library's own BaseException (as trio's Cancelled, or gevent's GreenletExit)."""


async def _work(ctx: OperationContext) -> dict[str, int]:
    async for _ in ctx.items(range(4), key=str):
        pass
    return {"done": ctx.done}


@operation("test_raises_base")
async def raises_base(ctx: OperationContext, p: Any) -> Any:
    how = p.how
    if how == "returns its work unawaited":
        return _work(ctx)  # ``return await _work(ctx)`` meant: the work ran as nothing, the coroutine the result
    await _work(ctx)
    if how == "pytest.fail":
        pytest.fail("the check in the handler failed")  # Failed: a BaseException
    if how == "GeneratorExit":
        raise GeneratorExit()
    if how == "own BaseException":
        raise OwnBase("stopped by the library")
    raise BaseExceptionGroup("in a task group", [OwnBase("one"), ValueError("two")])


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("pytest.fail", "Failed: the check in the handler failed (at "),  # pytest's own line
        ("GeneratorExit", "GeneratorExit (at test_engine_exits.py:"),
        ("own BaseException", "OwnBase: stopped by the library (at test_engine_exits.py:"),
        ("group", "BaseExceptionGroup: in a task group (2 sub-exceptions) (at test_engine_exits.py:"),
    ],
)
async def test_a_base_exception_from_a_handler_fails_its_operation(engine: Engine, how: str, error: str) -> None:
    """It went past the attempt and ended the engine's task: the operation was left running until the
    process exited (then found interrupted, and run again into the same end on resume)."""
    op = await engine.submit(OperationSpec(type="test_raises_base", params={"how": how}))
    final = await asyncio.wait_for(engine.wait(op.id), 20)
    assert final.status is Status.FAILED and (final.error or "").startswith(error), final.error
    assert final.progress.done == 4 and [c.processed_items for c in await engine.checkpoints(op.id)] == [4]


async def test_a_coroutine_returned_by_a_handler_is_awaited(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_raises_base", params={"how": "returns its work unawaited"}))
    final = await asyncio.wait_for(engine.wait(op.id), 20)
    assert (final.status, final.result) == (Status.COMPLETED, {"done": 4}), (final.status, final.result)


@pytest.mark.parametrize("how", ["run", "worker"])
def test_a_thread_blocked_for_ever_does_not_keep_the_command_from_exiting(cli: Cli, how: str) -> None:
    """A handler's thread stuck in a call that never returns (here an Event nobody sets; in the field an
    open of a FIFO, a hung NFS read) outlived its timed-out operation, and ``asyncio.run`` then the
    interpreter waited for it at exit: ``outlast run`` and ``outlast worker --exit-when-idle`` never
    ended, not even on SIGTERM. Now the command exits with its code and says where the thread is stuck."""
    env = {**cli.env, "OUTLAST_GRACE_PERIOD": "0.5"}
    timed = ("--timeout", "1", "--profile", "stall_timeout=1")
    if how == "run":
        r = cli(*PLUGIN, "run", "thread_blocker", *timed, timeout=60, env=env)
        assert r.returncode == 5, r  # ExitCode.TIMED_OUT
    else:
        assert cli(*PLUGIN, "submit", "thread_blocker", *timed, env=env).returncode == 0
        r = cli(*PLUGIN, "worker", "--exit-when-idle", timeout=60, env=env)
        assert r.returncode == 0, r
    lines = [ln for ln in r.stderr.splitlines() if "without waiting" in ln]
    assert len(lines) == 1 and re.fullmatch(
        r"outlast: exiting without waiting for 1 thread\(s\) of ended operations still blocked at threading\.py:\d+"
        r" in wait \(standard library\) \(a blocking call that never returned: give it a timeout\)",
        lines[0],
    ), r.stderr
    assert json.loads(cli.here("--json", "ls").stdout)[0]["status"] == "timed_out"


def test_handlers_blocked_in_threads_for_ever_do_not_starve_a_worker(cli: Cli) -> None:
    """Handlers stuck in ``asyncio.to_thread`` calls that never return, as many as the loop's pool has threads
    and more: each one held a thread after its operation was stopped, and the engine's own work on that pool
    (the log line of a stall, the settle after it) waited behind them. The worker ran nothing more: no stall
    was called, a cancel never landed, SIGTERM was waited out, and an operation behind them (here one whose
    thread returns at once) stayed running at 0 for ever. After six stalled network reads, one at a time, a
    long-lived worker was dead. Now each stops as stalled, and every call left blocked gives the pool a thread
    more while it blocks."""
    pool = min(32, (os.cpu_count() or 1) + 4)  # the threads asyncio.to_thread had by default
    env = {**cli.env, "OUTLAST_GRACE_PERIOD": "0.5"}
    stuck = []
    for _ in range(pool + 2):
        r = cli.here(*PLUGIN, "submit", "thread_blocker", "--profile", "stall_timeout=1", env=env)
        assert r.returncode == 0, r.stderr
        stuck.append(r.stdout.strip())
    r = cli.here(*PLUGIN, "submit", "thread_waiter", "-p", "seconds=0.1", env=env)
    after = r.stdout.strip()
    r = cli(*PLUGIN, "worker", "--exit-when-idle", "--concurrency", str(pool + 3), timeout=90, env=env)
    assert r.returncode == 0, r
    statuses = {op["id"]: op["status"] for op in json.loads(cli.here("--json", "ls", "--limit", "100").stdout)}
    assert [statuses[i] for i in stuck] == ["timed_out"] * len(stuck), statuses
    assert statuses[after] == "completed", statuses
    left = re.search(r"exiting without waiting for (\d+) thread\(s\) of ended operations still blocked", r.stderr)
    assert left and pool <= int(left.group(1)) <= pool + 2, r.stderr
