"""The pytest plugin of comprehensive_test_suite: streams collection and each test's outcome as JSON lines.

Standard library only, and importable on its own (the operation copies it beside the run's files), so it
loads into any interpreter that has pytest, without the engine. Driven by the environment:

- ``OUTLAST_PYTEST_FD``: a file descriptor to write JSON lines to (one per event, flushed at once);
- ``OUTLAST_PYTEST_SELECT``: a file holding a JSON list of node ids (an id may hold a newline: a directory's
  name may); every other collected test is deselected.

Events: ``{"e": "item", "id": ...}`` per collected test, ``{"e": "collected", "n": ..., "collect_only": ...}`` at
the end of collection (with a selection, also ``"unfound"``: how many of the ids asked for this process did not
collect, and ``"missing"``: the first of them), ``{"e": "collect_error", "id": ..., "message": ..., "traceback":
...}``, ``{"e": "start", "id": ...}`` when a test begins and ``{"e": "done", "id": ..., "outcome": ...,
"duration": ..., ...}`` when it has finished (setup, call and teardown): passed, failed, error, skipped, xfailed
or xpassed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

TRACEBACK_MAX = 4000
MESSAGE_MAX = 500
MISSING_MAX = 3

_out: Any = None
_reports: dict[str, list[Any]] = {}
_selected: list[set[str] | None] = []
"""The node ids of ``OUTLAST_PYTEST_SELECT`` once read ([None] without a selection)."""
_xdist_collected = False


def _emit(event: dict) -> None:
    if _out is not None:
        _out.write(json.dumps(event) + "\n")
        _out.flush()


def pytest_configure(config: pytest.Config) -> None:
    global _out
    # Out of the environment: a process started from here (a pytest-xdist worker, a test's own subprocess)
    # does not have the descriptor, and the number may be another file of its own.
    fd = os.environ.pop("OUTLAST_PYTEST_FD", None)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller's hooks report its tests
        return
    if fd and _out is None:
        os.set_inheritable(int(fd), False)  # a test's own subprocesses must not hold the stream open
        _out = os.fdopen(int(fd), "w", encoding="utf-8", buffering=1)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """pytest-xdist's controller collects nothing itself: the end of collection is its first worker's (the
    others collect the same ids, or xdist stops the run)."""
    global _xdist_collected
    if not _xdist_collected:
        _xdist_collected = True
        _collected(list(ids), node.config)


def _selection() -> set[str] | None:
    if not _selected:
        path = os.environ.get("OUTLAST_PYTEST_SELECT")
        if path:
            with open(path, encoding="utf-8") as fh:
                _selected.append(set(json.load(fh)))
        else:
            _selected.append(None)
    return _selected[0]


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    keep = _selection()
    if keep is None:
        return
    selected = [i for i in items if i.nodeid in keep]
    deselected = [i for i in items if i.nodeid not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _emit({"e": "collect_error", "id": report.nodeid, **_describe(report)})


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        _emit({"e": "item", "id": item.nodeid})
    _collected([item.nodeid for item in session.items], session.config)


def _collected(ids: list[str], config: pytest.Config) -> None:
    """The end of collection; with a selection, the ids asked for that this process did not collect (whatever
    deselected them: ids that differ from one process to the next, a test removed, another plugin)."""
    event: dict[str, Any] = {"e": "collected", "n": len(ids), "collect_only": bool(config.option.collectonly)}
    keep = _selection()
    if keep is not None:
        missing = sorted(keep.difference(ids))
        event.update(unfound=len(missing), missing=missing[:MISSING_MAX])
    _emit(event)


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    _reports[nodeid] = []
    _emit({"e": "start", "id": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "???":  # pytest-xdist: the worker running the test died (no logfinish follows)
        _reports.pop(report.nodeid, None)
        _emit({"e": "done", "id": report.nodeid, "outcome": "crashed", "duration": 0.0, **_describe(report)})
        return
    _reports.setdefault(report.nodeid, []).append(report)


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    reports = _reports.pop(nodeid, [])
    outcome, bad = "passed", None
    for r in reports:
        if r.when == "call":
            if hasattr(r, "wasxfail"):
                outcome = "xfailed" if r.skipped else "xpassed"
            elif r.failed:
                outcome, bad = "failed", r
            elif r.skipped:
                outcome = "skipped"
        elif r.failed and bad is None:  # setup or teardown
            outcome, bad = "error", r
        elif r.skipped and r.when == "setup":
            outcome = "xfailed" if hasattr(r, "wasxfail") else "skipped"
    event: dict[str, Any] = {
        "e": "done",
        "id": nodeid,
        "outcome": outcome,
        "duration": round(sum(r.duration for r in reports), 6),
    }
    if bad is not None:
        event.update(_describe(bad), when=bad.when)
    _emit(event)


def _describe(report: Any) -> dict[str, str]:
    """The crash line and the traceback, cut to a readable size (the end of a traceback is what matters)."""
    text = report.longreprtext or ""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    message = crash.message if crash is not None else (text.strip().splitlines() or [""])[-1]
    if len(text) > TRACEBACK_MAX:
        text = "...\n" + text[-TRACEBACK_MAX:]
    return {"message": message[:MESSAGE_MAX], "traceback": text}


def pytest_unconfigure(config: pytest.Config) -> None:
    global _out
    if _out is not None:
        _out.close()
        _out = None
