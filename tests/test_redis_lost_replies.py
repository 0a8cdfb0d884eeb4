"""A script Redis ran whose reply was lost (the connection cut after Redis answered: CLIENT KILL, a network
blip) is sent again by the link's retry: the second run must say what the first did. The reply is lost by
a TCP proxy between the store and Redis, which cuts the connection once Redis has run the script."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine import Engine, OperationSpec, Settings, Status, open_store
from engine.lifecycle import ACTIONS, Action
from engine.models import Conflict, LogRecord, NotFound, WorkerInfo
from engine.store.redis import lua
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis
W = WorkerInfo(host="test", pid=1)


class ReplyLosingProxy:
    """A TCP proxy to Redis that, once armed with a script, lets Redis run that script's first call and cuts
    the connection instead of passing its reply on (after ``then``, if given): a reply lost on the way back,
    as a CLIENT KILL or a network blip does it, with the store's own client and link untouched."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.target = ("127.0.0.1", int(server.url.rsplit(":", 1)[1].split("/")[0]))
        self.sha = b""
        self.then: Callable[[], Awaitable[object]] | None = None
        self.runs = 0
        self.down_until = 0.0
        """Until then (monotonic), every connection is cut at its next request: Redis unreachable."""
        self._server: asyncio.Server | None = None

    last: ReplyLosingProxy

    async def __aenter__(self) -> str:
        ReplyLosingProxy.last = self
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def arm(self, script: str, then: Callable[[], Awaitable[object]] | None = None) -> None:
        """Lose the reply of the next call of ``script`` (loaded first: a NOSCRIPT answer is no run)."""
        text = getattr(lua, script)
        self.server.client().script_load(text)
        self.sha, self.then = hashlib.sha1(text.encode()).hexdigest().encode(), then

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.down_until:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
                if time.monotonic() < self.down_until:
                    return
                if self.sha and self.sha in data:
                    self.runs += 1
                    if self.runs == 1:
                        cut.set()
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if cut.is_set():  # Redis ran it; its reply goes nowhere
                    if self.then is not None:
                        await self.then()
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        writer.close()
        up_writer.close()


async def test_a_removal_whose_reply_was_lost_is_done_not_not_found(redis_server: RedisServer) -> None:
    async with ReplyLosingProxy(redis_server) as url:
        proxy = ReplyLosingProxy.last
        store: Any = open_store(url, namespace="lr", checkpoint_mirror=None)
        async with store:
            op = queued_record()
            await store.create(op)
            await store.transition(op.id, Status.CANCELLED)
            proxy.arm("DELETE")
            await store.delete(op.id, expect=ACTIONS[Action.REMOVE])  # was NotFound: "no operation ID"
            assert proxy.runs == 2  # sent again after the lost reply
            with pytest.raises(NotFound):
                await store.get(op.id)
            with pytest.raises(NotFound):  # a removal of what was never there (or removed before) still says so
                await store.delete(op.id, expect=ACTIONS[Action.REMOVE])


async def test_a_resume_whose_reply_was_lost_is_done_though_a_worker_claimed_it_meanwhile(
    redis_server: RedisServer,
) -> None:
    """The retry found the record written since by the claim (its last write's token another), and was
    refused: 'outlast resume' said the operation, running, could not be resumed, though it had resumed it."""
    async with ReplyLosingProxy(redis_server) as url:
        proxy = ReplyLosingProxy.last
        store: Any = open_store(url, namespace="lr", checkpoint_mirror=None)
        worker: Any = open_store(redis_server.url, namespace="lr", checkpoint_mirror=None)
        async with store, worker:
            op = queued_record()
            await store.create(op)
            first = await worker.claim(W, time.time(), 300.0)
            assert first is not None
            await worker.transition(op.id, Status.FAILED, epoch=first.epoch, error="boom")

            async def claimed_meanwhile() -> None:  # applied; a worker claims it before the reply is lost
                assert await worker.claim(W, time.time(), 300.0) is not None

            proxy.arm("WRITE", claimed_meanwhile)
            resumed = await store.transition(op.id, Status.QUEUED, expect=frozenset({Status.FAILED}))
            assert proxy.runs == 2
            assert resumed.status is Status.RUNNING and resumed.epoch == first.epoch + 1  # as it is now
            with pytest.raises(Conflict):  # a resume of a running operation is refused as before
                await store.transition(op.id, Status.QUEUED, expect=frozenset({Status.FAILED}))


async def test_log_records_whose_reply_was_lost_are_written_once(redis_server: RedisServer, settings: Settings) -> None:
    """The engine's last log records, written as it settles, with their reply lost: the link sent them again
    and Redis appended them twice (each line twice in ``outlast logs``). Once now; and so the records of an
    operation no attempt of this process holds (a store's plain append)."""
    async with ReplyLosingProxy(redis_server) as url:
        proxy = ReplyLosingProxy.last
        store: Any = open_store(url, namespace="lr", checkpoint_mirror=None)
        proxy.arm("LOG")
        async with Engine(store=store, settings=settings) as engine:
            op = await engine.submit(OperationSpec(type="command", params={"argv": ["echo", "hello"]}))
            assert (await engine.wait(op.id, timeout=30, poll=0.05)).status is Status.COMPLETED
            assert proxy.runs == 2  # sent again after the lost reply
            records, _ = await engine.logs(op.id)
            assert [r.message for r in records] == ["hello"]

            proxy.runs = 0
            proxy.arm("LOG")
            await store.append_logs(op.id, [LogRecord(ts=time.time(), level="info", message="by hand")])
            assert proxy.runs == 2
            records, _ = await engine.logs(op.id)
            assert [r.message for r in records] == ["hello", "by hand"]


async def test_a_settle_whose_outcome_stayed_unknown_says_what_was_found(
    redis_server: RedisServer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """An operation's final status, applied by Redis, its reply lost and Redis unreachable past the link's
    retries: the settle's outcome is unknown. The heartbeat then found the lease gone (the settle let go of
    it) and said "this worker lost its lease", and the settle's next try, refused as the operation was
    completed, "final status completed not written", though it was. It is tried again with the same token
    now, found applied, and said so."""
    caplog.set_level(logging.WARNING, logger="outlast")
    async with ReplyLosingProxy(redis_server) as url:
        proxy = ReplyLosingProxy.last
        store: Any = open_store(f"{url}?retry_for=1&lease_ttl=1.5", namespace="lr", checkpoint_mirror=None)
        direct: Any = open_store(redis_server.url, namespace="lr", checkpoint_mirror=None)
        async with direct, Engine(store=store, settings=settings) as engine:
            op = await engine.submit(OperationSpec(type="ledger", params={"items": 3, "seconds": 0.3}))
            for _ in range(100):
                if (await direct.get(op.id)).status is Status.RUNNING:
                    break
                await asyncio.sleep(0.05)

            async def unreachable() -> None:  # past the link's retries (1 s) and the lease (1.5 s)
                proxy.down_until = time.monotonic() + 3

            proxy.arm("WRITE", unreachable)  # its next write: the settle
            for _ in range(200):
                if not engine.running_ids:
                    break
                await asyncio.sleep(0.05)
            assert (await direct.get(op.id)).status is Status.COMPLETED
    said = [r.getMessage() for r in caplog.records if op.id in r.getMessage()]
    assert not [m for m in said if "lost its lease" in m or "not written" in m], said
    assert said[-1:] == [  # after the store's outage said once
        f"operation {op.id}: the write of its final status completed (attempt epoch 1) got no reply, outcome"
        " unknown; the store answered again: that write had been applied"
    ], said
    assert proxy.runs == 2  # tried again, with the same token
