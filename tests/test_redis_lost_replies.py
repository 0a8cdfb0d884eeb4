"""A script Redis ran whose reply was lost (the connection cut after Redis answered: CLIENT KILL, a network
blip) is sent again by the link's retry: the second run must say what the first did. The reply is lost by
a TCP proxy between the store and Redis, which cuts the connection once Redis has run the script."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(65536):
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
