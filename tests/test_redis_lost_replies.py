"""A script Redis ran whose reply was lost (the connection cut after Redis answered: CLIENT KILL, a network
blip) is sent again by the link's retry: the second run must say what the first did."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from engine import Status, open_store
from engine.lifecycle import ACTIONS, Action
from engine.models import NotFound
from engine.store.redis import RedisStore
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


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
