"""A resume of an operation whose checkpoints Redis lost (its ``ck``/``cp``/``cd`` keys evicted under a
maxmemory policy, or deleted by hand) while its record stayed: it starts from its first item, and says
so in the worker's log and the operation's. It went silently: every done item run again, the progress
going back from 71% to 20% with nothing to say why."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Settings, Status, load_settings, open_store
from tests.fixtures_engine import until
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def settings(state_dir: Path) -> Settings:
    return load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"], grace_period=2.0)


async def test_a_resume_that_finds_every_checkpoint_gone_says_it_restarts_from_scratch(
    redis_server: RedisServer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(redis_server.url, namespace="t", checkpoint_mirror=None)
    async with Engine(store=store, settings=settings) as engine:
        spec = OperationSpec(
            type="ledger", params={"items": 60, "seconds": 0.005}, profile={"checkpoint_interval": 0.05}
        )
        op = await engine.submit(spec)
        await until(lambda: engine.live(op.id) and engine.live(op.id).done >= 10)
        await engine.pause(op.id)
        paused = await engine.wait(op.id, timeout=30)
        assert paused.status is Status.PAUSED and paused.checkpoint_seq
        assert redis_server.client().delete(*(f"t:{k}:{op.id}" for k in ("ck", "cp", "cd"))) == 3
        with caplog.at_level(logging.WARNING, "outlast"):
            await engine.resume(op.id)
            final = await engine.wait(op.id, timeout=30)
        assert final.status is Status.COMPLETED and final.result == {"sum": sum(range(60))}
        said = [r.getMessage() for r in caplog.records if "checkpoints are gone" in r.getMessage()]
        assert said == [
            f"operation {op.id}: its checkpoints are gone from the store (the newest was {paused.checkpoint_seq}):"
            " restarting from scratch, every item is run again"
        ], said
        records, _ = await engine.logs(op.id)
        assert sum("checkpoints are gone" in r.message for r in records) == 1
