"""A submit's record in the checkpoint mirror is written while Redis creates the operation (a temp file, renamed
into place once Redis answered): a process SIGKILLed between the two halves leaves nothing a later reader takes
for an operation, and a staged write that failed is written whole after the create."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Settings, load_settings, open_store
from engine.models import Operation
from engine.store.redis import lua
from engine.store.redis.keys import MIRROR_STALE_FIELD, Keys
from tests.fixtures_cli import REPO
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis

CHILD = """
import asyncio, sys
import tests.redis_die  # the kill (its OUTLAST_TEST_REDIS_DIE_* settings)
from engine import Engine, OperationSpec, load_settings, open_store

async def main() -> None:
    store = open_store(sys.argv[1], namespace="t", checkpoint_mirror=sys.argv[2])
    settings = load_settings(plugins=["tests.ops_for_tests"])
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        for _ in range(3):  # handles 1 and 2 in turn: no other process creates, the third one will get 3
            print((await engine.submit(OperationSpec(type="ledger", params={"items": 1}))).id, flush=True)

asyncio.run(main())
"""


@pytest.fixture
def settings(state_dir: Path) -> Settings:
    return load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"])


async def listed(server: RedisServer, mirror: Path, settings: Settings) -> dict[str, Operation]:
    """What a new process finds (it restores from the mirror when Redis was emptied)."""
    store = open_store(server.url, namespace="t", checkpoint_mirror=mirror)
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        return {o.id: o for o in await engine.list()}


def records(mirror: Path) -> set[str]:
    return {p.name.removesuffix(".json") for p in (mirror / "t" / "ops").glob("[!.]*.json")}


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_submit_killed_between_redis_and_its_mirror_record_leaves_nothing_read_as_one(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, when: str
) -> None:
    """The third submit's process SIGKILLed as its CREATE is sent (``before``: Redis never has it) or as its
    reply comes back (``after``: Redis has it), once its mirror record's file is written and fsynced. A record
    written in place during the create would be read as an operation Redis never created: restored when Redis
    is emptied, run though its submit never returned. Nothing of it may be read from the mirror."""
    mirror = tmp_path / "mirror"
    for name in dir(lua):  # in Redis's cache: a script's first call is one request (no NOSCRIPT, no second)
        if name.isupper() and isinstance(getattr(lua, name), str):
            redis_server.client().script_load(getattr(lua, name))
    kill = {
        "OUTLAST_TEST_REDIS_DIE_NAME": "EVALSHA:CREATE",
        "OUTLAST_TEST_REDIS_DIE_AT": "3",
        "OUTLAST_TEST_REDIS_DIE_WHEN": when,
        # the first two submits' records (a file each), then the third's, written while its CREATE is in flight
        "OUTLAST_TEST_REDIS_DIE_FSYNCED": f"{mirror / 't' / 'ops'}:3",
    }
    env = {**os.environ, **kill, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, redis_server.url, str(mirror)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -9, child.stderr
    answered = child.stdout.split()
    assert len(answered) == 2, child.stdout
    held = await listed(redis_server, mirror, settings)
    assert set(answered) <= set(held) and len(held) == (2 if when == "before" else 3), held
    assert records(mirror) <= set(held), "a mirror record of an operation Redis never created"
    redis_server.client().flushall()  # Redis lost: what the mirror holds comes back
    restored = await listed(redis_server, mirror, settings)
    assert set(answered) <= set(restored)
    for op_id, op in restored.items():
        assert op_id in held, f"{op_id} restored from the mirror, never created in Redis"
        assert op.handle == held[op_id].handle


@pytest.mark.parametrize("failing", ["the staged write", "every write"])
async def test_a_staged_record_whose_write_failed_is_written_whole_or_said_missing(
    redis_server: RedisServer,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    """The staged write failing (its fsync, an I/O error) costs the submit a second write, not its record:
    written whole once Redis created the operation, with the handle Redis gave. When that fails too (the disk
    full), the operation Redis holds without its mirror record is said, and marked in Redis for a write back."""
    mirror = tmp_path / "mirror"
    real = os.fsync
    failed: list[str] = []

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(".tmp") and (failing == "every write" or not failed):
            failed.append(path)
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    store = open_store(redis_server.url, namespace="t", checkpoint_mirror=mirror)
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        ops = [await engine.submit(OperationSpec(type="ledger", params={"items": 1})) for _ in range(3)]
        monkeypatch.setattr(os, "fsync", fsync)
        with caplog.at_level(logging.WARNING, "outlast"):
            ops += [await engine.submit(OperationSpec(type="ledger", params={"items": 1})) for _ in range(2)]
        monkeypatch.setattr(os, "fsync", real)
    assert failed
    assert not [p for p in (mirror / "t" / "ops").iterdir() if p.name.startswith(".")]
    stale = redis_server.client().hget(Keys("t").meta, MIRROR_STALE_FIELD)
    if failing == "every write":
        assert f"record {ops[3].id} failed: [Errno 5] Input/output error" in caplog.text
        assert records(mirror) == {o.id for o in ops[:3]} and stale is not None
        return
    assert "failed" not in caplog.text and stale is None
    for op in ops:
        path = mirror / "t" / "ops" / f"{op.id}.json"
        assert Operation.model_validate_json(path.read_bytes()).handle == op.handle
    redis_server.client().flushall()
    restored = await listed(redis_server, mirror, settings)
    assert {o.id: o.handle for o in restored.values()} == {o.id: o.handle for o in ops}
