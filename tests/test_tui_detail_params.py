"""The detail pane's params, written as ``-p KEY=VALUE`` takes them and ``outlast show`` prints them.

They were Python's reprs: ``output=None patterns=['*.py'] dry_run=True``, where ``outlast show`` of the
same operation says ``null``, ``["*.py"]`` and ``true``, and none of those Python words is a value the
command line or the launch form takes.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from engine import Engine, OperationSpec, Settings, open_store
from tui.widgets.detail import DetailPane

from .fixtures_tui import make_app, select, wait_for


async def test_params_in_the_detail_pane_are_json_values_and_text_as_typed(
    tui_settings: Settings, tmp_path: Path
) -> None:
    engine = Engine(store=open_store(tui_settings.state_dir), settings=tui_settings, run_queue=False)
    app = make_app(tui_settings, engine=engine)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        spec = OperationSpec(type="codebase_indexing", params={"root": str(tmp_path), "patterns": ["*.py", "*.md"]})
        op = await engine.submit(spec)
        await select(pilot, op.id)
        full = await engine.get(op.id)
        console = Console(width=150, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(app.query_one(DetailPane).render_op(full, None, full)[0])
        params = next(line for line in console.export_text().splitlines() if line.startswith("params"))
    assert f"root={tmp_path}" in params and 'patterns=["*.py","*.md"]' in params, params
    assert "output=null" in params and "exclude=[]" in params, params
    assert "None" not in params and "'" not in params, params
