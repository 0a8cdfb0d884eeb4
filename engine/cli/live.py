"""The rich live display of ``outlast run`` / ``resume`` / ``watch`` on a terminal.

Only imported when stdout is a terminal, so pipes, ``ls`` and ``show`` never load rich.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..models import LogRecord, Operation, Status
from . import format as fmt

_LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}
PANEL_CHARS = 400
"""Characters of the message and of each log line the panel shows (the lines printed below it have all of
theirs): a message of 1 MB filled the terminal, and wrapped again at each update held the loop the handler
runs in, an 8-second run taking minutes."""


class LiveView:
    """One operation in a panel: bar, items, rate, ETA, step, time left, checkpoint, last log lines."""

    def __init__(self, hint: str, log_lines: int = 5) -> None:
        self.console = Console()
        self.hint = hint
        self.logs: deque[LogRecord] = deque(maxlen=log_lines)
        self.op: Operation | None = None
        self.stopping = False
        self._gone = False
        self._live = Live(console=self.console, auto_refresh=False, transient=False, redirect_stderr=False)

    def __enter__(self) -> LiveView:
        self._echo = _EchoOff()
        self._echo.__enter__()
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.op is not None and not self._gone:
                self._live.update(self.render(self.op), refresh=True)
            self._live.__exit__(None, None, None)
        except OSError:
            self._gone = True
        finally:
            self._echo.__exit__()

    def log(self, rec: LogRecord) -> None:
        self.logs.append(rec)

    def note(self, text: str) -> None:
        """A line above the panel (the panel stays where it is)."""
        if not self._gone:
            try:
                self._live.console.print(Text(fmt.printable(text), style="dim"))
            except OSError:
                self._gone = True

    def update(self, op: Operation) -> None:
        self.op = op
        if self._gone:
            return
        try:
            self._live.update(self.render(op), refresh=True)
        except OSError:  # the terminal hung up: the work goes on (SIGHUP pauses it)
            self._gone = True

    def render(self, op: Operation) -> RenderableType:
        now = time.time()
        p = op.progress
        colour = fmt.STATUS_COLOUR[op.status]
        pct = p.percent
        bar = ProgressBar(
            total=float(p.total) if p.total else 100.0,
            completed=float(p.done) if p.total else (100.0 if op.status is Status.COMPLETED else 0.0),
            pulse=p.total is None and op.status is Status.RUNNING,
            complete_style=colour,
            finished_style=colour,
        )
        top = Table.grid(expand=True, padding=(0, 1))
        top.add_column(ratio=1)
        top.add_column(justify="right", width=7)
        top.add_row(bar, Text("-" if pct is None else f"{pct:5.1f}%", style="bold"))

        items = fmt.items(p) + fmt.not_done(p)
        running = op.status is Status.RUNNING
        left = fmt.time_left(op, now)
        deadline = Text(fmt.duration(left) if left is not None else "-")
        if left is not None and left < 60:
            deadline.stylize("bold red")
        cells = [
            _fact("items", items),
            _fact("rate", fmt.rate(p.rate) if running else "-"),
            _fact("eta", fmt.duration(p.eta) if running else "-"),
            _fact("elapsed", fmt.duration(op.elapsed)),
            _fact("deadline in", deadline),
            _fact("checkpoint", f"#{op.checkpoint_seq}" if op.checkpoint_seq else "none yet"),
            _fact("attempt", str(op.attempt)),
        ]
        # Fixed minimum widths so the columns do not jump as numbers grow; two columns when narrow.
        widths = (24, 20, 22, 12) if self.console.width >= 100 else (30, 24)
        facts = Table.grid(padding=(0, 3))
        for width in widths:
            facts.add_column(min_width=width)
        for i in range(0, len(cells), len(widths)):
            facts.add_row(*cells[i : i + len(widths)])
        # The step on a line of its own, cut to it: a test's node id or a file's path as long as the panel
        # is wide, in a column of the grid, wrapped under its label and pushed the other columns apart.
        step = _fact("step", fmt.printable(fmt.abridged(p.step or "-", fmt.STEP_CHARS)))
        step.no_wrap, step.overflow = True, "ellipsis"
        parts: list[RenderableType] = [top, facts, step]
        if p.message:
            parts.append(Text(fmt.printable(fmt.abridged(p.message, PANEL_CHARS)), style="italic"))
        if self.logs:
            log_text = Text()
            for rec in self.logs:
                line = Text(f"{fmt.clock(rec.ts)} ", style="dim")
                line.append(
                    fmt.printable(fmt.abridged(rec.message, PANEL_CHARS)), style=_LEVEL_STYLE.get(rec.level, "")
                )
                log_text.append_text(line)
                log_text.append("\n")
            log_text.rstrip()
            parts.append(Text(""))
            parts.append(log_text)
        title = Text.assemble(
            (fmt.printable(op.label), "bold"),
            "  ",
            (f"#{op.handle} " if op.handle else "", "dim"),
            (op.id, "dim"),
            "  ",
            (op.status.value, f"bold {colour}"),
        )
        if self.stopping and op.status is Status.RUNNING:
            subtitle = Text("pausing at the next safe point with a checkpoint · Ctrl-C again forces", "yellow")
        elif op.status is Status.RUNNING:
            subtitle = Text(fmt.printable(self.hint), "dim")
        else:
            subtitle = Text(fmt.printable(op.status_message or op.status.value), colour)
        return Panel(Group(*parts), title=title, title_align="left", subtitle=subtitle, border_style=colour)


class _EchoOff:
    """Stop the terminal echoing keys (``^C``) into the live display; restored on exit.

    Only while this process's group is the terminal's foreground one: a change of the terminal's modes from a
    background job (``outlast run ... &``, or ``bg`` after Ctrl-Z) stops the whole process with SIGTTOU, so
    the run started with ``&`` sat stopped before its first item, and one sent to the background ended
    stopped, never exiting. A terminal that hung up (EIO: ``termios.error``, which is no OSError) is left as
    it is: its session is gone."""

    def __enter__(self) -> None:
        self._saved: list[Any] | None = None
        try:
            import termios
        except ImportError:
            return
        try:
            fd = sys.stdin.fileno()
            if os.isatty(fd) and _in_foreground(fd):
                self._saved = termios.tcgetattr(fd)
                attrs = termios.tcgetattr(fd)
                attrs[3] &= ~(termios.ECHO | termios.ECHOCTL)
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except (OSError, ValueError, termios.error):
            self._saved = None

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        import termios

        with contextlib.suppress(OSError, ValueError, termios.error):
            fd = sys.stdin.fileno()
            if _in_foreground(fd):  # in the background now: the shell has the terminal, in its own modes
                termios.tcsetattr(fd, termios.TCSANOW, self._saved)


def _in_foreground(fd: int) -> bool:
    """Whether this process's group is the foreground one of the terminal at ``fd`` (only then may it change
    the terminal's modes without being stopped by SIGTTOU)."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


def _fact(label: str, value: str | Text) -> Text:
    """``label value``, the label dim. Text, not markup: ``escape`` leaves emoji codes, and a step
    ``:smile:`` was drawn as a smiley (so was a status message)."""
    return Text.assemble((label, "dim"), " ", value)


class LiveTable:
    """Many operations (``outlast watch``): one row each."""

    def __init__(self) -> None:
        self.console = Console()
        self._gone = False
        """The terminal hung up (a write failed): nothing more is drawn."""
        self._live = Live(console=self.console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveTable:
        self._echo = _EchoOff()
        self._echo.__enter__()
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._live.__exit__(None, None, None)
        except OSError:  # the terminal hung up (EIO): `watch` ends as the signal says, not as an internal error
            self._gone = True
        finally:
            self._echo.__exit__()

    def update(self, ops: list[Operation]) -> None:
        if self._gone:
            return
        try:
            self._live.update(self.table(ops), refresh=True)
        except OSError:
            self._gone = True

    def table(self, ops: list[Operation]) -> Table:
        """One row per operation; every cell from the record a Text, never markup (a type stored by another
        client as ``x[/]`` ended ``watch`` with an internal error)."""
        title = Text.assemble("outlast watch  ", ("(Ctrl-C stops watching)", "dim"))
        t = Table(expand=True, title=title, title_justify="left")
        for name, kw in (
            ("#", {"justify": "right"}),
            ("id", {"no_wrap": True}),
            ("type", {}),
            ("name", {}),
            ("status", {}),
            ("progress", {"ratio": 1}),
            ("items", {"justify": "right"}),
            ("rate", {"justify": "right"}),
            ("eta", {"justify": "right"}),
            ("deadline in", {"justify": "right"}),
        ):
            t.add_column(name, **kw)
        for op in ops:
            p = op.progress
            colour = fmt.STATUS_COLOUR[op.status]
            running = op.status is Status.RUNNING
            bar = ProgressBar(
                total=float(p.total) if p.total else 100.0,
                completed=float(p.done) if p.total else 0.0,
                complete_style=colour,
                finished_style=colour,
            )
            t.add_row(
                str(op.handle or ""),
                Text(fmt.printable(op.id)),
                Text(fmt.printable(op.type)),
                Text(fmt.printable(op.name or "")),
                Text(op.status.value, style=colour),
                bar,
                fmt.items(p),
                fmt.rate(p.rate) if running else "-",
                fmt.duration(p.eta) if running else "-",
                fmt.duration(fmt.time_left(op)),
            )
        if not ops:
            t.caption = "no active operations"
        return t
