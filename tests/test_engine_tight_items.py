"""A ``ctx.items`` loop whose bodies never await (many quick items of synchronous work) held the event loop
from its first item to its last: the engine's clock never ran, so no checkpoint came due and no signal was
seen. 1.9M items over 12s with a checkpoint_interval of 1s were saved by no checkpoint at all (a SIGKILL lost
every one), and a single Ctrl-C did nothing until the loop ended. The loop now lets the event loop turn at an
item boundary once the engine's clock is 0.3 s late: the loop looks at the clock itself every 16 items, and the
loop's watch thread nudges it too (that thread alone came 1-2 s late on a loaded machine, waiting for the GIL as
long: a Redis lease of 2 s ran out)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from engine import Status
from tests.fixtures_cli import Cli, CliAt, Proc, until
from tests.fixtures_redis import RedisServer

PLUGIN = ("--plugin", "tests.ops_for_tests")


def _start(cli: Cli, tmp_path: Path) -> tuple[Proc, str]:
    params = ("-p", f"first={tmp_path / 'first'}", "-p", f"stop={tmp_path / 'stop'}")
    runner = cli.start(*PLUGIN, "run", "tight_items", *params, "--profile", "checkpoint_interval=0.2")
    op_id = runner.wait_line(lambda ln: " submitted: " in ln).split()[1]
    return runner, op_id


def test_a_loop_of_bodies_that_never_await_is_checkpointed_and_resumed_from_there(cli: Cli, tmp_path: Path) -> None:
    runner, op_id = _start(cli, tmp_path)
    # Before: no checkpoint while the loop ran, however long.
    until(lambda: (cli.op(op_id).checkpoint_seq or 0) >= 2, 30, what="checkpoints of the running loop")
    runner.kill()
    (tmp_path / "stop").touch()
    done = cli(*PLUGIN, "resume", op_id)
    assert done.returncode == 0, done.stderr
    firsts = [int(n) for n in (tmp_path / "first").read_text().split()]
    assert len(firsts) == 2 and firsts[0] == 0, firsts
    assert firsts[1] > 0, "the resume ran every item again: nothing had been checkpointed"


def test_one_ctrl_c_pauses_a_loop_of_bodies_that_never_await(cli: Cli, tmp_path: Path) -> None:
    runner, op_id = _start(cli, tmp_path)
    until(lambda: (tmp_path / "first").exists() and cli.op(op_id).status is Status.RUNNING, 30)
    runner.signal(signal.SIGINT)
    assert runner.wait(timeout=30) == 6, runner.err
    op = cli.op(op_id)
    assert op.status is Status.PAUSED, (op.status, op.status_message)
    assert "forced" not in (op.status_message or ""), op.status_message  # at an item boundary, with a checkpoint
    assert (op.checkpoint_seq or 0) >= 1, op


@pytest.mark.redis
def test_a_loop_of_bodies_that_never_await_keeps_its_redis_lease(redis_server: RedisServer, tmp_path: Path) -> None:
    """On Redis the lease went too: not renewed while the loop held the event loop, it ran out, and a worker
    beside took the operation over and ran its items again from the start, three times, the first attempt's
    "completed" refused, until it was left interrupted as a process that "died under it at every attempt"."""
    url = f"{redis_server.url}?lease_ttl=2"
    cli = CliAt(tmp_path / "state", OUTLAST_AUTO_RESUME="true")
    try:
        cli.start("--store", url, *PLUGIN, "worker")
        params = ("-p", f"first={tmp_path / 'first'}", "-p", f"stop={tmp_path / 'stop'}")
        runner = cli.start("--store", url, *PLUGIN, "run", "tight_items", *params, "--profile", "checkpoint_interval=1")
        until(lambda: (tmp_path / "first").exists(), 30, what="the loop's first item")
        time.sleep(6)  # three leases' time in the loop: a worker could have taken it over twice
        (tmp_path / "stop").touch()
        assert runner.wait(timeout=30) == 0, runner.err
        firsts = (tmp_path / "first").read_text().split()
        assert firsts == ["0"], ("attempts after the first: the lease was lost", [p.err for p in cli.procs])
    finally:
        cli.close()
