"""Operation types used only by the tests (loaded as a plugin: ``plugins=["tests.ops_for_tests"]``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from engine import OperationContext, migrate_timeout_operation, operation


class LedgerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: int = 100
    seconds: float = 0.0
    slow_attempts: int = 0
    """Items take ``seconds`` in the first N attempts only, later ones run at full speed (0: every attempt).
    For a test that stops or kills the early attempts mid-run and only checks how the last one ends."""
    log_file: str | None = None
    """Every execution of an item body appends the item to this file (to detect double work)."""
    explicit_every: int = 0
    """Call ctx.checkpoint() every N items (0: only timed checkpoints)."""
    fail_at: int | None = None
    """Raise ConnectionError (transient) outside the items loop once item fail_at is reached."""
    flaky_file: str | None = None
    """With fail_at: fail only while this file does not exist (then create it): one transient failure."""
    linger: float = 0.0
    """Seconds the handler takes to let go once stopped (cleaning up), before the stop goes on."""
    stall_after: list[int] = []
    """Slow attempt N stops taking items once it has written ``stall_after[N-1]`` explicit checkpoints and
    waits until it is killed: a test that kills it after that many can never find it already ended."""
    total_after: float = 0.0
    """Seconds the handler runs before it reports its total (a total learnt once it has started: the
    timeout, computed for no items until then, is computed again for it)."""


@operation("ledger", params=LedgerParams)
async def ledger(ctx: OperationContext, p: LedgerParams) -> dict:
    """Sum item numbers; record every item body execution."""
    ctx.state.setdefault("sum", 0)
    if p.total_after:
        await asyncio.sleep(p.total_after)
    ctx.progress(total=p.items)
    split = p.items if p.fail_at is None else p.fail_at + 1
    slow = not p.slow_attempts or ctx.attempt <= p.slow_attempts
    seconds = p.seconds if slow else 0.0
    stall = p.stall_after[ctx.attempt - 1] if slow and ctx.attempt <= len(p.stall_after) else None
    written = 0
    fh = open(p.log_file, "a", buffering=1) if p.log_file else None  # noqa: SIM115
    try:
        for part in (range(split), range(split, p.items)):
            async for i in ctx.items(part, key=str):
                if written == stall:  # at the next item: a checkpoint taken in an item is written at its end
                    await asyncio.Event().wait()
                if fh:
                    fh.write(f"{i}\n")
                if seconds:
                    await asyncio.sleep(seconds)
                ctx.state["sum"] += i
                if p.explicit_every and (i + 1) % p.explicit_every == 0:
                    await ctx.checkpoint(next_step=f"after {i}", last=i)
                    written += 1
            if part.stop == split and p.fail_at is not None:
                flaky = Path(p.flaky_file) if p.flaky_file else None
                if flaky is None or not flaky.exists():
                    if flaky is not None:
                        flaky.touch()
                    raise ConnectionError("the backend went away")
    except BaseException:
        if p.linger:
            await asyncio.sleep(p.linger)
        raise
    finally:
        if fh:
            fh.close()
    return {"sum": ctx.state["sum"]}


class SilentParams(BaseModel):
    items: int = 5
    hang_after: int = 2


@operation("silent", params=SilentParams)
async def silent(ctx: OperationContext, p: SilentParams) -> dict:
    """Reports progress, then goes quiet (but stays cooperative: checks ctx.cancelled)."""
    for i in range(p.items):
        ctx.advance()
        if i + 1 == p.hang_after:
            while True:
                await asyncio.sleep(0.02)
                ctx.progress()  # raises OperationStopped once a stop is asked for
    return {}


@migrate_timeout_operation("migrated_population", estimated_items=50)
async def populate_kb(source: str, docs: int = 10, progress_callback=None) -> dict:
    """A pre-Outlast function: reports through progress_callback, called as before by old code."""
    for i in range(docs):
        await asyncio.sleep(0)
        if progress_callback:
            progress_callback(i + 1, docs, message=f"doc {i}")
    return {"source": source, "docs": docs}


class ExiterParams(BaseModel):
    code: int | str | None = 3
    after: int = 2


@operation("exiter", params=ExiterParams)
async def exiter(ctx: OperationContext, p: ExiterParams) -> dict:
    """A script turned operation that ends with ``sys.exit(code)`` after ``after`` items."""
    import sys

    async for i in ctx.items(range(10), key=str):
        if i == p.after:
            sys.exit(p.code)
    return {"never": True}


class BlockerParams(BaseModel):
    how: str = "compute"
    seconds: float = 60.0


@operation("blocker", params=BlockerParams)
async def blocker(ctx: OperationContext, p: BlockerParams) -> dict:
    """Holds the event loop: a long computation, or time.sleep (the wrong way to wait in a handler)."""
    import time

    ctx.progress(0, total=1)
    if p.how == "sleep":
        time.sleep(p.seconds)
    else:
        end = time.monotonic() + p.seconds
        while time.monotonic() < end:
            pass
    return {}


@operation("thread_blocker")
async def thread_blocker(ctx: OperationContext, params: Any) -> None:
    """Blocking work in a thread that never returns (an open of a FIFO with no writer, a hung NFS read):
    the operation can be stopped, the thread not. (A handler without a params model: tests rely on that.)"""
    import threading

    await asyncio.to_thread(threading.Event().wait)


class ThreadWaiterParams(BaseModel):
    seconds: float


@operation("thread_waiter", params=ThreadWaiterParams)
async def thread_waiter(ctx: OperationContext, p: ThreadWaiterParams) -> None:
    """Work in a thread that returns after ``seconds``."""
    import threading

    await asyncio.to_thread(threading.Event().wait, p.seconds)


class ForkerParams(BaseModel):
    pid_file: str
    seconds: float = 60.0


@operation("forker", params=ForkerParams)
async def forker(ctx: OperationContext, p: ForkerParams) -> None:
    """Forks a child that outlives it, as multiprocessing's default start on Linux forks each pool
    worker; the child's pid goes to ``pid_file``."""
    import os
    import time

    pid = os.fork()
    if pid == 0:
        time.sleep(p.seconds)
        os._exit(0)
    Path(p.pid_file).write_text(str(pid))
    async for _ in ctx.items(range(100_000), key=str):
        await asyncio.sleep(0.01)


@operation("test_shared_items")
async def shared_items(ctx: OperationContext, params: Any) -> None:
    """One ``ctx.items()`` loop taken by four tasks at once: refused (its next item would end the body of an
    item another task still runs)."""
    items = ctx.items(range(20))

    async def worker() -> None:
        async for _ in items:
            await asyncio.sleep(0.01)

    await asyncio.gather(*(worker() for _ in range(4)))


class PlainChildParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str
    """A file the child appends a line to every 50 ms; the child's pid goes to ``out + ".pid"``."""


@operation("plain_child", params=PlainChildParams)
async def plain_child(ctx: OperationContext, p: PlainChildParams) -> None:
    """Starts a program as most handlers do (the seed's among them): not with ``ctx.spawn``, so it carries no
    mark of its operation; then waits for ever."""
    import subprocess
    import sys

    code = "import time,sys\nwhile True:\n    open(sys.argv[1], 'a').write('x\\n'); time.sleep(0.05)\n"
    child = subprocess.Popen([sys.executable, "-c", code, p.out])
    Path(p.out + ".pid").write_text(str(child.pid))
    while True:
        await asyncio.sleep(0.1)
        ctx.progress(step="waiting")


class DiesParams(BaseModel):
    at: int = 2
    seconds: float = 0.5


@operation("dies", params=DiesParams)
async def dies(ctx: OperationContext, p: DiesParams) -> dict:
    """Kills its own process at item ``at`` of every attempt (``os._exit``: a crashing C extension does the
    same), each item taking ``seconds``."""
    import os

    async for i in ctx.items(range(10), key=str):
        await asyncio.sleep(p.seconds)
        if i == p.at:
            os._exit(9)
    return {}


@operation("takes_stop_signals")
async def takes_stop_signals(ctx: OperationContext, params: Any) -> dict:
    """A handler (as a library it uses might) that takes SIGTERM on the loop for itself and ignores SIGINT."""
    import signal

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    async for _ in ctx.items(range(200), key=str):
        await asyncio.sleep(0.05)
    return {}


class StdoutParams(BaseModel):
    how: str = "close"


@operation("closes_stdout", params=StdoutParams)
async def closes_stdout(ctx: OperationContext, p: StdoutParams) -> dict:
    """Closes or removes ``sys.stdout`` (as daemonizing code does), then works on."""
    import sys

    if p.how == "close":
        sys.stdout.close()
    else:
        sys.stdout = None  # type: ignore[assignment]
    async for _ in ctx.items(range(5), key=str):
        await asyncio.sleep(0.01)
    return {"done": 5}


@operation("tight_items")
async def tight_items(ctx: OperationContext, params: Any) -> dict:
    """Items without end whose bodies never await (a little hashing each, on the loop, as a handler of many
    quick items does): only ``ctx.items`` lets the engine's clock run between them. Appends the first item each
    attempt runs to the file ``first``; ends once the file ``stop`` exists (looked at every 1,000 items)."""
    import hashlib
    import itertools

    stop, data, first = Path(params["stop"]), b"x" * 2000, True
    async for i in ctx.items(itertools.count(), key=str):
        if first:
            with open(params["first"], "a") as f:
                f.write(f"{i}\n")
            first = False
        hashlib.sha256(data).digest()
        if i % 1000 == 0 and stop.exists():
            break
    return {}


@operation("big_result")
async def big_result(ctx: OperationContext, params: Any) -> dict:
    """A result of ``chars`` characters of text (its JSON a few bytes more)."""
    return {"text": "r" * int(params["chars"])}


@operation("big_state")
async def big_state(ctx: OperationContext, params: Any) -> dict:
    """Three items; the second puts ``chars`` characters of text in ``ctx.state`` and asks for a checkpoint."""
    async for i in ctx.items(range(3), key=str):
        if i == 1:
            ctx.state["blob"] = "s" * int(params["chars"])
        await ctx.checkpoint()
    return {}


@operation("long_keys")
async def long_keys(ctx: OperationContext, params: Any) -> dict:
    """``items`` items keyed by ``kb`` KB of text each, ``d`` seconds apiece."""
    kb, d = int(params["kb"]), float(params["d"])
    async for _ in ctx.items(range(int(params["items"])), key=lambda i: f"{i}:" + "k" * (kb << 10)):
        await asyncio.sleep(d)
    return {}


@operation("big_metric")
async def big_metric(ctx: OperationContext, params: Any) -> dict:
    """Reports a metric of ``chars`` characters of text beside a count, then waits ``d`` seconds."""
    ctx.progress(1, total=2, files=7, listing="m" * int(params["chars"]))
    await asyncio.sleep(float(params["d"]))
    ctx.progress(2)
    return {}


@operation("dict_state")
async def dict_state(ctx: OperationContext, params: Any) -> dict:
    """``items`` items, each putting a dict of ``n`` entries in ``ctx.state`` and asking for a checkpoint."""
    n = int(params["n"])
    async for i in ctx.items(range(int(params["items"])), key=str):
        ctx.state["index"] = {f"file/{j}.py": [j, i, "ok"] for j in range(n)}
        await ctx.checkpoint(next_step=f"after {i}")
    return {}
