"""The help says what the keys do: `/` filters on the priority too (typing "low" shows the low-priority
work), and its line said "id, name, type or status"."""

from __future__ import annotations

import time

from engine import Operation, Priority, Status
from engine.models import new_id
from tui.actions import KEY_ACTIONS
from tui.widgets.operations import matches


def test_the_filter_help_names_every_field_the_filter_looks_in() -> None:
    now = time.time()
    op = Operation(
        id=new_id(), type="demo", name="nightly", status=Status.QUEUED, priority=Priority.LOW,
        created_at=now, queued_at=now, updated_at=now,
    )  # fmt: skip
    fields = {"id": op.id[:6], "name": "nightly", "type": "demo", "status": "queued", "priority": "low"}
    help_text = KEY_ACTIONS["filter"].help
    for field, word in fields.items():
        assert matches(op, [word]), field
        assert field in help_text, (field, help_text)
