"""command: run any executable as an operation, with progress, steps and checkpoints from its output.

The child runs in its own process group (``ctx.spawn``), so a cancel, pause or timeout kills it with
its children. Lines on stdout/stderr go to the operation's log. Progress is read from the output:
``::outlast progress 42/100``, ``::outlast step Compiling``, ``::outlast checkpoint {"offset": 42}``,
else a user regex (named groups ``done``/``total`` or ``pct``), else ``N/M`` or ``NN%``; a line redrawn
in place with a carriage return (a progress bar) counts as progress, and the log keeps the line a newline
leaves. On resume the child gets the last checkpoint's data in ``OUTLAST_CHECKPOINT`` (JSON) and
``OUTLAST_RESUME=1``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import json
import math
import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..limits import MAX_COUNT
from ..registry import operation
from ..shortage import BegunWhenShort
from ..text import clean, quoted
from ._common import libc_function
from ._program import env_vars, split_args

if TYPE_CHECKING:
    import asyncio

    from ..context import OperationContext

# asyncio and the operation's context are imported where the command runs, not with this module: a submit
# imports it to check the params (``CommandParams``), and they were a tenth of ``outlast submit``'s start-up.

_FRACTION = re.compile(r"(?<![\w/.])(\d+)\s*/\s*(\d+)(?![\w/.])")
_PERCENT = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d+)?)\s*%")
_EXPANSION = re.compile(r"\$(?:[({]|[A-Za-z_]\w*)")
_DIRECTIVE = re.compile(r"^\s*::outlast\s+(progress|step|checkpoint|message)\s*(.*?)\s*$")


class CommandParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A string is split as a shell splits words (as a program's args are): the dashboard's form split it at
    # commas, so `sh -c "echo hi"` went in as one word, the program's name, which could not be started.
    argv: Annotated[list[str] | None, BeforeValidator(split_args)] = Field(
        default=None, description="the program and its arguments (no shell)", json_schema_extra={"split": "shell"}
    )
    command: str | None = Field(
        default=None, validate_default=True, description="a command line; run by /bin/sh only with shell=true"
    )
    shell: bool = Field(default=False, description="run `command` through /bin/sh")
    cwd: str | None = Field(
        default=None, validate_default=True, description="working directory (default: the one it was submitted from)"
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    progress_regex: str | None = Field(
        default=None, description="regex for progress lines: named groups done and total, or pct"
    )
    tail: int = Field(default=20, ge=1, le=1000, description="last output lines quoted in a failure")

    @field_validator("progress_regex")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                rx = re.compile(v)
            except re.error as e:
                raise ValueError(f"progress_regex does not compile: {e}") from None
            if not ({"done", "total"} <= set(rx.groupindex) or "pct" in rx.groupindex or rx.groups >= 1):
                raise ValueError("progress_regex needs groups: (?P<done>..) and (?P<total>..), or (?P<pct>..)")
            if _backtracks_for_ever(v):
                raise ValueError(
                    "it repeats a repetition with nothing between ((a+)+, (x*\\d+)*): one line of"
                    " output can take it hours, and it holds the engine meanwhile (no cancel, no timeout); write"
                    " the inner one possessive (a++) or in an atomic group (?>...), or leave the outer one out"
                )
        return v

    @field_validator("cwd")
    @classmethod
    def _cwd_exists(cls, v: str | None) -> str | None:
        """Absolute, and the submitter's own when not given: the params are stored, and the process that
        runs the command (a worker started elsewhere, a resume typed in another directory) ran it in its
        own directory, where ``./build.sh`` was another file or none, ``rm -r out`` another ``out``."""
        if v is None:  # FileNotFoundError when it was deleted: refused (the params check says so)
            return os.getcwd()
        p = Path(v).expanduser()
        if not p.is_dir():
            raise ValueError(f"cwd {v!r} is not an existing directory")
        return str(p.resolve())

    @field_validator("command")
    @classmethod
    def _one_form(cls, v: str | None, info: ValidationInfo) -> str | None:
        if "argv" not in info.data and not v:  # given and refused (its own error says why): not "give either"
            return v
        if bool(info.data.get("argv")) == bool(v):
            raise ValueError("give either argv (a list) or command (a string)")
        if v is not None and not v.strip():
            raise ValueError("command is empty")
        return v

    @field_validator("shell")
    @classmethod
    def _shell_takes_command(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("argv"):
            raise ValueError("shell=true takes `command`, not argv")
        return v

    @model_validator(mode="after")
    def _can_run(self) -> CommandParams:
        """What could never start is refused here, not stored to fail at run time with a raw error."""
        for i, arg in enumerate(self.argv or []):
            if "\0" in arg:
                raise _field_error("argv", f"argv[{i}] contains a NUL character", self.argv)
        if self.argv and not self.argv[0]:
            raise _field_error("argv", "argv[0] is empty: name the program", self.argv)
        if self.command is not None and "\0" in self.command:
            raise _field_error("command", "contains a NUL character", self.command)
        if self.command is not None and not self.shell:
            try:
                words = shlex.split(self.command)
            except ValueError as e:  # "No closing quotation", "No escaped character"
                raise _field_error(
                    "command", f"cannot be split into words ({e}): close its quotes, or shell=true", self.command
                ) from None
            if not words or not words[0]:
                raise _field_error("command", "names no program (its first word is empty)", self.command)
            if (syntax := _shell_syntax(self.command)) is not None:
                # Run with no shell, `rm -rf build; mkdir build` removed build, then a file named mkdir.
                raise _field_error(
                    "command",
                    f"{syntax} is shell syntax, but command runs with no shell (each word would go to"
                    f" {words[0]} as an argument): shell=true to run it by /bin/sh, or quote it",
                    self.command,
                )
        try:
            env_vars(self.env)
        except ValueError as e:
            raise _field_error("env", str(e), self.env) from None
        return self


def _shell_syntax(line: str) -> str | None:
    """The first shell operator or expansion in ``line`` outside quotes and not escaped (``;``, ``|``,
    ``&&``, a word ``&``, ``<``, ``>``, a backquote, ``$(``, ``${``, ``$NAME``; ``$`` also inside double
    quotes, where a shell expands it), as a quoted name, or None. An ``&`` inside a word (a URL's query)
    and globs are left alone: without a shell they are what the program is meant to get."""
    quote = ""
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if quote == "'":
            quote = "" if c == "'" else quote
        elif c == "\\":
            i += 1  # the next character is literal (in double quotes too, for the ones that matter here)
        elif c == '"':
            quote = "" if quote else '"'
        elif c == "$" and (m := _EXPANSION.match(line, i)):
            return repr(m[0])
        elif c == "`":
            return repr(c)
        elif quote:
            pass
        elif c == "'":
            quote = "'"
        elif c in ";|<>":
            return repr(line[i : i + 2] if line[i : i + 2] in ("||", ">>", "<<") else c)
        elif c == "&" and (line.startswith("&", i + 1) or i == 0 or line[i - 1].isspace()):
            return repr("&&" if line.startswith("&", i + 1) else "&")
        i += 1
    return None


def _field_error(field: str, msg: str, value: object) -> ValidationError:
    """An error of one field, raised where several fields are checked together (a model validator's own
    has no field: "value: ...")."""
    detail = InitErrorDetails(type=PydanticCustomError("value_error", msg), loc=(field,), input=value)
    return ValidationError.from_exception_data(CommandParams.__name__, [detail])


def _backtracks_for_ever(regex: str) -> bool:
    """Whether ``regex`` repeats, without bound, a part that may be nothing but another repetition of varying
    count (``(a+)+``, ``(\\s*\\d+)*``, ``(a{1,3})+``): on a line it almost matches, the ways to share the
    text between the two grow exponentially. Python's ``re`` holds the GIL while it searches, so a progress
    line froze the engine for good: no stall timeout, no cancel, no other operation (a worker's Redis leases
    ran out, and the work ran again elsewhere). Read from the standard parser's tree; where that is not
    there, nothing is refused."""
    try:
        from re import _constants as c  # type: ignore[attr-defined]
        from re import _parser as sre  # type: ignore[attr-defined]
    except ImportError:
        return False
    counted = (c.MAX_REPEAT, c.MIN_REPEAT)

    def width(state: object, item: object) -> int:
        return int(sre.SubPattern(state, [item]).getwidth()[0])

    def alone(body: Any) -> bool:  # body may be one repetition of varying count, and nothing else of any width
        items = list(body)
        for i, (op, av) in enumerate(items):
            if any(width(body.state, x) for j, x in enumerate(items) if j != i):
                continue
            if op in counted and av[0] != av[1] and av[1] > 1:  # a+, x*, a{1,3}: ways to share the text
                return True
            if (op is c.SUBPATTERN and alone(av[3])) or (op is c.BRANCH and any(alone(b) for b in av[1])):
                return True
        return False

    def parts(op: object, av: Any) -> list[Any]:
        """The subpatterns inside ``op``: a possessive repetition and an atomic group are never backtracked
        into, but what is inside them may be."""
        if op is c.POSSESSIVE_REPEAT:
            return [av[2]]
        if op is c.ATOMIC_GROUP:
            return [av]
        if op is c.SUBPATTERN:
            return [av[3]]
        if op is c.BRANCH:
            return list(av[1])
        if op in (c.ASSERT, c.ASSERT_NOT):
            return [av[1]]
        return []

    def nested(sub: Any) -> bool:
        for op, av in sub:
            if op in counted and ((av[1] == c.MAXREPEAT and alone(av[2])) or nested(av[2])):
                return True
            if any(nested(part) for part in parts(op, av)):
                return True
        return False

    try:
        return nested(sre.parse(regex))
    except Exception:  # compiled already: a parser that reads it otherwise than this one refuses nothing
        return False


SEARCH_CPU = 0.5
"""Seconds of CPU one search of a ``progress_regex`` may take on one line of output: past them the line is
passed over (see ``_search``)."""

SEARCH_OVERRUNS = 3
"""Lines a ``progress_regex`` may take too long on before it is no longer used."""


class _Overrun(Exception):
    """A search of the user's regex took more than ``SEARCH_CPU``."""


_armed = False
"""A search of a ``progress_regex`` is under way in the main thread, its CPU timer set."""


def _overrun(signum: int, frame: object) -> None:
    """SIGVTALRM: the timer of a search has run out. Any other (on its way as a search returned) is ignored."""
    if _armed:
        raise _Overrun()


def _search(rx: re.Pattern[str], line: str) -> re.Match[str] | None:
    """``rx.search(line)`` that gives up (``_Overrun``) after ``SEARCH_CPU`` seconds of CPU.

    The check at submit refuses only the regexes that are exponential on some line; an ordinary one is
    quadratic or worse on the wrong line, as search tries it at every position: ``(?P<done>\\d+) of
    (?P<total>\\d+)`` took 13 s on a line of 40,000 digits and would take hours on one of a megabyte (the
    most a line may be), holding the engine meanwhile, GIL and all (no cancel, no timeout, no lease
    renewed), and so did one the check lets through, ``(?P<done>(a|aa)+)$``, on 60 a's. Python's matcher
    checks for signals as it goes, so a CPU timer's signal stops it: only in the main thread, where Python
    runs signal handlers, and only when SIGVTALRM and its timer are no one else's (a handler's own)."""
    global _armed
    if threading.current_thread() is not threading.main_thread():
        return rx.search(line)
    handler = signal.getsignal(signal.SIGVTALRM)
    if handler is not _overrun:
        if handler is not signal.SIG_DFL:
            return rx.search(line)
        signal.signal(signal.SIGVTALRM, _overrun)  # once: the default ended the process
    theirs = signal.setitimer(signal.ITIMER_VIRTUAL, SEARCH_CPU)
    if theirs[0]:
        signal.setitimer(signal.ITIMER_VIRTUAL, *theirs)
        return rx.search(line)
    _armed = True
    try:
        return rx.search(line)
    finally:
        _armed = False
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)


class _Parser:
    """Turns output lines into progress calls; returns a checkpoint payload when the line asks for one."""

    def __init__(self, ctx: OperationContext, regex: str | None) -> None:
        self.ctx = ctx
        self.rx = re.compile(regex) if regex else None
        self.percent_mode = False
        self.overruns = 0
        self.total: int | None = None
        """The last total the output gave (a count alone is within it, when ``firm``)."""
        self.firm = False
        """``total`` was said as one (``::outlast progress N/M``, ``progress_regex``), not read from a percentage
        (its 1000 is a scale) or guessed from a line of text that holds N/M."""
        self.said_over = False
        self.said_bad = False
        self.speaks = False
        """The command said ``::outlast progress``: its other lines are not read for N/M or NN% (a test run's
        ``[ 50%]`` or ``copied 3/4 files`` took its progress from 10/100 to 500/1000, then to 3/4)."""
        self.live = True
        """False for the drain after a stop: progress is kept as it is said, without a call that raises the stop."""

    def _report(
        self, done: int | None = None, total: int | None = None, *, unbounded: bool = False, **said: str
    ) -> None:
        """Progress as said; ``unbounded``: the total shown so far is dropped (the count is not within it)."""
        ctx = self.ctx
        if unbounded:
            ctx.total = None
        if self.live:
            ctx.progress(done, total=total, **said)
            return
        if total is not None:
            ctx.total = total
        if done is not None:
            ctx.done = done
        for name, value in said.items():
            setattr(ctx, name, value)

    def feed(self, line: str) -> dict | None:
        ctx = self.ctx
        m = _DIRECTIVE.match(line)
        if m:
            kind, arg = m.groups()
            if kind == "progress":
                self.speaks = True
                # The count ends where the word does (or a terminal's escape code begins): "50%", "1e5", "3.7",
                # "12abc" were read as 50, 1, 3 and 12.
                f = re.match(r"(\d+)\s*(/\s*([^\s\x1b]*))?(?![^\s\x1b])", arg)
                if f and (f.group(2) is None or re.fullmatch(r"[0-9]+", f.group(3))):
                    self._count(f.group(1), f.group(3), line, firm=True)
                elif not self.said_bad:
                    # "2/-1" was the count 2, its "/-1" dropped without a word; "::outlast progress 50%" nothing.
                    self.said_bad = True
                    ctx.log.warning(
                        f"progress line {quoted(line.strip(), 80)} passed over: not ::outlast progress N or N/M"
                        " (N and M counts; said once)"
                    )
            elif kind == "step":
                self._report(step=arg)
            elif kind == "message":
                self._report(message=arg)
            else:
                try:
                    data = _strict_json(arg or "{}")
                except (ValueError, RecursionError):  # JSONDecodeError, NaN, too deep
                    ctx.log.warning(f"::outlast checkpoint with invalid JSON ignored: {arg[:80]}")
                    return None
                return data if isinstance(data, dict) else {"value": data}
            return None
        r = None
        if self.rx is not None:
            try:
                r = _search(self.rx, line)
            except _Overrun:
                self.overruns += 1
                if self.overruns < SEARCH_OVERRUNS:
                    ctx.log.warning(
                        f"progress_regex took over {SEARCH_CPU:g}s of CPU on one line of output ({len(line):,}"
                        " characters): the line is passed over"
                    )
                    return None
                ctx.log.warning(
                    f"progress_regex took over {SEARCH_CPU:g}s of CPU on {self.overruns} lines of output: it is no"
                    " longer used in this attempt (N/M and NN% are read instead)"
                )
                self.rx = None
        if self.rx is not None:
            if r:
                g = r.groupdict()
                if g.get("pct") is not None:
                    self._pct(g["pct"])
                elif g.get("done") is not None:
                    self._count(g["done"], g.get("total"), line, firm=True)
                elif r.groups():
                    with contextlib.suppress(ValueError, OverflowError):
                        self._count(str(int(float(r.group(1) or ""))), None, line, firm=True)
            return None
        if self.speaks:
            return None
        # Searched only in a line that has the character each needs: on a megabyte line of binary output the
        # two searches took 35 ms, most of the engine's time, and the command waited on its full pipe.
        f = _FRACTION.search(line) if "/" in line else None
        # Through _number: int() refuses more than 4,300 digits, and "3/1415926535..." (a long digit run after a
        # slash) failed the whole operation with a ValueError, its command run to the end without a fault.
        if f and (total := _number(f.group(2))) and (done := _number(f.group(1))) is not None and done <= total:
            self._count(f.group(1), f.group(2), line, firm=False)
            return None
        p = _PERCENT.search(line) if "%" in line else None
        if p and float(p.group(1)) <= 100:
            self._pct(p.group(1))
        return None

    def _count(self, done: str, total: str | None, line: str, firm: bool) -> None:
        """Progress from numbers in the output line ``line``; ignored when one is not a count (too large for
        one, not digits): a line that only looks like progress ("verified 2**64-1/2**64-1 blocks") fails
        nothing."""
        n, t = _number(done), _number(total) if total else None
        if n is None or (t is None and total):
            return
        # A count alone is held to a total said as one: "Collecting: 100%" (a total of 1000, per mille) or
        # "step 3/10" in a line of text passed over every "::outlast progress 1500" after it, and the command,
        # its progress lines all passed over, was stopped as stalled while it worked.
        over = t if t is not None else self.total if self.firm else None
        if over is not None and n > over:
            # "::outlast progress 5/3": stored as said, `ls` and the dashboard showed 5/3 items while it ran.
            # Passed over, as N/M lines with N above M are (a count past an estimate, a wrong line).
            if not self.said_over:
                self.said_over = True
                # Quoted as printed: "::outlast progress 2/-1" (a count alone, to the total before, 0) was said
                # as "progress 2/0", a line the command never wrote.
                self.ctx.log.warning(
                    f"progress line {quoted(line.strip(), 80)} passed over: more done than the total ({n} of"
                    f" {over}; said once, the progress shown stays at the last count within its total)"
                )
            return
        if t is not None:
            self.total, self.firm = t, firm
        elif self.total is not None and not self.firm:
            self.total = None  # not a count of these items: shown as a count alone from here on
            self._report(n, unbounded=True)
            return
        self._report(n, total=t)

    def _pct(self, pct: str) -> None:
        try:
            value = float(pct)
        except ValueError:
            return
        if 0 <= value <= 100:  # not NaN, not infinite
            self.total, self.firm = 1000, False
            self._report(round(value * 10), total=1000)


class _Lines:
    """What the command's output does, one read at a time (a line, or a LINE_MAX piece of a longer one): its
    lines go into the log and the tail and count, its progress lines report progress, its ``::outlast``
    directives are followed (not logged). The main loop and the drain after a stop read it the same way."""

    def __init__(self, ctx: OperationContext, parser: _Parser, tail: collections.deque[str], lines: int) -> None:
        self.ctx, self.parser, self.tail = ctx, parser, tail
        self.lines = lines
        """Output lines so far (not ::outlast ones), as of the checkpoint resumed from."""
        self.long_directive = False
        """Within the pieces of a directive line longer than LINE_MAX."""

    def take(self, raw: bytes, live: bool = True) -> dict | None:
        """Follow ``raw``; the payload of the checkpoint it asks for (kept in the state, with the line count,
        for the caller to save), else None.

        ``live`` false for the drain, what a stopped command wrote before it was killed: its progress is kept
        without a progress call (one raises the stop; a progress line read with the stop raised it, and the
        checkpoint line after it in the same read was dropped: the resume did that step again), not passed
        over (the pause said "paused at 44/100" and the resume "44 items done" with the checkpoint at 45), and
        a piece of a longer line is passed over (no directive, and the log has had its like)."""
        ctx = self.ctx
        cut = len(raw) >= LINE_MAX and raw[-1:] not in (b"\n", b"\r")  # a piece: the line goes on
        if not live:
            if cut:
                return None
        elif self.long_directive:
            self.long_directive = cut
            return None
        # A byte that is not UTF-8 (Latin-1 text, a binary's output) as \xNN, as a file name's is shown: decoded
        # with "replace", "caf\xe9" was logged "caf\ufffd", which byte it was lost.
        line = clean(raw.decode("utf-8", "surrogateescape")).rstrip("\r\n")
        directive = _DIRECTIVE.match(line)
        if directive and cut:
            # Its first piece was "invalid JSON" (it was valid: cut), its other pieces lines of the log.
            ctx.log.warning(
                f"{line[:40]}... ignored: the line is longer than {LINE_MAX >> 20} MiB, the most a line "
                "of output may be (save in a checkpoint what a resume needs to go on, not the results)"
            )
            self.long_directive = True
            return None
        self.parser.live = live
        if raw[-1:] == b"\r" and not directive:
            # Written over in place (a progress bar: curl, wget, rsync, pv, tqdm): its progress counts
            # and it is a sign of life, but only the state a newline leaves is a line of the log.
            self.parser.feed(line)
            if live:
                ctx.progress(lines=self.lines)
            return None
        if not directive:  # ::outlast directives are protocol, not output: not in the log or the tail
            self.tail.append(line)
            ctx.log.info(line)
        data = self.parser.feed(line)
        if data is not None:
            ctx.state["checkpoint"] = data
            ctx.state["lines"] = self.lines
            return data
        if not directive:
            self.lines += 1
            if live:
                ctx.progress(lines=self.lines)  # a sign of life: output restarts the stall clock
        return None


def _number(text: str | None) -> int | None:
    """``text`` as a count of items (0 to MAX_COUNT), or None."""
    try:
        n = int(text or "")
    except ValueError:  # not digits, or more of them than int() takes
        return None
    return n if 0 <= n <= MAX_COUNT else None


def _not_json(value: str) -> object:
    raise ValueError(f"{value} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


CHECKPOINT_DEPTH = 100
"""Levels of nesting a checkpoint's JSON may have: the operation's result, which holds it, could not be
written from about 250 on (the final status lost, the operation left running)."""


def _strict_json(text: str) -> object:
    """JSON as the standard has it: no NaN or Infinity (nor a number that overflows to one), which
    ``json.loads`` takes and a resume handed back as ``OUTLAST_CHECKPOINT={"a": NaN}``, not JSON; nested
    at most CHECKPOINT_DEPTH levels (deeper: ValueError, or RecursionError from the parser)."""
    data = json.loads(text, parse_constant=_not_json, parse_float=_finite)
    level: list[object] = [data]
    for _ in range(CHECKPOINT_DEPTH):
        level = [v for c in level if isinstance(c, dict | list) for v in (c.values() if isinstance(c, dict) else c)]
        if not level:
            return data
    raise ValueError(f"nested deeper than {CHECKPOINT_DEPTH} levels")


@operation("command", params=CommandParams, description="run any command; progress and checkpoints from its output")
async def run_command(ctx: OperationContext, p: CommandParams) -> dict:
    """Run the command to its end; a non-zero exit fails the operation with the code and the last lines."""
    from ..context import OperationFailed, OperationStopped

    env = {**os.environ, **p.env, "OUTLAST_OPERATION_ID": ctx.id, "PYTHONUNBUFFERED": "1"}
    last_cp = ctx.state.get("checkpoint")
    if ctx.resuming and last_cp is not None:
        env["OUTLAST_RESUME"] = "1"
        env["OUTLAST_CHECKPOINT"] = json.dumps(last_cp)
    else:
        env.pop("OUTLAST_RESUME", None)
        env.pop("OUTLAST_CHECKPOINT", None)
    cwd = str(Path(p.cwd).expanduser()) if p.cwd else None
    argv = [p.command or ""] if p.shell else (list(p.argv) if p.argv else shlex.split(p.command or ""))
    ctx.progress(step=argv[0] if not p.shell else "sh -c")
    guard = await _Guard.start(ctx.id, ctx.attempt)
    try:
        proc = await _start(ctx, p, argv, env, cwd, guard.in_child)
    except BaseException:
        await guard.release()
        raise
    parser = _Parser(ctx, p.progress_regex)
    tail: collections.deque[str] = collections.deque(maxlen=p.tail)
    # Output lines (not ::outlast ones) as of the checkpoint resumed from: a resumed run counts what an
    # uninterrupted one does.
    out = _Lines(ctx, parser, tail, ctx.state.get("lines", 0) if ctx.resuming else 0)
    assert proc.stdout is not None
    # The line being written as a metric: it moves as its pieces come, so output whose line has not ended yet
    # (a dot a second) restarts the stall clock, as a line does. Only lines did: such a command was stalled.
    output = OutputLines(
        proc.stdout,
        ctx,
        lambda: proc.returncode is not None,
        lambda: _kill_group(proc.pid),
        lambda n: ctx.add_metrics({"partial_line_bytes": n}),
    )
    unsaved: dict | None = None  # the last ::outlast checkpoint read, until it is written
    try:
        while True:
            if ctx.cancelled:
                # A stop was asked for: the group is killed at once, then what it wrote before is read (for
                # DRAIN seconds at most), for its last ::outlast checkpoint, saved by the stop's checkpoint.
                _kill_group(proc.pid)
                if output.drain is None:
                    output.drain = time.monotonic() + DRAIN
                while raw := await output.next():
                    out.take(raw, live=False)
                break
            if unsaved is not None and not output.lines:
                # One durable write per read of output, not per line: a command that checkpoints each quick
                # step ran far ahead of the engine writing them one by one.
                written, unsaved = unsaved, None
                try:
                    await ctx.checkpoint(command=written)
                except OperationStopped:
                    # The stop came while it was written. Raised on, what the command wrote after it was never
                    # read: a command ahead of the engine was resumed from a checkpoint it had long passed.
                    # The loop's top kills it and reads that output first.
                    continue
            raw = await output.next()
            if raw is None or (raw and ctx.cancelled):  # a stop was asked for while reading: above
                if raw:
                    output.lines.appendleft(raw)  # for the drain, which reads it again
                continue
            if not raw:
                break
            data = out.take(raw)
            if data is not None:
                unsaved = data
        if ctx.cancelled:
            _kill_group(proc.pid)
        elif output.held_open and (output.holders or not output.eof):
            # Not when nothing was left to hold it: a reader behind at the exit read on to its end.
            ctx.log.warning(
                f"the command exited, but what it left running in the background kept its output open for"
                f" {HELD_OPEN:g}s more: killed"
            )
            _kill_group(proc.pid)  # its background jobs (the rest, in sessions of their own: at the end)
        code = await _exit_code(proc, ctx)
    finally:
        try:
            if proc.returncode is None:
                _kill_group(proc.pid)
                await _exit_code(proc)
        finally:
            await guard.release()
    ctx.progress()  # raises OperationStopped when a stop was asked for
    if code != 0:
        last = " | ".join(tail)[-1500:]
        how = f"exit code {code}" if code > 0 else f"killed by {_signal_name(-code)}"  # not "exit code -11"
        raise OperationFailed(f"{how}; last output: {last}" if last else how)
    if ctx.total is not None and ctx.done < ctx.total:
        # It succeeded: its work is done, whatever its last progress line said ("completed at 500/1000").
        ctx.log.info(f"exited 0 with its last progress at {ctx.done}/{ctx.total}: counted as all done")
        ctx.progress(ctx.total)
    return {"exit_code": code, "lines": out.lines, "checkpoint": ctx.state.get("checkpoint")}


async def _start(
    ctx: OperationContext,
    p: CommandParams,
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    in_child: Callable[[], None],
) -> asyncio.subprocess.Process:
    """The command started in a process group of its own, its output piped to us; ``in_child`` runs in the
    child before it execs (after it is in its own session)."""
    import asyncio

    from ..context import OperationFailed
    from ..processes import StartedThenKilled  # here: it loads asyncio, which a quick submit of a command does not

    try:
        return await ctx.spawn(
            *argv,
            shell=p.shell,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=1 << 20,
            preexec_fn=in_child,
        )
    except StartedThenKilled as e:
        # Its program ran (for a moment, or to its end when quick): queued again, it would run a second time.
        said = f"{e}; not run again, as it may have begun its work: `outlast resume` runs it again"
        raise _begun_failure()(said) from e
    except (FileNotFoundError, PermissionError) as e:
        raise OperationFailed(f"cannot start {argv[0]!r}: {e.strerror}") from None
    except OSError as e:
        if e.errno != errno.ENOEXEC:
            raise  # short of descriptors or processes: the engine queues the attempt again
        raise OperationFailed(
            f"cannot start {argv[0]!r}: not an executable format: add a #! line or run it through sh"
        ) from None


@functools.cache
def _begun_failure() -> type[Exception]:
    """The failure of a command started, then killed as it could not be watched: said as its message alone
    (``OperationFailed``), and not queued again as a shortage whose work never ran (``BegunWhenShort``)."""
    from ..context import OperationFailed

    class CommandBegun(OperationFailed, BegunWhenShort):
        pass

    return CommandBegun


_WATCHER = """
read pg || exit 0
read _ && exit 0
kill -9 "-$pg" 2>/dev/null
n=0
while [ $n -lt 20 ]; do
  n=$((n + 1))
  f=$(grep -lsxzF "OUTLAST_OPERATION_ID=$1" /proc/[0-9]*/environ </dev/null)
  [ -n "$f" ] || exit 0
  f=$(grep -lsxzF "OUTLAST_ATTEMPT=$2" $f </dev/null)
  [ -n "$f" ] || exit 0
  for e in $f; do p=${e#/proc/}; p=${p%/environ}; kill -9 "-$p" "$p" 2>/dev/null; done
  sleep 0.05
done
"""
"""The watcher's script: the command's process group on its first line, then ``done`` when the command
is over; an end of input before that (the engine's process died: the kernel closed its end of the pipe)
kills the group, then (repeatedly) what is marked as this attempt's in a session of its own."""


class _Guard:
    """Takes the command's process group (its grandchildren too, not only the child that PDEATHSIG kills)
    with the engine's process when that dies (SIGKILL, the OOM killer): a small ``sh`` in a session of its
    own reading a pipe only the engine holds. Without it they ran on, parent 1, until the next ``outlast``
    process opened the state directory. Started and waited for without blocking the event loop."""

    def __init__(self, proc: asyncio.subprocess.Process, w: int) -> None:
        self._proc: asyncio.subprocess.Process | None = proc
        self._w = w

    @classmethod
    async def start(cls, op_id: str, attempt: int) -> _Guard:
        import asyncio

        r, w = os.pipe()  # not inherited by the command, nor by any other child
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                _WATCHER,
                "outlast-watch",
                op_id,
                str(attempt),
                stdin=r,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # no Ctrl-C of the terminal's group, no kill of the command's
                env={"PATH": os.environ.get("PATH", os.defpath)},  # unmarked: not a leftover of its own
            )
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        from ..processes import never_stop  # here: it loads asyncio, which a quick submit does not

        never_stop(proc.pid)  # a Ctrl-Z stops the command, not its watcher (which kills it if the engine dies)
        return cls(proc, w)

    def in_child(self) -> None:
        """In the command's process, before it execs (its own session made: its pid is its group's): die
        with the engine (``_die_with_parent``), and tell the watcher its process group. Sent by the engine
        after the spawn returned, a worker SIGKILLed in between (the command already running, writing,
        forking) left the watcher without a group: it exited at the end of its input and killed nothing."""
        _die_with_parent()
        os.write(self._w, b"%d\n" % os.getpid())

    async def release(self) -> None:
        """The command is over: the watcher exits without killing anything."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        import asyncio

        self._send("done\n")
        os.close(self._w)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 1)  # it exits at once: a few ms
        from ..processes import never_stop

        never_stop(proc.pid, False)

    def _send(self, line: str) -> None:
        with contextlib.suppress(OSError):  # it died: nothing to tell
            os.write(self._w, line.encode())


LINE_MAX = 1 << 20
"""Bytes of one output line at most: a longer line is taken as several."""

CHUNK = 1 << 16
"""Bytes of output read at a time."""

HELD_OPEN = 2.0
"""Seconds the output may stay open after the command exited (held by what it left running in the
background, silent or not) before its output counts as ended."""

DRAIN = 2.0
"""Seconds at most to read what was written before a held-open output's holders were killed, once
DRAIN_BYTES of it are read."""

DRAIN_BYTES = 4 << 20
"""Bytes of a held-open output read past DRAIN while they are there to read at once (within BEHIND_WAIT):
more than the reader's buffer (2 MiB and a read) and the pipe (64 KiB, 1 MiB at most) hold, and a command
blocks once they are full, so all it wrote before it exited is read, however far behind its reader was (a
burst of short lines, read at about 50,000 a second: seconds). Within DRAIN_MAX."""

BEHIND_WAIT = 0.02
"""Seconds a read past DRAIN waits: output already written comes at once; a holder that writes now and
then (in a session of its own, killed only at the attempt's end) does not keep the output open."""

DRAIN_MAX = 20.0
"""Seconds at most a held-open output is read after it was taken as held open: a holder writing without a
pause keeps it open that long, not for ever."""


async def _exit_code(proc: asyncio.subprocess.Process, ctx: OperationContext | None = None) -> int:
    """The command's exit code once it exited. Not ``proc.wait()``: that also waits until its output is
    closed, which a process it left running in a session of its own (``setsid``) holds open forever.
    A stop asked of ``ctx`` kills its group at once: a command that closed its output (``exec >&-``) and
    ran on waited out the whole grace period."""
    import asyncio

    killed = False
    while proc.returncode is None:
        if ctx is not None and ctx.cancelled and not killed:
            _kill_group(proc.pid)
            killed = True
        await asyncio.sleep(0.02)
    return proc.returncode


_EOL = re.compile(rb"\r\n|\n|\r")


class OutputLines:
    """The command's output line by line, read a chunk at a time: one read (a task, a wait with a
    timeout) per chunk instead of per line, which was most of the cost of a chatty command. A line ends
    with a newline, or with a carriage return alone (a progress bar written over in place)."""

    def __init__(
        self,
        stream: asyncio.StreamReader,
        ctx: OperationContext,
        exited: Callable[[], bool],
        on_held: Callable[[], bool] = lambda: False,
        on_partial: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.stream = stream
        self.ctx = ctx
        self.exited = exited
        self.on_held = on_held
        """Called once the output is taken as held open: kills what holds it, before what is left is read;
        whether there was anything to kill."""
        self.on_partial = on_partial
        """Called after a read before a stop with the bytes of the line whose end has not come yet (once one was
        seen, 0 too): a line written a piece at a time (dots, one a second) is a sign of life before it ends.
        Whole lines are not its business (a ``::outlast progress`` line repeated is no progress)."""
        self.partial = 0
        """The bytes of the unfinished line last told to ``on_partial``."""
        self.held_open = False
        """The output was taken as ended because it stayed open HELD_OPEN seconds after the command exited."""
        self.holders = False
        """Once held open: processes the command left in its group were still running (and were killed)."""
        self.eof = False
        """The output ended (every process holding it closed it), not cut by a stop or a held-open drain."""
        self.drained = 0
        """Bytes read since the drain began."""
        self.drain_max = 0.0
        """Once held open: when reading what is there to read at once stops, at the latest."""
        self.exited_at: float | None = None
        self.drain: float | None = None
        """Once held open: when reading what was written before the kill stops at the latest."""
        self.lines: collections.deque[bytes] = collections.deque()
        self.rest = b""
        """The start of a line whose end has not been read yet."""
        self.ended = False

    async def next(self) -> bytes | None:
        """The next line with its end (b"\n", b"\r\n" or b"\r"; the last line may have none; b"" at the
        end of the output), or None as soon as a stop is asked for, even if the command is silent."""
        while not self.lines:
            if self.ended:
                return b""
            chunk: bytes | _HeldOpen | None
            if self.drain is not None:
                # A held-open drain reads all that was already written (DRAIN_BYTES at least), whatever the
                # time: cut after DRAIN seconds, the last seconds of a burst the reader was behind on were
                # lost. A stop's drain keeps to DRAIN seconds (its grace period runs).
                behind = self.held_open and not self.ctx.cancelled and self.drained < DRAIN_BYTES
                chunk = await _drained(self.stream, self.drain, behind and time.monotonic() < self.drain_max)
                self.drained += len(chunk)
            else:
                chunk = await _next_chunk(self.stream, self.ctx, self._held)
            if chunk is None:
                return None
            if isinstance(chunk, _HeldOpen):
                # What the command left behind kept its output open (silent or not): kill it, then read what
                # is already written (in the pipe, in the reader's buffer) for a moment, not forever.
                self.held_open = True
                self.holders = self.on_held()
                self.drain = time.monotonic() + DRAIN
                self.drain_max = self.drain - DRAIN + DRAIN_MAX
                continue
            if not chunk:
                self.ended = True
                self.eof = self.stream.at_eof()
                if self.rest.rstrip(b"\r"):  # the last state of a line left unfinished is its line
                    self._add(self.rest.rstrip(b"\r"))
                continue
            data = self.rest + chunk
            held = data[-1:] == b"\r"  # perhaps half of a \r\n: the next chunk tells
            if held:
                data = data[:-1]
            if b"\r" in data:
                pos = 0
                for m in _EOL.finditer(data):
                    self._add(data[pos : m.end()])
                    pos = m.end()
                self.rest = data[pos:]
            else:
                *whole, self.rest = data.split(b"\n")
                for line in whole:
                    if len(line) < LINE_MAX:
                        self.lines.append(line + b"\n")
                    else:
                        self._add(line + b"\n")
            while len(self.rest) >= LINE_MAX:
                self.lines.append(self.rest[:LINE_MAX])
                self.rest = self.rest[LINE_MAX:]
            if held:
                self.rest += b"\r"
            if self.drain is None and (self.rest or self.partial):
                self.partial = len(self.rest)
                self.on_partial(self.partial)
        return self.lines.popleft()

    def _held(self) -> bool:
        """True HELD_OPEN seconds after the command exited, whatever it left running still writes."""
        if self.exited_at is None:
            if not self.exited():
                return False
            self.exited_at = time.monotonic()
        return time.monotonic() - self.exited_at >= HELD_OPEN

    def _add(self, line: bytes) -> None:
        """A line with its end; a longer one than LINE_MAX as pieces, cut as if its end had not come yet
        (so the pieces are the same wherever the chunks end)."""
        body = line.rstrip(b"\r\n")
        end = line[len(body) :]
        while len(body) >= LINE_MAX:
            self.lines.append(body[:LINE_MAX])
            body = body[LINE_MAX:]
        self.lines.append(body + end)


class _HeldOpen:
    """``_next_chunk``'s end of output when the output stayed open and silent after the command exited."""


_HELD_OPEN = _HeldOpen()


async def _next_chunk(
    stream: asyncio.StreamReader, ctx: OperationContext, held: Callable[[], bool]
) -> bytes | _HeldOpen | None:
    """What the command wrote next (b"" at the end), or None as soon as a stop is asked for; ``_HELD_OPEN``
    once ``held()``: the command exited HELD_OPEN seconds ago and its output is still open (a background job
    chattering on counts from the exit too, not from its last line)."""
    import asyncio

    if held():
        return _HELD_OPEN
    task = asyncio.ensure_future(stream.read(CHUNK))
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.2)
        if done:
            return task.result()
        if ctx.cancelled or held():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None if ctx.cancelled else _HELD_OPEN


async def _drained(stream: asyncio.StreamReader, until: float, behind: bool = False) -> bytes:
    """The rest of a held-open output once what held it was killed: chunks until the end, a pause of 0.1 s
    (a holder in a session of its own, killed only at the attempt's end) or ``until``; then b"". Past
    ``until`` with ``behind``, what is there to read at once (within BEHIND_WAIT)."""
    left = until - time.monotonic()
    wait = min(left, 0.1) if left > 0 else BEHIND_WAIT if behind else 0.0
    if wait <= 0:
        return b""
    import asyncio

    try:
        return await asyncio.wait_for(stream.read(CHUNK), wait)
    except TimeoutError:
        return b""


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the process running the engine dies (Linux), so a
    SIGKILLed worker leaves no command behind to run on beside its resumed self."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1
_PRCTL = libc_function("prctl")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _kill_group(pid: int) -> bool:
    """SIGKILL process group ``pid``; whether any process was in it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
