"""The engine's seams: actions are refused by the lifecycle table, and a handler reaches the store's
output directory through its context's public API (no reaching into the engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from engine import Conflict, Engine, OperationContext, OperationSpec, Priority, Status, operation
from engine.lifecycle import ACTIONS, Action


class OutputParams(BaseModel):
    name: str = "out.txt"


@operation("seam_output", params=OutputParams)
async def seam_output(ctx: OperationContext, p: OutputParams) -> dict[str, str]:
    path = ctx.output_dir / p.name
    path.write_text(ctx.id)
    return {"path": str(path)}


async def test_a_handler_writes_into_the_stores_output_directory(engine: Engine, state_dir: Path) -> None:
    op = await engine.submit(OperationSpec(type="seam_output"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    path = Path(final.result["path"])
    assert path.parent == state_dir / "outputs" and path.read_text() == op.id
    assert [o.id for o in await engine.list_operations(statuses=[Status.COMPLETED])] == [op.id]
    assert Engine.list is Engine.list_operations  # the old name keeps working for plugins


@pytest.mark.parametrize("action", [Action.CANCEL, Action.PAUSE, Action.RESUME, Action.PRIORITY])
async def test_an_action_refused_names_the_statuses_the_lifecycle_table_allows(engine: Engine, action: Action) -> None:
    op = await engine.submit(OperationSpec(type="ledger", params={"items": 1}))
    assert (await engine.wait(op.id, timeout=20)).status is Status.COMPLETED
    call = {
        Action.CANCEL: lambda: engine.cancel(op.id),
        Action.PAUSE: lambda: engine.pause(op.id),
        Action.RESUME: lambda: engine.resume(op.id),
        Action.PRIORITY: lambda: engine.set_priority(op.id, Priority.HIGH),
    }[action]
    with pytest.raises(Conflict) as e:
        await call()
    text = str(e.value)
    assert text.startswith(f"operation {op.id} is completed: only ")
    named = {s for s in Status if f" {s.value}," in text or f" {s.value} operations" in text}
    assert named == set(ACTIONS[action]), text
    assert (await engine.get(op.id)).status is Status.COMPLETED
