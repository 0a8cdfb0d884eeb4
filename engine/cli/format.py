"""Plain-text rendering for the command line: one-line progress, tables, details (durations, rates,
counts and sizes come from ``engine.humanize``, shared with the dashboard).

No rich here: ``ls``, ``show`` and ``--help`` start fast and work in a pipe.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..humanize import (  # noqa: F401  (re-exported: one rendering for every face)
    UNSAFE,
    UNSAFE_IN_OUTPUT,
    abridged,
    ago,
    clock,
    count,
    duration,
    escape_char,
    local_time,
    printable,
    rate,
    size,
    when,
)
from ..lifecycle import Status

if TYPE_CHECKING:  # ``ls`` and ``--help`` never load the models (pydantic)
    from ..models import Checkpoint, LogRecord, Operation, Progress

STATUS_COLOUR = {
    Status.QUEUED: "cyan",
    Status.RUNNING: "blue",
    Status.PAUSED: "yellow",
    Status.COMPLETED: "green",
    Status.FAILED: "red",
    Status.CANCELLED: "magenta",
    Status.TIMED_OUT: "red",
    Status.INTERRUPTED: "yellow",
}


def items(p: Progress) -> str:
    return f"{p.done}/{p.total}" if p.total is not None else str(p.done)


def not_done(p: Progress) -> str:
    """`` (1 failed, 154 skipped)``: the items of the total that are not among those done (empty when none)."""
    parts = [f"{n} {what}" for n, what in ((p.failed, "failed"), (p.skipped, "skipped")) if n]
    return f" ({', '.join(parts)})" if parts else ""


def percent(p: Progress) -> str:
    pct = p.percent
    return "-" if pct is None else f"{pct:.1f}%"


def extended(extensions: int) -> str:
    """How often the rate extended the deadline, as the timeout's note ("" for never)."""
    return f", extended {extensions}x by its rate" if extensions else ""


def time_left(op: Operation, now: float | None = None) -> float | None:
    """Seconds before the deadline of a running operation."""
    return op.seconds_left(now or time.time())


RESULT_CHARS = 1000
"""Characters of a result a line for people shows (``--json`` has all of it)."""
STEP_CHARS = 200
"""Characters of a step a progress line shows."""


def clipped(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, an ellipsis saying when some were left out (a table's last
    column: "run any command; progress and checkpoints from its" read as the whole description)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def abridged_result(result: Any, limit: int, rest: str = "", dump: Any = None) -> str:
    """A result in about ``limit`` characters (``dump``: its JSON text). An object too long keeps every key:
    its longest values are shortened first (``[… 10 items]``, ``{… 3 keys}``, a text's head), so what is
    short is shown wherever it comes: a scan's ``reports`` or a profile's files came after a list of
    findings or functions, and were cut off the line that ended the run."""
    dump = dump or dumps
    text = dump(result)
    if len(text) <= limit or not isinstance(result, dict) or not result:
        return abridged(text, limit, rest)
    parts = {key: dump(value) for key, value in json.loads(dump(result)).items()}
    names = {key: dump(key) for key in parts}

    length = sum(len(names[k]) + len(v) + 4 for k, v in parts.items())
    # The longest first, each once (its length then is its own until it is shortened). Found again by a
    # walk over every key after each one, a result of 5,000 short values took 3 s to print its last line.
    for key in sorted(parts, key=lambda k: len(parts[k]), reverse=True):
        if length <= limit:
            break
        length -= len(parts[key])
        value = json.loads(parts[key])
        if isinstance(value, list):
            parts[key] = f"[… {len(value):,} items]"
        elif isinstance(value, dict):
            parts[key] = f"{{… {len(value):,} keys}}"
        elif len(parts[key]) > 40:
            parts[key] = parts[key][:40] + "…"
        length += len(parts[key])
    body = "{" + ", ".join(f"{names[k]}: {v}" for k, v in parts.items()) + "}"
    if len(body) > limit:
        body = body[:limit] + "…"
    return f"{body} ({len(text):,} characters{rest})"


def progress_line(op: Operation, now: float | None = None) -> str:
    """One line per progress report, for logs and pipes."""
    p = op.progress
    parts = [clock(now or time.time()), op.id, printable(op.label), op.status.value, percent(p), f"{items(p)} items"]
    if p.failed:
        parts.append(f"{p.failed} failed")
    if p.skipped:
        parts.append(f"{p.skipped} skipped")
    if op.status is Status.RUNNING:
        parts += [f"rate {rate(p.rate)}", f"eta {duration(p.eta)}"]
        left = time_left(op, now)
        if left is not None:
            parts.append(f"deadline in {duration(left)}")
    if p.step:
        parts.append(f"step {abridged(printable(p.step), STEP_CHARS)}")
    return "  ".join(parts)


def status_text(status: Status, message: str | None) -> str:
    """``paused: the engine stopped`` without saying ``paused`` twice."""
    detail = (message or "").removeprefix(status.value).removeprefix(" by user").lstrip(":; ")
    return f"{status.value}: {printable(detail)}" if detail else status.value


def log_line(rec: LogRecord) -> str:
    return f"{clock(rec.ts)} {printable(rec.level.upper()):<7} {printable(rec.message)}"


def cells(text: str) -> int:
    """The columns a terminal gives ``text``: East Asian wide and fullwidth characters (CJK, most emoji)
    take two, combining marks and format characters (a zero-width joiner) none. Padded by ``len``, a
    name in Chinese pushed every column after it out of line."""
    if text.isascii():
        return len(text)
    from unicodedata import category, east_asian_width

    return sum(0 if category(ch) in ("Mn", "Me", "Cf") else 2 if east_asian_width(ch) in "WF" else 1 for ch in text)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: frozenset[int] = frozenset()) -> str:
    """Columns padded to their widest cell (in terminal columns); the last column is not padded."""
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max([cells(h)] + [cells(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def fmt(row: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(row):
            pad = " " * (widths[i] - cells(c))
            out.append(pad + c if i in right else (c if i == len(row) - 1 else c + pad))
        return "  ".join(out).rstrip()

    return "\n".join([fmt(headers), *(fmt(r) for r in rows)])


class LsRow(NamedTuple):
    """What ``ls`` shows of one operation: from its model, or straight from its stored record."""

    id: str
    handle: int | None
    status: Status
    type: str
    name: str | None
    done: int
    total: int | None
    percent: float | None
    priority: str
    created_at: float | None
    note: str
    worker: str = ""
    """``host:pid`` of the process running it (a running operation's only): on a store shared by
    workers, which one has it."""

    @classmethod
    def of(cls, op: Operation) -> LsRow:
        p = op.progress
        note = op.error or op.status_message or ""
        worker = str(op.worker) if op.worker is not None and op.status is Status.RUNNING else ""
        if worker and op.worker is not None:
            note = stopped_note(op.worker.host, op.worker.pid, op.worker.boot, op.worker.start) or note
        return cls(
            op.id,
            op.handle,
            op.status,
            op.type,
            op.name,
            p.done,
            p.total,
            p.percent,
            op.priority.value,
            op.created_at,
            note,
            worker,
        )

    @classmethod
    def of_record(cls, rec: Mapping[str, Any]) -> LsRow:
        """From a stored record (a JSON object): KeyError, TypeError, ValueError or OverflowError (an
        infinite count) when it does not read as one (the caller then takes the validating path)."""
        p = rec.get("progress") or {}
        done, total = int(p.get("done", 0)), p.get("total")
        if total is not None:
            total = int(total)
        pct = (100.0 if total == 0 else None) if not total else min(100.0, 100.0 * done / total)
        created = rec.get("created_at")
        handle = rec.get("handle")
        status = Status(rec["status"])
        w = rec.get("worker") if status is Status.RUNNING else None
        worker = f"{w['host']}:{int(w['pid'])}" if w else ""
        note = str(rec.get("error") or rec.get("status_message") or "")
        if w:
            boot, start = w.get("boot"), w.get("start")
            note = stopped_note(str(w["host"]), int(w["pid"]), boot, None if start is None else int(start)) or note
        return cls(
            str(rec["id"]),
            None if handle is None else int(handle),
            status,
            str(rec["type"]),
            None if rec.get("name") is None else str(rec["name"]),
            done,
            total,
            pct,
            str(rec.get("priority") or "normal"),
            None if created is None else float(created),
            note,
            worker,
        )


def stopped_note(host: str, pid: int, boot: str | None, start: int | None) -> str | None:
    """``processes.stopped_note``, imported only for a running operation's row (``ls``'s quick path, which
    lists no running one, never loads the module: it imports asyncio)."""
    from ..processes import stopped_note as note

    return note(host, pid, boot, start)


NAME_CHARS = 32
"""Most characters of a name in ``ls`` (``show`` and ``--json`` give it whole): one 130-character name made
the column as wide for every row, and each row wrapped over three lines of an 80-column terminal."""


def ls_table(ops: Sequence[LsRow]) -> str:
    """One row an operation: # is the handle (what to type: ``outlast watch 12``), TYPE the type (what
    ``ls -t`` filters on), NAME the ``--name``, WORKER the ``host:pid`` running it (a store shared by workers);
    #, NAME and WORKER are columns only when some operation has one."""
    now = time.time()
    named = any(op.name for op in ops)
    workers = any(op.worker for op in ops)
    handles = any(op.handle is not None for op in ops)
    rows = [
        [
            *([str(op.handle or "")] if handles else []),
            op.id,
            op.status.value,
            op.type,
            *([clipped(op.name or "", NAME_CHARS)] if named else []),
            "-" if op.percent is None else f"{op.percent:.1f}%",
            f"{op.done}/{op.total}" if op.total is not None else str(op.done),
            op.priority,
            ago(op.created_at, now),
            *([op.worker] if workers else []),
            clipped(op.note, 60),
        ]
        for op in ops
    ]
    headers = [
        *(["#"] if handles else []),
        "ID",
        "STATUS",
        "TYPE",
        *(["NAME"] if named else []),
        "DONE",
        "ITEMS",
        "PRIO",
        "CREATED",
        *(["WORKER"] if workers else []),
        "NOTE",
    ]
    right = {0} if handles else set()
    done = headers.index("DONE")
    return table(headers, rows, frozenset(right | {done, done + 1}))


STALE_PROGRESS = 10.0
"""Seconds after which ``show`` says how old the stored rate and ETA of running work are (progress is
stored every second while it moves)."""


def show_text(op: Operation, checkpoints: list[Checkpoint], prefix: str = "outlast") -> str:
    """Everything a person wants to know about one operation."""
    p = op.progress
    now = time.time()
    stopped = None
    if op.status is Status.RUNNING and op.worker is not None:
        stopped = stopped_note(op.worker.host, op.worker.pid, op.worker.boot, op.worker.start)
    # Stored with the progress, not made again since: a rate and ETA read as now were seconds or hours old.
    old = op.status is Status.RUNNING and p.updated_at is not None and now - p.updated_at > STALE_PROGRESS
    as_of = f"  (as of {duration(now - p.updated_at)} ago)" if old and p.updated_at is not None else ""
    started, worker = when(op.started_at), (str(op.worker) + (f": {stopped}" if stopped else "")) if op.worker else "-"
    if op.status is Status.QUEUED and op.attempt > 1:
        # Queued again: the start and worker stored are the attempt before's. Shown bare, "attempt 2, started
        # 22:37, worker host:pid" named a dead process as this attempt's, which no worker had taken yet.
        before = f"attempt {op.attempt - 1}"
        started = f"-  ({before}: {started})" if op.started_at else "-"
        worker = f"-  ({before}: {worker})" if op.worker else "-"
    extensions = 0 if op.status is Status.QUEUED else op.extensions
    rows: list[tuple[str, Any]] = [
        ("id", op.id + (f"  (handle {op.handle})" if op.handle is not None else "")),
        ("type", op.type + (f"  ({op.name})" if op.name else "")),
        ("status", status_text(op.status, op.status_message)),  # not "paused: paused: ..."
        ("priority", op.priority.value),
        ("attempt", op.attempt),
        ("progress", f"{percent(p)}  {items(p)} items" + (f", {p.failed} failed" if p.failed else "")),
        ("step", p.step or "-"),
        ("rate", rate(p.rate) + as_of),
        ("eta", duration(p.eta) + as_of if op.status is Status.RUNNING else "-"),
        ("created", when(op.created_at)),
        ("started", started),
        ("finished", when(op.finished_at)),
        ("elapsed", op.elapsed_text(now)),
        # With its extensions: "timeout 2s" beside "time left 9s" (or a run of 6s completed) said nothing of why.
        # (Not of work queued again: its count is the attempt before's, beside the timeout this one gets.)
        ("timeout", f"{duration(op.effective_timeout)}  ({op.timeout_basis or '-'})" + extended(extensions)),
        ("time left", duration(time_left(op))),
        ("worker", worker),
        ("params", json.dumps(op.params, sort_keys=True)),
    ]
    if op.profile_overrides:
        rows.append(("profile", json.dumps(op.profile_overrides, sort_keys=True)))
    if op.tags:
        rows.append(("tags", json.dumps(op.tags, sort_keys=True)))
    if op.error:
        rows.append(("error", op.error))
    if op.result is not None:
        whole = f"; {prefix} show {op.id} --json has all"
        rows.append(
            ("result", abridged_result(op.result, RESULT_CHARS, whole, lambda v: json.dumps(v, sort_keys=True)))
        )
    if checkpoints:
        newest = checkpoints[0]
        rows.append(("checkpoints", f"{len(checkpoints)}, newest #{newest.seq} at {newest.processed_items} items"))
    else:
        rows.append(("checkpoints", "none"))
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {printable(v)}" for k, v in rows)
    if op.status.resumable:
        text += f"\n\nresume with: {resume_command(prefix, op)}"
    return text


def resume_command(prefix: str, op: Operation) -> str:
    """The command that resumes ``op`` from here: ``PREFIX resume ID`` when this process (its plugins: the
    same global options load the same) has a handler for its type; else ``resume ID --queue``, for a worker or
    program that has one, as a plain resume here is refused ("no plugin loaded here runs that type", exit 2),
    and the module that defines it is not known here (a program's own handler has none)."""
    from ..registry import BUILTIN_TYPES, runnable_types

    if op.type in BUILTIN_TYPES or op.type in runnable_types():
        return f"{prefix} resume {op.id}"
    return f"{prefix} resume {op.id} --queue (no plugin loaded here runs {op.type!r}: a worker that has it will)"


NEXT_STEP_CHARS = 60
"""Characters of a checkpoint's next step ``checkpoints`` shows (``--json`` has all of it): a column in the
middle, it was padded to the longest, and one next step of 1 MB made every row 1 MB wide."""


def checkpoints_table(cps: list[Checkpoint]) -> str:
    rows = [
        [
            str(c.seq),
            when(c.created_at),
            "-" if c.progress_percentage is None else f"{c.progress_percentage:.1f}%",
            str(c.processed_items),
            clipped(c.next_step or "-", NEXT_STEP_CHARS),
            size(c.size),
            "ok" if c.valid else "CORRUPT",
        ]
        for c in cps
    ]
    return table(["SEQ", "CREATED", "DONE", "ITEMS", "NEXT STEP", "SIZE", "CHECKSUM"], rows, frozenset({0, 2, 3, 5}))


def dumps(data: Any) -> str:
    """JSON (UTF-8 kept); json escapes C0 controls itself, DEL, C1 and bidi controls get \\u escapes too.

    Every ``--json`` document and line (``watch``, ``logs -f``) is made here. To a stdout whose encoding is not
    UTF-8 (``PYTHONIOENCODING=ascii``, the C locale without UTF-8 mode, latin-1) it is ASCII, every other
    character a JSON escape: the stream's own escaping wrote ``"h\\xe9llo"``, which no JSON reader takes, and
    a latin-1 byte is not JSON either (JSON between programs is UTF-8, RFC 8259)."""
    text = json.dumps(data, ensure_ascii=not _utf8(sys.stdout), default=str)
    return UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _utf8(stream: Any) -> bool:
    """Whether ``stream`` writes UTF-8; true of one with no encoding (a test's buffer holds text as it is)."""
    import codecs

    encoding = getattr(stream, "encoding", None)
    if not encoding:
        return True
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def op_json(op: Operation) -> dict[str, Any]:
    out = op.model_dump(mode="json")
    from ..autobot import seed_operation

    out["progress"].update(seed_operation(op))  # the seed's field names beside Outlast's
    return out


BOLD, DIM, PLAIN = "\x1b[1m", "\x1b[2m", "\x1b[0m"


def with_short_ids(table_text: str, ids: Sequence[str]) -> str:
    """``ls``'s table (already escaped) with each id's shortest unique prefix in bold and the rest
    dim, as jj and git show them: what to type is what stands out. ``ids`` are the rows' ids in order."""
    from ..ids import unique_prefix_lengths

    lengths = unique_prefix_lengths(ids)
    lines = table_text.split("\n")
    for i, (line, op_id) in enumerate(zip(lines[1:], ids, strict=False), 1):
        at, n = line.find(op_id), lengths[op_id]
        if at >= 0:
            lines[i] = f"{line[:at]}{BOLD}{op_id[:n]}{PLAIN}{DIM}{op_id[n:]}{PLAIN}{line[at + 13 :]}"
    return "\n".join(lines)


DUMB_TERMINALS = frozenset({"dumb", "unknown"})
"""The TERM values of a terminal that takes no escape sequences (Emacs' shell, ``script`` under cron, a CI
runner's pseudo-terminal): rich's list, so that the live panel and the plain lines agree on it."""


def capable_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal that takes escape sequences (styles, the live panel's cursor moves):
    the one place the command line decides it. A ``TERM=dumb`` terminal got bold ids from ``ls`` and a live
    panel that rich drew once, at the end."""
    import os

    dumb = os.environ.get("TERM", "").lower() in DUMB_TERMINALS
    return not dumb and bool(getattr(stream, "isatty", lambda: False)())


def styled(stream: Any) -> bool:
    """Whether to style output on ``stream``: a capable terminal, and NO_COLOR unset (no-color.org)."""
    import os

    return capable_terminal(stream) and not os.environ.get("NO_COLOR")


def echo_ls(rows: Sequence[LsRow]) -> None:
    """``ls``'s table; on a terminal with the short ids standing out."""
    text = UNSAFE_IN_OUTPUT.sub(escape_char, ls_table(rows))
    if styled(sys.stdout):
        text = with_short_ids(text, [r.id for r in rows])
    _write(text, err=False)


def echo(text: str = "", err: bool = False) -> None:
    """Print and flush (lines reach a log file or pipe as they happen).

    A reader that went away (closed pipe, hung-up terminal) must not stop the work: output to
    that stream is dropped from then on; a follower (``end_when_reader_gone``) ends instead.
    """
    _write(UNSAFE_IN_OUTPUT.sub(escape_char, text), err)  # the last guard: whatever a caller forgot to escape


class ReaderGone(Exception):
    """The reader of a follower's stdout went away (``outlast watch ID | head -1``): following is pointless."""


_ends_when_reader_gone = False


def end_when_reader_gone() -> None:
    """Make this process a follower: when what reads its stdout goes away, ``echo`` and ``check_reader``
    raise ReaderGone, as ``tail -f | head`` ends. Only for commands whose work lives elsewhere (watch,
    logs --follow): ``run``'s work is in its own process, and goes on with its output dropped."""
    global _ends_when_reader_gone
    _ends_when_reader_gone = True


def check_reader() -> None:
    """ReaderGone when this process is a follower and the pipe or socket its stdout writes to has no reader
    any more, though nothing was written since (an operation that prints nothing for an hour), or the
    terminal it writes to hung up: the follower's loop asks at each turn. A file is never "gone" here. A
    hang-up is a signal to the session's leader, which a shell passes on to its jobs; one that does not (a
    wrapper that ignores SIGHUP and lives on) left `outlast watch` polling the store for ever, drawing on a
    terminal nobody would see again."""
    if not _ends_when_reader_gone:
        return
    import os
    import select
    import stat

    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
        if stat.S_ISCHR(mode):
            gone = _hung_up(fd)
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            gone = any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
        else:
            return
    except (OSError, ValueError, AttributeError):  # stdout replaced (devnull, a test's buffer), or closed
        return
    if gone:
        drop_stream(False)
        raise ReaderGone()


_output_lost: list[str] = []
"""Why standard output could not be written to the file it goes to (a full disk): said at exit."""


def output_lost() -> str | None:
    """Why what this process printed to its standard output is incomplete, when it went to a file that
    could not take it (``outlast ls --json > out.json`` on a full disk exited 0 with half a document); None
    when it was all written, or when only its reader went away (a closed pipe, a hung-up terminal)."""
    return _output_lost[0] if _output_lost else None


_KEPT: list[Any] = []
"""Outlast's own standard output, once ``keep_stdout`` gave descriptor 1 to standard error."""


def keep_stdout() -> None:
    """(A command that runs handlers here with ``-q`` or ``--json``.) What handlers print from now on (``print()``,
    a library's writes to descriptor 1, a child process that inherits it) goes to standard error, and standard
    output is Outlast's alone: ``ID=$(outlast -q run ...)`` held a handler's lines after the id, and ``outlast
    --json run`` was no JSON. Nothing changes when descriptor 1 or 2 cannot be duplicated (one is closed)."""
    import os

    if _KEPT or sys.stdout is None:
        return
    try:
        sys.stdout.flush()
        fd = os.dup(1)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(fd)
        return
    like = sys.__stdout__ or sys.stdout
    _KEPT.append(
        open(  # noqa: SIM115 - lives as long as the process, as its standard streams do
            fd,
            "w",
            buffering=1,
            encoding=getattr(like, "encoding", None) or "utf-8",
            errors="backslashreplace",
        )
    )


def _write(text: str, err: bool) -> None:
    stream = sys.stderr if err else _KEPT[0] if _KEPT else sys.stdout
    if stream is None or getattr(stream, "closed", False):
        stream = _own_stream(err)
    try:
        stream.write(text + "\n")
        stream.flush()
    except ValueError:  # closed meanwhile, by another thread of the handler's: once more on our own
        _own_stream(err).write(text + "\n")
    except OSError as e:
        if not err and not _output_lost and _to_a_file(stream):
            _output_lost.append(e.strerror or type(e).__name__)
        gone = isinstance(e, BrokenPipeError) or _hung_up(_fileno(stream))
        drop_stream(err)
        if _ends_when_reader_gone and not err and gone:
            raise ReaderGone() from None


def output_failed(e: OSError) -> None:
    """A write to standard output by another hand than ``echo`` (click's help and version) failed: counted as
    ``echo``'s own failures are (to a file: incomplete, exit 74; a reader that went away: nothing)."""
    if not _output_lost and _to_a_file(sys.stdout):
        _output_lost.append(e.strerror or type(e).__name__)
    drop_stream(False)


_OWN: dict[bool, Any] = {}


def _own_stream(err: bool) -> Any:
    """A stream of this process's own on its standard output (or error) descriptor, for when a handler closed
    or removed ``sys.stdout`` (``sys.stdout.close()``, ``sys.stdout = None``, as daemonizing code does):
    ``outlast run`` ended in "internal error" (exit 70) or silently with exit 1, its operation paused. Python
    does not close the descriptor with the stream, so what follows still reaches the terminal or the file."""
    stream = _OWN.get(err)
    if stream is None:
        like = (sys.__stderr__ if err else sys.__stdout__) or sys.__stdout__
        stream = _OWN[err] = open(  # noqa: SIM115 - lives as long as the process, as its standard streams do
            2 if err else 1,
            "w",
            buffering=1,
            encoding=getattr(like, "encoding", None) or "utf-8",
            errors="backslashreplace",
            closefd=False,
        )
    return stream


def standard_streams_back() -> None:
    """As the command ends: a standard stream a handler closed or removed is one of ours again, else the
    interpreter's exit, flushing the closed one, said "Exception ignored ... I/O operation on closed file" and
    exited 120 whatever the command's code."""
    for err, name in ((False, "stdout"), (True, "stderr")):
        stream = getattr(sys, name)
        if stream is None or getattr(stream, "closed", False):
            setattr(sys, name, _own_stream(err))


def _to_a_file(stream: object) -> bool:
    """Whether ``stream`` writes to a file or a disk (not a pipe, a socket or a terminal, whose reader may
    just have gone)."""
    import os
    import stat

    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode) or (stat.S_ISCHR(mode) and not _terminal(fd))


def _terminal(fd: int) -> bool:
    """Whether ``fd`` is a terminal, one that hung up included: ``isatty`` is false for a terminal whose
    session is gone, and a run that went on to completion after its SSH session dropped exited 74, "what
    this command printed is incomplete", as if it wrote to a full disk."""
    import os

    return os.isatty(fd) or _hung_up(fd)


def _hung_up(fd: int | None) -> bool:
    """Whether ``fd`` is a terminal that hung up: its modes cannot be read (EIO), where a device that is no
    terminal (``/dev/full``, ``/dev/null``) says ENOTTY."""
    import errno

    if fd is None:
        return False
    try:
        import termios

        termios.tcgetattr(fd)
    except termios.error as e:
        return bool(e.args) and e.args[0] == errno.EIO
    except (ImportError, OSError, ValueError):
        return False
    return False


def _fileno(stream: object) -> int | None:
    """``stream``'s descriptor, or None (closed, or a stream with none)."""
    try:
        return int(stream.fileno())  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return None


def drop_stream(err: bool) -> None:
    """Send the rest of this stream's output nowhere (its reader is gone)."""
    import os

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    if err:
        sys.stderr = devnull
    elif _KEPT:
        _KEPT[0] = devnull  # the handlers' prints still go to standard error
    else:
        sys.stdout = devnull
