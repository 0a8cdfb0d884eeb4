"""A pause asked while recovery settles an orphan is kept, on both stores.

Recovery reads the orphans' pending requests, then writes each one's status: interrupted, or paused (cancelled)
when a request was pending. A pause stored between that read and the write was dropped with it (a settled
operation keeps no request), and auto_resume ran the operation on though the user had asked to pause it. The
window is held open exactly by the tests.control_race plugin: the pause is stored right after the recovery's read
returns, in the recovering process itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import Operation, Status, open_store
from engine.store.base import Store
from tests.fixtures_cli import CLI, REPO, Proc, until

LEASE = 0.5
"""The Redis lease of the killed run, in seconds: its operation is an orphan that long after the kill."""


def _read(store: Callable[[], Store], op_id: str) -> tuple[Operation, dict[str, str]]:
    """The stored record and its pending control requests."""

    async def go() -> tuple[Operation, dict[str, str]]:
        async with store() as s:  # type: ignore[attr-defined]
            return await s.get(op_id), dict(await s.pending_controls([op_id]))

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_pause_stored_between_recoverys_read_and_its_write_is_kept(
    kind: str, state_dir: Path, request: pytest.FixtureRequest
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OUTLAST_DEBUG", None)
    store: Callable[[], Store]
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        args = ["--store", f"{server.url}?lease_ttl={LEASE:g}"]
        env["OUTLAST_NAMESPACE"] = "race"
        store = lambda: open_store(server.url, namespace="race", checkpoint_mirror=None)  # noqa: E731
    else:
        args = ["--state-dir", str(state_dir)]
        store = lambda: open_store(state_dir)  # noqa: E731
    run = Proc(
        [*args, "--plugin", "tests.ops_for_tests", "run", "ledger", "-p", "items=100000", "-p", "seconds=0.01"], env
    )
    try:
        op_id = run.wait_line(lambda ln: " submitted: " in ln).split()[1]
        until(lambda: _read(store, op_id)[0].status is Status.RUNNING, what="running")
    finally:
        run.kill()  # SIGKILL: an orphan, running with no process
    assert _read(store, op_id)[0].status is Status.RUNNING, "the run ended before it was killed"
    if kind == "redis":  # a store trusts no missing lease before Redis has been up a lease time and a second
        asyncio.run(server.up_for(int(LEASE) + 2))
    race = {**env, "OUTLAST_TEST_CONTROL_RACE_OP": op_id}

    def recovered() -> bool:
        r = subprocess.run(
            [*CLI, *args, "--plugin", "tests.control_race", "ls"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            env=race,
            cwd=REPO,
        )
        assert r.returncode == 0, r.stderr
        return _read(store, op_id)[0].status is not Status.RUNNING  # a Redis lease may still be running out

    until(recovered, timeout=30, every=0.1, what="the orphan recovered")
    final, pending = _read(store, op_id)
    assert final.status is Status.PAUSED, (final.status, final.status_message)
    assert "as asked" in (final.status_message or ""), final.status_message
    assert final.attempt == 1 and not pending, (final.attempt, pending)
