"""What the dashboard keeps as it runs work: nothing per operation run but the operation's record.

A dashboard that ran work grew by ~9 KB per operation run (206 MB after 12,000, and still 203 MB once
they were removed and 4,000 more ran): every poll while work ended here called the store short of
ended records, every second poll read every record again, and each of those reloads froze (``gc.freeze``)
the cyclic garbage of the moment, where the collector never looks again.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

from engine import Settings, Status
from tui.widgets.operations import OperationsTable

from .fixtures_tui import make_app, wait_for

RUN = 150
"""Quick operations run through the dashboard's engine."""


async def test_running_operations_reads_no_record_again_and_freezes_nothing(tui_settings: Settings) -> None:
    """Quick operations ending one after another, polled often: every poll sees some end after it counted
    the store. No full reload comes of it, and no object is frozen out of the collector's reach per
    operation run (a reload froze thousands: the records, and the garbage of the moment)."""
    app = make_app(tui_settings, poll=0.1)
    model = app.model
    born = model.last_full
    async with app.run_test(size=(120, 40)) as pilot:
        # The start's own full read ends (and freezes) after the table says fetched: wait for it to end,
        # or its freeze lands inside the count below (it did in CI, loaded: 16,024 objects).
        await wait_for(pilot, lambda: app.engine_started and model.last_full > born)
        reloads: list[float] = []
        reload_all = model.reload_all

        async def counted() -> bool:
            reloads.append(model.answered)
            return await reload_all()

        model.reload_all = counted  # type: ignore[method-assign]
        gc.collect()
        frozen = gc.get_freeze_count()
        ids = [(await app.engine.submit({"type": "ledger", "params": {"items": 1}})).id for _ in range(RUN)]
        await wait_for(
            pilot, lambda: all((op := model.ops.get(i)) is not None and op.status is Status.COMPLETED for i in ids)
        )
        await pilot.pause(0.5)  # the polls after the last one ended
        assert reloads == []
        assert gc.get_freeze_count() - frozen < RUN


class _Cycle:
    """An object that only the cycle collector can free."""

    def __init__(self) -> None:
        self.me: Any = self


async def test_what_a_full_reload_froze_is_collected_once_it_is_garbage(tui_settings: Settings) -> None:
    """An object alive at a full reload and dropped after it (a finished task, a line a pane let go) is
    freed by the collector once it is garbage: frozen by one reload, it is unfrozen by the next."""
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started and app.query_one(OperationsTable).fetched)
        cycle = _Cycle()
        gone = weakref.ref(cycle)
        assert await app.model.reload_all()
        del cycle
        assert await app.model.reload_all()
        gc.collect()
        assert gone() is None
