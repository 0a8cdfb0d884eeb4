"""The connections the Redis link keeps for its scripts (``RedisLink._evalsha``): one Redis closed while idle is
made again without an outage, one whose reply was cut off is never used again (its late reply would answer the
next command), and with the pool's connections the process never holds more than MAX_CONNECTIONS."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

import pytest

from engine.store.redis import connection
from engine.store.redis.connection import MAX_CONNECTIONS, RedisLink
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis

ECHO = "return ARGV[1]"


async def _link(server: RedisServer) -> tuple[RedisLink, Any]:
    link = RedisLink(f"{server.url}?retry_for=1")
    await link.open()
    assert link.client is not None
    script = link.client.register_script(ECHO)
    await script(args=["load"])
    return link, script


async def test_a_connection_redis_closed_while_idle_is_made_again_without_an_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    link, script = await _link(redis_server)
    try:
        assert await link.script(script, [], ["a"], "echo") == b"a"
        assert link._idle, "the script's connection is kept"
        r = redis_server.client()
        killed = 0
        for c in r.client_list():
            if c["cmd"] != "client|list":
                killed += r.client_kill_filter(_id=c["id"])
        assert killed >= 1
        r.close()
        with caplog.at_level(logging.WARNING, "outlast"):
            for word in ("b", "c"):  # at once: the event loop may not have seen the close yet
                assert await link.script(script, [], [word], "echo") == word.encode()
        assert "connection lost" not in caplog.text
        assert link.connected and link.reconnects == 0
    finally:
        await link.close()


async def test_a_connection_whose_reply_was_cut_off_is_not_used_again(redis_server: RedisServer) -> None:
    link, script = await _link(redis_server)
    try:
        await asyncio.gather(*(link.script(script, [], ["warm"], "echo") for _ in range(4)))
        kept = len(link._idle)
        assert kept >= 1
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            cut = [
                link.call_once(lambda c, i=i: link._evalsha(c, script, [], [f"old{i}"], _sent()), link.client, 0.2)
                for i in range(kept)
            ]
            results = await asyncio.gather(*cut, return_exceptions=True)
            assert all(isinstance(r, Exception) for r in results), results
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.2)  # Redis answers the commands it held: on connections nobody reads again
        for i in range(3 * kept):
            assert await link.script(script, [], [f"new{i}"], "echo") == f"new{i}".encode()
    finally:
        await link.close()


async def test_kept_connections_and_the_pool_stay_within_max_connections(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    link, script = await _link(redis_server)
    r = redis_server.client()
    try:
        with caplog.at_level(logging.WARNING, "outlast"):
            await asyncio.gather(*(link.script(script, [], [str(i)], "echo") for i in range(3 * MAX_CONNECTIONS)))
            assert len(link._idle) <= MAX_CONNECTIONS

            async def read(c: Any) -> list[Any]:
                pipe = c.pipeline(transaction=False)
                pipe.ping()
                pipe.time()
                await asyncio.sleep(0.01)  # held a while: the pool's connections and the kept ones all in use
                return list(await pipe.execute())

            mixed = [link.call(read, "reading") for _ in range(2 * MAX_CONNECTIONS)]
            mixed += [link.script(script, [], [str(i)], "echo") for i in range(2 * MAX_CONNECTIONS)]
            done = await asyncio.gather(*mixed)
            assert [d for d in done if isinstance(d, bytes)] == [str(i).encode() for i in range(2 * MAX_CONNECTIONS)]
            clients = [c for c in r.client_list() if c["cmd"] != "client|list"]
            assert len(clients) <= MAX_CONNECTIONS, clients
        assert "connection lost" not in caplog.text
        assert link.reconnects == 0
    finally:
        r.close()
        await link.close()


def _sent() -> Any:
    from engine.store.redis.connection import Sent

    return Sent()


async def test_a_script_refused_by_redis_leaves_its_connection_usable(redis_server: RedisServer) -> None:
    link, _ = await _link(redis_server)
    assert link.client is not None
    failing = link.client.register_script("return redis.error_reply('ERR no ' .. ARGV[1])")
    echo = link.client.register_script(ECHO)
    try:
        await echo(args=["load"])
        start = time.monotonic()
        for i in range(5):
            with pytest.raises(Exception, match=f"no {i}"):
                await link.script(failing, [], [str(i)], "failing")
            assert await link.script(echo, [], [f"after{i}"], "echo") == f"after{i}".encode()
        assert time.monotonic() - start < 5
        assert len(link._idle) == 1
    finally:
        await link.close()


def test_a_kept_connection_on_a_descriptor_above_1024_is_checked_not_remade() -> None:
    """select() refuses a descriptor above 1,024 (a worker with many files open): every kept connection
    looked unusable there and was made again before each script. The check polls instead."""
    import resource
    import socket
    import types

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1600:
        pytest.skip("the open-files limit is below 1,600 here")
    a, b = socket.socketpair()
    high = socket.socket(fileno=os.dup2(a.fileno(), 1500))
    a.close()
    conn = types.SimpleNamespace(_writer=types.SimpleNamespace(get_extra_info=lambda _name: high))
    try:
        assert connection._readable(conn) is False  # quiet: kept as it is
        b.sendall(b"+x\r\n")
        assert connection._readable(conn) is True  # data no request waits for
    finally:
        high.close()
        b.close()
