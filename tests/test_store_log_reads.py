"""Reading a local operation log: the last lines from the end of the file, the rest a page at a time.

A command's log holds every line it printed: reading all of a 70 MB log to show its last three lines
took 17 s and 1.4 GB (``outlast logs -n 3``, and the dashboard's log pane). The reads are compared,
on generated logs with damaged and unfinished lines and tiny chunk sizes, with the one-pass reading
they replace; and the tail of a large log is read without reading the rest of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import open_store
from engine.models import LogRecord, Operation, Status, new_id
from engine.store.sqlite import logs as log_reads
from tests.fixtures_cli import Cli


def _line(i: int, pad: int = 0) -> bytes:
    rec = LogRecord(ts=1.0 + i, level="info", message=f"line {i}" + "x" * pad)
    return rec.model_dump_json(exclude={"operation_id"}).encode() + b"\n"


def _one_pass(data: bytes, offset: int, limit: int | None) -> tuple[list[str], int]:
    """What a read returned before: every whole line after ``offset`` parsed, damaged ones left out."""
    tail = data[offset:]
    end = tail.rfind(b"\n") + 1
    out = []
    for line in tail[:end].splitlines():
        try:
            out.append(LogRecord.model_validate_json(line).message)
        except ValueError:
            continue
    if limit is not None:
        out = out[-limit:] if limit > 0 else []
    return out, offset + end


async def _store_with_log(root: Path, data: bytes) -> tuple[Any, str]:
    store = open_store(root)
    await store.open()
    now = time.time()
    op = Operation(id=new_id(), type="command", status=Status.COMPLETED, created_at=now, queued_at=now, updated_at=now)
    await store.create(op)
    (root / "logs" / f"{op.id}.jsonl").write_bytes(data)
    return store, op.id


_pieces = st.lists(
    st.one_of(
        st.builds(_line, st.integers(0, 10**6), st.integers(0, 300)),
        st.sampled_from([b"\n", b"{]\n", b"\x00\xff garbage\n", b'{"ts": 1, "level": "info"}\n']),
    ),
    max_size=40,
)


@pytest.fixture
def one_store(tmp_path: Path) -> Any:
    """One local store on a loop of its own for every example of a test: (the loop, the store). Each example
    reads a log of its own (a new operation), so none sees another's; opening a store per example was most
    of the test's CPU."""
    loop = asyncio.new_event_loop()
    store = open_store(tmp_path / "state")
    loop.run_until_complete(store.open())
    yield loop, store
    loop.run_until_complete(store.close())
    loop.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=_pieces,
    unfinished=st.sampled_from([b"", b'{"ts": 2, "lev', b"x" * 500]),
    offset_at=st.floats(0, 1),
    limit=st.one_of(st.none(), st.integers(0, 50)),
    chunk=st.sampled_from([7, 64, 1000, 64 << 10]),
)
def test_reads_match_a_whole_read_of_the_file(
    one_store: Any,
    monkeypatch: pytest.MonkeyPatch,
    pieces: list[bytes],
    unfinished: bytes,
    offset_at: float,
    limit: int | None,
    chunk: int,
) -> None:
    data = b"".join(pieces) + unfinished
    whole = [i for i, b in enumerate(data) if b == 10]
    offset = ([0] + [i + 1 for i in whole])[int(offset_at * len(whole))]  # at a line's start, as offsets are
    monkeypatch.setattr(log_reads, "CHUNK", chunk)
    monkeypatch.setattr(log_reads, "READ_MAX", chunk * 3)
    loop, store = one_store

    async def go() -> None:
        now = time.time()
        op = Operation(
            id=new_id(), type="command", status=Status.COMPLETED, created_at=now, queued_at=now, updated_at=now
        )
        await store.create(op)
        (store.log_dir / f"{op.id}.jsonl").write_bytes(data)
        if limit is not None:
            got, end = await store.read_logs(op.id, offset, limit)
            assert ([r.message for r in got], end) == _one_pass(data, offset, limit)
            return
        messages, at = [], offset
        while True:  # page by page, until the offset stops moving
            got, nxt = await store.read_logs(op.id, at)
            messages += [r.message for r in got]
            if nxt == at:
                break
            at = nxt
        assert (messages, at) == _one_pass(data, offset, None)

    loop.run_until_complete(go())


def _bytes_read() -> int:
    """Bytes this process has read with read() and its kin, whatever opened the file (``rchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


async def test_the_last_lines_of_a_large_log_are_read_from_its_end(tmp_path: Path) -> None:
    """200,000 lines (about 20 MB): the last 500 (the dashboard's pane) read well under a megabyte."""
    # The first 199,000 lines are a thousand written 199 times over (only their bytes count): 200,000 lines
    # made one by one were more than a second of CPU.
    data = b"".join(_line(i, 30) for i in range(1000)) * 199 + b"".join(_line(i, 30) for i in range(199_000, 200_000))
    store, op_id = await _store_with_log(tmp_path, data)
    try:
        before = _bytes_read()
        got, end = await store.read_logs(op_id, 0, 500)
        read = _bytes_read() - before
    finally:
        await store.close()
    assert [r.message for r in got] == [f"line {i}" + "x" * 30 for i in range(199_500, 200_000)]
    assert end == len(data)
    assert read < len(data) / 50, f"{read:,} of {len(data):,} bytes read for the last 500 lines"


def test_the_whole_log_prints_page_by_page_and_as_one_json_array(
    cli: Cli, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``outlast logs ID`` (no -n) reads the log a page at a time; its JSON is still one array."""
    data = b"".join(_line(i) for i in range(300)) + b"{]\n" + _line(300)
    store, op_id = asyncio.run(_store_with_log(state_dir, data))
    asyncio.run(store.close())
    monkeypatch.setattr(log_reads, "READ_MAX", 1000)  # a few dozen pages
    want = [f"line {i}" for i in range(301)]
    r = cli.here("--json", "logs", op_id)
    assert r.returncode == 0, r.stderr
    assert [(rec["operation_id"], rec["message"]) for rec in json.loads(r.stdout)] == [(op_id, m) for m in want]
    r = cli.here("logs", op_id)
    assert r.returncode == 0, r.stderr
    assert [ln.split(maxsplit=2)[2] for ln in r.stdout.splitlines()] == want
    r = cli.here("--json", "logs", "-n", "2", op_id)
    assert [(rec["operation_id"], rec["message"]) for rec in json.loads(r.stdout)] == [(op_id, m) for m in want[-2:]]


@pytest.mark.parametrize("kind", ["fifo", "directory"])
async def test_a_log_that_is_no_regular_file_neither_hangs_a_reader_nor_its_run(tmp_path: Path, kind: str) -> None:
    """A FIFO put in place of a log: the process running the operation waited forever to open it for its
    next lines (the run never settled), and ``outlast logs`` either waited for a writer or failed as an
    internal error ("not seekable"). Now a reader gets nothing (said once), and the next append moves it
    aside and begins a new file, with every line it was given."""
    store = open_store(tmp_path / "state")
    async with store:
        now = time.time()
        op = Operation(id=new_id(), type="demo", status=Status.QUEUED, created_at=now, queued_at=now, updated_at=now)
        await store.create(op)
        path = tmp_path / "state" / "logs" / f"{op.id}.jsonl"
        os.mkfifo(path) if kind == "fifo" else path.mkdir()
        for limit in (None, 5):
            assert await asyncio.wait_for(store.read_logs(op.id, 0, limit), 5) == ([], 0)
        recs = [LogRecord(ts=now, level="info", message=f"m{i}") for i in range(3)]
        await asyncio.wait_for(store.append_logs(op.id, recs), 5)
        got, _ = await store.read_logs(op.id)
        assert [r.message for r in got] == ["m0", "m1", "m2"] and path.is_file()
        [aside] = [p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.not-a-file-")]
        assert aside.is_fifo() if kind == "fifo" else aside.is_dir()


def test_following_a_settled_operation_prints_its_whole_log(
    cli: Cli, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``outlast logs -f ID`` read a page (READ_MAX, 4 MB) before the loop, one more in it, saw the operation
    settled and exited 0: of a 10 MB log (a command's may be 64 MB) the rest, its last lines with it, was
    never printed. A follower that finds the operation settled now prints the log to its end first. (Pages
    of 4 KB here, in this process: a log of three pages and more without writing and printing 10 MB.)"""
    monkeypatch.setattr(log_reads, "READ_MAX", 4096)
    n = 300
    data = b"".join(_line(i, 60) for i in range(n))
    assert len(data) > 3 * log_reads.READ_MAX
    store, op_id = asyncio.run(_store_with_log(state_dir, data))
    asyncio.run(store.close())
    r = cli.here("logs", "-f", op_id)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == n and lines[-1].endswith(f"line {n - 1}" + "x" * 60), (len(lines), lines[-1:])


async def test_pages_of_the_first_records_after_an_offset_read_every_record(make_store: Any) -> None:
    """``read_logs(first=N)`` (the HTTP API's pages): the N records right after the offset, and the offset
    after them, on either store; paging on reads each record once, in order."""
    store = make_store()
    await store.open()
    try:
        now = time.time()
        op = Operation(id=new_id(), type="demo", status=Status.RUNNING, created_at=now, queued_at=now, updated_at=now)
        await store.create(op)
        for start in range(0, 2500, 500):
            await store.append_logs(
                op.id, [LogRecord(ts=now, level="info", message=str(i)) for i in range(start, start + 500)]
            )
        seen: list[str] = []
        offset = 0
        while True:
            records, after = await store.read_logs(op.id, offset, first=1000)
            assert len(records) <= 1000
            if after == offset:
                break
            seen += [r.message for r in records]
            offset = after
    finally:
        await store.close()
    assert seen == [str(i) for i in range(2500)]


async def test_a_store_keeps_nothing_per_operation_that_once_logged(tmp_path: Path) -> None:
    """A long-lived worker's store kept one lock per operation that ever wrote a log line, for as long as it
    was open: about 430 bytes each, 400 MB over a million operations. Appends to one operation still go one
    at a time, in order."""
    import gc

    store = open_store(tmp_path / "state")
    await store.open()
    try:

        def locks() -> int:
            gc.collect()
            return sum(type(o) is asyncio.Lock for o in gc.get_objects())

        before = locks()
        for _ in range(200):
            await store.append_logs(new_id(), [LogRecord(ts=time.time(), level="info", message="x")])
        assert locks() - before < 5
        op_id = new_id()
        await asyncio.gather(
            *(store.append_logs(op_id, [LogRecord(ts=time.time(), level="info", message=str(i))]) for i in range(50))
        )
        records, _ = await store.read_logs(op_id)
        assert [r.message for r in records] == [str(i) for i in range(50)]
    finally:
        await store.close()


async def test_a_record_left_unfinished_by_a_killed_writer_costs_no_record_after_it(tmp_path: Path) -> None:
    """A worker SIGKILLed in the middle of writing a batch leaves the log's last record unfinished (the kernel
    cuts a large write short). The next attempt's first record was appended to it: one damaged line, left out
    by every reader, so the resumed attempt's first line ("resuming from checkpoint 3") was never seen."""
    store, op_id = await _store_with_log(tmp_path, _line(1) + _line(2)[:30])
    try:
        await store.append_logs(op_id, [LogRecord(ts=9.0, level="info", message="resuming from checkpoint 3")])
        records, _ = await store.read_logs(op_id)
    finally:
        await store.close()
    assert [r.message for r in records] == ["line 1", "resuming from checkpoint 3"]


@pytest.mark.parametrize("limit", [None, 5], ids=["page", "tail"])
async def test_a_reader_past_the_end_of_a_log_begun_again_reads_the_new_one(tmp_path: Path, limit: int | None) -> None:
    """The logs directory deleted under a run (to free space): the lines after go on in a new file. A follower
    (``outlast logs -f``, the dashboard's pane) read on from its offset in the old file, past the new one's end,
    and never showed a line of it."""
    store, op_id = await _store_with_log(tmp_path, b"".join(_line(i) for i in range(200)))
    try:
        _, offset = await store.read_logs(op_id)
        (tmp_path / "logs" / f"{op_id}.jsonl").unlink()
        await store.append_logs(op_id, [LogRecord(ts=9.0, level="info", message="after the delete")])
        records, after = await store.read_logs(op_id, offset, limit)
    finally:
        await store.close()
    assert [r.message for r in records] == ["after the delete"]
    assert after == (tmp_path / "logs" / f"{op_id}.jsonl").stat().st_size


def test_the_last_records_past_what_is_held_at_once_print_page_by_page(
    cli: Cli, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``outlast logs -n 1000000`` of a 64 MB log held every record at once (765 MB, 1.08 GB with --json): past
    TAIL_HELD records the log is counted a page at a time, then the last N written as they are read again."""
    from engine.cli import read as read_cmd

    data = b"".join(_line(i) for i in range(300)) + b"{]\n" + _line(300)
    store, op_id = asyncio.run(_store_with_log(state_dir, data))
    asyncio.run(store.close())
    monkeypatch.setattr(log_reads, "READ_MAX", 1000)  # a few dozen pages
    monkeypatch.setattr(read_cmd, "TAIL_HELD", 10)

    def no_tail(*_: Any) -> None:
        raise AssertionError("read from the end: every record held at once")

    monkeypatch.setattr(log_reads, "_tail", no_tail)
    want = [f"line {i}" for i in range(301)]
    for n in (11, 123, 301, 5000):
        r = cli.here("--json", "logs", "-n", str(n), op_id)
        assert r.returncode == 0, r.stderr
        assert [(rec["operation_id"], rec["message"]) for rec in json.loads(r.stdout)] == [
            (op_id, m) for m in want[-n:]
        ]
        r = cli.here("logs", "-n", str(n), op_id)
        assert r.returncode == 0, r.stderr
        assert [ln.split(maxsplit=2)[2] for ln in r.stdout.splitlines()] == want[-n:]
