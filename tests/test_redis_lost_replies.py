"""A script Redis ran whose reply was lost (the connection cut after Redis answered: CLIENT KILL, a network
blip) is sent again by the link's retry: the second run must say what the first did."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from engine import Status, open_store
from engine.lifecycle import ACTIONS, Action
from engine.models import Conflict, NotFound, WorkerInfo
from engine.store.redis import RedisStore
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis
W = WorkerInfo(host="test", pid=1)


@contextmanager
def reply_lost_once(store: RedisStore, script: str) -> Iterator[list[int]]:
    """The first run of ``script`` is applied by Redis, and its reply lost on the way back."""
    link: Any = store.link
    real = link._evalsha
    target = store._scripts[script]
    runs: list[int] = []

    async def evalsha(client: Any, s: Any, keys: list[str], args: list[Any], sent: Any) -> Any:
        result = await real(client, s, keys, args, sent)
        if s is target:
            runs.append(1)
            if len(runs) == 1:
                raise RedisConnectionError("Connection closed by server.")
        return result

    link._evalsha = evalsha
    try:
        yield runs
    finally:
        link._evalsha = real


async def test_a_removal_whose_reply_was_lost_is_done_not_not_found(redis_server: RedisServer) -> None:
    store: Any = open_store(redis_server.url, namespace="lr", checkpoint_mirror=None)
    async with store:
        op = queued_record()
        await store.create(op)
        await store.transition(op.id, Status.CANCELLED)
        with reply_lost_once(store, "DELETE") as runs:
            await store.delete(op.id, expect=ACTIONS[Action.REMOVE])  # was NotFound: "no operation ID"
        assert len(runs) == 2  # sent again after the lost reply
        with pytest.raises(NotFound):
            await store.get(op.id)
        with pytest.raises(NotFound):  # a removal of what was never there (or removed before) still says so
            await store.delete(op.id, expect=ACTIONS[Action.REMOVE])


async def test_a_resume_whose_reply_was_lost_is_done_though_a_worker_claimed_it_meanwhile(
    redis_server: RedisServer,
) -> None:
    """The retry found the record written since by the claim (its last write's token another), and was
    refused: 'outlast resume' said the operation, running, could not be resumed, though it had resumed it."""
    store: Any = open_store(redis_server.url, namespace="lr", checkpoint_mirror=None)
    worker: Any = open_store(redis_server.url, namespace="lr", checkpoint_mirror=None)
    async with store, worker:
        op = queued_record()
        await store.create(op)
        first = await worker.claim(W, time.time(), 300.0)
        assert first is not None
        await worker.transition(op.id, Status.FAILED, epoch=first.epoch, error="boom")
        link: Any = store.link
        real = link._evalsha
        runs: list[int] = []

        async def evalsha(client: Any, s: Any, keys: list[str], args: list[Any], sent: Any) -> Any:
            result = await real(client, s, keys, args, sent)
            if s is store._scripts["WRITE"]:
                runs.append(1)
                if len(runs) == 1:  # applied; a worker claims it before the reply is lost
                    assert await worker.claim(W, time.time(), 300.0) is not None
                    raise RedisConnectionError("Connection closed by server.")
            return result

        link._evalsha = evalsha
        try:
            resumed = await store.transition(op.id, Status.QUEUED, expect=frozenset({Status.FAILED}))
        finally:
            link._evalsha = real
        assert len(runs) == 2
        assert resumed.status is Status.RUNNING and resumed.epoch == first.epoch + 1  # as it is now
        with pytest.raises(Conflict):  # a resume of a running operation is refused as before
            await store.transition(op.id, Status.QUEUED, expect=frozenset({Status.FAILED}))
