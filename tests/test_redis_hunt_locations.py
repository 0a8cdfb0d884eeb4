"""Where a store is, as its checkpoint mirror names it: the database a URL selects with ``?db=N``
(which redis-py takes over the path's ``/N``) is the one named, so one mirror configured for two
databases never restores one database's operations into the other."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from engine import Engine, OperationSpec, Settings, load_settings, open_store
from engine.models import StoreError
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def settings(state_dir: Path) -> Settings:
    return load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"])


async def test_a_database_chosen_with_the_db_parameter_is_not_restored_from_database_0s_mirror(
    redis_server: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    """``redis://host:port/0?db=3`` selects database 3, but the mirror took it for database 0: opening that
    empty database with db 0's mirror restored db 0's queued operation into it, where a worker on each
    database ran it (twice), and named db 3 with db 0's store id for good."""
    mirror = tmp_path / "mirror"
    base = f"redis://127.0.0.1:{redis_server.port}"
    store = open_store(f"{base}/0", namespace="t", checkpoint_mirror=mirror)
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        await engine.submit(OperationSpec(type="ledger", params={"items": 1}))
    for url in (f"{base}/0?db=3", f"{base}?db=3"):
        with pytest.raises(StoreError, match=r"mirror of another store \(redis://localhost:\d+/0, not .*:\d+/3\)"):
            async with open_store(url, namespace="t", checkpoint_mirror=mirror):
                pass
    assert redis.Redis(port=redis_server.port, db=3).dbsize() == 0
    redis_server.client().flushdb()  # database 0 emptied: restored from its own mirror, spelt another way
    async with open_store(f"{base}/5?db=0", namespace="t", checkpoint_mirror=mirror) as same:
        assert sum((await same.counts()).values()) == 1
    assert redis.Redis(port=redis_server.port, db=5).dbsize() == 0
