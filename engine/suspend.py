"""Ctrl-Z (SIGTSTP) in a process that writes the store: stop, but never inside a store write.

Stopped by the terminal's default action, a busy worker was inside a write transaction of the SQLite
store 42 times in 60: every other process on the state dir then waited on the database's write lock for
as long as it stayed stopped (30 s, then its writes failed as a store outage, which stops running work).
So the stop is made by the store's own thread between two transactions (``Store.at_rest``), where it
holds nothing another process waits on; ``fg`` (SIGCONT) goes on from there. The processes it started
stop with it and go on with it: a command runs in a session of its own, which the terminal's SIGTSTP and
the shell's SIGCONT do not reach.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import TYPE_CHECKING, Any

from .processes import continue_stopped, stop_descendants

if TYPE_CHECKING:
    from .store import Store

STORE_WAIT = 1.0
"""Seconds a Ctrl-Z waits for the store's thread to come to rest (a transaction takes milliseconds; a thread
waiting on another process's lock holds none itself) before the process stops where it is."""


class Suspender:
    """Stops this process on SIGTSTP at a point where ``store`` is at rest."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._task: asyncio.Task[Any] | None = None
        self._asked = False
        """A Ctrl-Z is waiting for the store's thread (a second one until then adds nothing)."""

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle SIGTSTP, unless it is ignored (a process started without job control keeps that)."""
        if signal.getsignal(signal.SIGTSTP) is signal.SIG_DFL:
            loop.add_signal_handler(signal.SIGTSTP, self._requested)

    def _requested(self) -> None:
        if not self._asked:
            self._asked = True
            self._task = asyncio.get_running_loop().create_task(self._stop())

    async def stop_process(self) -> None:
        """Stop this process now, as a Ctrl-Z does, where the store is at rest; returns once it is continued
        (``fg``, SIGCONT). For a program whose terminal is raw, where Ctrl-Z is a key and no SIGTSTP (the
        dashboard): it puts the terminal back first, then calls this."""
        await self._stop()

    async def _stop(self) -> None:
        once = threading.Lock()

        def stop() -> None:  # by whichever comes first: the store's thread, or the wait running out
            if once.acquire(blocking=False):
                self._asked = False  # the next Ctrl-Z, after fg, stops it again
                children = stop_descendants()  # its commands too: they run in sessions of their own
                # To this thread: it stops before it runs another line. Sent to the process (os.kill), the
                # stop went by way of the main thread, and the store's thread went on into its next
                # transaction meanwhile, where the process stopped 11-29 times in 60 on a loaded machine.
                signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
                continue_stopped(children)

        try:
            await asyncio.wait_for(self._store.at_rest(stop), STORE_WAIT)
        except Exception:  # the store busy past the wait, or closed: stop where it is, as before
            stop()
