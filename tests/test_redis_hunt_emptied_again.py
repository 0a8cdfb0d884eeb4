"""A Redis whose keys keep vanishing under a running worker (an eviction policy set since it connected,
evicting the store's generation mark again and again): the worker said "the store was emptied or
replaced" every few seconds (15 times in 25 s), and the policy, the cause, not until its next look at the
memory settings a minute later. Now the store's emptying is said once a minute at most, and the policy
with the first one."""

from __future__ import annotations

import logging

import pytest

from engine import open_store
from engine.store.redis import RedisStore
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


async def test_a_store_emptied_again_and_again_is_said_once_with_the_eviction_policy(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store: RedisStore = open_store(redis_server.url, namespace="t", checkpoint_mirror=None)  # type: ignore[assignment]
    async with store:
        await store.find_orphans()
        client = redis_server.client()
        client.config_set("maxmemory", 100 * 2**20)
        client.config_set("maxmemory-policy", "allkeys-lru")
        with caplog.at_level(logging.WARNING, "outlast"):
            for _ in range(3):
                client.flushdb()  # as the eviction of every key would
                await store.find_orphans()
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in said if "emptied or replaced" in m]) == 1, said
    assert len([m for m in said if "maxmemory-policy allkeys-lru" in m]) == 1, said
