"""The dashboard's hand-over worker reads the settings the dashboard read: it was started with the state
dir, the plugins and the store, not the config file, so on a Redis store whose namespace the config file
set it looked at the default namespace, found nothing, exited idle, and the handed-over work stayed
queued with nobody to run it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Status, load_settings, open_store
from tests.fixtures_cli import REPO
from tests.fixtures_redis import RedisServer
from tui.handover import spawn_worker


@pytest.mark.redis
async def test_the_hand_over_worker_reads_the_dashboards_config_file(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    cfg = tmp_path / "outlast.toml"
    cfg.write_text(f'store = "{redis_server.url}"\nnamespace = "team-a"\nstate_dir = "{tmp_path / "state"}"\n')
    settings = load_settings(config_file=cfg)
    async with Engine(store=open_store(redis_server.url, namespace="team-a", checkpoint_mirror=None),
                      settings=settings, run_queue=False) as engine:  # fmt: skip
        op = await engine.submit(OperationSpec(type="demo", params={"items": 2, "seconds": 0}))
        pid, log_path = spawn_worker(settings)
        end = time.monotonic() + 30
        while (await engine.get(op.id)).status is Status.QUEUED and time.monotonic() < end:
            await asyncio.sleep(0.1)
        while time.monotonic() < end and os.waitpid(pid, os.WNOHANG) == (0, 0):  # it exits when idle
            await asyncio.sleep(0.1)
        done = await engine.get(op.id)
    assert done.status is Status.COMPLETED, (done.status, log_path.read_text())
