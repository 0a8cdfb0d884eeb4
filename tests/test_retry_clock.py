"""A retry's backoff against a wall clock that steps back (NTP, a VM restored): it never waits longer
than the backoff its policy chose. ``not_before`` is wall time, shared by every process of a store; a
step back of an hour during a 2 s backoff used to delay the retry by the hour. The retry also records
when its backoff began (``backoff_from``): a clock that reads earlier than that went back, and the
retry is due. The local store (the claim's ``now`` injected), the record's rule, and the real command line
under libfaketime. The Redis store scores its queues in Redis's clock, which every process shares (a claim's
``now`` is not its clock): tests/test_redis_clocks.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.humanize import run_seconds, seconds_left
from engine.models import Operation, Status, WorkerInfo, new_id
from engine.store import LocalStore, Store
from tests import zygote
from tests.conftest import REPO
from tests.fixtures_cli import until
from tests.fixtures_engine import retry_waiting

W = WorkerInfo(host="test", pid=1)
BACKOFF = 2.0
HOUR = 3600.0
DAY = 86400.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    made: Store = LocalStore(tmp_path / "state")
    await made.open()
    yield made
    await made.close()


async def test_a_retry_is_claimed_at_once_when_the_clock_went_back_during_its_backoff(store: Store) -> None:
    op_id, T = await retry_waiting(store, False, BACKOFF)
    assert await store.claim(W, T + 1, 300.0) is None  # the backoff is waited out as chosen
    assert await store.claim(W, T + 1, 300.0, types=frozenset({"demo"})) is None
    # The clock steps back an hour: waiting for not_before would take the hour and the backoff.
    taken = await store.claim(W, T - HOUR, 300.0)
    assert taken is not None and taken.id == op_id and taken.status is Status.RUNNING
    assert taken.not_before is None and taken.backoff_from is None


async def test_a_retry_of_some_type_is_claimed_at_once_when_the_clock_went_back(store: Store) -> None:
    """The claim of a worker that runs some types only says the same."""
    op_id, T = await retry_waiting(store, False, BACKOFF)
    taken = await store.claim(W, T - HOUR, 300.0, types=frozenset({"demo"}))
    assert taken is not None and taken.id == op_id


async def test_a_retry_stored_before_backoff_from_existed_waits_for_not_before(store: Store) -> None:
    """Records written by an older version (no ``backoff_from``) are claimed as they were."""
    op_id, T = await retry_waiting(store, True, BACKOFF)
    assert (await store.get(op_id)).backoff_from is None
    assert await store.claim(W, T - HOUR, 300.0) is None
    assert await store.claim(W, T + 1, 300.0) is None
    taken = await store.claim(W, T + BACKOFF, 300.0)
    assert taken is not None and taken.id == op_id


def test_retry_due_never_waits_longer_than_the_backoff() -> None:
    T = 1_800_000_000.0
    op = Operation(id=new_id(), type="demo", created_at=T, queued_at=T, updated_at=T)
    assert op.retry_due(T - HOUR)  # no backoff at all
    retry = op.model_copy(update={"not_before": T + BACKOFF, "backoff_from": T})
    assert not retry.retry_due(T) and not retry.retry_due(T + BACKOFF - 0.01)
    assert retry.retry_due(T + BACKOFF)
    assert retry.retry_due(T - 0.01) and retry.retry_due(T - HOUR)  # the clock went back
    old = op.model_copy(update={"not_before": T + BACKOFF})
    assert not old.retry_due(T - HOUR) and old.retry_due(T + BACKOFF)


# ---- the command line under a wall clock stepped back ---------------------------------------------

FAKETIME = next(
    (
        p
        for p in (
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
            "/usr/lib/faketime/libfaketimeMT.so.1",
        )
        if os.path.exists(p)
    ),
    None,
)

PLUGIN = """
import os
from pydantic import BaseModel
from engine import OperationContext, operation

class P(BaseModel):
    marker: str

@operation("blip_once", params=P)
async def blip_once(ctx: OperationContext, p: P) -> dict:
    if not os.path.exists(p.marker):
        open(p.marker, "w").close()
        raise ConnectionError("transient network blip")
    return {"ok": True}
"""
"""An operation that fails once with a transient error (retried after the backoff), then completes."""

RETRY_BACKOFF = 20.0
"""The retry's backoff here (no jitter): the test waits less than it once the clock stepped back."""


def _waiting_retry(state: Path) -> Operation | None:
    """The operation, once it waits in the queue for its retry (read on this process's real clock)."""

    async def read() -> list[Operation]:
        store = LocalStore(state)
        await store.open()
        try:
            return await store.list_operations([Status.QUEUED])
        finally:
            await store.close()

    return next((op for op in (asyncio.run(read()) if state.exists() else []) if op.retries == 1), None)


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed")
@pytest.mark.parametrize("how", ["run", "worker"])
def test_a_wall_clock_stepped_back_an_hour_does_not_hold_back_a_retry(tmp_path: Path, how: str) -> None:
    """``outlast run`` (which runs its own retry when due) and ``outlast worker`` (which claims it from the
    queue), under libfaketime, of an operation that fails once: while its retry waits out a 20 s backoff,
    the wall clock steps back an hour. The retry runs at once, within seconds (it waited the hour)."""
    (tmp_path / "blip_plugin.py").write_text(PLUGIN)
    spec, state = tmp_path / "faketime.spec", tmp_path / "state"
    spec.write_text("+0")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "OUTLAST_STATE_DIR": str(state),
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(spec),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    spec_args = ["blip_once", "-p", f"marker={tmp_path / 'failed-once'}"]
    spec_args += ["--profile", f"retry.backoff_base={RETRY_BACKOFF}", "--profile", "retry.jitter=0"]
    plugin = ["--plugin", "blip_plugin"]
    if how == "run":
        command = [*plugin, "run", *spec_args]
    else:
        submitted = zygote.run([*plugin, "submit", *spec_args], cwd=REPO, env=env, capture_output=True)
        assert submitted.returncode == 0, submitted.stderr
        command = [*plugin, "worker", "--exit-when-idle"]
    proc = zygote.popen([*command], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        retry = until(lambda: _waiting_retry(state), timeout=30, every=0.05, what="the retry queued")
        assert retry.not_before is not None and retry.backoff_from is not None
        assert retry.not_before - retry.backoff_from == pytest.approx(RETRY_BACKOFF)
        spec.write_text("-1h")  # the wall clock steps back an hour, for the process waiting out the backoff
        try:
            out, err = proc.communicate(timeout=RETRY_BACKOFF / 2)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{how}: the retry still waits {RETRY_BACKOFF / 2:g} s after the step") from None
        assert proc.returncode == 0, out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    listed = zygote.run(["--json", "ls"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    [op] = json.loads(listed.stdout)
    assert (op["status"], op["attempt"], op["retries"]) == ("completed", 2, 1), op


def test_a_run_time_counts_the_monotonic_clock_not_a_wall_clock_step() -> None:
    """``humanize.run_seconds`` and ``seconds_left`` (every face's elapsed and time left) from a ``Progress``'
    monotonic ``ran`` and its wall ``updated_at``: a step of the wall clock after the write changes neither
    beyond the wall time that passed, and a ``ran`` of an earlier attempt (taken before this one started) is
    not counted."""
    T = time.time()
    started = T
    assert run_seconds(started, T + 2 * DAY, True, 10.0, T + 2 * DAY, T + 3 * DAY) == 10.0  # stepped forward
    assert run_seconds(started, None, False, 10.0, T + 10, T + 12) == 12.0
    assert run_seconds(started, None, False, 10.0, T + 10, T - 3 * DAY) == 10.0  # stepped back: held, not 0
    assert run_seconds(started, T + 60, True, 10.0, T - 5, T + 99) == 60.0  # an earlier attempt's: the wall
    assert run_seconds(started, T + 60, True, None, None, T + 99) == 60.0  # an older record
    assert run_seconds(None, None, False, None, None, T) is None
    assert seconds_left(T + 100, T + 10, T + 12) == 88.0
    assert seconds_left(T + 100, T + 10, T - 3 * DAY) == 90.0  # stepped back: never more than at the write
    assert seconds_left(T + 100, None, T + 12) == 88.0


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed")
@pytest.mark.parametrize("step", ["+2d", "-3h"])
def test_a_wall_clock_stepped_mid_run_changes_neither_its_run_time_nor_its_time_left(tmp_path: Path, step: str) -> None:
    """``outlast run`` under libfaketime, its wall clock stepped two days forward or three hours back while the
    operation runs: the line it ends with and ``show`` say the seconds it ran, and ``show`` (on the clock as it
    was, as another process reads it) the deadline minutes ahead while it runs. Forward, it said "completed ...
    after 2d00h" of a 5 s run; back, "completed ... after 0s" and "time left 0s" (its progress, written after
    the step, read as older than its start: an earlier attempt's). The step comes once a few items are stored
    done, with seconds of the run still ahead: a poll slowed by a loaded machine has the whole run to see it
    running (watching for half of a 2 s run missed it in CI)."""
    spec, state = tmp_path / "faketime.spec", tmp_path / "state"
    spec.write_text("+0")
    env = {
        **os.environ,
        "OUTLAST_STATE_DIR": str(state),
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(spec),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    plain = {k: v for k, v in env.items() if not k.startswith(("LD_PRELOAD", "FAKETIME"))}
    proc = zygote.popen(
        ["run", "demo", "-p", "items=50", "-p", "seconds=0.1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(lambda: _running_under_way(state), timeout=30, every=0.05, what="the run under way")
        spec.write_text(step)
        for _ in range(2):  # the second write of the store after the step (the first may have been under way)
            before = _done(state)
            until(lambda: _done(state) > before, timeout=30, every=0.05, what="a write after the step")  # noqa: B023
        running = zygote.run(["show", "1"], cwd=REPO, env=plain, capture_output=True, text=True, timeout=30)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    if "running" in running.stdout:  # not ended already on a slow machine
        assert re.search(r"time left\s+\d+m", running.stdout), running.stdout
    ended = re.search(r"completed at 50/50 items after (\d+)s\b", out + err)
    assert ended and int(ended[1]) >= 4, out + err  # 50 items of 0.1 s
    shown = zygote.run(["show", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    elapsed = re.search(r"elapsed\s+(\d+)s\n", shown.stdout)
    assert elapsed and int(elapsed[1]) >= 4, shown.stdout


def _done(state: Path) -> int:
    """Items the store shows the operation done (50, its whole count, once it ended)."""

    async def read() -> list[Operation]:
        store = LocalStore(state)
        await store.open()
        try:
            return await store.list_operations()
        finally:
            await store.close()

    [op] = asyncio.run(read())
    return op.progress.done if op.status is Status.RUNNING else 50


def _running_under_way(state: Path) -> bool:
    """Whether the store shows the demo operation running with 3 or more of its items done."""

    async def read() -> list[Operation]:
        store = LocalStore(state)
        await store.open()
        try:
            return await store.list_operations([Status.RUNNING])
        finally:
            await store.close()

    return state.exists() and any(op.progress.done >= 3 for op in asyncio.run(read()))
