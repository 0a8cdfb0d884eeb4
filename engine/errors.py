"""The errors the engine raises on purpose: each message is one clear line naming what is wrong."""

from __future__ import annotations


class OutlastError(Exception):
    """Base of every error the engine raises on purpose; its message is one clear line."""


class InvalidInput(OutlastError, ValueError):
    """Bad params, spec, id or config: nothing was stored."""


class NotFound(OutlastError, LookupError):
    """No operation (or checkpoint) matches."""


class Conflict(OutlastError):
    """The operation is not in a state that allows the request (resume a running one, ...)."""


class KeyTaken(Conflict):
    """A create whose idempotency key another operation of the store has: nothing was stored."""

    def __init__(self, key: str, op_id: str) -> None:
        super().__init__(f"idempotency key {key!r} names operation {op_id} already")
        self.key, self.op_id = key, op_id


class StaleAttempt(Conflict):
    """A write from an attempt that was declared dead and replaced (fencing)."""


class ControlChanged(Conflict):
    """A transition chosen by the operation's pending control request as read (``expect_control``) found another
    one stored since: nothing was written; read the request again and choose again."""


class StoreError(OutlastError):
    """The store cannot be opened or read (corrupt, newer schema, unreachable)."""


def requested_unread(op_id: str, action: str, e: BaseException) -> StoreError:
    """A pause or cancel stored, whose read of what the operation became then failed: said as requested, with
    the store's error. The error alone (exit 8) read as "nothing was asked", and the work stopped all the
    same. Raised by the engine's own read after the request and by a command's wait after that."""
    return StoreError(
        f"operation {op_id}: {action} requested (it stops at its next safe point); what it became could not be"
        f" read: {e}"
    )


class DamagedRecord(StoreError):
    """One stored record no longer validates (its timeout profile, its params: a byte changed on disk): the store
    answers, that record is damaged. A command says so of it (exit 8, as any store error); a face that goes on
    (the dashboard) says it of that record in one line, and does not call the store unreachable."""


class StoreFailed(StoreError):
    """A read or write the store itself failed (its disk full, an I/O error, a read-only file): the store is
    sound, and the request may be tried again. ``why`` is the store's own words ("database or disk is full"),
    for a line that says where already. Raised as the store's own error: a raw ``sqlite3.OperationalError``
    was an internal error (exit 70, HTTP 500) to every face, and failed work that only had to be retried."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


class StoreRefused(StoreError):
    """A store that answers reads but refuses writes: a Redis read-only replica, or one full under
    ``noeviction``. A command that only reads lists what it holds as it is (with one line saying why
    nothing is marked); one that would write says this error, exit 8."""


class StoreLost(StoreError):
    """The store's file this process wrote to was deleted under it (its state dir removed): the records of
    the operations it was running went with it, so they cannot be resumed, only run again."""


class StoreMoved(StoreError):
    """The store's file this process wrote to was moved (its state dir renamed) while it ran operations:
    nothing more is written from here, and their records, where it went (``to``, the state dir now), are
    resumable there. Said as deleted, it told the user they could not be resumed."""

    def __init__(self, message: str, to: str) -> None:
        super().__init__(message)
        self.to = to


class StoreHeld(StoreError):
    """The store's write lock is held by a process of this host that is stopped (SIGSTOP, a debugger, a frozen
    container) inside its write: nothing is written until it goes on or ends. A pause of that process, not an
    outage of the store: the time it lasts counts toward no ``store_outage_limit`` (``outage.StoreHealth``)."""
