"""The in-process event bus: the engine publishes plain event objects after they are stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from .models import Event

log = logging.getLogger("outlast.events")


class EventBus:
    """Fan-out to callbacks (called in the loop, must not block) and bounded queues.

    A slow queue subscriber loses its oldest events rather than slowing the engine.
    """

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Event], None]] = []
        self._queues: list[asyncio.Queue[Event]] = []
        self._failing: set[int] = set()
        """The ids of callbacks that raised: said once each (with the traceback), not at every event."""

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns the unsubscribe function."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    @property
    def has_subscribers(self) -> bool:
        """Someone listens: events that cost something to build (a log line each) are worth publishing."""
        return bool(self._callbacks or self._queues)

    def publish(self, event: Event) -> None:
        for cb in list(self._callbacks):
            try:
                cb(event)
            except Exception:
                if id(cb) in self._failing:
                    log.debug("event subscriber %r failed again", cb, exc_info=True)
                else:  # a traceback an event (18 for three small operations) buried the log
                    self._failing.add(id(cb))
                    log.exception("event subscriber %r failed (said once; it is still called)", cb)
        for q in self._queues:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    def stream(self, maxsize: int = 10_000) -> AsyncIterator[Event]:
        """Every event from now on, as an async iterator: subscribed when called, not when first iterated (an
        async generator's body starts there, and ``events()`` taken before a submit lost every event until the
        first ``async for`` step; a loop waiting for the settle hung)."""
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._queues.append(q)
        return _Stream(self, q)

    def _drop(self, q: asyncio.Queue[Event]) -> None:
        with contextlib.suppress(ValueError):
            self._queues.remove(q)


class _Stream(AsyncIterator[Event]):
    """One subscriber's queue, read with ``async for``; unsubscribed by ``aclose()`` or once dropped."""

    def __init__(self, bus: EventBus, q: asyncio.Queue[Event]) -> None:
        self._bus: EventBus | None = bus
        self._q = q

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Event:
        if self._bus is None:
            raise StopAsyncIteration
        return await self._q.get()

    async def aclose(self) -> None:
        self._close()

    def __del__(self) -> None:
        self._close()

    def _close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus._drop(self._q)
