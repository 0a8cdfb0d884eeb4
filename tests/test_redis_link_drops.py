"""A connection to Redis that keeps dropping (a Redis at its ``maxclients``, refusing some of the connections
made) is said lost once and back once, however often it drops meanwhile, and how many more times it dropped is
said when that is over. It said "connection lost" and "connected again" for each drop: 4 pairs in 9 s."""

from __future__ import annotations

import asyncio
import logging

import pytest

from engine.store.redis.connection import RedisLink
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


async def test_a_connection_that_keeps_dropping_is_said_lost_once_and_the_drops_counted(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis_server.client()
    link = RedisLink(redis_server.url)
    await link.open()
    try:
        with caplog.at_level(logging.WARNING, "outlast"):
            for _ in range(4):
                admin.config_set("maxclients", 1)  # this connection only: every other one is refused
                admin.client_kill_filter(_type="normal", skipme=True)
                ping = asyncio.ensure_future(link.call(lambda c: c.ping(), "checking"))
                while link.connected and not ping.done():
                    await asyncio.sleep(0.01)
                admin.config_set("maxclients", 1000)
                assert await ping
            assert link.connected and link.reconnects == 4
            await link.close()
        said = [r.getMessage() for r in caplog.records]
        assert [m.split(": ")[1][:15] for m in said if "connection lost" in m or "connected again" in m] == [
            "connection lost",
            "connected again",
        ]
        assert len([m for m in said if "dropped and came back 3 more times within" in m]) == 1, said
    finally:
        await link.close()
        admin.config_set("maxclients", 1000)
        admin.close()


async def test_a_command_takes_a_connection_the_pool_holds_before_one_redis_refuses_to_make(
    redis_server: RedisServer,
) -> None:
    """A connection that could not be made (Redis at its maxclients) went back on top of the pool's stack, and
    each retry of the command took it again, tried to connect, and was refused: the command was given up after
    30 s ("unreachable for 30s ... not done") while the pool held connections that worked."""
    admin = redis_server.client()
    link = RedisLink(f"{redis_server.url}?retry_for=1")
    await link.open()
    try:
        assert link.client is not None
        pool = link.client.connection_pool
        held = [await pool.get_connection() for _ in range(3)]
        for conn in held:
            await pool.release(conn)
        dropped = await pool.get_connection()  # the last one given back: the next one a command takes
        await dropped.disconnect()
        await pool.release(dropped)
        admin.config_set("maxclients", admin.info("clients")["connected_clients"])  # no connection more
        assert await link.call(lambda c: c.ping(), "checking")
        assert link.connected
    finally:
        admin.config_set("maxclients", 1000)
        admin.close()
        await link.close()
