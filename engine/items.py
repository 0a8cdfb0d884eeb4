"""The item ledger of one attempt, in memory: which items are done, failed or skipped (so a resume skips
them), what changed since the last checkpoint (the next checkpoint's delta), and which item's loop body
is running (a checkpoint taken inside it would not be consistent).

The store keeps the durable ledger (``store.base.Ledger``); this one is what the attempt adds to it.
"""

from __future__ import annotations

from .store.base import ItemDelta, Ledger


class ItemLedger:
    """Owned by one ``OperationContext``; its ``items()`` loop reads and writes it on the hot path."""

    __slots__ = (
        "current",
        "dirty",
        "done",
        "excludes",
        "failed",
        "failed_before",
        "left",
        "new_done",
        "new_failed",
        "new_skipped",
        "order",
        "skipped",
    )

    def __init__(self, base: Ledger | None = None) -> None:
        self.done: set[str] = base.done if base is not None else set()
        self.failed: dict[str, str] = {}
        """Failed in this attempt (items failed before a resume are offered again)."""
        self.failed_before: frozenset[str] = frozenset(base.failed) if base is not None else frozenset()
        """Failed in an earlier attempt: once done, the store no longer lists them as failed."""
        self.skipped: set[str] = base.skipped if base is not None else set()
        self.order: list[list[str]] = base.order if base is not None else []
        """The resume point's done keys in the order they were done (``Ledger.order``). Each is in
        ``done``: a key equal to the next one here is done."""
        self.new_done: list[str] = []
        self.new_failed: dict[str, str] = {}
        self.new_skipped: list[str] = []
        self.current: str | None = None
        """Key of the item whose loop body is running: a checkpoint now would not be consistent."""
        self.left: tuple[tuple[str, int, int], ...] | None = None
        """(key, frame id, instruction) where the handler left an item body without finishing it (-1: by an
        exception re-raised in it), one for each loop left since an item was last taken (nested loops: the
        innermost first)."""
        self.dirty = False
        """Something a checkpoint saves changed (besides the items): ``state``, progress."""
        self.excludes = bool(self.skipped)
        """``failed`` or ``skipped`` holds a key (both only grow): while neither does, the ``items()`` loop
        looks a key up in ``done`` alone."""

    def fail(self, key: str, error: str) -> None:
        self.failed[key] = error
        self.new_failed[key] = error
        self.excludes = True
        self.dirty = True

    def skip(self, key: str) -> None:
        self.skipped.add(key)
        self.new_skipped.append(key)
        self.excludes = True
        self.dirty = True

    def end_body(self, key: str) -> None:
        """The body of ``key`` ended by a failure or a skip (not done)."""
        if self.current == key:
            self.current = None

    @property
    def unsaved(self) -> bool:
        return self.dirty or bool(self.new_done or self.new_failed or self.new_skipped)

    @property
    def outcomes_unsaved(self) -> bool:
        """Failures or skips not yet in a checkpoint, or an item done since that had failed before (the
        store lists it as failed until a checkpoint says it is done)."""
        if self.new_failed or self.new_skipped:
            return True
        return bool(self.failed_before) and not self.failed_before.isdisjoint(self.new_done)

    def take(self) -> ItemDelta:
        """What changed since the last checkpoint, for the next one (cleared: ``restore`` puts it back)."""
        delta = ItemDelta(self.new_done[:], dict(self.new_failed), self.new_skipped[:])
        # Cleared in place: the items() loop holds a reference to new_done.
        self.new_done.clear()
        self.new_failed.clear()
        self.new_skipped.clear()
        self.dirty = False
        return delta

    def restore(self, delta: ItemDelta) -> None:
        """``delta`` was not saved: keep it for the next checkpoint."""
        self.new_done[:0] = delta.done
        self.new_failed.update({k: v for k, v in delta.failed.items() if k not in self.new_failed})
        self.new_skipped[:0] = delta.skipped
        self.dirty = True

    def cut_off(self, forced: bool) -> str | None:
        """The item whose body was running when the handler stopped (by force: also one it was leaving)."""
        return self.current or (self.left[0][0] if forced and self.left else None)

    def failed_item(self, exc: BaseException) -> str | None:
        """The item whose body raised ``exc``: the current one, or the one the exception left by."""
        if self.current is not None:
            return self.current
        left, self.left = self.left, None
        for key, frame_id, lasti in left or ():  # the innermost first: an inner item's failure is its own
            tb = exc.__traceback__
            while tb is not None:
                if id(tb.tb_frame) == frame_id and lasti in (tb.tb_lasti, -1):  # -1: re-raised (``_leaving_at``)
                    return key
                tb = tb.tb_next
        return None  # raised after a ``break``: not the item's failure
