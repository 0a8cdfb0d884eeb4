"""A Redis that answers reads but refuses writes (a read-only replica; one full under noeviction) while an
operation's worker is gone: ``ls``, ``show``, ``logs`` and ``checkpoints`` list what it holds as it is,
with one line saying why nothing was marked, exit 0, and change nothing. Each refused the listing (exit 8)
because marking the orphan interrupted was refused, so nobody could see what had been running there; on a
replica every listing was refused, orphan or not. A command that would write still says the error, exit 8."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from engine import Status, open_store
from engine.exitcodes import ExitCode
from engine.models import WorkerInfo
from tests import zygote
from tests.fixtures_cli import CLI, REPO
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis
NS = "rw"


def outlast(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return zygote.run(
        ["--store", f"{url}?lease_ttl=0.5", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUTLAST_NAMESPACE": NS, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


async def _orphan(server: RedisServer) -> str:
    """A claimed operation whose worker is gone (its lease expired), Redis up long enough to trust that."""
    r = outlast(server.url, "-q", "submit", "demo", "-p", "items=5")
    assert r.returncode == ExitCode.OK, r.stderr
    op_id = r.stdout.strip()
    store: Any = open_store(f"{server.url}?lease_ttl=0.5", namespace=NS, checkpoint_mirror=None)
    async with store:
        claimed = await store.claim(WorkerInfo(host="gone", pid=1), time.time(), 300.0)
        assert claimed is not None and claimed.id == op_id
        server.client().delete(store.keys.lease(op_id))
    await server.up_for(2)
    return op_id


def _replica(server: RedisServer) -> str:
    server.client().replicaof("127.0.0.1", "1")  # a primary that never answers: the data stays, writes refused
    return "is a read-only replica"


def _full(server: RedisServer) -> str:
    client = server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", max(1, int(client.info("memory")["used_memory"]) - 1000))
    return "is full"


@pytest.mark.parametrize("refuse", [_replica, _full], ids=["replica", "full"])
async def test_reads_list_an_orphan_as_stored_where_redis_refuses_writes(
    redis_server: RedisServer, refuse: Callable[[RedisServer], str]
) -> None:
    op_id = await _orphan(redis_server)
    said = refuse(redis_server)
    before = redis_server.client().hgetall(f"{NS}:op:{op_id}")
    for args in (["ls"], ["show", op_id], ["logs", op_id], ["checkpoints", op_id]):
        r = outlast(redis_server.url, *args)
        assert r.returncode == ExitCode.OK, (args, r.returncode, r.stderr)
        said_lines = [line for line in r.stderr.splitlines() if line not in ("no checkpoints", "no log lines")]
        assert len(said_lines) == 1 and said in said_lines[0] and "shown as stored" in said_lines[0], (args, r.stderr)
        if args[0] in ("ls", "show"):
            assert op_id in r.stdout and "running" in r.stdout, (args, r.stdout)
    assert redis_server.client().hgetall(f"{NS}:op:{op_id}") == before  # nothing changed

    r = outlast(redis_server.url, "cancel", op_id)  # it would write: the error, exit 8
    assert r.returncode == ExitCode.STORE and said in r.stderr and "shown as stored" not in r.stderr, r.stderr

    redis_server.client().replicaof("NO", "ONE")
    redis_server.client().config_set("maxmemory", 0)
    r = outlast(redis_server.url, "--json", "ls")  # writes taken again: marked as before
    assert r.returncode == ExitCode.OK and r.stderr.count("interrupted") == 1, r.stderr
    assert [o["status"] for o in json.loads(r.stdout)] in ([Status.INTERRUPTED.value], [Status.QUEUED.value])


async def test_a_read_only_replica_with_nothing_orphaned_is_listed_without_a_word(redis_server: RedisServer) -> None:
    """The look for orphans took the ids a claim found without a record (SPOP) on every listing, a write
    even with none there: every ``ls`` on a replica was refused, or (with the listing kept) warned."""
    r = outlast(redis_server.url, "-q", "submit", "demo", "-p", "items=5")
    assert r.returncode == ExitCode.OK, r.stderr
    await redis_server.up_for(2)  # before that, no look for orphans is made
    _replica(redis_server)
    r = outlast(redis_server.url, "ls")
    assert r.returncode == ExitCode.OK and r.stderr == "" and "queued" in r.stdout, (r.returncode, r.stderr)


def test_a_run_whose_redis_turns_replica_under_it_ends_saying_so(redis_server: RedisServer) -> None:
    """A failover turned the Redis under `outlast run` into a read-only replica: the lease renewals were
    refused, the lease ran out, the attempt stopped writing; the record said running by the run's own
    process, and only a write could change it. The run showed it running for ever (the outage limit is
    for writes an attempt still makes)."""
    proc = subprocess.Popen(
        [
            *CLI,
            "--store",
            f"{redis_server.url}?lease_ttl=0.5",
            "run",
            "demo",
            "-p",
            "items=100000",
            "-p",
            "seconds=0.01",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OUTLAST_NAMESPACE": NS, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        while "running" not in proc.stdout.readline():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        said = _replica(redis_server)
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the run went on showing its operation running after the store refused its lease")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == ExitCode.STORE, err
    last = err.strip().splitlines()[-1]
    assert "stopped" in last and said in last and "resume" in last, err
