"""Namespaces with characters that need care: each one's keys, and its directory in the checkpoint mirror,
are its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import Status, open_store
from engine.models import InvalidInput
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("namespace", [".", ".."])
async def test_a_namespace_of_dots_is_refused_before_the_mirror_is_written_outside_its_directory(
    redis_server: RedisServer, tmp_path: Path, namespace: str
) -> None:
    """The mirror keeps a namespace in ROOT/NAMESPACE: ".." wrote store.json, ops/ and checkpoints/ into the
    mirror's parent directory, "." into the mirror's root among the other namespaces' directories."""
    root = tmp_path / "parent" / "mirror"
    root.mkdir(parents=True)
    with pytest.raises(InvalidInput, match=r"namespace '\.+': not \. or \.\."):
        store = open_store(redis_server.url, namespace=namespace, checkpoint_mirror=root)
        async with store:
            await store.create(queued_record())
    assert sorted(p.name for p in (tmp_path / "parent").iterdir()) == ["mirror"]
    assert list(root.iterdir()) == []
    assert redis_server.client().dbsize() == 0


async def test_namespaces_that_prefix_each_other_keep_to_their_own_keys(redis_server: RedisServer) -> None:
    """``a`` holds ``a:op:ID``, ``a:st:queued``, ...; ``a:op`` and ``a:st`` hold ``a:op:ids``, ``a:st:all``, ..."""
    stores = {ns: open_store(redis_server.url, namespace=ns, checkpoint_mirror=None) for ns in ("a", "a:op", "a:st")}
    made = {}
    for ns, store in stores.items():
        async with store:
            op = queued_record()
            await store.create(op)
            made[ns] = op.id
    for ns, store in stores.items():
        async with store:
            listed = await store.list_operations()
            assert [o.id for o in listed] == [made[ns]]
            assert await store.counts() == {Status.QUEUED: 1}


@pytest.mark.parametrize("namespace", [".", ".."])
def test_a_namespace_of_dots_is_refused_with_the_settings(namespace: str) -> None:
    """Said when the settings are read (one line, exit 2, like any other bad setting), not only once a Redis
    store is opened with it."""
    from engine import load_settings

    with pytest.raises(InvalidInput, match=r"OUTLAST_NAMESPACE: key 'namespace': not \. or \.\."):
        load_settings(env={"OUTLAST_NAMESPACE": namespace})


async def test_a_namespace_a_newer_outlast_marked_is_refused_and_changed_in_nothing(redis_server: RedisServer) -> None:
    """Redis stores carried no version: an older worker beside a newer one ran what the newer one had queued,
    and one from before 2026-12-01 failed all of it. A store is marked with its record layout when opened; a
    process that knows only an older layout refuses it in one line, before anything is written."""
    from engine.models import StoreError

    store = open_store(redis_server.url, namespace="skew", checkpoint_mirror=None)
    await store.open()
    await store.create(queued_record())
    await store.close()
    client = redis_server.client()
    assert client.hget("skew:meta", "schema") == b"1"
    client.hset("skew:meta", "schema", "99")
    before = {k: client.dump(k) for k in client.keys("skew:*")}
    newer = open_store(redis_server.url, namespace="skew", checkpoint_mirror=None)
    with pytest.raises(StoreError, match=r"written by a newer Outlast \(schema 99; this version reads up to 1\)"):
        await newer.open()
    assert {k: client.dump(k) for k in client.keys("skew:*")} == before
    again = open_store(redis_server.url, namespace="skew", checkpoint_mirror=None)  # refused again, not half-open
    with pytest.raises(StoreError, match="newer Outlast"):
        await again.open()
