"""The progress hub, driven poll by poll, for operations another process runs (seen only in the store)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine import Engine, Operation, Status
from engine.models import Progress, new_id

pytest.importorskip("fastapi")
pytestmark = pytest.mark.timeout(60)

from engine.api.progress import ProgressHub, Subscriber  # noqa: E402  (fastapi: skipped above without it)


async def stored(engine: Engine, status: Status, **fields: Any) -> Operation:
    """A record written straight to the store, as another process's engine would: no event here."""
    now = time.time()
    op = Operation(id=new_id(), type="demo", status=status, created_at=now, queued_at=now, updated_at=now, **fields)
    if status in (Status.COMPLETED, Status.CANCELLED):
        op.finished_at = now
    await engine.store.create(op)
    return op


def drain(sub: Subscriber) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


async def test_an_operation_removed_just_after_it_settled_ends_its_one_operation_stream(engine: Engine) -> None:
    """Cancelled and removed between two polls: the one-operation socket waited for a `final` for ever."""
    op = await stored(engine, Status.RUNNING, started_at=time.time())
    one, everything = Subscriber(op.id), Subscriber(None)
    hub = ProgressHub(engine, poll=3600)
    hub.add(one)
    hub.add(everything)
    await hub._poll()
    assert drain(one)[0]["type"] == "status_changed"
    drain(everything)
    await engine.store.delete(op.id, expect=frozenset({Status.RUNNING}))  # settled and removed, unseen
    await hub._poll()
    msgs = drain(one)
    assert [m["type"] for m in msgs] == ["error"], msgs  # ws.py closes the socket on it (4404)
    assert msgs[0]["operation_id"] == op.id and "removed" in msgs[0]["detail"]
    assert not [m for m in drain(everything) if m.get("operation_id") == op.id]
    assert op.id not in hub._seen  # the all-operations stream no longer tracks it


async def test_every_operation_that_started_and_settled_between_two_polls_gets_its_final(engine: Engine) -> None:
    """A burst of 60 short operations between two polls: the catch-up read of the newest 20 sent 20 finals."""
    everything = Subscriber(None)
    hub = ProgressHub(engine, poll=3600)
    hub.add(everything)
    await hub._poll()
    ids = {(await stored(engine, Status.COMPLETED, result="ok")).id for _ in range(60)}
    await hub._poll()
    finals = {m["operation_id"] for m in drain(everything) if m["type"] == "final"}
    assert finals == ids, f"final for {len(finals & ids)} of {len(ids)}"
    await hub._poll()
    assert [m for m in drain(everything) if m["type"] == "final"] == []  # each once


async def test_a_takeover_between_two_polls_says_the_attempt_changed_before_progress_goes_back(
    engine: Engine,
) -> None:
    """Killed at 300 of 400, taken over from a checkpoint at 200, all inside one poll: the stream said
    running, 300, then 200, running throughout, with nothing saying why progress went back."""
    op = await stored(engine, Status.RUNNING, attempt=1, epoch=1, progress=Progress(done=300, total=400))
    everything = Subscriber(None)
    hub = ProgressHub(engine, poll=3600)
    hub.add(everything)
    await hub._poll()
    drain(everything)
    await engine.store.update(op.id, attempt=2, progress=Progress(done=200, total=400))
    await hub._poll()
    msgs = [m for m in drain(everything) if m.get("operation_id") == op.id]
    assert [m["type"] for m in msgs] == ["status_changed", "progress_update"], msgs
    assert msgs[0]["status"] == "running" and "attempt 2" in msgs[0]["message"]
    assert msgs[1]["progress"]["done"] == 200
