"""Handlers that misbehave, as users' handlers do, end their operation with a status that says what happened,
never `completed` with work missing, never the whole process with them, never a hang.

Found by a hostile review of the handler API: a handler that caught the stop and returned was `completed`
(69 of 100 items never run, and not resumable); a KeyboardInterrupt or a BaseExceptionGroup holding one,
raised by a handler, ended the process (or left it deaf to signals) and the other operations it ran; a
state keyed by ints came back keyed by strings (a resume ran those items again); a result changed after
the return could not be written (the operation was run again); a handler's own cancelled task was called a
forced stop of the engine; a handler's fork hung its parent; a validator raising TypeError was "a bug in
Outlast" (exit 70); an entry-point plugin calling sys.exit at import ended every command silently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from engine import OperationSpec, Settings, Status, registry
from tests import ops_handler_faults  # noqa: F401  (registers the fault_* types here too)
from tests.fixtures_cli import Cli
from tests.fixtures_engine import make_engine, until

PLUGIN = ("--plugin", "tests.ops_handler_faults")


def _ledger(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_a_handler_that_catches_the_stop_and_returns_is_paused_and_resumes_each_item_once(
    settings: Settings, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    params = {"items": 20, "seconds": 0.05, "ledger": str(ledger)}
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_catches_stop", params=params))
        await until(lambda: len(_ledger(ledger)) >= 3)
        await engine.pause(op.id)
        final = await engine.wait(op.id, timeout=20)
        assert final.status is Status.PAUSED, (final.status, final.status_message, final.result)
        assert final.result is None
        await engine.resume(op.id)
        done = await engine.wait(op.id, timeout=30)
        assert done.status is Status.COMPLETED and done.result == {"partial": False}, done
    assert sorted(_ledger(ledger), key=int) == [str(i) for i in range(20)]  # each item once


async def test_a_handlers_own_cancelled_task_fails_it_and_is_no_forced_stop(settings: Settings) -> None:
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_raises", params={"how": "own_cancel", "items": 3}))
        final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED, (final.status, final.status_message)
    assert "the handler's own task was cancelled" in (final.error or "") and "forced" not in (final.error or "")


async def test_a_handler_cancelling_its_own_task_fails_it_with_a_checkpoint_and_is_no_forced_stop(
    settings: Settings,
) -> None:
    """``asyncio.current_task().cancel()`` in a handler: its task is cancelling, as under the engine's forced
    stop, and was taken for one: "paused ... (the engine stopped (forced after 10s grace period); no checkpoint:
    resumes from the start)" 0 s into the run, the items done lost. The engine counts its own cancels: this
    one fails the operation, saying so, with the item done before it checkpointed."""
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_raises", params={"how": "self_cancel", "items": 3}))
        final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED, (final.status, final.status_message)
    assert "the handler cancelled its own task" in (final.error or ""), final.error
    assert "forced" not in (final.error or "") and "ops_handler_faults.py" in (final.error or ""), final.error
    assert final.checkpoint_seq and final.progress.done == 1, (final.checkpoint_seq, final.progress)


async def test_a_shutdown_whose_grace_runs_out_is_still_the_engines_forced_stop(
    settings: Settings, tmp_path: Path
) -> None:
    """The other side of the above: the cancel the shutdown makes once its grace runs out is the engine's (it
    counts it), a forced stop (paused, resumable), not the handler cancelling its own task."""
    ledger = tmp_path / "ledger"
    params = {"how": "hangs", "items": 3, "ledger": str(ledger)}
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_raises", params=params))
        await until(lambda: "hangs" in _ledger(ledger))
        assert await engine.shutdown(grace=0.1) == {op.id: Status.PAUSED}
    async with make_engine(settings) as engine:
        final = await engine.get(op.id)
    assert final.status is Status.PAUSED and "forced" in (final.status_message or ""), final.status_message


@pytest.mark.parametrize("how", ["forged_stop", "forged_stop_group"])
async def test_a_handler_raising_operation_stopped_with_no_stop_asked_fails_saying_so(
    settings: Settings, how: str
) -> None:
    """OperationStopped raised by the handler itself, with no stop asked, settled the operation as the stop it
    named: "timed_out (deadline passed (3700s))" 0 s into the run, "cancelled" by nobody. It fails, naming the
    reason it carried, with a final checkpoint of the item done before it."""
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_raises", params={"how": how, "items": 3}))
        final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED, (final.status, final.status_message)
    reason = "timeout" if how == "forged_stop" else "cancel"
    assert f"the handler raised OperationStopped ({reason}) with no stop asked" in (final.error or ""), final.error
    assert "ops_handler_faults.py" in (final.error or ""), final.error  # the handler's line
    assert final.checkpoint_seq and final.progress.done == 1, (final.checkpoint_seq, final.progress)


async def test_a_metric_whose_str_raises_is_left_out_said_once_and_the_work_completes(settings: Settings) -> None:
    """A metric whose ``str()`` raised stopped every write of the record: "internal error: RuntimeError: repr
    boom" (exit 70), a traceback at each supervisor tick. Left out, said once, as any metric JSON cannot hold."""
    params = {"how": "metric", "items": 3, "seconds": 0.01}
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_unprintable", params=params))
        final = await engine.wait(op.id, timeout=20)
        said = [r.message for r in (await engine.store.read_logs(op.id))[0] if "weird" in r.message]
    assert final.status is Status.COMPLETED, (final.status, final.error)
    assert final.progress.metrics == {"fine": 2}, final.progress.metrics
    assert said == [
        "not stored: metric 'weird' is an Unprintable whose str() raised RuntimeError: repr boom;"
        " a metric holds JSON values only"
    ], said


async def test_a_result_whose_str_raises_fails_the_operation_in_one_line(settings: Settings) -> None:
    """A result holding a value whose ``str()`` raised was an "internal error settling the attempt" with a
    traceback. It is the handler's mistake: the operation fails, naming the value's type and where it is."""
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_unprintable", params={"how": "result", "items": 2}))
        final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED, (final.status, final.status_message)
    assert final.error == (
        "the result cannot be stored: result['r'][1] is an Unprintable whose str() raised RuntimeError: repr boom"
    ), final.error


async def test_a_handler_out_of_memory_fails_saying_so_and_resumes(settings: Settings) -> None:
    """A MemoryError (``ulimit -v``) failed the operation with "MemoryError (at indexing.py:165)", nothing saying
    what happened in words. Failed (not retried as a shortage: more memory is not on its way), then resumed."""
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_raises", params={"how": "memory", "items": 3}))
        final = await engine.wait(op.id, timeout=20)
        assert final.status is Status.FAILED and final.attempt == 1, (final.status, final.status_message)
        assert "out of memory" in (final.error or ""), final.error
        await engine.resume(op.id)
        final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, (final.status, final.error)


async def test_a_state_keyed_by_ints_is_refused_in_one_line_not_read_back_as_strings(
    settings: Settings, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_state", params={"items": 5, "ledger": str(ledger)}))
        final = await engine.wait(op.id, timeout=20)
        assert final.status is Status.FAILED, (final.status, final.status_message)
        error = final.error or ""
        assert "ctx.state['seen'] has the key 0, an int" in error and "internal error" not in error, error
        assert await engine.checkpoints(op.id) == []  # nothing saved that a resume would misread
    assert _ledger(ledger) == ["0"]


async def test_a_result_changed_after_the_return_is_stored_as_returned(settings: Settings) -> None:
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="fault_result"))
        final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED and final.result == {"n": 1}, (final.status, final.status_message)


@pytest.mark.parametrize("how", ["keyboard", "group"])
def test_a_keyboard_interrupt_raised_by_a_handler_fails_its_operation_not_the_process(
    cli: Cli, how: str, tmp_path: Path
) -> None:
    r = cli(*PLUGIN, "--json", "run", "fault_raises", "-p", f"how={how}", "-p", "items=3", timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["status"] == "failed" and (
        "KeyboardInterrupt" in final["error"] or "ExceptionGroup" in final["error"]
    ), final


def test_a_worker_goes_on_when_a_handler_raises_keyboard_interrupt(cli: Cli, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    other = cli(
        *PLUGIN, "submit", "fault_catches_stop", "-p", "items=10", "-p", "seconds=0.1", "-p", f"ledger={ledger}"
    )
    bad = cli(*PLUGIN, "submit", "fault_raises", "-p", "how=keyboard", "-p", "items=3")
    assert other.returncode == 0 and bad.returncode == 0, (other.stderr, bad.stderr)
    r = cli(*PLUGIN, "worker", "--exit-when-idle", "--concurrency", "2", timeout=90)
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    listed = {op["id"]: op for op in json.loads(cli("--json", "ls").stdout)}
    assert listed[bad.stdout.strip()]["status"] == "failed"
    assert listed[other.stdout.strip()]["status"] == "completed"
    assert sorted(_ledger(ledger), key=int) == [str(i) for i in range(10)]


def test_a_handler_that_forks_leaves_its_parent_free_to_settle_and_exit(cli: Cli) -> None:
    r = cli(*PLUGIN, "--json", "run", "fault_fork", timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["status"] == "completed" and final["result"] == {"child": False}, final
    assert "forked returned into the engine" in r.stderr


@pytest.mark.parametrize(("where", "said"), [("type", "TypeError: type boom"), ("exit", "SystemExit: 9")])
def test_a_validator_raising_what_pydantic_passes_on_is_one_line_exit_2(cli: Cli, where: str, said: str) -> None:
    r = cli.here(*PLUGIN, "submit", "fault_validator", "-p", f"where={where}")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [f"outlast: fault_validator params: its validator raised {said}"], r.stderr
    assert json.loads(cli.here("--json", "ls").stdout) == []


class LibraryAbort(BaseException):
    """A library's own exception outside ``Exception`` (as some test and RPC libraries have)."""


@pytest.mark.parametrize(
    ("raised", "said"), [(SystemExit(3), "called exit(3)"), (LibraryAbort("at import"), "LibraryAbort: at import")]
)
def test_an_entry_point_plugin_that_exits_at_import_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, raised: BaseException, said: str
) -> None:
    """sys.exit(3) at import ended every command, silently, with code 3; a BaseException of a library's own
    ended every one (`worker`, `run` of a built-in type) with a traceback, exit 1."""

    class Exits:
        name, value = "bad", "bad_plugin:register"

        def load(self) -> Any:
            raise raised

    monkeypatch.setattr(registry, "entry_points", lambda group: [Exits()])
    monkeypatch.setattr(registry, "_loaded_entry_points", False)
    monkeypatch.setattr(registry, "_remembering", False)  # an in-process command before this one remembers
    with caplog.at_level(logging.WARNING, "outlast"):
        registry.load_entry_points()
    assert f"plugin bad (bad_plugin:register) failed to load: {said}" in caplog.text


def test_a_plugin_raising_a_base_exception_at_import_is_one_line_exit_2(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "aborts_at_import.py").write_text("class B(BaseException):\n    pass\n\nraise B('base at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = cli.here("--plugin", "aborts_at_import", "ls")
    assert (r.returncode, r.stderr.strip().splitlines()) == (
        2,
        ["outlast: plugin 'aborts_at_import' failed while being imported: B: base at import"],
    ), r


def test_the_key_check_of_a_state_ends_on_a_cycle() -> None:
    """A state that refers back to itself: the key check walked it for ever (the suite's cycle test hung);
    the encoder that runs after it names the cycle."""
    from engine.text import key_not_text

    loop: dict[str, Any] = {"ok": [1, {"a": None}]}
    loop["again"] = loop
    listed: list[Any] = []
    listed.append(listed)
    assert key_not_text(loop, "ctx.state") is None and key_not_text(listed, "ctx.state") is None
    loop["bad"] = {3: "x"}
    assert key_not_text(loop, "ctx.state") == "ctx.state['bad'] has the key 3, an int"
