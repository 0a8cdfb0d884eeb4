"""Handles: the short number (1, 2, 3, ...) each store gives an operation, typed in place of its id.

Against both stores: handles count up in submission order, are never reused after a delete (a
number someone wrote down never names another operation), resolve to their operation, and a
missing one is NotFound naming the handle; through the CLI, ``ls`` shows them and commands take them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.models import InvalidInput, NotFound, Operation, Status, handle_of, new_id
from engine.store import LocalStore, Store
from engine.store.redis import RedisStore
from tests.fixtures_cli import Cli
from tests.fixtures_redis import RedisServer


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "state")
    else:
        s = RedisStore(request.getfixturevalue("redis_server").url, namespace="h")
    await s.open()
    yield s
    await s.close()


def new_op() -> Operation:
    now = time.time()
    return Operation(id=new_id(), type="demo", created_at=now, queued_at=now, updated_at=now)


async def test_handles_count_up_resolve_and_are_never_reused(store: Store) -> None:
    ops = [new_op() for _ in range(3)]
    handles = [await store.create(op) for op in ops]
    assert handles == [1, 2, 3]
    for op, h in zip(ops, handles, strict=True):
        assert await store.resolve(str(h)) == op.id
        assert (await store.get(op.id)).handle == h
    await store.transition(ops[1].id, Status.CANCELLED)
    await store.delete(ops[1].id, expect=frozenset({Status.CANCELLED}))
    with pytest.raises(NotFound, match="handle 2"):
        await store.resolve("2")
    again = new_op()
    assert await store.create(again) == 4  # not 2: the deleted one's number stays retired
    assert await store.resolve("4") == again.id
    with pytest.raises(NotFound, match="handle 99"):
        await store.resolve("99")
    # A leading zero is an id prefix, never a handle (every id starts with 0 before 2054); "0" alone, which
    # every id begins with, is refused as neither.
    a, b = ops[0].id, again.id  # made a moment apart: "06b..." both
    prefix = a[: next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))]
    with pytest.raises(InvalidInput, match="ambiguous"):
        await store.resolve(prefix[: max(2, len(prefix) // 2)])
    with pytest.raises(InvalidInput, match="handles start at 1"):
        await store.resolve("0")


def test_only_decimal_numbers_without_a_leading_zero_are_handles() -> None:
    assert [handle_of(v) for v in ["1", "42", "999999999999999999"]] == [1, 42, 999999999999999999]
    assert [handle_of(v) for v in ["0", "01", "0kf3", "1a", "", "-1", "1" * 19, "\uff11", "12\n"]] == [None] * 9
    assert new_id()[0] == "0"


async def test_a_store_made_before_handles_gets_them_for_new_operations(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "state")
    await store.open()
    old = new_op()
    await store.create(old)
    await store.close()
    with sqlite3.connect(tmp_path / "state" / "outlast.db") as conn:  # as an older version left it
        conn.execute("DROP TABLE handles")
        conn.execute("UPDATE operations SET record=json_remove(record, '$.handle')")
    store = LocalStore(tmp_path / "state")
    await store.open()
    try:
        assert (await store.get(old.id)).handle is None
        assert await store.create(new_op()) == 1
        assert await store.resolve(old.id[:12]) == old.id
    finally:
        await store.close()


async def test_a_store_made_before_the_status_index_gets_it_and_lists_a_status_newest_first_by_it(
    tmp_path: Path,
) -> None:
    """The newest of one status (a dashboard's look at the queue, ``outlast ls -s queued``) sorted every
    record of that status first: 360 ms for the newest 100 of 100,000 queued. A store made before the
    index gets it when opened; the listing reads it in order (SQLite's plan names it, and no sort)."""
    state = tmp_path / "state"
    store = LocalStore(state)
    await store.open()
    made = [new_op() for _ in range(5)]
    for op in made:
        await store.create(op)
    await store.close()
    with sqlite3.connect(state / "outlast.db") as conn:  # as an older version left it
        conn.execute("DROP INDEX ops_status_created")
    store = LocalStore(state)
    await store.open()
    try:
        newest = await store.list_operations(statuses=[Status.QUEUED], limit=3)
        assert [o.id for o in newest] == [o.id for o in made[::-1][:3]]
    finally:
        await store.close()
    with sqlite3.connect(state / "outlast.db") as conn:
        plan = " ".join(
            row[-1]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM operations WHERE status IN (?) ORDER BY created_at DESC, id DESC"
                " LIMIT 3",
                ("queued",),
            )
        )
    assert "ops_status_created" in plan and "TEMP B-TREE" not in plan, plan


def test_ls_shows_handles_and_commands_take_them(cli: Cli) -> None:
    ids = [cli("submit", "demo", "-p", "items=1").stdout.strip() for _ in range(2)]
    header, *rows = cli("ls").stdout.splitlines()
    assert header.split()[:2] == ["#", "ID"]
    assert sorted(r.split()[:2] for r in rows) == [["1", ids[0]], ["2", ids[1]]]
    shown = cli("show", "2", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == ids[1] and json.loads(shown.stdout)["handle"] == 2
    missing = cli("cancel", "7")
    assert missing.returncode == 3 and "no operation has handle 7" in missing.stderr, missing.stderr
    assert cli.op(ids[0]).status is Status.QUEUED


async def test_redis_restored_from_the_mirror_keeps_handles_and_never_reuses_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A Redis that lost everything is restored from the checkpoint mirror: each operation has its
    handle again, and the next one submitted gets a number after them, not 1."""
    import redis.asyncio as aioredis

    url = redis_server.url
    first = RedisStore(url, namespace="m", checkpoint_mirror=tmp_path / "mirror")
    await first.open()
    ops = [new_op() for _ in range(2)]
    assert [await first.create(op) for op in ops] == [1, 2]
    await first.close()
    client = aioredis.from_url(url)
    await client.flushall()
    await client.aclose()
    again = RedisStore(url, namespace="m", checkpoint_mirror=tmp_path / "mirror")
    await again.open()
    try:
        assert [await again.resolve(h) for h in ("1", "2")] == [op.id for op in ops]
        assert await again.create(new_op()) == 3
    finally:
        await again.close()


async def test_a_restore_from_the_mirror_counts_its_operations_in_words(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line said "restored 1 operations from the checkpoint mirror"."""
    import redis.asyncio as aioredis

    first = RedisStore(redis_server.url, namespace="w", checkpoint_mirror=tmp_path / "mirror")
    await first.open()
    await first.create(new_op())
    await first.close()
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    again = RedisStore(redis_server.url, namespace="w", checkpoint_mirror=tmp_path / "mirror")
    with caplog.at_level(logging.WARNING):
        await again.open()
    await again.close()
    said = [r.getMessage() for r in caplog.records if "from the checkpoint mirror" in r.getMessage()]
    assert len(said) == 1 and ": restored 1 operation from the checkpoint mirror " in said[0], said
