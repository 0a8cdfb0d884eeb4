"""A pause and a recovery of the orphan it is asked of, crossing: the pause is kept, on both stores.

Recovery reads the orphans' pending requests, then writes each one's status: interrupted, or paused (cancelled)
when a request was pending. A pause stored between that read and the write was dropped with it (a settled
operation keeps no request), and auto_resume ran the operation on though the user had asked to pause it. A pause
whose request reached the store just after that write was not stored at all (a request is stored only for a running
operation), and the asker was told "pause requested" all the same. Each window is held open exactly by the
tests.control_race plugin, in the process that reads (or asks).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine import Operation, Status, open_store
from engine.store.base import Store
from tests.fixtures_cli import REPO, Cli, Proc, until

LEASE = 0.5
"""The Redis lease of the killed run, in seconds: its operation is an orphan that long after the kill."""


class Where:
    """One store, named to every ``outlast`` by the environment (so the plugin's own ``outlast ls`` finds it)."""

    def __init__(self, env: dict[str, str], store: Callable[[], Store]) -> None:
        self.env, self.store = env, store

    def read(self, op_id: str) -> tuple[Operation, dict[str, str]]:
        """The stored record and its pending control requests."""

        async def go() -> tuple[Operation, dict[str, str]]:
            async with self.store() as s:  # type: ignore[attr-defined]
                return await s.get(op_id), dict(await s.pending_controls([op_id]))

        return asyncio.run(go())

    def outlast(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return Cli(Path())(*args, env={**self.env, **env})

    def running(self) -> tuple[Proc, str]:
        """``outlast run ledger`` of a long ledger, running: the process and the operation's id."""
        run = Proc(
            ["--plugin", "tests.ops_for_tests", "run", "ledger", "-p", "items=100000", "-p", "seconds=0.01"], self.env
        )
        try:
            op_id = run.wait_line(lambda ln: " submitted: " in ln).split()[1]
            until(lambda: self.read(op_id)[0].status is Status.RUNNING, what="running")
        except BaseException:
            run.kill()
            raise
        return run, op_id


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def where(request: pytest.FixtureRequest, state_dir: Path) -> Iterator[Where]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OUTLAST_DEBUG", None)
    if request.param == "sqlite":  # state_dir set OUTLAST_STATE_DIR
        yield Where(env, lambda: open_store(state_dir))
        return
    server = request.getfixturevalue("redis_server")
    env |= {"OUTLAST_STORE": f"{server.url}?lease_ttl={LEASE:g}", "OUTLAST_NAMESPACE": "race"}
    # a store trusts no missing lease before Redis has been up a lease time and a second
    asyncio.run(server.up_for(int(LEASE) + 2))
    yield Where(env, lambda: open_store(server.url, namespace="race", checkpoint_mirror=None))


def test_a_pause_stored_between_recoverys_read_and_its_write_is_kept(where: Where) -> None:
    run, op_id = where.running()
    run.kill()  # SIGKILL: an orphan, running with no process
    assert where.read(op_id)[0].status is Status.RUNNING, "the run ended before it was killed"

    def recovered() -> bool:
        r = where.outlast("--plugin", "tests.control_race", "ls", OUTLAST_TEST_CONTROL_RACE_OP=op_id)
        assert r.returncode == 0, r.stderr
        return where.read(op_id)[0].status is not Status.RUNNING  # a Redis lease may still be running out

    until(recovered, timeout=30, every=0.1, what="the orphan recovered")
    final, pending = where.read(op_id)
    assert final.status is Status.PAUSED, (final.status, final.status_message)
    assert "as asked" in (final.status_message or ""), final.status_message
    assert final.attempt == 1 and not pending, (final.attempt, pending)


def test_a_pause_whose_request_lands_after_recoverys_write_is_kept(where: Where) -> None:
    run, op_id = where.running()
    try:
        r = where.outlast(
            "--plugin",
            "tests.control_race",
            "pause",
            op_id,
            OUTLAST_TEST_CONTROL_RACE_OP=op_id,
            OUTLAST_TEST_CONTROL_RACE_WHEN="ask",
            OUTLAST_TEST_CONTROL_RACE_KILL=str(run.popen.pid),
        )
    finally:
        run.kill()
    assert r.returncode == 0, r.stderr
    assert run.popen.returncode == -9, "the plugin did not kill the run as the pause was asked"
    final, pending = where.read(op_id)  # interrupted (SQLite), or queued again already (Redis's recovery resumes)
    assert final.status is Status.PAUSED, (final.status, final.status_message)
    assert not pending, pending
