"""The progress hub, driven poll by poll, for operations another process runs (seen only in the store)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine import Engine, Operation, Status
from engine.models import Progress, WorkerInfo, new_id

pytest.importorskip("fastapi")
pytestmark = pytest.mark.timeout(60)

from engine.api.progress import ProgressHub, Subscriber  # noqa: E402  (fastapi: skipped above without it)


async def stored(engine: Engine, status: Status, type_: str = "demo", **fields: Any) -> Operation:
    """A record written straight to the store, as another process's engine would: no event here."""
    now = time.time()
    op = Operation(id=new_id(), type=type_, status=status, created_at=now, queued_at=now, updated_at=now, **fields)
    if status in (Status.COMPLETED, Status.CANCELLED):
        op.finished_at = now
    await engine.store.create(op)
    return op


def drain(sub: Subscriber) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


RUNNING_OR_ORPHANED = frozenset({Status.RUNNING, Status.INTERRUPTED})
"""What a record stored running with no process holding it may be by the time it is removed: the engine's
look for orphans (every 2 s) marks it interrupted on a loaded machine (the removal then refused it)."""


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
    await engine.store.delete(op.id, expect=RUNNING_OR_ORPHANED)  # settled and removed, unseen
    await hub._poll()
    msgs = drain(one)
    assert [m["type"] for m in msgs] == ["error"], msgs  # ws.py closes the socket on it (4404)
    assert msgs[0]["operation_id"] == op.id and "removed" in msgs[0]["detail"]
    assert op.id not in hub._seen  # the all-operations stream no longer tracks it


async def test_an_operation_removed_just_after_it_settled_is_said_removed_on_the_all_operations_stream(
    engine: Engine,
) -> None:
    """Settled and removed (`outlast rm`) between two polls: the all-operations stream, which had said it
    running, got nothing more about it, neither a `final` nor anything saying it would never come."""
    op = await stored(engine, Status.RUNNING, started_at=time.time())
    everything = Subscriber(None)
    hub = ProgressHub(engine, poll=3600)
    hub.add(everything)
    await hub._poll()
    assert "status_changed" in [m["type"] for m in drain(everything) if m.get("operation_id") == op.id]
    await engine.store.delete(op.id, expect=RUNNING_OR_ORPHANED)
    await hub._poll()
    msgs = [m for m in drain(everything) if m.get("operation_id") == op.id]
    assert [m["type"] for m in msgs] == ["error"], msgs  # the same message the one-operation stream gets
    assert "removed" in msgs[0]["detail"]
    await hub._poll()
    assert drain(everything) == []  # said once


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


@pytest.mark.parametrize(("made", "after_page", "removed"), [(60, 1, 1), (300, 2, 50), (230, 2, 30)])
async def test_the_catch_up_read_misses_no_final_when_operations_leave_the_settled_ones_while_it_pages(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, made: int, after_page: int, removed: int
) -> None:
    """Settled between two polls, and some already read removed before the next page is: the pages were
    read by offset, so every row after them moved up and the first of the next page were never read (no
    `final` for them). 50 removed: more than a page reads again before its start, so it looks further back."""
    everything = Subscriber(None)
    hub = ProgressHub(engine, poll=3600)
    hub.add(everything)
    await hub._poll()
    ids = {(await stored(engine, Status.CANCELLED)).id for _ in range(made)}
    real: Callable[..., Awaitable[list[Operation]]] = engine.list_operations
    pages: list[list[Operation]] = []

    async def listing(*args: Any, **kw: Any) -> list[Operation]:
        page = await real(*args, **kw)
        if Status.CANCELLED in (kw.get("statuses") or []):
            pages.append(page)
            if len(pages) == after_page:  # `outlast rm` of some already read, before the next page is
                for op in page[-removed - 5 : -5]:
                    await engine.store.delete(op.id, expect=frozenset({Status.CANCELLED}))
        return page

    monkeypatch.setattr(engine, "list_operations", listing)
    await hub._poll()
    assert len(pages) > after_page  # it did page
    finals = {m["operation_id"] for m in drain(everything) if m["type"] == "final"}
    assert finals == ids, f"no final for {len(ids - finals)}: {sorted(ids - finals)[:5]}"


async def test_a_running_operation_behind_more_than_a_thousand_queued_ones_is_followed(engine: Engine) -> None:
    """One running operation older than 1,000 queued ones (another worker's type): the hub read the 1,000
    newest active operations only, so the running one's progress and final never came, and neither did
    the final of the oldest queued one, cancelled."""
    worker = WorkerInfo(host=socket.gethostname(), pid=os.getppid())  # alive: not taken for an orphan
    running = await stored(
        engine, Status.RUNNING, started_at=time.time(), worker=worker, progress=Progress(done=1, total=10)
    )
    oldest = await stored(engine, Status.QUEUED, type_="another_workers_type")
    for _ in range(1000):
        await stored(engine, Status.QUEUED, type_="another_workers_type")
    everything = Subscriber(None)
    hub = ProgressHub(engine, poll=3600)
    hub.add(everything)
    await hub._poll()
    drain(everything)
    await engine.store.update(running.id, progress=Progress(done=5, total=10))
    await hub._poll()
    msgs = [m for m in drain(everything) if m.get("operation_id") == running.id]
    assert [m["type"] for m in msgs] == ["progress_update"], msgs
    assert msgs[0]["progress"]["done"] == 5
    await engine.store.transition(running.id, Status.COMPLETED, result="ok", finished_at=time.time())
    await engine.store.transition(oldest.id, Status.CANCELLED, finished_at=time.time())
    await hub._poll()
    finals = {m["operation_id"]: m["status"] for m in drain(everything) if m["type"] == "final"}
    assert finals == {running.id: "completed", oldest.id: "cancelled"}


def test_what_the_hub_remembers_past_its_bound_forgets_settled_operations_never_active_ones(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound on what the hub remembers dropped the operations seen longest ago, active ones too: one
    queued behind more than the bound was forgotten, and its `final` (found by comparing what was said
    active with the store) never came."""
    import engine.api.progress as progress

    monkeypatch.setattr(progress, "_SEEN_MAX", 10)
    hub = ProgressHub(engine, poll=3600)
    hub._seen_cap = 10
    for i in range(30):  # queued first (seen longest ago), then settled ones
        hub._remember(f"q{i}", (Status.QUEUED,))
    for i in range(30):
        hub._remember(f"s{i}", (Status.COMPLETED,))
    assert {f"q{i}" for i in range(30)} <= set(hub._seen)  # every active one
    settled = [k for k in hub._seen if k.startswith("s")]
    assert settled and settled == [f"s{i}" for i in range(30 - len(settled), 30)]  # the newest settled ones
