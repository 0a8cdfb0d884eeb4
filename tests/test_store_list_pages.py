"""A page of the listing (``clean`` reads 500 at a time, the API and dashboard page too) is the same slice of
the whole listing, in the same order, with the same newest checkpoint: each page is sorted from the index
first, then only its records are read (sorted whole with every record and each one's newest checkpoint, a
page of two statuses took 0.7 s with 100,000 operations, and ``clean --dry-run`` 89 s)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Status, load_settings, open_store
from engine.store.base import Store
from tests.fixtures_engine import queued_record, until


async def test_pages_of_two_statuses_are_slices_of_the_whole_listing(
    make_store: Callable[[], Store], tmp_path: Path
) -> None:
    settings = load_settings(state_dir=tmp_path / "state", max_concurrent=4)
    async with Engine(store=make_store(), settings=settings, run_queue=False) as engine:
        ids = [
            (
                await engine.submit(
                    OperationSpec(
                        type="demo", params={"items": 3, "seconds": 0.01}, profile={"checkpoint_interval": 0.001}
                    )
                )
            ).id
            for _ in range(13)
        ]
        for op_id in ids[::3]:
            await engine.cancel(op_id)
        engine.run_queue = True

        async def settled() -> bool:
            return not await engine.list_operations([Status.QUEUED, Status.RUNNING])

        await until(settled)
        wanted = [Status.COMPLETED, Status.CANCELLED]
        whole = await engine.list_operations(wanted)
        assert {o.status for o in whole} == set(wanted) and len(whole) == 13
        for size in (1, 4, 5, 13, 20):
            paged = []
            for offset in range(0, 15, size):
                paged += await engine.list_operations(wanted, limit=size, offset=offset)
            assert [(o.id, o.status, o.checkpoint_seq) for o in paged] == [
                (o.id, o.status, o.checkpoint_seq) for o in whole
            ]
        assert [o.id for o in await engine.list_operations([Status.CANCELLED], limit=2, offset=1)] == [
            o.id for o in whole if o.status is Status.CANCELLED
        ][1:3]


@pytest.mark.redis
async def test_a_redis_page_reads_the_records_of_that_page_alone(redis_server: Any) -> None:
    """A page far down the listing read every record before it, decoded, to skip them: each page of a
    ``clean`` of 100,000 operations read up to 100,000 records."""
    async with open_store(redis_server.url, namespace="pages", checkpoint_mirror=None) as store:
        for _ in range(606):
            await store.create(queued_record())
        whole = await store.list_operations()
        call = store.link.call
        reads: list[str] = []

        async def counted(fn: Any, what: str = "request", *a: Any, **kw: Any) -> Any:
            reads.append(what)
            return await call(fn, what, *a, **kw)

        store.link.call = counted
        page = await store.list_operations([Status.QUEUED], limit=5, offset=600)
        assert [o.id for o in page] == [o.id for o in whole[600:605]]
        assert reads.count("reading records") == 1, reads
