"""A write Redis got but did not answer is "outcome unknown", never "not done" (which may be untrue).

A frozen Redis (SIGSTOP) holds a command sent to it in its socket buffer and runs it when it thaws:
``outlast serve`` answered 503 "creating ID not done" to a submit that then landed and ran, so a client
that retried ran the work twice. What was never sent (Redis refusing connections) or only reads stays
"not done".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from engine import Engine, OperationSpec, Settings, StoreError, open_store
from engine.cli.run import submit_checked
from engine.engine import SubmitUnknown
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


@asynccontextmanager
async def _engine(server: RedisServer, settings: Settings) -> AsyncIterator[Engine]:
    """An engine on ``server`` whose store gives up within about a second (a 0.5 s reply wait, 1 s of
    retries) instead of 10 + 30 s."""
    store = open_store(f"{server.url}?retry_for=1", namespace="ou", checkpoint_mirror=None)
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        store.link.timeout = 0.5  # type: ignore[attr-defined]
        await engine.submit(OperationSpec(type="ledger"))  # Redis has the scripts (EVALSHA by hash alone)
        # Connections made and idle in the pool: a write under test is sent on one, not cut off in the
        # handshake of a new one (that is "not done": it never reached Redis).
        await asyncio.gather(*(store.link.call(lambda c: c.ping(), "reading") for _ in range(4)))  # type: ignore[attr-defined]
        yield engine


async def test_a_submit_redis_did_not_answer_is_unknown_with_where_to_look_and_it_lands(
    redis_server: RedisServer, settings: Settings
) -> None:
    from engine.api.app import create_app

    async with _engine(redis_server, settings) as engine:
        app = create_app(engine)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            with redis_server.frozen():
                r = await http.post("/api/operations", json={"type": "ledger", "name": "during-freeze"})
            assert r.status_code == 503, r.text
            detail = r.json()["detail"]
            url = r.headers["location"]
            op_id = url.rsplit("/", 1)[-1]
            assert f"creating {op_id}: outcome unknown" in detail, detail
            assert "not done" not in detail, detail
            assert f"check GET /api/operations/{op_id} once the store answers" in detail, detail
            # It was not "not done": Redis ran the create it held once it answered.
            back = await http.get(url)
            assert back.status_code == 200, back.text
            assert back.json()["name"] == "during-freeze"


async def test_the_command_line_says_how_to_look_for_a_submit_with_no_answer(
    redis_server: RedisServer, settings: Settings
) -> None:
    async with _engine(redis_server, settings) as engine:
        with redis_server.frozen(), pytest.raises(SubmitUnknown) as caught:
            await submit_checked(engine, OperationSpec(type="ledger"), "outlast --store X")
        op_id = caught.value.operation_id
        assert str(caught.value).endswith(
            f"outcome unknown (sent, with no reply: Redis may still apply it when it answers); check with"
            f" `outlast --store X show {op_id}` once the store answers, before submitting it again"
        ), caught.value
        assert (await engine.get(op_id)).id == op_id


async def test_what_cannot_have_been_applied_stays_not_done(redis_server: RedisServer, settings: Settings) -> None:
    """A read with no reply, and a write never sent (Redis refusing connections), are "not done"."""
    async with _engine(redis_server, settings) as engine:
        (op,) = await engine.list_operations()
        with redis_server.frozen(), pytest.raises(StoreError) as read:
            await engine.get(op.id)
        assert str(read.value).endswith("reading records not done"), read.value
        assert not getattr(read.value, "outcome_unknown", False)
        redis_server.kill()
        with pytest.raises(StoreError) as write:
            await engine.submit(OperationSpec(type="ledger"))
        assert not isinstance(write.value, SubmitUnknown), write.value
        assert "not done" in str(write.value) and "connection refused" in str(write.value), write.value
