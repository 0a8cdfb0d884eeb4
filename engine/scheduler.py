"""The scheduler: claims queued operations from the store while this engine has free slots and the
machine has room (memory and CPU limits, the open files this process may have), and starts an attempt
for each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol

from .config import Settings
from .models import Operation, WorkerInfo
from .outage import StoreHealth, store_failure
from .registry import runnable_types
from .resources import Admission
from .store import Store

log = logging.getLogger("outlast.engine")

CLAIM_BATCH = 32
"""Claims asked for at once: they are committed together (one fsync for the lot)."""


SAY_AGAIN = 60.0
"""Seconds before the same reason for starting no work is said again."""


class SchedulerHost(Protocol):
    """What the scheduler reads of its engine (live: the dashboard turns ``run_queue`` on and off)."""

    @property
    def store(self) -> Store: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def worker(self) -> WorkerInfo: ...
    @property
    def max_concurrent(self) -> int: ...
    @property
    def run_queue(self) -> bool: ...
    @property
    def draining(self) -> bool:
        """Take no more work (running work goes on)."""
        ...

    @property
    def closing(self) -> bool: ...
    @property
    def health(self) -> StoreHealth: ...


class Scheduler:
    """Runs ``execute(op)`` in a task of its own for each operation it claims (or is handed)."""

    def __init__(
        self,
        host: SchedulerHost,
        admission: Admission,
        execute: Callable[[Operation], Coroutine[Any, Any, None]],
    ) -> None:
        self._host = host
        self._admission = admission
        self._execute = execute
        self.tasks: set[asyncio.Task[Any]] = set()
        """Every attempt this engine runs (or is settling)."""
        self._settling = 0
        """Tasks whose handler has returned and whose final status write is queued: their slots are free."""
        self._handovers = 0
        """Claims in flight for the slot of a settling attempt (hand_over): not free to the loop's claims."""
        self._wake = asyncio.Event()
        self._said: dict[str, float] = {}
        """When each reason for starting no work was last said (a limit met again and again is one line)."""

    def wake(self) -> None:
        """Look at the queue now (something was queued, or a slot came free)."""
        self._wake.set()

    @contextlib.contextmanager
    def settling(self) -> Iterator[None]:
        """While a final status is written, the attempt's slot counts as free."""
        self._settling += 1
        self._wake.set()
        try:
            yield
        finally:
            self._settling -= 1

    def free(self) -> int:
        return self._host.max_concurrent - len(self.tasks) + self._settling - self._handovers

    def hand_over(self) -> asyncio.Task[None] | None:
        """Claim the next operation for the slot of an attempt that is settling, in a task created right
        after the task of its final write: both are queued in the same loop turn, so the local store
        commits the settle and the claim in one transaction (one fsync, one thread hop). None when no
        claim is due (queue off, draining, admission blocked): the scheduler's loop decides then."""
        if not self._due() or self._admission.blocked(len(self.tasks)):
            return None
        self._handovers += 1
        return asyncio.create_task(self._claim_handed_over())

    def _due(self) -> bool:
        """Whether this engine claims work now (it may be turned off between a decision and its claim)."""
        host = self._host
        return host.run_queue and not host.draining and not host.closing

    async def _claim(self, now: float, types: frozenset[str]) -> Operation | None:
        """One claim, unless claiming was turned off since it was decided on: the check and the claim's
        queuing happen in one step of its task, so an operation submitted after ``run_queue`` was turned
        off is written after every claim still allowed (the local store runs its jobs in that order), and
        is not taken by one."""
        if not self._due():
            return None
        host = self._host
        return await host.store.claim(host.worker, now, host.settings.aging_seconds, types=types)

    async def _claim_handed_over(self) -> None:
        host = self._host
        op = None
        try:
            op = await self._claim(time.time(), runnable_types())
        except Exception as e:
            if store_failure(e):
                host.health.failed(e)
            else:
                log.exception("scheduler: claiming work failed; retrying")
        finally:
            self._handovers -= 1
        if op is not None:
            host.health.ok()  # a claim is a write: see run()
            self.start(op)
        else:
            self._wake.set()  # the slot is free after all: the loop looks again

    def start(self, op: Operation) -> None:
        self._admission.started()
        task = asyncio.create_task(self._execute(op), name=f"outlast-op-{op.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        """Claim and start work until the engine stops; a store that fails is said once, and retried."""
        host = self._host
        while not host.closing:
            self._wake.clear()
            try:
                while self._due() and self.free() > 0:
                    reason = self._admission.blocked(len(self.tasks))
                    if reason:
                        said = self._said.get(reason)
                        if said is None or time.monotonic() - said > SAY_AGAIN:
                            log.warning("not starting new work: %s", reason)
                            self._said[reason] = time.monotonic()
                        break
                    now, types = time.time(), runnable_types()
                    batch = min(CLAIM_BATCH, self.free(), self._admission.room(len(self.tasks)))
                    claimed = await asyncio.gather(
                        *(self._claim(now, types) for _ in range(batch)),
                        return_exceptions=True,  # one claim failing must not lose the others (claimed: running)
                    )
                    for op in claimed:
                        if isinstance(op, Operation):
                            # A claim is a write the store took: an outage that began before it is over.
                            # Else the attempt started here was stopped at once, as the outage's limit had
                            # passed (an operation resumed once a frozen Redis answered again).
                            host.health.ok()
                            self.start(op)
                    for e in claimed:
                        if isinstance(e, BaseException):
                            raise e
                    if None in claimed:
                        break
            except Exception as e:
                if store_failure(e):
                    host.health.failed(e)
                else:
                    log.exception("scheduler: claiming work failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)
