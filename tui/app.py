"""The dashboard: a Textual app that embeds an engine and shows everything in the store.

The records and how they are kept fresh live in ``model.OperationsModel``, which key applies to
which operation in ``actions`` (no Textual in either); the screen (layout, table, panes, status
line) in ``screens.dashboard``. The App holds the engine, the keys and what they do, themes, the
frame timer and quitting. Every engine call runs in a worker, and a failed one is handled in one
place (``on_worker_state_changed``). The screen is refreshed by one timer at a fixed frame rate:
events only mark things dirty in the model, so a burst of progress never turns into a burst of repaints.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Input
from textual.worker import Worker, WorkerState

from engine import RESUMABLE, ExitCode, LoopThreads, OutlastError, Status

from . import format as fmt
from .actions import KEY_ACTIONS, OTHER_KEYS, key_applies, remove_question, remove_refusal, resume_question
from .model import FirstLook, OperationsModel, Sampler, is_refusal
from .screens.confirm import ConfirmScreen, QuitScreen
from .screens.dashboard import DashboardScreen
from .themes import DEFAULT_THEME, next_theme, register_themes

if TYPE_CHECKING:  # the Engine (psutil, the stores, the handlers) and the settings load after the first frame
    from engine import Engine, Operation, OperationSpec, Progress, Settings

    from .widgets.checkpoints import CheckpointsPane  # mounted after the first frame (DashboardScreen)

log = logging.getLogger("outlast.tui")

FRAME = 0.2
"""Seconds between refreshes of the screen (5 Hz)."""
POLL = 1.0
"""Seconds between reads of active operations from the store."""
SLOW_STORE = 3.0
"""Seconds a read of the store may take before the status line says the store is not answering."""
_frozen = False
"""Whether this process froze what it held at its first App (``gc.freeze``): once per process."""

Command = Callable[..., str]
"""``command("resume", ID)``: an ``outlast`` command line, as a hint prints it."""


def bare_command(*words: str) -> str:
    """``outlast WORDS``: a hint with no global options (the dashboard was not started by the command line)."""
    return " ".join(["outlast", *words])


class OutlastApp(App[int]):
    """``OutlastApp(settings).run()``; ``engine``, ``clock`` and ``sampler`` are seams for tests."""

    CSS_PATH = "app.tcss"
    TITLE = "Outlast"
    AUTO_FOCUS = "#ops"
    """Also what a dialog without its own AUTO_FOCUS focuses first (nothing: it sets its own focus)."""

    BINDINGS = [
        Binding("n", "launch", "Launch", priority=True),  # as the app reads it: see action_launch
        Binding("c", "cancel", "Cancel"),
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("d,delete", "remove", "Remove", key_display="d"),
        Binding("d,delete", "refuse_remove", show=False),  # the same key where remove does not apply
        Binding("plus", "raise_priority", "Prio+", key_display="+"),
        Binding("minus", "lower_priority", "Prio-", key_display="-"),
        # Priority: run as the app reads the key, before the keys behind it (one burst: a paste, a slow
        # SSH link) are handed to the table, where "/paused" paused and "/queued" quit.
        Binding("slash", "filter", "Filter", key_display="/", priority=True),
        # Priority: not one, "l" ran only once it had come back up from the table (the app hands a key to
        # the focus as it reads it, and a binding that is not a priority is looked up when the key has
        # bubbled back to the app), so the "a" behind it in one burst had already reached the screen's
        # on_key with the table focused, and the logs pane stayed on one operation.
        Binding("l", "logs", "Logs", priority=True),
        Binding("t", "cycle_theme", "Theme", show=False),
        Binding("w", "toggle_run_queue", "Watch", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        # Priority: Ctrl-Z suspends wherever the focus is, as in any terminal program.
        Binding("ctrl+z", "suspend_to_shell", show=False, priority=True),
    ]

    ACTIONS_HELP = {name: (a.title, a.help) for name, a in KEY_ACTIONS.items()}
    """Every dashboard action: title and help (the help screen and the command palette)."""

    def __init__(
        self,
        settings: Settings | Callable[[], Settings],
        *,
        theme: str | None = None,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
        sampler: Sampler | None = None,
        frame: float = FRAME,
        poll: float = POLL,
        watch_only: bool = False,
        first_look: FirstLook | None = None,
        command: Command | None = None,
    ) -> None:
        """``settings``: the settings, or what loads them after the first frame (``theme``, what that
        frame is drawn in, is then all it needs of them: the settings model and the Engine cost most of
        the dashboard's own start). ``first_look``: records read without the engine
        (``model.FirstLook``), shown by the first frame while the engine starts behind it. ``command``: how a
        hint names an ``outlast`` command (``bare_command`` unless the command line that started the dashboard
        gives its own, which carries its global options: ``--state-dir``, ``--store``, ``--config``)."""
        # What is held now (the modules: Textual, Rich, the dashboard's) lives as long as the process: frozen,
        # the collections before the first frame no longer go through it (a full one was 20-30 ms of it).
        # Once per process: a later App (tests build many) would freeze the garbage of the ones before it. (A
        # flag, not gc.get_freeze_count(): that counts the frozen objects one by one, 80 ms at a million.)
        global _frozen
        if not _frozen:
            _frozen = True
            gc.freeze()
        super().__init__()
        self._settings: Settings | None = None
        self._load_settings: Callable[[], Settings] | None = None
        if callable(settings):
            self._load_settings = settings
        else:
            self._settings = settings
            theme = settings.theme
        self._engine = engine
        self.clock = clock
        self.sampler: Sampler | None = sampler
        """The resource sampler (None: the engine's)."""
        self.frame = frame
        self.poll_every = poll
        self.model = OperationsModel(engine)
        if first_look is not None:
            self.model.first_look(first_look)
        self.ops = self.model.ops
        """Every record shown, by id (the model's dict)."""
        self.engine_started = False
        self.engine_error: str | None = None
        self.engine_failure: BaseException | None = None
        """Why the engine did not start, raised again by ``main`` once the screen is gone: the terminal
        keeps the line, and the command exits with its code (a store error: 8), not 0."""
        self.waiting_to_quit = False
        self._loop_threads = LoopThreads()
        self.watch_only = watch_only
        """Start no queued work here (``outlast tui --watch-only``, or the w key): only show it."""
        if engine is not None and watch_only:  # before the engine starts its scheduler (it looks at once)
            engine.run_queue = False
        self.handed_over: str | None = None
        """Said when the app has exited: what was handed over to which background worker, or what was
        paused and how to resume it (``main`` prints it)."""
        self.paused_at_exit: list[str] = []
        """Ids of what this dashboard ran when its engine stopped, and paused (a checkpoint each)."""
        self.paused_labels: list[str] = []
        """The same, labelled (``_labelled``), for the line said after exit."""
        self.unwritten_at_exit: list[str] = []
        """Labels of what it stopped without a status written (a store that did not answer)."""
        self._signals_now = 0
        """Stop signals seen by ``_on_signal_now`` (at once, even while a handler holds the loop)."""
        self._signals_seen = 0
        """Stop signals the loop has handled (``_on_signal``): the rest wait for it to turn."""
        self._broken_in = 0
        """Signals spent breaking into a handler that held the loop, not yet passed by ``_on_signal``."""
        self._hung_up = False
        """A SIGHUP was handled: the terminal is gone (``_on_signal``)."""
        self.stopping: tuple[dict[str, str], float] | None = None
        """While the engine stops on the way out: the operations it stops (id: label), and since when
        (monotonic)."""
        self.command: Command = command or bare_command
        """How a hint names an ``outlast`` command: pasted as printed, it acts on this dashboard's store."""
        self._collector_paused = False
        """Whether ``on_load`` paused the cycle collector, until the first frame (``_collector_on``)."""
        self._theme_names: list[str] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._keys_held: list[events.Key] | None = None
        """Keys read while a screen just opened has nothing focused yet (``_hold_keys``)."""
        self._holding_for: Screen[Any] | None = None
        self._boot: Worker[None] | None = None
        self._acting: set[tuple[str, str, tuple[tuple[str, object], ...]]] = set()
        """The engine calls on an operation on their way (``_act``): action, id and arguments."""
        self._reads: dict[str, tuple[Worker[Any], float]] = {}
        """The poll and the refetch while they run, with when each began (``_read``)."""
        self.warnings: deque[str] = deque()
        """Log lines to show as notifications (filled by main's logging handler)."""
        self.log_through: Callable[[], None] = lambda: None
        """Send log lines to stderr from now on, not to ``warnings`` (set by ``main``): once the terminal
        is given back on an exit that does not unwind, the line saying why is the user's to read."""
        self._setup_themes(theme or DEFAULT_THEME)

    def get_default_screen(self) -> DashboardScreen:
        """The dashboard, as the default screen, not a mode's. Textual builds a mode's screen with another
        count of CSS changes than the app's, so it parsed the CSS again and styled every widget once more
        before the first frame; and it waits for that screen's widgets inside its start-up batch, where it
        rendered the whole screen and threw it away, so the first frame written held only what changed
        after (no status line, no panes: those came a frame later). 30 ms of the start, together."""
        return DashboardScreen(self.model, self._live, self.clock, self._work)

    @property
    def settings(self) -> Settings:
        """The settings, loaded on first use when the app was given a loader (after the first frame)."""
        if self._settings is None:
            assert self._load_settings is not None
            self._settings = self._load_settings()
        return self._settings

    @property
    def engine(self) -> Engine:
        """The engine, built on first use: after the first frame (``_start_engine``) unless given."""
        if self._engine is None:
            from engine import Engine

            engine = Engine(settings=self.settings)
            if self.watch_only:  # before the engine starts its scheduler, which looks at the queue at once
                engine.run_queue = False
            self._engine = self.model.engine = engine
        return self._engine

    def notify(self, message: str, **kw: Any) -> None:  # type: ignore[override]
        """Every notification is plain text: names and errors are stored text (``[`` is no markup,
        control characters are shown escaped)."""
        kw.setdefault("markup", False)
        super().notify(fmt.printable(message, keep_newlines=True), **kw)

    def action_help_quit(self) -> None:
        """Ctrl-C: how to quit, as Textual says it, without its markup (every notification here is plain
        text, so Textual's own "Press [b]ctrl+q[/b] to quit the app" showed the brackets)."""
        for key, active in self.active_bindings.items():
            if active.binding.action in ("quit", "app.quit"):
                self.notify(f"Press {key} to quit the app", title="Do you want to quit?")
                return

    @property
    def dashboard(self) -> DashboardScreen:
        """The dashboard's own screen: queries must not look into a dialog open on top of it."""
        screen = self.screen_stack[0] if self.screen_stack else None
        if not isinstance(screen, DashboardScreen):
            raise NoMatches("the dashboard is gone: the app is closing")
        return screen

    def on_load(self) -> None:
        """Tasks start when the loop gets to them, as under ``asyncio.run`` (where the engine is tested
        and runs headless), not eagerly, as Textual sets up its loop on Python 3.12+. Eagerly, an
        Input's watcher ran before the dashboard's screen was on the stack (Textual raised
        ScreenStackError: the dashboard died at start on every Python but 3.11), and the scheduler
        claimed queued work before ``--watch-only`` could turn it off."""
        loop = asyncio.get_running_loop()
        loop.set_task_factory(None)
        self._loop_threads.install(loop)  # a handler's thread left blocked does not hold up the quit
        # Until the first frame the collector is paused: the screen's widgets, styles and first render make
        # objects by the ten thousand and next to no garbage, and its young collections were 3-5% of the
        # start to the first frame. On again when that frame is on the terminal (``on_ready``), or at exit.
        self._collector_paused = gc.isenabled()
        gc.disable()

    def on_mount(self) -> None:
        self.set_interval(self.frame, self._on_frame, name="frame")
        # After the first frame: started here, the engine's start held that frame up by 50-70 ms.
        self.call_after_refresh(self._boot_engine)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                # The loop's handler waits for the loop to turn; this one runs at once (``_on_signal_now``).
                # The loop still reads the signal when it turns: asyncio's wakeup descriptor stays set.
                signal.signal(sig, self._on_signal_now)
                signal.siginterrupt(sig, False)  # as asyncio leaves it: system calls resume after the signal

    def on_ready(self) -> None:
        """The first frame is on the terminal: the collector on again (``on_load``), and the dashboard's
        panes that it went without are mounted."""
        self._collector_on()
        with contextlib.suppress(NoMatches):
            self.dashboard.mount_later()

    def _collector_on(self) -> None:
        """The collector on again if ``on_load`` paused it (once: the model pauses it for its own reads)."""
        if self._collector_paused:
            self._collector_paused = False
            gc.enable()

    def _boot_engine(self) -> None:
        if self._boot is None:
            self._boot = self._work(self._start_engine, "boot", "starting the engine")

    def _on_signal_now(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM or SIGHUP, in the main thread between two bytecodes: it runs while a handler holds the event
        loop with blocking code, where ``_on_signal`` and every key wait for it to return (q, Ctrl-C and three
        SIGTERMs did nothing; only SIGKILL ended the dashboard). With the loop not turned for half a second, a
        second signal the loop has not handled stops that handler by force where it stands (its operation
        paused, forced; the loop then handles the first signal: the quit pauses the rest), and a third, or a
        second with no handler to stop (the engine's own code holds the loop), leaves at once, as q again
        does while a quit waits (``_leave_now``). Otherwise nothing: the loop handles it."""
        self._signals_now += 1
        unseen = self._signals_now - self._signals_seen - self._broken_in
        engine = self._engine  # not built here: a signal handler loads no settings
        if unseen < 2 or engine is None or engine.loop_held_for() < HELD_SIGNAL:
            return
        name = signal.Signals(sig).name
        if unseen == 2 and not self._broken_in:
            self._broken_in = 1
            why = _SIGNAL_WHY.get(sig, f"the dashboard was asked to stop ({name})")
            engine.break_into_handler(sig, frame, why)  # raises into the handler, if one holds the loop
            self._broken_in = 0
        self._leave_now(f"{name} again while the event loop was held", 128 + sig)

    def _on_signal(self, sig: int) -> None:
        """SIGTERM, or SIGHUP when an SSH session drops: pause what runs (a checkpoint each), then exit.

        SIGHUP is handled here even when the dashboard was started with it ignored (nohup), unlike
        ``outlast run``/``worker``/``serve`` (``engine.stop_signals``): a dashboard whose terminal is gone
        has nothing to draw on nor keys to read, and its writer blocked for good on that terminal
        (``_hang_up``), so work left running in it could be neither watched nor stopped from it. Paused with
        a checkpoint, it resumes anywhere; work meant to outlive the session runs under ``nohup outlast
        run``, ``run --detach`` or a worker."""
        self._signals_seen += 1
        if self._broken_in:  # the signal that stopped a handler holding the loop by force: spent
            self._broken_in -= 1
            return
        if self.stopping is not None:  # asked again while the stop waits: as q again
            self._leave_now(f"{signal.Signals(sig).name} again", 128 + sig)
        # Once the terminal has hung up, every quit leaves as a hang-up does: a shell closing with the dashboard
        # stopped (Ctrl-Z) sends SIGHUP, SIGTERM and SIGCONT at once, and the SIGTERM's quit, put in the hang-up's
        # place, paused the work, then waited for good to give back a terminal that was gone.
        self._hung_up = self._hung_up or sig == signal.SIGHUP
        why = _SIGNAL_WHY[signal.SIGTERM]
        work = self._hang_up if self._hung_up else functools.partial(self._quit_now, why)
        self._work(work, "quit", "quitting", exclusive=True)

    async def _hang_up(self) -> None:
        """The terminal is gone: pause the work, then leave at once. Restoring a terminal that no longer
        exists blocked Textual's writer for good (the process stayed behind after the SSH session)."""
        await self.stop_engine(_SIGNAL_WHY[signal.SIGHUP])
        os._exit(128 + signal.SIGHUP)

    def _setup_themes(self, wanted: str) -> None:
        """Register the theme files; ``wanted`` (the configured theme), or the default when it is not
        known. Called from ``__init__``, before the stylesheet is first parsed: set at mount, the theme
        change parsed every rule again (45-55 ms of the first frame)."""
        self._theme_names = register_themes(self, warn=lambda msg: log.warning("%s", msg))
        if wanted not in self.available_themes:
            log.warning("theme %r not found; using %s", wanted, DEFAULT_THEME)
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else self._theme_names[0]
        self.theme = wanted

    # ---- the engine, in workers ------------------------------------------------------------------

    def _work(
        self,
        call: Callable[[], Coroutine[Any, Any, Any]],
        group: str,
        name: str,
        exclusive: bool = False,
    ) -> Worker[Any]:
        """Run ``call`` (an async callable, not a coroutine: one made here and never started, the app closing
        first, was "never awaited", said on the terminal left behind) in a worker whose failure goes to
        ``on_worker_state_changed``; ``name`` says what it was doing, for the error line."""
        return self.run_worker(call, name=name, group=group, exclusive=exclusive, exit_on_error=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Every background call that failed ends here, whatever it was: an engine refusal is one warning
        line; a store failure is said once and shown in the status line until the store is back; the
        engine failing to start is shown for good; anything else is an error notification, and logged."""
        error = event.worker.error
        if event.state is not WorkerState.ERROR or error is None or isinstance(error, NoMatches):
            return  # NoMatches: the panes are gone, the app is closing
        if event.worker is self._boot and not self.engine_started:
            self.engine_error = str(error)
            self.engine_failure = error
            self.model.store_ok = False
            table = self.dashboard.table
            table.failed = self.engine_error
            table.refresh()
            # Said whole in the table while it lists nothing; over a first look's rows, here.
            said = f": {error}" if table.ops else " (why: in the list)"
            self.notify(f"the engine did not start{said}", severity="error", timeout=30)
        elif is_refusal(error):
            self.notify(str(error), severity="warning")
        elif isinstance(error, OSError | OutlastError) or type(error).__module__.split(".")[0] in ("sqlite3", "redis"):
            if event.worker.group == "act" and not self.model.store_ok:
                # A key's action the store did not take is said even while the store is shown failing
                # already (said once, when the polls began to fail): a pause pressed then went unsaid.
                self.notify(f"store: {error}", severity="error", timeout=30)
            self.model.failed(error)
        else:
            log.error("dashboard: %s failed: %r", event.worker.name, error, exc_info=error)
            self.notify(f"{event.worker.name} failed: {error!r}", severity="error", timeout=30)
        self._on_frame()

    async def _start_engine(self) -> None:
        """Load the settings, build and start the engine and read every operation, off the first paint."""
        await asyncio.sleep(0)  # the frame just drawn is flushed before the engine's imports hold the loop
        if self.model.looked:
            self.model.validate_looked()  # the first look's records as the engine's models (pydantic: now)
        engine = self.engine
        await engine.start()
        self.engine_started = self.model.started = True
        self._unsubscribe = self.engine.subscribe(self.model.on_event)
        await self.model.first_read()
        table = self.dashboard.table
        table.fetched = True
        table.refresh()  # an empty store changes no row: without this the table would say "loading" forever
        self._on_frame()
        self.set_interval(self.poll_every, self._poll, name="poll")
        await self.model.reload_all()
        self._poll()

    def _poll(self) -> None:
        if self.engine_started:
            self._read("poll", self._poll_once, "reading the store")

    def _read(self, group: str, call: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        """Start a read of the store unless the last of its kind still runs. Not a new one cancelling it
        (an exclusive worker): a store slower than the poll's second (a frozen Redis, a distant one) had
        every poll cancelled by the next, so the screen stayed as it was, and said nothing was wrong."""
        running = self._reads.get(group)
        if running is not None and not running[0].is_finished:
            return
        self._reads[group] = (self._work(call, group, name), time.monotonic())

    def store_waited(self) -> float:
        """Seconds the oldest read of the store still running has waited (0 when none runs), since the store
        last answered one: with 100,000 operations, the full reload's pages kept the loop busy for seconds, and
        the status line said "store not answering" of a store answering every page."""
        now = time.monotonic()
        waits = (
            now - max(began, self.model.answered) for worker, began in self._reads.values() if not worker.is_finished
        )
        return max(waits, default=0.0)

    async def _poll_once(self) -> None:
        """A resource sample; the model's poll; the selected operation's side panes (new lines)."""
        sample = await self.model.sample(self.sampler or self.engine.resources.sample)
        running, slots = len(self.engine.running_ids), self.engine.max_concurrent
        if self.model.store_slots is not None:
            # The store's cap binds every process on it: the pane said "Slots 0/3" (this dashboard's) beside a
            # status line saying "store slots 2/2", the store full and nothing more to start.
            running, slots = self.model.counts().get(Status.RUNNING, 0), self.model.store_slots
        self.dashboard.show_resources(sample, running, slots)
        await self.model.poll()
        if self.engine.unwritten and self.model.store_ok:
            await self._write_abandoned()
        self.dashboard.polled = True  # what was read is shown at the next frame, the live figures with it
        self.dashboard.load_side_panes(poll=True)
        self.dashboard.load_all_logs()

    async def _write_abandoned(self) -> None:
        """The store answers again: the final status of the work this engine stopped when it could not
        write (listed running until then, with this dashboard's lock on it) is written now."""
        written = await self.engine.write_abandoned()  # none while the store still fails: the next poll tries
        if written:
            n = len(written)
            self.notify(
                f"the store takes writes again: {n} operation{'s' if n > 1 else ''} stopped while it could not"
                f" be written {'are' if n > 1 else 'is'} marked as stopped ({', '.join(written)})",
                severity="warning",
                timeout=10,
            )

    def _live(self, op_id: str) -> Progress | None:
        return self.engine.live(op_id) if self.engine_started else None

    def _on_frame(self) -> None:
        """Everything the screen shows, refreshed at most once per frame."""
        model = self.model
        if model.refetch and self.engine_started:
            self._read("refetch", functools.partial(model.fetch, set(model.refetch)), "reading operations")
        with contextlib.suppress(NoMatches):  # the panes are gone: the app is closing
            self.dashboard.notes = self._notes()
            # Work running anywhere (another process's too) moves its elapsed and time left every second.
            self.dashboard.refresh_view(bool(model.running) or (self.engine_started and bool(self.engine.running_ids)))
            if (selected := self.dashboard.selected) in model.checkpointed:
                self.dashboard.load_side_panes(logs=False)
                model.refetch.add(selected)  # its record's checkpoint number (a running one is read rarely)
        model.checkpointed.clear()
        while model.errors:  # the store failing, said once when it begins
            self.notify(model.errors.popleft(), severity="error")
        while self.warnings:
            self.notify(self.warnings.popleft(), severity="warning", timeout=8)
        # The frame timer can tick once more while the app closes, after the last screen is gone.
        top = self.screen_stack[-1] if self.screen_stack else None
        if isinstance(top, QuitScreen) and self.engine_started:
            top.show_running(len(self.engine.running_ids))
        # Not from under a dialog (the launch form half filled, a question asked): it quits once that is closed.
        if self.waiting_to_quit and self.engine_started and not self.engine.running_ids and len(self.screen_stack) == 1:
            self.waiting_to_quit = False
            self._work(self._quit_now, "quit", "quitting")

    def _notes(self) -> list[str]:
        """What the status line says about this dashboard (beyond what the model holds)."""
        notes = []
        if self.stopping is not None:
            # The quit waits for each checkpoint (a frozen Redis: up to a minute): said, not a dashboard that
            # looked as if it had not heard the key.
            n, since = len(self.stopping[0]), self.stopping[1]
            waited = time.monotonic() - since
            what = f"stopping {n} running operation{'s' if n != 1 else ''} at a checkpoint each" if n else "closing"
            notes.append(f"quitting: {what}" + (f", {waited:.0f}s" if waited >= SLOW_STORE else ""))
        if self.engine_started and self.engine.store.read_only:
            why = getattr(self.engine.store, "read_only_reason", "is on a read-only file system")
            notes.append(f"state dir {why}: nothing can be run or changed")
        elif self.waiting_to_quit:
            notes.append("waiting for running work to finish, then quitting")
        elif self.watch_only:
            notes.append("watch only (w runs queued work)")
        if self.model.store_slots is not None:
            running = self.model.counts().get(Status.RUNNING, 0)
            notes.append(f"store slots {running}/{self.model.store_slots}")
        waited = self.store_waited()
        if self.engine_error:
            notes.append(f"engine stopped: {self.engine_error}")
        elif self.engine_started and self.engine.abandoned:
            # Its running work stopped, listed as running until the store takes their status.
            n = len(self.engine.abandoned)
            notes.append(
                f"store cannot be written: {n} operation{'s' if n > 1 else ''} stopped ({self.engine.health.why})"
            )
        elif waited >= SLOW_STORE:
            notes.append(f"store not answering for {waited:.0f}s")
        elif not self.model.store_ok:
            notes.append("store unreachable")
        return notes

    def _update_statusline(self) -> None:
        self.dashboard.notes = self._notes()
        self.dashboard.update_statusline()

    # ---- actions ---------------------------------------------------------------------------------

    def _engine_ready(self, key: str) -> bool:
        """Whether the engine can act (every key that asks this writes to the store); if not (the first frame
        is shown before it has started, the state dir is read-only), one line saying so: a key pressed then is
        never lost without a word. On a read-only state dir, before any question or form: the launch form
        closed on a refused submit (what was typed lost), d and c asked about a change that could not be made."""
        if self.engine_started and self.engine.store.read_only:
            why = getattr(self.engine.store, "read_only_reason", "is on a read-only file system")
            self.notify(f"{key}: nothing can be run or changed here: the state dir {why}", severity="warning")
            return False
        if self.engine_started:
            return True
        if self.engine_error:
            self.notify(f"{key}: the engine did not start: {self.engine_error}", severity="error")
        else:
            self.notify(f"the engine is still starting: press {key} again in a moment", severity="warning", timeout=4)
        return False

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only the keys that apply to the selected operation are active (and shown in the footer)."""
        if self.screen is not self.screen_stack[0]:
            # A dialog is open: its keys, not the dashboard's.
            return action not in self.ACTIONS_HELP and action != "refuse_remove"
        if action == "refuse_remove":
            return remove_refusal(self.dashboard.selected_op) is not None
        if action in ("filter", "launch") and isinstance(self.focused, Input):
            return False  # priority bindings: "/" or "n" typed into the filter is a character
        return self._applies(action)

    def _applies(self, action: str) -> bool:
        """Whether a dashboard action makes sense for the selected operation (``actions.key_applies``)."""
        if action == "toggle_run_queue" and self.waiting_to_quit:
            return False
        return key_applies(action, self.dashboard.selected_op if self.screen_stack else None)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Every dashboard action that applies now, then Textual's own commands."""
        for action, (title, help_) in self.ACTIONS_HELP.items():
            if self._applies(action):
                run = getattr(self, f"action_{action}", None) or getattr(self.dashboard, f"action_{action}")
                yield SystemCommand(title, help_, run)
        yield from super().get_system_commands(screen)

    def _act(self, what: str | Callable[[Operation], str], action: str, op_id: str, **kw: object) -> None:
        """An engine call on one operation, in the background; said in one line when done (``what``: of the
        record it returned, for a stop that running work only takes at its next safe point). The same call
        asked again while it is on its way (r r, p p in one burst) is not sent twice: the second, refused
        because the first had done it, said "... is queued already: another command made it so meanwhile".
        (Not the priority keys: each press builds on the one before, + - + ends high.)"""
        key = (action, op_id, tuple(sorted(kw.items())))
        if key in self._acting:
            return
        if action != "set_priority":
            self._acting.add(key)

        async def go() -> None:
            try:
                op = await self.model.act(action, op_id, **kw)
            finally:
                self._acting.discard(key)
            self.notify(f"{what if isinstance(what, str) else what(op)}: {op_id}", timeout=3)

        self._work(go, "act", what if isinstance(what, str) else action)

    def action_cancel(self) -> None:
        op = self.dashboard.selected_op
        if op is None or not self._engine_ready("c"):
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._act(lambda op: "cancelled" if op.status is Status.CANCELLED else "cancelling", "cancel", op.id)

        self.push_screen(ConfirmScreen(f"Cancel {op.label} ({op.id})?", yes="Cancel it"), answer)

    def action_pause(self) -> None:
        if (op := self.dashboard.selected_op) and self._engine_ready("p"):
            self._act(lambda op: "paused" if op.status is Status.PAUSED else "pausing", "pause", op.id)

    def _waiting(self, key: str) -> bool:
        """Whether the dashboard waits to quit (q, then wait), saying so for ``key``: it starts nothing new then,
        so what a launch or a resume queued stayed queued when it quit, with nothing to run it and nothing said,
        and the quit closed the launch form while it was being filled."""
        if self.waiting_to_quit:
            self.notify(
                f"{key}: waiting to quit, starting nothing new here (q, then Stay, to go on working)",
                severity="warning",
            )
        return self.waiting_to_quit

    def action_resume(self) -> None:
        if (op := self.dashboard.selected_op) and self._engine_ready("r") and not self._waiting("r"):
            self._act(self._resumed, "resume", op.id)

    def _resumed(self, op: Operation) -> str:
        """What ``r`` did: queued again; in watch-only mode nothing here runs it ("resumed" read as running)."""
        if self.watch_only and op.status is Status.QUEUED:
            return "queued again (watch only: a worker or w here runs it)"
        return "resumed"

    def action_refuse_remove(self) -> None:
        """d on queued or running work: one line saying why not and what to do (the footer hides d there)."""
        if refusal := remove_refusal(self.dashboard.selected_op):
            self.notify(refusal, severity="warning")

    def action_remove(self) -> None:
        """Remove a finished operation, after a question naming it and saying what goes."""
        op = self.dashboard.selected_op
        if op is None or not self._engine_ready("d"):
            return

        async def go() -> None:
            await self.model.remove(op.id, op.status)
            self.notify(f"removed: {op.id}", timeout=3)
            self._on_frame()

        def answer(yes: bool | None) -> None:
            if yes:
                self._work(go, "act", "removing")

        question, explain = remove_question(op)
        self.push_screen(ConfirmScreen(question, yes="Remove it", explain=explain), answer)

    def on_checkpoints_pane_resume_from(self, event: CheckpointsPane.ResumeFrom) -> None:
        """Enter on a checkpoint row: resume its operation from it, after a question naming the operation,
        and only if the rows are of the operation the cursor is on. They are the previous one's until the
        cursor has rested (``SIDE_DEBOUNCE``): enter and y pressed in that moment resumed the operation
        just left, while the cursor and the detail showed another."""
        if not self._engine_ready("enter") or self._waiting("enter"):
            return
        op = self.dashboard.selected_op
        if op is None or op.id != event.op_id:
            self.notify(
                "the checkpoints pane is still loading the selected operation's checkpoints: press enter again",
                severity="warning",
                timeout=4,
            )
            return
        if op.status not in RESUMABLE:
            self.notify(f"{op.id} is {op.status.value}: pause it first to resume from a checkpoint", severity="warning")
            return
        if not event.valid:  # asked first, "Resume ... from checkpoint 3?", then refused once answered
            self.notify(
                f"checkpoint {event.seq} of {op.id} fails its checksum (✗): choose another to resume from",
                severity="warning",
            )
            return
        question = resume_question(op, event.seq, event.items, event.newer)

        def answer(yes: bool | None) -> None:
            if yes:
                self._act(f"resumed from checkpoint {event.seq}", "resume", event.op_id, checkpoint=event.seq)

        self.push_screen(ConfirmScreen(question, yes="Resume"), answer)

    def _reprioritise(self, up: bool) -> None:
        if (op := self.dashboard.selected_op) and self._engine_ready("+" if up else "-"):
            new = self.model.reprioritise(op, up)
            self._act(f"priority {new.value}", "set_priority", op.id, priority=new)

    def action_raise_priority(self) -> None:
        self._reprioritise(True)

    def action_lower_priority(self) -> None:
        self._reprioritise(False)

    async def action_logs(self) -> None:
        await self.dashboard.mount_deferred()  # pressed before the logs pane was mounted: mounted now
        self.dashboard.show_tab("logs", focus=True)

    async def action_filter(self) -> None:
        await self.dashboard.action_filter()

    def action_toggle_run_queue(self) -> None:
        """Watch only, or run queued work here too: what runs goes on either way."""
        self.watch_only = not self.watch_only
        if self._engine is not None:  # else the engine, once built, starts as watch_only says
            self._engine.run_queue = not self.watch_only
        self._update_statusline()
        say = "watch only: starting no queued work here" if self.watch_only else "running queued work here"
        self.notify(say, timeout=3)

    async def action_suspend_to_shell(self) -> None:
        """Ctrl-Z: back to the shell, stopped until ``fg``. The terminal is raw, so Ctrl-Z is a key here, not
        a SIGTSTP; Textual's own suspend sent itself one, whose handler stopped the process wherever it was,
        inside a write of the store too (every other process on the state dir then waited on the database's
        lock for as long as it stayed stopped). The terminal is put back first, then the engine stops the
        process where the store is at rest; on ``fg`` the screen is drawn again."""
        driver = self._driver
        if driver is None or not driver.can_suspend or os.name != "posix":
            self.notify("Ctrl-Z cannot suspend the dashboard here", severity="warning")
            return
        driver.suspend_application_mode()
        try:
            with driver.no_automatic_restart():
                await self.engine.suspend_process()
        finally:
            driver.resume_application_mode()
            self.refresh(layout=True)

    def action_cycle_theme(self) -> None:
        new = next_theme(self._theme_names, self.theme)
        self.theme = new
        from engine import save_setting

        try:
            # The config file the settings were read from (--config, OUTLAST_CONFIG), else the default one.
            saved = save_setting("theme", new, self.settings.config_file)
        except (OSError, OutlastError) as e:
            self.notify(f"theme {new}, not saved: {e}", severity="warning")
        else:
            # The user's config file, whatever --state-dir says: a theme is the person's, not the store's.
            self.notify(f"theme {new}, saved in {saved}", timeout=3)

    def action_help(self) -> None:
        from .screens.help import HelpScreen  # screens not shown at start are imported when first opened

        keys = [
            (b.key_display or b.key, self.ACTIONS_HELP[b.action][1])
            for b in [*self.BINDINGS, *DashboardScreen.BINDINGS]
            if isinstance(b, Binding) and b.action in self.ACTIONS_HELP
        ]
        self.push_screen(HelpScreen(keys + OTHER_KEYS))

    def action_launch(self) -> None:
        if not self._engine_ready("n") or self._waiting("n"):
            return
        from engine import handlers

        from .screens.launch import LaunchScreen  # a quarter of the tui's own imports: not at start-up

        op = self.dashboard.selected_op

        def launched(spec: OperationSpec | None) -> None:
            if spec is not None:
                self._work(functools.partial(self._submit, spec), "act", "launching")

        screen = LaunchScreen(handlers(), initial_type=op.type if op else None, context=self.engine.params_context())
        self.push_screen(screen, launched)
        self._hold_keys(screen)

    # ---- keys typed while a screen opens ------------------------------------------------------

    def _hold_keys(self, screen: Screen[Any]) -> None:
        """Hold the keys read from now until a widget of ``screen`` has the focus, then hand them on in
        the order typed. ``n`` (a priority binding) runs as the app reads it; the keys behind it in one
        burst (tab, backspace, 7, ctrl+s over SSH) were handed to the table, or to the form before
        anything in it had the focus, and lost: the form then launched what nobody typed."""
        self._keys_held, self._holding_for = [], screen
        self.set_timer(1.0, self._release_keys)  # never held for good (a screen with nothing to focus)

    async def on_event(self, event: events.Event) -> None:
        if self._keys_held is not None and isinstance(event, events.Key) and not event.is_forwarded:
            self._keys_held.append(event)
            return
        await super().on_event(event)

    async def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if self._holding_for is not None and event.widget.screen is self._holding_for:
            await self._release_keys()

    async def _release_keys(self) -> None:
        held, self._keys_held, self._holding_for = self._keys_held or [], None, None
        for key in held:  # in this one turn: no key read later gets in between
            await super().on_event(key)

    async def _submit(self, spec: OperationSpec) -> None:
        op = await self.model.submit(spec)
        self.notify(f"queued {op.label}: {op.id}", timeout=3)
        self._on_frame()
        self.dashboard.table.select(op.id)

    # ---- quitting --------------------------------------------------------------------------

    async def action_quit(self) -> None:
        if self.stopping is not None:
            self._leave_now()
        running = len(self.engine.running_ids) if self.engine_started else 0
        if not running:
            await self._quit_now()
            return

        def chosen(choice: str | None) -> None:
            if choice == "hand_over":
                self._work(self._hand_over, "quit", "handing over")
            elif choice == "pause":
                self._work(functools.partial(self._quit_now, "the dashboard quit (pause and quit)"), "quit", "quitting")
            elif choice == "wait":
                self.engine.run_queue = False
                self.waiting_to_quit = True
                self._update_statusline()
                self.notify("starting nothing new; quitting when the running operations finish", timeout=5)
            elif self.waiting_to_quit:  # asked again while waiting, and chose to stay: back to work
                self.engine.run_queue = not self.watch_only
                self.waiting_to_quit = False
                self._update_statusline()

        self.push_screen(QuitScreen(running), chosen)

    async def _hand_over(self) -> None:
        """Quit, leaving the running work running: a background worker goes on with it."""
        from .handover import REASON as HANDED_OVER
        from .handover import hand_over, handed_line

        self.notify("handing the running operations over to a background worker...", timeout=30)
        queued = await hand_over(self.engine, self.settings.grace_period + 10)
        await self.stop_engine(HANDED_OVER)
        if queued:
            self.handed_over = await handed_line(self.settings, queued, self.command("worker"))
        self.exit(0)

    async def _quit_now(self, reason: str = "the dashboard quit") -> None:
        """Pause what still runs (a checkpoint each), close the store, exit; what was paused is said after
        the screen is gone (Quit, then p, said nothing: the user was left to find them)."""
        await self.stop_engine(reason)
        if self.paused_at_exit or self.unwritten_at_exit:
            self.handed_over = paused_line(self)
        self.exit(0)

    async def stop_engine(self, reason: str = "the dashboard quit") -> None:
        """``reason`` ends the paused operations' status line: "paused: REASON"."""
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        if self._boot and not self._boot.is_finished:
            self._boot.cancel()
            with contextlib.suppress(Exception):
                await self._boot.wait()
        if self.engine_started:
            self.engine_started = self.model.started = False
            labels = {i: _labelled(self.ops.get(i), i) for i in self.engine.running_ids}
            self.stopping = (labels, time.monotonic())
            with contextlib.suppress(NoMatches):
                self._update_statusline()
            # A store that never answers (a dead NFS server) ends the process in one line, exit 8, as it
            # ends `outlast run`: the quit waited on it for good, the screen frozen.
            self.engine.before_exit_now.append(self._give_terminal_back)
            try:
                stopped = await self.engine.shutdown(reason=reason, exit_if_store_hangs=True)
            finally:
                self.engine.before_exit_now.remove(self._give_terminal_back)
            # What was written, not what was asked: a pause a hung disk never wrote is not "paused".
            self.paused_at_exit = [i for i, status in stopped.items() if status is Status.PAUSED]
            self.paused_labels = [labels.get(i, i) for i in self.paused_at_exit]
            self.unwritten_at_exit = [labels.get(i, i) for i, status in stopped.items() if status is None]
            self.stopping = None

    def _leave_now(self, by: str = "q again", code: int = 128 + signal.SIGINT) -> NoReturn:
        """q (or a stop signal) again while the quit waits on the store or on a handler slow to reach its
        checkpoint: leave at once, as a SIGKILL would cost (the items since each one's newest checkpoint
        written): the terminal back, one line naming what was left and how to go on, exit 8 when the store was
        not answering, else ``code``. Leaving through Textual's exit blanked the screen, then waited on the same
        store, and exited 0 saying nothing."""
        if self.stopping is not None:
            labels = self.stopping[0]
        else:  # a signal while a handler holds the loop, before any quit began (``_on_signal_now``)
            labels = {i: _labelled(self.ops.get(i), i) for i in self.engine.running_ids}
        left = [label for op_id, label in labels.items() if op_id in self.engine.running_ids] or list(labels.values())
        stuck = self.engine.store_stuck(self.store_waited())
        them = "it" if len(left) == 1 else "them"
        line = (
            f"outlast: quit at once ({by}): {len(left)} operation{'s' if len(left) != 1 else ''} left as the store"
            f" has {them}: {', '.join(left)}; the next outlast process finds {them} interrupted, then"
            f" `{self.command('resume', 'ID')}` goes on from the last checkpoint"
            if left
            else f"outlast: quit at once ({by})"
        )
        self._give_terminal_back()
        with contextlib.suppress(Exception):
            print(fmt.printable(line), file=sys.__stderr__, flush=True)
        os._exit(ExitCode.STORE if stuck else code)

    def _give_terminal_back(self) -> None:
        """Before an exit that does not unwind: the terminal as it was before the dashboard (the main screen,
        the cursor, echo and line editing), then log lines to stderr. Textual's own writes go through a thread
        that a terminal gone (SIGHUP) can block for good, so they get a second at most."""
        driver = self._driver

        def restore() -> None:
            if driver is not None:
                driver.stop_application_mode()
                driver.close()  # its writer thread writes what is queued, then ends

        thread = threading.Thread(target=restore, name="outlast-terminal-back", daemon=True)
        thread.start()
        thread.join(TERMINAL_BACK_WAIT)
        self.log_through()

    async def on_unmount(self) -> None:
        self._collector_on()  # ended before its first frame
        # Textual sets the return code to 1 before it unmounts an app ended by an unhandled error.
        await self.stop_engine("the dashboard failed (an error in it)" if self.return_code else "the dashboard quit")
        self._loop_threads.release(asyncio.get_running_loop())


def _labelled(op: Operation | None, op_id: str) -> str:
    """``06bhpkg8cfyx1 (nightly backup)``: an id and its label, for a line printed after exit."""
    return f"{op_id} ({fmt.printable(op.label)})" if op is not None else op_id


TERMINAL_BACK_WAIT = 1.0
"""Seconds an exit that does not unwind waits for the terminal to be given back (``_give_terminal_back``)."""
HELD_SIGNAL = 0.5
"""Seconds the event loop must have gone without turning for a signal to act before it turns (``_on_signal_now``)."""
_SIGNAL_WHY: dict[int, str] = {
    signal.SIGTERM: "the dashboard was asked to stop (SIGTERM)",
    signal.SIGHUP: "the dashboard's terminal hung up (SIGHUP: a dropped SSH session?)",
}

PAUSED_LISTED = 5
"""Paused operations a line after exit names one by one; more are counted."""


def paused_line(app: OutlastApp) -> str:
    """One line: what the dashboard paused as it stopped, and how to go on with it, in commands that paste as
    printed (``app.command``: with the global options the dashboard was started with; `outlast resume ID`
    alone, pasted after `outlast --state-dir DIR`, looked in the default store: "no operation matches")."""
    paused, n, command = app.paused_labels, len(app.paused_labels), app.command
    said = []
    what = f"{n} operation{'s' if n != 1 else ''} paused, a checkpoint each"
    if n == 1:
        said.append(f"{what}: {paused[0]}; go on with `{command('resume', app.paused_at_exit[0])}`")
    elif 1 < n <= PAUSED_LISTED:
        said.append(f"{what}: {', '.join(paused)}; go on with `{command('resume', 'ID')}`")
    elif n:
        said.append(
            f"{what}: `{command('ls', '--status', 'paused')}` lists them; go on with `{command('resume', 'ID')}`"
        )
    if unwritten := app.unwritten_at_exit:
        m = len(unwritten)
        listed = f"`{command('ls', '--status', 'interrupted')}` lists them"
        them = ", ".join(unwritten) if m <= PAUSED_LISTED else listed
        said.append(
            f"{m} operation{'s' if m != 1 else ''} stopped with nothing written (the store did not answer): {them};"
            f" the next outlast process finds {'it' if m == 1 else 'them'} interrupted, then"
            f" `{command('resume', 'ID')}` goes on from the last checkpoint"
        )
    return "; ".join(said)


def exit_code(app: OutlastApp, rv: int | None) -> int:
    """The command's exit code: non-zero when the app ended on an unhandled error (Textual sets its
    return code to 1 then, and the traceback is above), saying so in one line with what became of the
    work it ran (its engine was stopped on the way out: each paused with a checkpoint). ``int(rv or 0)``
    alone exited 0 after a crash."""
    if app.return_code:
        said = f"; {paused_line(app)}" if app.paused_at_exit or app.unwritten_at_exit else "; it ran no operations"
        _say(f"outlast: the dashboard failed on an unhandled error (above){said}")
        return app.return_code
    if app.unwritten_at_exit and not rv:
        return ExitCode.STORE  # as `outlast run` ends when the store took no final status: its line says why
    return int(rv or 0)


def _say(line: str) -> None:
    """``line`` on standard output, once the terminal is given back. A terminal that hung up (EIO) or a reader
    gone takes it nowhere, and the rest of the output with it: the dashboard that paused its work when its SSH
    session dropped ended on this last line, "internal error", exit 70."""
    try:
        print(line, flush=True)
    except OSError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout from here to its exit


class _Warnings(logging.Handler):
    """Engine warnings while the dashboard owns the terminal: kept for the app to show as notifications
    (a line written to stderr would tear the screen). Any thread may log; a deque append is atomic.
    Once ``through`` is called (the terminal given back), each is one line on the process's own stderr, as
    the command line writes them (``sys.stderr`` is Textual's capture while the app runs)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=100)
        self.passing = False
        self.setFormatter(logging.Formatter("outlast: %(levelname)s: %(message)s"))

    def through(self) -> None:
        self.passing = True

    def emit(self, record: logging.LogRecord) -> None:
        if not self.passing:
            self.lines.append(record.getMessage())
            return
        with contextlib.suppress(Exception):
            print(fmt.printable(self.format(record)), file=sys.__stderr__, flush=True)


def main(
    settings: Settings | Callable[[], Settings],
    watch_only: bool = False,
    first_look: FirstLook | None = None,
    theme: str | None = None,
    command: Command | None = None,
) -> int:
    """``outlast`` / ``outlast tui``: run the dashboard until the user quits; the exit code. ``settings``:
    the settings, or what loads them after the first frame (drawn in ``theme``: ``OutlastApp``).
    ``first_look`` (``model.FirstLook``): what the first frame lists before the engine has started."""
    logger = logging.getLogger("outlast")
    saved = logger.handlers[:]
    handler = _Warnings()
    logger.handlers = [handler]  # before the app is built: a bad theme file is said while it is
    try:
        app = OutlastApp(settings, theme=theme, watch_only=watch_only, first_look=first_look, command=command)
        app.warnings = handler.lines
        app.log_through = handler.through
        rv = app.run()
    finally:
        logger.handlers = saved
    if app.handed_over:
        _say(app.handed_over)
    elif (app.paused_at_exit or app.unwritten_at_exit) and not app.return_code:
        # Stopped another way than a quit that says it (SIGINT: Textual ends its loop, and the engine is
        # stopped on unmount): what was paused was left unsaid, exit 0.
        _say(paused_line(app))
    if app.engine_failure is not None:
        raise app.engine_failure
    return exit_code(app, rv)
