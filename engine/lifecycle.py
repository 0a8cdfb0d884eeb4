"""The lifecycle as data: statuses, the transitions the store accepts, which user action applies to
which status, and why a running attempt stops (with the status and message each reason leads to).

The engine, the command line, the HTTP API and the dashboard all ask this module instead of deciding
by hand, so a status or an action changes in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from .errors import Conflict, InvalidInput


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"

    @property
    def active(self) -> bool:
        return self in ACTIVE

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def resumable(self) -> bool:
        return self in RESUMABLE


def statuses_of(values: Iterable[str] | None) -> list[Status] | None:
    """``values`` as statuses (a ``Status`` or its name); InvalidInput naming one that is none, with the valid
    ones: ``list_operations(statuses=["bogus"])`` raised the enum's bare ValueError."""
    if values is None:
        return None
    out = []
    for value in values:
        try:
            out.append(Status(value))
        except ValueError:
            valid = ", ".join(s.value for s in Status)
            raise InvalidInput(f"status {value!r}: no such status (valid: {valid})") from None
    return out


ACTIVE = frozenset({Status.QUEUED, Status.RUNNING})
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT})
"""Finished for good unless a user resumes (completed never resumes)."""
RESUMABLE = frozenset({Status.FAILED, Status.CANCELLED, Status.TIMED_OUT, Status.INTERRUPTED, Status.PAUSED})
SETTLED = frozenset(set(Status) - ACTIVE)
"""Not queued or running: what `wait` waits for."""

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.PAUSED}),
    Status.RUNNING: frozenset(
        {
            Status.COMPLETED,
            Status.FAILED,
            Status.CANCELLED,
            Status.TIMED_OUT,
            Status.INTERRUPTED,
            Status.PAUSED,
            Status.QUEUED,  # a retry after a transient error goes back into the queue
        }
    ),
    **{s: frozenset({Status.QUEUED}) for s in RESUMABLE},
    # A paused or interrupted operation can be given up for good; an interrupted one asked to pause while
    # its process was gone is paused (recover_orphans), not resumed.
    Status.PAUSED: frozenset({Status.QUEUED, Status.CANCELLED}),
    Status.INTERRUPTED: frozenset({Status.QUEUED, Status.CANCELLED, Status.PAUSED}),
    Status.COMPLETED: frozenset(),
}
"""The lifecycle as one table: every status change the store accepts."""


def refused_change(op_id: str, current: Status, target: Status) -> str:
    """The line of a status change the store refused: "is queued: cannot make it queued" read as nonsense
    when two commands raced (two resumes at once): the other one made it so meanwhile."""
    if current is target:
        return f"operation {op_id} is {current.value} already: another command made it so meanwhile"
    return f"operation {op_id} is {current.value}: cannot make it {target.value}"


def check_transition(current: Status, target: Status) -> None:
    if target not in TRANSITIONS[current]:
        raise Conflict(f"cannot move an operation from {current.value} to {target.value}")


class Action(StrEnum):
    """What a person (or a client) can ask of an operation."""

    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    PRIORITY = "priority"
    RERUN = "rerun"
    REMOVE = "remove"


ACTIONS: dict[Action, frozenset[Status]] = {
    # A queued operation is cancelled or paused in the store; a running one is asked to stop (it
    # checkpoints first); a paused or interrupted one can still be given up for good.
    Action.CANCEL: frozenset({Status.QUEUED, Status.RUNNING, Status.PAUSED, Status.INTERRUPTED}),
    Action.PAUSE: ACTIVE,
    Action.RESUME: RESUMABLE,
    Action.PRIORITY: frozenset({Status.QUEUED}),  # only queued work waits in an order
    Action.RERUN: SETTLED,  # the same spec again, as a new operation
    Action.REMOVE: SETTLED,  # gone from the store with its checkpoints and logs (its outputs stay)
}
"""Which action applies to which status: everything else is refused with a Conflict."""


def applies(action: Action | str, status: Status | None) -> bool:
    """Whether ``action`` applies to an operation in ``status`` (None: no operation)."""
    return status is not None and status in ACTIONS[Action(action)]


def check_action(action: Action | str, status: Status, op_id: str) -> None:
    """Raise Conflict, in one line naming the statuses that would allow it, unless ``action`` applies."""
    action = Action(action)
    if status not in ACTIONS[action]:
        allowed = ", ".join(s.value for s in Status if s in ACTIONS[action])
        hint = ""
        if action is Action.RESUME and status is Status.COMPLETED:  # its failed items too, if any: all is settled
            hint = "; a completed operation is final: rerun it to run it again as a new one"
        raise Conflict(f"operation {op_id} is {status.value}: only {allowed} operations can {_VERB[action]}{hint}")


_VERB = {
    Action.CANCEL: "be cancelled",
    Action.PAUSE: "be paused",
    Action.RESUME: "be resumed",
    Action.PRIORITY: "be re-prioritised",
    Action.RERUN: "be run again",
    Action.REMOVE: "be removed",
}


class StopReason(StrEnum):
    """Why a running attempt stopped before its handler returned (a StrEnum: compares equal to the
    strings stored and sent before it existed)."""

    CANCEL = "cancel"
    PAUSE = "pause"
    SHUTDOWN = "shutdown"  # the engine is stopping (signal, quit, drain)
    TIMEOUT = "timeout"  # the deadline passed
    STALLED = "stalled"  # no progress for the stall timeout
    STORE = "store"  # the store could not be written for too long
    LOST = "lost"  # another worker took the lease: nothing is written

    @property
    def status(self) -> Status:
        """The status an attempt stopped for this reason settles in."""
        return _STOP_STATUS[self]

    def message(self, detail: str = "") -> str:
        """The status line: ``detail`` is the reason-specific part (the deadline, the stall timeout,
        why the engine stopped, why the store failed)."""
        return _STOP_MESSAGE[self].format(detail=detail)


CANCEL_WINS = frozenset({Status.PAUSED, Status.TIMED_OUT, Status.QUEUED, Status.INTERRUPTED})
"""What a running attempt may settle in that a cancel asked meanwhile turns into ``cancelled``
(``Store.transition``'s ``if_cancelled``): a stop that keeps the operation (a pause, a shutdown, a timeout,
the store failing too long: interrupted, which auto_resume queues again) or a retry queued. The cancel gives
it up; the asker was told "cancel requested"."""

_STOP_STATUS = {
    StopReason.CANCEL: Status.CANCELLED,
    StopReason.PAUSE: Status.PAUSED,
    StopReason.SHUTDOWN: Status.PAUSED,
    StopReason.TIMEOUT: Status.TIMED_OUT,
    StopReason.STALLED: Status.TIMED_OUT,
    StopReason.STORE: Status.INTERRUPTED,
    StopReason.LOST: Status.INTERRUPTED,  # never written: the new lease holder owns the record
}
_STOP_MESSAGE = {
    StopReason.CANCEL: "cancelled by user",
    StopReason.PAUSE: "paused by user",
    StopReason.SHUTDOWN: "paused: {detail}",
    StopReason.TIMEOUT: "deadline passed ({detail})",
    StopReason.STALLED: "stalled: no progress for {detail}",
    StopReason.STORE: "interrupted: the store could not be written for {detail}",
    StopReason.LOST: "interrupted: another worker took over the lease",
}
