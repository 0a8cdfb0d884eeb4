"""Round trips to Redis: a submit is one (one EVALSHA: the record, its index entries and its event), and
one whose reply is lost after Redis applied it is applied exactly once when retried; a checkpoint of an
attempt after its first is one (the delta it links to is the one this attempt wrote, not read back)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine, OperationSpec, Status, load_settings, open_store
from engine.models import Checkpoint, Operation, WorkerInfo
from engine.store.base import ItemDelta
from engine.store.redis import connection
from engine.store.redis.codec import RECORD_FIELDS, enc, pack
from engine.store.redis.connection import MAX_CONNECTIONS
from engine.text import clean_json_text
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


def _engine(url: str, ns: str) -> Engine:
    store = open_store(url, namespace=ns, checkpoint_mirror=None)
    return Engine(store=store, settings=load_settings(plugins=["tests.ops_for_tests"]), run_queue=False)


def _top_level(monitor: Any, end: str) -> list[str]:
    """The commands clients sent (not those scripts ran) up to the ``end`` marker, as MONITOR saw them."""
    sent: list[str] = []
    while True:
        cmd = monitor.next_command()
        if end in cmd["command"]:
            return sent
        if cmd["client_type"] != "lua":
            sent.append(cmd["command"].split(" ", 1)[0].upper())


async def test_a_submit_is_one_round_trip(redis_server: RedisServer) -> None:
    """Every command a submit sends reaches Redis as one EVALSHA; a change that adds a read, a check or a
    second write per submit fails here. (The engine's clock also reads the store every 2 s: a window it
    falls into is measured again.)"""
    n = 5
    r, marker = redis_server.client(), redis_server.client()
    marker.ping()  # connected before the window (a connection made in it would show its HELLO)
    async with _engine(redis_server.url, "rt") as engine:
        spec = OperationSpec(type="ledger", params={"items": 1})
        await engine.submit(spec)  # the script is loaded (NOSCRIPT handled) by the first one
        windows: list[Counter[str]] = []
        for attempt in range(3):
            end = f"outlast-test-end-{attempt}"
            with r.monitor() as m:
                ops = [await engine.submit(spec) for _ in range(n)]
                marker.echo(end)
                sent = Counter(_top_level(m, end))
            windows.append(sent)
            if sent == Counter({"EVALSHA": n}):
                break
        assert windows[-1] == Counter({"EVALSHA": n}), f"top-level commands of {n} submits: {windows}"
        assert {o.id for o in ops} <= {o.id for o in await engine.list_operations(statuses=[Status.QUEUED])}
    r.close()
    marker.close()


async def test_a_checkpoint_after_the_first_is_one_round_trip(redis_server: RedisServer) -> None:
    """Checkpoint after checkpoint of one attempt: one EVALSHA each (no read of the previous delta), and the
    hash chain they make verifies as when each delta was read back; a new attempt reads it again."""
    r, marker = redis_server.client(), redis_server.client()
    marker.ping()
    async with _engine(redis_server.url, "ck") as engine:
        store = engine.store
        op = await engine.submit(OperationSpec(type="ledger", params={"items": 9}))
        held = await store.claim(WorkerInfo(host="t", pid=1), time.time(), 300.0, op_id=op.id)
        assert held is not None

        async def save(seq: int, epoch: int) -> None:
            cp = Checkpoint(operation_id=op.id, seq=seq, epoch=epoch, created_at=time.time(), state={"n": seq})
            await store.save_checkpoint(cp, ItemDelta(done=[f"k{seq}"]), 10)

        await save(1, held.epoch)
        windows: list[Counter[str]] = []
        for attempt in range(3):  # the engine's clock may read the store in a window: measured again
            with r.monitor() as m:
                for seq in range(2 + 3 * attempt, 5 + 3 * attempt):
                    await save(seq, held.epoch)
                marker.echo(f"end-{attempt}")
                windows.append(Counter(_top_level(m, f"end-{attempt}")))
            if windows[-1] == Counter({"EVALSHA": 3}):
                break
        assert windows[-1] == Counter({"EVALSHA": 3}), f"top-level commands of 3 checkpoints: {windows}"
        last = 4 + 3 * (len(windows) - 1)
        assert all(c.valid for c in await store.checkpoints(op.id))
        cp, ledger = await store.load_checkpoint(op.id)  # type: ignore[misc]
        assert cp.seq == last and ledger.done == {f"k{i}" for i in range(1, last + 1)}

        await store.transition(op.id, Status.PAUSED, epoch=held.epoch)
        await store.release(op.id, held.epoch)
        await store.transition(op.id, Status.QUEUED)
        again = await store.claim(WorkerInfo(host="t", pid=1), time.time(), 300.0, op_id=op.id)
        assert again is not None and again.epoch == held.epoch + 1
        await save(last + 1, again.epoch)  # links to the delta read back: the chain still verifies
        cp, ledger = await store.load_checkpoint(op.id)  # type: ignore[misc]
        assert cp.seq == last + 1 and len(ledger.done) == last + 1
    r.close()
    marker.close()


class ReplyDropper:
    """A TCP proxy to redis-server that, when armed, lets the next EVALSHA through and drops its reply:
    the script ran in Redis, the client sees its connection closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        drop = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self.armed and b"EVALSHA" in data.upper():
                    self.armed = False
                    drop.set()
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if drop.is_set():
                    self.dropped += 1
                    return  # the reply never reaches the client
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (client_w, server_w):
            w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_submit_whose_reply_is_lost_is_applied_once(redis_server: RedisServer) -> None:
    """The reply of the CREATE script is lost after Redis ran it; the store retries with the same ``_tx``
    token, which finds its own record: one record, one index entry, one status event, and the submit
    succeeds."""
    ns = f"lost{secrets.token_hex(3)}"
    r = redis_server.client()
    proxy = ReplyDropper(redis_server.port)
    url = await proxy.start()
    events = r.pubsub()
    events.subscribe(f"{ns}:events")
    assert events.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    try:
        async with _engine(url, ns) as engine:
            await engine.submit(OperationSpec(type="ledger", params={"items": 1}))  # script loaded
            r.config_resetstat()
            proxy.armed = True
            op = await engine.submit(OperationSpec(type="ledger", params={"items": 2}))
            assert proxy.dropped == 1, "the reply was not dropped: nothing was tested"
            assert int(r.info("commandstats")["cmdstat_evalsha"]["calls"]) == 2, "ran once, retried once"
            assert (await engine.get(op.id)).params["items"] == 2
            assert len(await engine.list_operations()) == 2
            for key in ("ids", "all", "st:queued", "q:1"):
                assert r.zscore(f"{ns}:{key}", op.id) is not None, key
            assert r.zcard(f"{ns}:q:1") == 2
    finally:
        await proxy.close()
    published: list[dict[str, Any]] = []
    while (msg := events.get_message(timeout=0.5)) is not None:
        if msg["type"] == "message":
            published.append(json.loads(msg["data"]))
    assert [e["status"] for e in published if e["op"] == op.id] == ["queued"], published
    events.close()
    r.close()


async def test_the_packed_record_keeps_any_text(redis_server: RedisServer) -> None:
    """The record travels as one argument cut at a control character, which JSON escapes inside values: text
    holding it (and any other character) comes back as it was."""
    odd = 'a\x1eb\x1fc\x00\n"\\ é 😀 \u2028'
    label = '"\\ é 😀 [/]'  # a name holds no control character
    async with _engine(redis_server.url, "odd") as engine:
        spec = OperationSpec(type="ledger", name=label, tags={label: label, "k": ""}, params={"log_file": odd})
        op = await engine.submit(spec)
        back = await engine.get(op.id)
    assert (back.name, back.tags, back.params["log_file"]) == (label, {label: label, "k": ""}, odd)
    assert back.model_dump(exclude={"updated_at"}) == op.model_dump(exclude={"updated_at"})


async def test_a_burst_of_submits_waits_for_connections(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """More concurrent requests than connections: each waits for one of the process's connections (never
    more of them), none fails or is taken for an outage."""
    r = redis_server.client()
    async with _engine(redis_server.url, "burst") as engine:
        with caplog.at_level(logging.WARNING, "outlast"):
            ops = await asyncio.gather(
                *(engine.submit(OperationSpec(type="ledger")) for _ in range(3 * MAX_CONNECTIONS))
            )
        assert len({o.id for o in ops}) == 3 * MAX_CONNECTIONS
        assert "connection lost" not in caplog.text
        clients = [c for c in r.client_list() if c["cmd"] != "client|list"]
        assert len(clients) <= MAX_CONNECTIONS, clients
    r.close()


def test_a_field_is_encoded_as_json_dumps_would() -> None:
    """The encoder's shortcuts for scalars (alone and in a packed record) write exactly what json.dumps
    writes, for every kind of value; a packed object or array is read back as the same value."""
    values: list[Any] = [None, True, False, 0, -1, 2**70, 1.5, -0.0, 1e300, 5e-324, float("inf"), float("nan")]
    values += ["", 'é\x1e\x1f\x00"\\', "😀", Status.QUEUED, [], {}, {"a": [1, 2.5, None, {"b": "c"}]}]
    for v in values:
        text = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
        assert enc(v) == text, repr(v)
        if isinstance(v, dict | list):
            assert json.loads(_packed(v)) == v, repr(v)
        else:
            assert _packed(v) == text, repr(v)


_RECORD = Operation(id="06bgs9grbevx0", type="t", created_at=0.0, queued_at=0.0, updated_at=0.0).model_dump(mode="json")


def _packed(value: Any) -> str:
    """The JSON of the field ``name`` holding ``value`` in a packed record, which has one value per field in
    RECORD_FIELDS order, each ended by the separator (never inside a value: JSON escapes it)."""
    values = pack({**_RECORD, "name": value}).split("\x1e")
    assert len(values) == len(RECORD_FIELDS) + 1 and values[-1] == "", values
    assert values[RECORD_FIELDS.index("type")] == '"t"'
    return values[RECORD_FIELDS.index("name")]


def test_a_record_is_packed_whole_or_not_at_all() -> None:
    """The CREATE script names the values by their place: a record with a field missing or unknown is refused."""
    with pytest.raises(ValueError, match="missing \\['tags'\\]"):
        pack({k: v for k, v in _RECORD.items() if k != "tags"})
    with pytest.raises(ValueError, match="unknown \\['extra'\\]"):
        pack({**_RECORD, "extra": 1})


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=24,
)


@settings(max_examples=300, database=None, deadline=None)
@given(st.lists(_JSON, max_size=4) | st.dictionaries(st.text(max_size=6), _JSON, max_size=4))
def test_a_packed_object_reads_back_as_the_same_value(value: Any) -> None:
    """Objects and arrays are packed by another encoder than json.dumps (4x faster): whatever they hold
    (separator and control characters, NaN, huge integers, tiny floats), the field reads back as the same
    value and never breaks the record's framing."""
    back = json.loads(_packed(value))
    assert json.dumps(back, sort_keys=True) == json.dumps(value, sort_keys=True)  # NaN == NaN as text


def test_a_packed_object_with_a_lone_surrogate_is_written_as_enc_writes_it() -> None:
    """The faster encoder refuses a lone surrogate (not UTF-8): such a value is packed as before."""
    assert _packed({"a": "x\ud800"}) == clean_json_text(enc({"a": "x\ud800"}))
    assert json.loads(_packed(["x\ud800"])) == ["x\\ud800"]


async def test_a_flushed_script_cache_is_loaded_again(redis_server: RedisServer) -> None:
    """Scripts are sent by hash alone: after Redis lost them (SCRIPT FLUSH, as a restart does), the next
    call of each loads it again and is applied once."""
    r = redis_server.client()
    async with _engine(redis_server.url, "flushed") as engine:
        first = await engine.submit(OperationSpec(type="ledger"))
        r.script_flush()
        second = await engine.submit(OperationSpec(type="ledger"))
        await engine.cancel(first.id)
        assert (await engine.get(first.id)).status is Status.CANCELLED
        assert first.handle is not None and second.handle == first.handle + 1
        assert [o.id for o in await engine.list_operations()] == [second.id, first.id]
    r.close()


async def test_scripts_run_without_hiredis_packer(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a hiredis too old to pack commands, a script's EVALSHA is packed by redis-py: the same record."""
    monkeypatch.setattr(connection, "_PACK", None)
    odd = 'é\x1e"\\ 😀'
    async with _engine(redis_server.url, "nopack") as engine:
        op = await engine.submit(OperationSpec(type="ledger", name="é 😀", tags={"é": "😀"}, params={"log_file": odd}))
        back = await engine.get(op.id)
        assert back.model_dump(exclude={"updated_at"}) == op.model_dump(exclude={"updated_at"})
        assert (await engine.cancel(op.id)).status is Status.CANCELLED
