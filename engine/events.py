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
                log.exception("event subscriber failed")
        for q in self._queues:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    async def stream(self, maxsize: int = 10_000) -> AsyncIterator[Event]:
        """Every event from now on, as an async iterator."""
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._queues.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.remove(q)
