"""Random control: pause, resume, cancel and priority changes thrown at running and queued work, from the
engine that runs it and from another engine on the same store (as another process does), at random
moments of a seeded run; then everything is resumed to completion.

Nothing is killed, so every stop reaches a safe point and saves a checkpoint: each item must run exactly
once over all the attempts, every operation must end with the result of an uninterrupted run, and no
action may leave an internal error in the log or an operation running with nothing behind it. The seed is
printed in the failure (``OUTLAST_FAULT_SEED`` replays it; the moments are times, so a replay hits about
the same points).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import Conflict, Engine, NotFound, OperationSpec, Priority, Settings, Status, open_store
from engine.store import Store
from tests.fixtures_redis import RedisServer

SEED = int(os.environ.get("OUTLAST_FAULT_SEED") or random.SystemRandom().randrange(2**32))
OPS = 5
ITEMS = 120
ACTIONS = int(os.environ.get("OUTLAST_STORM_ACTIONS", "60"))


@pytest.mark.timeout(120)
async def test_random_control_from_two_engines_runs_every_item_exactly_once(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _storm(lambda: open_store(settings.state_dir), settings, tmp_path, caplog)


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_random_control_on_redis_runs_every_item_exactly_once(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _storm(
        lambda: open_store(redis_server.url, namespace="storm", checkpoint_mirror=None), settings, tmp_path, caplog
    )


async def _storm(
    make_store: Callable[[], Store], settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rnd = random.Random(SEED)
    where = f"seed {SEED} (OUTLAST_FAULT_SEED={SEED} replays it)"
    settings = settings.model_copy(update={"max_concurrent": 2})
    refused = Counter[str]()
    async with (
        Engine(store=make_store(), settings=settings) as runner,
        Engine(store=make_store(), settings=settings, run_queue=False) as other,
    ):
        ids = []
        for n in range(OPS):
            spec = OperationSpec(
                type="ledger",
                params={
                    "items": ITEMS,
                    "seconds": 0.002,
                    "explicit_every": rnd.choice((0, 1, 7)),
                    "log_file": str(tmp_path / f"{n}.log"),
                },
                priority=rnd.choice(list(Priority)),
            )
            ids.append((await runner.submit(spec)).id)
        for _ in range(ACTIONS):
            await asyncio.sleep(rnd.uniform(0.0, 0.04) * rnd.choice((0, 0.1, 1)))
            engine = rnd.choice((runner, other))
            op_id = rnd.choice(ids)
            action = rnd.choice(("pause", "pause", "resume", "resume", "cancel", "priority"))
            try:
                if action == "priority":
                    await engine.set_priority(op_id, rnd.choice(list(Priority)))
                else:
                    await getattr(engine, action)(op_id)
            except Conflict as e:  # not allowed in the state it is in now: said, nothing changed
                refused[action] += 1
                assert str(e), where
        # Then everything to the end, whatever state the storm left it in.
        for op_id in ids:
            for _ in range(20):
                op = await runner.get(op_id)
                if op.status is Status.COMPLETED:
                    break
                if op.status in (Status.QUEUED, Status.RUNNING):
                    await runner.wait(op_id, timeout=60)
                    continue
                try:
                    await runner.resume(op_id)
                except Conflict:
                    await asyncio.sleep(0.05)  # settling as we asked: look again
                except NotFound:
                    pytest.fail(f"{op_id} is gone; {where}")
            final = await runner.get(op_id)
            assert final.status is Status.COMPLETED, (final.status, final.status_message, where)
            assert final.result == {"sum": sum(range(ITEMS))}, where
    for n in range(OPS):
        runs = Counter((tmp_path / f"{n}.log").read_text().split())
        assert set(runs) == {str(i) for i in range(ITEMS)}, where
        twice = sorted((int(i) for i, c in runs.items() if c > 1))
        assert not twice, f"op {n}: items run more than once: {twice[:10]}; {where}"
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, (bad, where)
