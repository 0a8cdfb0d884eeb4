"""Fixtures for dashboard tests: an app over a fresh store, a fixed clock and resource sample, seeded records.

The seeded store is written through the store's own API (create, claim, save_live, checkpoints)
with fixed ids and times, so SVG snapshots do not change from run to run. Running records
are claimed by a second store instance in this process: it holds their locks the way another
worker process would, so the dashboard's engine sees them as alive, not orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import sqlite3
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.css.stylesheet import Stylesheet
from textual.pilot import Pilot

from engine import (
    Checkpoint,
    Engine,
    LogRecord,
    Operation,
    Priority,
    Progress,
    Settings,
    Status,
    WorkerInfo,
    load_settings,
    open_store,
)
from engine.resources import ResourceSample
from engine.store.base import ItemDelta
from tui.app import OutlastApp
from tui.widgets.operations import OperationsTable

from . import zygote
from .conftest import REPO
from .fixtures_engine import until


def _share_parsed_css() -> None:
    """Every App of a test process takes its parsed CSS from one cache, not from a parse of its own.

    Textual caches what it parses per Stylesheet, so each of the ~250 dashboards the tests start parsed
    every rule again: app.tcss, every widget's DEFAULT_CSS, each screen's as it opens (45-50 ms of the
    0.3 s of CPU a start costs). What a parse yields depends on the source and its place (the key Textual
    caches it by) and on the theme's variables, so those are in the key too: a theme other than the last,
    or a theme changed while the app runs, gets rules parsed with its own colours. The rules are shared as
    Textual shares them between the screens of one App (it applies them, it never changes them). Tests only:
    the dashboard's own start parses once per process anyway."""
    parse_rules = Stylesheet._parse_rules
    if getattr(parse_rules, "shared", False):
        return
    parsed: dict[tuple[Any, ...], Any] = {}
    themes: dict[tuple[tuple[str, str], ...], int] = {}

    def shared(
        self: Stylesheet,
        css: str,
        read_from: Any,
        is_default_rules: bool = False,
        tie_breaker: int = 0,
        scope: str = "",
    ) -> Any:
        variables = self._variables
        seen = self.__dict__.get("_shared_theme")  # (the variables, their count, their number in themes)
        if seen is None or seen[0] is not variables or seen[1] != len(variables):
            seen = (variables, len(variables), themes.setdefault(tuple(sorted(variables.items())), len(themes)))
            self.__dict__["_shared_theme"] = seen
        key = (css, read_from, is_default_rules, tie_breaker, scope, seen[2])
        rules = parsed.get(key)
        if rules is None:
            rules = parsed[key] = parse_rules(self, css, read_from, is_default_rules, tie_breaker, scope)
        return rules

    shared.shared = True  # type: ignore[attr-defined]
    Stylesheet._parse_rules = shared  # type: ignore[method-assign]


_share_parsed_css()

NOW = 1_790_000_000.0
"""The fixed clock of snapshot tests (a Sunday afternoon in 2026, UTC)."""

SAMPLE = ResourceSample(
    ts=NOW,
    cpu_percent=37.0,
    memory_percent=41.0,
    memory_used=6_700_000_000,
    memory_total=16_000_000_000,
    process_cpu_percent=12.0,
    process_rss=96_000_000,
    children={},
)


def fixed_sampler(children: dict[str, list[int]]) -> ResourceSample:
    """The same sample every time: snapshots must not show this machine's load."""
    return SAMPLE


def make_app(settings: Settings, *, engine: Engine | None = None, **kw: Any) -> OutlastApp:
    return OutlastApp(settings, engine=engine, sampler=fixed_sampler, **kw)


async def wait_for(pilot: Pilot[Any], pred: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Let the app run (it shares this loop) until ``pred()`` is truthy; fail after ``timeout``."""
    return await until(pred, timeout=timeout, every=0.05)


async def status_of(app: OutlastApp, op_id: str) -> Status:
    """The status stored for ``op_id`` (read from the store, not from the screen)."""
    return (await app.engine.store.get(op_id)).status


async def select(pilot: Pilot[Any], op_id: str) -> None:
    """Wait until the table shows ``op_id``, then put the cursor on it."""
    table = pilot.app.query_one(OperationsTable)
    await wait_for(pilot, lambda: op_id in table.ids)
    table.select(op_id)
    await pilot.pause()


@pytest.fixture
def tui_settings(state_dir: Path) -> Settings:
    return load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"], grace_period=2.0, max_concurrent=2)


# ---- deterministic records for snapshots ---------------------------------------------------------


def _op(n: int, type_: str, name: str, status: Status, **kw: Any) -> Operation:
    created = NOW - 3600 + n * 60
    fields: dict[str, Any] = {
        "id": f"06b40000000{n:02d}",
        "type": type_,
        "name": name,
        "status": status,
        "created_at": created,
        "queued_at": created,
        "updated_at": created,
        "profile": {"failure_threshold": 5},
        "effective_timeout": 3600.0,
        "timeout_basis": "min(max 14400s, base 3600s + 10s x 0 items) = 3600s",
    }
    fields.update(kw)
    return Operation(**fields)


SEED: list[Operation] = [
    _op(
        1,
        "codebase_indexing",
        "index monorepo",
        Status.COMPLETED,
        started_at=NOW - 3500,
        finished_at=NOW - 2900,
        progress=Progress(done=4210, total=4210),
        result={
            "index": "/srv/idx/monorepo.sqlite",
            "files": 4210,
            "failures": 0,
            "languages": {"py": 3000, "go": 1210},
        },
    ),
    _op(
        2,
        "security_scan",
        "scan deps",
        Status.FAILED,
        started_at=NOW - 3000,
        finished_at=NOW - 2950,
        progress=Progress(done=120, total=900, failed=6),
        item_failures=6,
        error="TooManyFailures: 6 items failed (threshold 5)",
    ),
    _op(
        3,
        "backup_operation",
        "nightly backup",
        Status.PAUSED,
        started_at=NOW - 2400,
        finished_at=NOW - 1800,
        progress=Progress(done=5300, total=12000, step="copy"),
        checkpoint_seq=3,
        status_message="paused by user; checkpoint 3",
    ),
    _op(
        4,
        "demo",
        "demo 4",
        Status.CANCELLED,
        started_at=NOW - 1500,
        finished_at=NOW - 1400,
        progress=Progress(done=40, total=100),
    ),
    _op(5, "comprehensive_test_suite", "full suite", Status.QUEUED, priority=Priority.HIGH),
    _op(6, "data_migration", "users table", Status.QUEUED, priority=Priority.LOW, total_items=250_000),
    _op(
        7,
        "demo",
        "long demo",
        Status.INTERRUPTED,
        started_at=NOW - 900,
        finished_at=NOW - 600,
        progress=Progress(done=700, total=1000),
        status_message="the process running it (host:4242) stopped",
    ),
]
RUNNING: list[tuple[Operation, Progress, float]] = [
    (
        _op(8, "codebase_indexing", "index docs", Status.QUEUED),
        Progress(
            done=1234, total=4000, step="parse", message="src/engine", rate=41.3, eta=67.0, metrics={"symbols": 9120}
        ),
        NOW - 30,
    ),
    (
        _op(9, "comprehensive_test_suite", "unit tests", Status.QUEUED),
        Progress(done=88, total=412, step="tests/test_store.py", rate=2.2, eta=147.0),
        NOW - 40,
    ),
]
CHECKPOINTED = "06b4000000003"
SELECTED = "06b4000000009"
"""The first row (running, newest): what the main-screen snapshots show in their panes."""


async def _seed(state_dir: Path) -> Any:
    store = open_store(state_dir)
    await store.open()
    for op in SEED + [op for op, _, _ in RUNNING]:
        await store.create(op)
    worker = WorkerInfo(host="build-7", pid=4242, name="worker")
    epochs: dict[str, int] = {}
    for op, progress, started in RUNNING:
        claimed = await store.claim(worker, NOW, 300.0, op_id=op.id)
        assert claimed is not None
        epochs[op.id] = claimed.epoch
        await store.update(op.id, epoch=claimed.epoch, started_at=started)
        await store.save_live(
            [(op.id, claimed.epoch, {"progress": progress.model_dump(mode="json"), "deadline": started + 3600})]
        )
    # The store takes checkpoints of running operations only: the paused one's are written as they were
    # while it ran (its status column set back after), so that its record stays exactly as seeded.
    paused = sqlite3.connect(state_dir / "outlast.db", isolation_level=None)
    paused.execute("UPDATE operations SET status='running' WHERE id=?", (CHECKPOINTED,))
    for op_id, total, per, steps, at in (
        (CHECKPOINTED, 12000, 1800, ("copy", "copy", "verify"), NOW - 2400),
        (SELECTED, 412, 30, ("tests/test_api.py", "tests/test_store.py"), NOW - 40),
    ):
        for seq, step in enumerate(steps, 1):
            done = seq * per
            cp = Checkpoint(
                operation_id=op_id,
                seq=seq,
                epoch=epochs.get(op_id, 0),
                created_at=at + seq * 15,
                progress_percentage=100 * done / total,
                processed_items=done,
                total_items=total,
                state={"done": done},
                next_step=step,
            )
            await store.save_checkpoint(cp, ItemDelta(), keep=5)
    paused.execute("UPDATE operations SET status='paused' WHERE id=?", (CHECKPOINTED,))
    paused.close()
    await store.append_logs(
        SELECTED,
        [
            LogRecord(ts=NOW - 40 + i * 7, level=level, message=msg)
            for i, (level, msg) in enumerate(
                (
                    ("info", "collected 412 tests in 9 files"),
                    ("info", "tests/test_api.py: 30 passed"),
                    ("warning", "tests/test_api.py::test_ws_reconnect took 12.4s"),
                    ("info", "checkpoint 2 saved (60 tests done)"),
                    ("info", "tests/test_store.py: running"),
                )
            )
        ],
    )
    return store


@pytest.fixture
def seeded(tui_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A store with fixed records (two of them running in a 'worker' that is this test); UTC clock."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    store = asyncio.run(_seed(tui_settings.state_dir))
    try:
        yield tui_settings
    finally:
        asyncio.run(store.close())
        monkeypatch.delenv("TZ")
        time.tzset()


class OnAPty:
    """``outlast ARGS`` with a pseudo-terminal of ``rows`` x ``cols`` as its stdin, stdout and stderr (``kw``: more of
    Popen's, such as a session of its own); what it writes there is read as it comes (``out``), so that it never
    blocks on a full buffer, until its last writer is gone."""

    def __init__(self, args: list[str], env: dict[str, str], rows: int = 24, cols: int = 80, **kw: Any) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**env, "TERM": "xterm-256color"}
        self.proc = zygote.popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO, **kw)
        os.close(slave)
        self.out = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(self.master, 65536):
                self.out.extend(chunk)

    def close(self) -> None:
        """Kill the process if it is still there, and close the terminal."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)
