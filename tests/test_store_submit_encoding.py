"""A submit's record is encoded without a dump of the Operation (``codec.pack_new`` for Redis, the dump's handle
replaced for SQLite): what is stored is what the dump would have stored, and reads back as the Operation the
submit returned, in both stores, whatever the spec holds and however the caller changes it between submits."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, load_settings, open_store
from engine.models import Operation, Priority, Progress, Status, WorkerInfo, new_id
from engine.store.redis.codec import pack, pack_new
from engine.store.sqlite.records import record_with_handle
from engine.text import model_json
from tests.conftest import REPO
from tests.fixtures_redis import RedisServer

ODD = 'a\x1eb\x1fc\x00\n"\\ é 😀 \u2028'
LABEL = '"\\ é 😀 [/]'
"""What a name or tag may hold (one line of text: no control character); ODD travels in params."""

SPECS: list[dict[str, Any]] = [
    {"type": "ledger"},
    {"type": "ledger", "name": LABEL, "tags": {LABEL: LABEL, "k": ""}, "params": {"items": 3, "log_file": ODD}},
    {"type": "ledger", "priority": "high", "timeout": 12.5, "total_items": 7, "profile": {"checkpoint_interval": 5}},
    {"type": "ledger", "profile": {"retry": {"max_attempts": 5}}, "total_items": 10**6, "name": "x" * 200},
    {"type": "ledger", "params": {"log_file": "caf\u00e9.log"}, "priority": "low", "timeout": 3e7},
]


ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
EPOCH_MS = 1_577_836_800_000  # 2020-01-01, the ids' zero


def _digits_one_at_a_time(n: int, width: int) -> str:
    return "".join(ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(width)))


def ids_on_future_clocks() -> None:
    """Run in a process of its own: its ids after these are made on the year 3000's clock (they never go
    back in time)."""
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    clocks = sorted({rng.randrange(now_ms, EPOCH_MS + 32**9 - 1) for _ in range(20_000)})
    real = time.time
    try:
        for ms in clocks:
            time.time = lambda ms=ms: (ms + 0.5) / 1000  # type: ignore[misc]
            made = new_id()
            n = int("".join(f"{ALPHABET.index(c):05b}" for c in made), 2)
            assert len(made) == 13 and _digits_one_at_a_time(n, 13) == made
            assert n >> 20 == ms - EPOCH_MS, made
    finally:
        time.time = real  # type: ignore[misc]


def test_ids_are_the_digits_they_were() -> None:
    """An id is 9 base32 digits of milliseconds since 2020 then 4 random ones, the digits written two at a
    time: read one at a time, they are the clock it was made at, on clocks from now to the year 3000."""
    code = "from tests.test_store_submit_encoding import ids_on_future_clocks as f; f()"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ids = [new_id() for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def _built(**fields: Any) -> Operation:
    now = time.time()
    return Operation(**{"id": new_id(), "type": "t", "created_at": now, "queued_at": now, "updated_at": now, **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"name": ODD, "tags": {ODD: ODD}, "params": {"a": [1, 2.5, {"b": None}], "ü": "x"}, "priority": Priority.HIGH},
        {"status": Status.QUEUED, "total_items": 3, "timeout": 5.0, "effective_timeout": 1e16, "timeout_basis": "b"},
        {"profile": {"x": 1.0, "retry": {"transient": ["E"]}}, "profile_overrides": {"y": True}, "result": [1, "x"]},
        {"name": "caf\udce9.py"},  # a file name's byte that is not UTF-8: written out, as pack does
    ],
)
def test_a_new_record_packs_as_its_dump(fields: dict[str, Any]) -> None:
    op = _built(**fields)
    assert pack_new(op) == pack(op.model_dump(mode="json"))
    assert record_with_handle(op, 41) == model_json(op.model_copy(update={"handle": 41}))


@pytest.mark.parametrize(
    "fields",
    [
        {"progress": Progress(done=3)},  # a model given: the dump's way
        {"worker": WorkerInfo(host="h", pid=1)},
        {"params": {"x": "caf\udce9"}},  # a lone surrogate in a dict, which pydantic-core refuses
        {"updated_at": float("inf")},
    ],
)
def test_what_pack_new_leaves_to_pack(fields: dict[str, Any]) -> None:
    op = _built(**fields)
    assert pack_new(op) is None
    assert record_with_handle(op, 2) == model_json(op.model_copy(update={"handle": 2}))


def test_the_defaults_pack_new_writes_once_are_constants() -> None:
    """``pack_new`` writes the text of a field's default made once per process: a default made by a factory
    whose value changes (a time, an id) would be written the same in every record. Such a field must be
    given by ``Engine.submit`` or ``pack_new`` must encode it like a given one."""
    constant = {dict, list, Progress}
    for name, info in Operation.model_fields.items():
        if info.default_factory is not None:
            assert info.default_factory in constant, name


def test_a_record_with_a_handle_is_dumped_with_it() -> None:
    op = _built().model_copy(update={"handle": 5})
    assert record_with_handle(op, 6) == model_json(op.model_copy(update={"handle": 6}))


async def _submit_all(engine: Engine) -> None:
    spec = OperationSpec(type="ledger", params={"items": 1}, tags={"k": "v"})
    submitted: list[Operation] = []
    for raw in SPECS:
        submitted.append(await engine.submit(raw))
        submitted.append(await engine.submit(OperationSpec.model_validate(raw)))
    # The caller changes the spec it submits again: each record is of the spec as it was at its submit.
    for i in range(3):
        spec.params["items"] = i + 2
        spec.tags[f"t{i}"] = LABEL
        spec.name = f"run {i}"
        spec.priority = Priority.LOW if i % 2 else Priority.HIGH
        spec.profile = {"checkpoint_interval": i + 1}
        op = await engine.submit(spec)
        assert (op.params["items"], op.name, op.priority, op.profile["checkpoint_interval"]) == (
            i + 2,
            f"run {i}",
            spec.priority,
            i + 1,
        )
        assert op.tags == spec.tags and op.tags is not spec.tags
        submitted.append(op)
    for op in submitted:
        back = await engine.get(op.id)
        assert back.handle is not None and back.handle == op.handle
        assert back.model_dump() == op.model_dump()
    # What the engine returned is the caller's: changing it changes nothing stored, nor the next submit.
    submitted[0].params["items"] = 99
    submitted[0].profile["base_timeout"] = 1.0
    again = await engine.submit(SPECS[0])
    assert again.params == (await engine.get(submitted[0].id)).params
    assert again.profile == (await engine.get(submitted[0].id)).profile


async def test_submits_read_back_as_returned_local(state_dir: Path) -> None:
    settings = load_settings(plugins=["tests.ops_for_tests"], state_dir=state_dir)
    async with Engine(store=open_store(state_dir), settings=settings, run_queue=False) as engine:
        await _submit_all(engine)


@pytest.mark.redis
async def test_submits_read_back_as_returned_redis(redis_server: RedisServer, state_dir: Path) -> None:
    store = open_store(redis_server.url, namespace="enc", checkpoint_mirror=None)
    settings = load_settings(plugins=["tests.ops_for_tests"], state_dir=state_dir)
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        await _submit_all(engine)
