"""A Redis whose memory policy is set to evict keys after a worker opened the store: said by the worker
(within a minute), as it is by a process that opens the store then. Looked at only at opening, a policy
changed under a long-lived worker (CONFIG SET maxmemory-policy allkeys-lru) dropped operations,
checkpoints and leases under it without a word from it."""

from __future__ import annotations

import logging

import pytest

from engine import open_store
from engine.store.redis import RedisStore
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


async def test_an_eviction_policy_set_after_the_store_opened_is_said_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store: RedisStore = open_store(redis_server.url, namespace="t", checkpoint_mirror=None)  # type: ignore[assignment]
    async with store:
        store.eviction_every = 0.0  # a minute, in a worker
        with caplog.at_level(logging.WARNING, "outlast"):
            await store.find_orphans()
            assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
            client = redis_server.client()
            client.config_set("maxmemory", 100 * 2**20)
            client.config_set("maxmemory-policy", "allkeys-lru")
            for _ in range(3):
                await store.find_orphans()
        said = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert len(said) == 1 and "maxmemory-policy allkeys-lru lets Redis evict Outlast's keys" in said[0], said
