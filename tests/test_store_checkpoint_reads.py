"""Listing an operation's checkpoints (``outlast show``, ``outlast checkpoints``, the dashboard's checkpoints
pane at every poll) read every kept payload at once and decoded each whole in Python for its next step; a
resume read them all at once too. Five checkpoints of a 36 MB state took ``outlast checkpoints`` to 585 MB
and 6.5 s. A payload is now read one at a time, its next step taken by SQLite's JSON functions."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from engine import Engine, OperationContext, OperationSpec, Settings, Status, open_store, operation
from engine.models import Checkpoint
from engine.store import Store
from engine.store.base import decode_payload, encode_payload, next_step_of
from engine.text import NotJSON
from tests.fixtures_engine import make_engine
from tests.fixtures_redis import RedisServer


async def _listed(store: Store, op_id: str) -> tuple[list[Checkpoint], int]:
    """``store.checkpoints(op_id)``, and the most memory it held at once (bytes, as tracemalloc counts)."""
    tracemalloc.start()
    try:
        listed = await store.checkpoints(op_id)
        return listed, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_listing_of_checkpoints_holds_one_payload_at_a_time(settings: Settings) -> None:
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="dict_state", params={"items": 5, "n": 40_000}))
        assert (await engine.wait(op.id, timeout=60)).status is Status.COMPLETED
        store = engine.store
        sizes = [c.size for c in await store.checkpoints(op.id)]
        listed, listing_peak = await _listed(store, op.id)
        newest = await store.load_checkpoint(op.id)  # read newest first, one at a time: the newest it is
    assert [c.next_step for c in listed] == [f"after {i}" for i in (4, 3, 2, 1, 0)] and all(c.valid for c in listed)
    assert newest is not None and newest[0].next_step == "after 4"
    one = max(sizes)
    # Before: all five payloads held at once, each decoded into Python objects (15 times one payload here).
    assert listing_peak < 3 * one, (listing_peak, sizes)


@operation("test_nan_state")
async def nan_state(ctx: OperationContext, params: Any) -> dict:
    """One checkpoint whose state holds a NaN (which Python's JSON writes and SQLite's JSON does not read)."""
    ctx.state["ratio"] = math.nan
    await ctx.checkpoint("after the NaN")
    return {}


async def test_a_payload_sqlite_does_not_read_as_json_still_lists_its_next_step(settings: Settings) -> None:
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="test_nan_state"))
        assert (await engine.wait(op.id, timeout=30)).status is Status.COMPLETED
        listed = await engine.store.checkpoints(op.id)
    assert [(c.next_step, c.valid) for c in listed][-1:] == [("after the NaN", True)], listed


@pytest.mark.redis
async def test_a_listing_of_redis_checkpoints_holds_one_payload_at_a_time(
    settings: Settings, redis_server: RedisServer
) -> None:
    """Redis's store read every kept payload in one reply, for a listing and for a resume alike. Measured with a
    store of its own once the engine has closed: the engine's tasks (heartbeats, polls) allocated beside the
    listing, which under a heavy load took its peak past the bound."""
    async with Engine(
        store=open_store(redis_server.url, namespace="t", checkpoint_mirror=None), settings=settings
    ) as e:
        op = await e.submit(OperationSpec(type="dict_state", params={"items": 5, "n": 40_000}))
        assert (await e.wait(op.id, timeout=60)).status is Status.COMPLETED
    store = open_store(redis_server.url, namespace="t", checkpoint_mirror=None)
    await store.open()
    try:
        sizes = [c.size for c in await store.checkpoints(op.id)]
        tracemalloc.start()
        try:
            listed = await store.checkpoints(op.id)
            _, listing_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            newest = await store.load_checkpoint(op.id)
            _, resume_peak = tracemalloc.get_traced_memory()
            assert newest is not None
            payload = encode_payload(newest[0])
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            decode_payload(payload)
            _, decoded_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await store.close()
    assert [c.next_step for c in listed] == [f"after {i}" for i in (4, 3, 2, 1, 0)] and all(c.valid for c in listed)
    assert newest[0].next_step == "after 4"
    one = max(sizes)
    # Before: all five payloads in one reply, each decoded for its next step (11 times one payload here).
    assert listing_peak < 3 * one, (listing_peak, sizes)
    # A resume decodes the newest state whole, and held every other payload beside it before.
    assert resume_peak < (decoded_peak - base) + 3 * one, (resume_peak, decoded_peak - base, sizes)


@pytest.mark.redis
async def test_a_listing_of_checkpoints_only_the_mirror_holds_reads_one_payload_at_a_time(
    settings: Settings, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis emptied: the checkpoints are read from the mirror's files, which were all held at once too (ten
    kept here: ``checkpoints_keep`` may be up to 1,000)."""
    mirror = tmp_path / "mirror"
    settings = settings.model_copy(update={"checkpoints_keep": 10})
    async with Engine(
        store=open_store(redis_server.url, namespace="t", checkpoint_mirror=mirror), settings=settings
    ) as e:
        op = await e.submit(OperationSpec(type="dict_state", params={"items": 10, "n": 40_000}))
        assert (await e.wait(op.id, timeout=60)).status is Status.COMPLETED
        sizes = [c.size for c in await e.store.checkpoints(op.id)]
    redis_server.client().flushall()
    store = open_store(redis_server.url, namespace="t", checkpoint_mirror=mirror)
    await store.open()
    try:
        await store.checkpoints(op.id)  # the first read after the flush may write the mirror back into Redis
        redis_server.client().flushall()
        listed, listing_peak = await _listed(store, op.id)
        newest = await store.load_checkpoint(op.id)
    finally:
        await store.close()
    assert [c.next_step for c in listed] == [f"after {i}" for i in range(9, -1, -1)] and all(c.valid for c in listed)
    assert newest is not None and newest[0].next_step == "after 9"
    one = max(sizes)
    # Before: every payload at once (11 times one here); now one file's JSON, its payload's text and bytes.
    assert listing_peak < 6 * one, (listing_peak, sizes)


_KEYS = st.sampled_from(["next_step", "metadata", "counts", "state", "x"]) | st.text(max_size=12)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text()
    | st.sampled_from(['"next_step":', ',"metadata":{},"counts":[1,2,3]}', '}"', "\\"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)
_OBJECTS = st.dictionaries(_KEYS, _JSON, max_size=4)


@hypothesis.settings(max_examples=400, database=None, deadline=None)
@hypothesis.given(
    _OBJECTS, _OBJECTS, st.none() | st.text() | st.sampled_from(['"next_step":1}', "}"]), _OBJECTS, st.booleans()
)
def test_the_next_step_read_from_a_payloads_tail_is_the_one_a_whole_decode_reads(
    state: dict[str, Any], context: dict[str, Any], step: str | None, metadata: dict[str, Any], spaced: bool
) -> None:
    """A listing reads a checkpoint's next step from the payload's tail (the state not decoded): whatever the
    state, context and metadata hold (keys named like the payload's own, text that looks like its end), it reads
    what decoding the whole payload reads, and a payload of another shape is decoded whole."""
    cp = Checkpoint(
        operation_id="a1",
        seq=1,
        epoch=1,
        created_at=0.0,
        state=state,
        context_data=context,
        next_step=step,
        metadata=metadata,
    )
    try:
        payload = encode_payload(cp)
    except NotJSON:
        return
    if spaced:  # what another writer might have stored: the same content, other separators
        payload = json.dumps(json.loads(payload), separators=(", ", ": ")).encode()
    assert next_step_of(payload) == step


@pytest.mark.redis
async def test_a_new_mirror_is_filled_from_redis_one_operations_checkpoints_at_a_time(
    settings: Settings, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A mirror made on a Redis that holds operations is filled from it at the first write: the checkpoints of
    200 operations at a time were read and held at once (a thousand states, five kept of each)."""
    async with Engine(
        store=open_store(redis_server.url, namespace="t", checkpoint_mirror=None), settings=settings
    ) as e:
        ops = [await e.submit(OperationSpec(type="dict_state", params={"items": 5, "n": 40_000})) for _ in range(3)]
        for op in ops:
            assert (await e.wait(op.id, timeout=60)).status is Status.COMPLETED
        one = max(c.size for c in await e.store.checkpoints(ops[0].id))
    mirror = tmp_path / "mirror"
    store = open_store(redis_server.url, namespace="t", checkpoint_mirror=mirror)
    async with Engine(store=store, settings=settings, run_queue=False) as e:
        tracemalloc.start()
        try:
            await e.submit(OperationSpec(type="dict_state", params={"items": 1, "n": 1}))  # the first write
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    for op in ops:
        assert len(list((mirror / "t" / "checkpoints" / op.id).glob("*.ckpt.json"))) == 5, op.id
    # Before: the 15 payloads of the three operations and all their files' text at once (24 payloads' worth here).
    assert peak < 12 * one, (peak, one)
