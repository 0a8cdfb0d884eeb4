"""Metrics are part of the record, written again at every progress report and read by every listing: a
handler's 20 MB metric made each write of the record 40 MB (kept twice, with the seed's
``performance_metrics``), where a step or a message is cut to 2,000 characters. A metric that would take them
all past ``MAX_METRICS_CHARS`` as JSON is left out, said once in the log; the others are kept."""

from __future__ import annotations

import json

from engine import OperationSpec, Settings, Status
from engine.limits import MAX_METRICS_CHARS
from tests.fixtures_engine import make_engine


async def test_a_metric_too_large_for_the_record_is_left_out_and_said_once(settings: Settings) -> None:
    async with make_engine(settings) as engine:
        spec = OperationSpec(
            type="big_metric", params={"chars": MAX_METRICS_CHARS, "d": 1.5}, profile={"progress_report_interval": 0.2}
        )
        op = await engine.submit(spec)
        final = await engine.wait(op.id, timeout=30)
        lines = [r.message for r in (await engine.logs(op.id))[0]]
    assert final.status is Status.COMPLETED, final.status_message
    assert final.progress.metrics == {"files": 7}, {k: len(json.dumps(v)) for k, v in final.progress.metrics.items()}
    said = [ln for ln in lines if "metric 'listing'" in ln]
    assert len(said) == 1 and f"past the {MAX_METRICS_CHARS:,} all metrics may take" in said[0], said
