"""The dashboard's words say what is so: `/` filters on the priority too (typing "low" shows the low-priority
work), and its line said "id, name, type or status"; an unnamed operation's remove question named its type
twice."""

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


def test_the_remove_question_names_an_unnamed_operations_type_once() -> None:
    """It asked "Remove demo (06bkaqzcmw86b, demo, completed)?"."""
    from tui.actions import remove_question

    now = time.time()
    op = Operation(id=new_id(), type="demo", status=Status.COMPLETED, created_at=now, queued_at=now, updated_at=now)
    assert remove_question(op)[0] == f"Remove demo ({op.id}, completed)?"
    named = op.model_copy(update={"name": "nightly"})
    assert remove_question(named)[0] == f"Remove nightly ({op.id}, demo, completed)?"
