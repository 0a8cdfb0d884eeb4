"""Registry: plugins by module and entry point, the seed's migration decorator, admission control."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, InvalidInput, OperationSpec, Settings, Status, migrate_timeout_operation, operation
from engine.registry import get_handler, load_plugin
from tests.conftest import REPO
from tests.fixtures_cli import Cli
from tests.fixtures_engine import make_engine, until
from tests.ops_for_tests import populate_kb


async def test_migrated_function_keeps_its_call_sites() -> None:
    seen: list[tuple] = []
    out = await populate_kb("wiki", docs=3, progress_callback=lambda d, t, message=None: seen.append((d, t)))
    assert out == {"source": "wiki", "docs": 3}
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert populate_kb.operation_type == "migrated_population"


async def test_migrated_function_runs_as_operation(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="migrated_population", params={"source": "wiki", "docs": 4}))
    assert op.timeout_basis is not None
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED
    assert final.result == {"source": "wiki", "docs": 4}
    assert final.progress.done == 4 and final.progress.total == 4 and final.progress.message == "doc 3"


async def test_a_migrated_plain_def_stays_one_and_runs_as_an_operation(engine: Engine) -> None:
    """A ``def`` (not ``async def``) under the decorator: its callers got a coroutine instead of its result,
    and its operation failed once it had done all its work ("object dict can't be used in 'await'
    expression")."""
    from engine import migrate_timeout_operation

    @migrate_timeout_operation("test_migrated_plain_def", estimated_items=3)
    def count(n: int = 3, progress_callback=None) -> dict:
        for i in range(n):
            if progress_callback:
                progress_callback(i + 1, n)
        return {"n": n}

    @migrate_timeout_operation("test_migrated_plain_def_no_callback")
    def answer() -> int:
        return 42

    runs = (("test_migrated_plain_def", {"n": 4}, {"n": 4}), ("test_migrated_plain_def_no_callback", {}, 42))
    for type_, params, result in runs:
        op = await engine.submit(OperationSpec(type=type_, params=params))
        final = await engine.wait(op.id, timeout=20)
        assert final.status is Status.COMPLETED, final.error
        assert final.result == result
    assert count(2) == {"n": 2} and answer() == 42  # called directly: as before the decorator


def test_plugin_by_module_name() -> None:
    with pytest.raises(InvalidInput, match="plugin 'no_such_plugin_mod' cannot be imported"):
        load_plugin("no_such_plugin_mod")
    load_plugin("tests.ops_for_tests")
    assert get_handler("ledger").source == "tests.ops_for_tests"


def test_plugin_by_entry_point(tmp_path: Path) -> None:
    (tmp_path / "fakeplug_ops.py").write_text(
        textwrap.dedent("""
        from engine import operation

        @operation("fake_plugin_type")
        async def fake(ctx, params):
            return {"ok": True}
    """)
    )
    dist = tmp_path / "fakeplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[outlast.operations]\nfake = fakeplug_ops\n")
    code = "import engine.registry as r; print('fake_plugin_type' in r.handlers())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("name", ["", "Build", "my type", "9lives", "a" * 65, "x\n"])
def test_a_type_no_spec_can_name_is_refused_when_registered(name: str, tmp_path: Path) -> None:
    """``@operation("")`` or ``@operation("Build")`` registered a handler no submit could reach (every spec
    naming it is refused), silently: the plugin's author saw only "unknown operation type" at submit."""
    from engine import operation

    async def handler(ctx: object, params: object) -> None:
        return None

    with pytest.raises(ValueError, match=r"^@operation\(.*\): an operation type must be lower case letters"):
        operation(name)(handler)
    assert name not in __import__("engine.registry").registry.handlers()
    (tmp_path / "badname_ops.py").write_text(
        f"from engine import operation\n@operation({name!r})\nasync def h(ctx, p): ...\n"
    )
    r = _with_plugin(tmp_path, "badname_ops", "types")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
    assert "plugin 'badname_ops' failed while being imported: ValueError: @operation(" in r.stderr, r.stderr


async def test_admission_control_holds_work(settings: Settings) -> None:
    settings.max_memory_percent = 0.001  # any machine is above this
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="ledger", params={"items": 1}))
        await asyncio.sleep(1.0)
        assert (await engine.get(op.id)).status is Status.QUEUED
        engine.admission.max_memory = None  # the scheduler looks again within half a second
        assert (await engine.wait(op.id, timeout=20)).status is Status.COMPLETED


def test_each_builtin_type_names_the_module_that_registers_it() -> None:
    """get_handler imports only the module a type needs: the table must say where each type is."""
    import importlib

    from engine.registry import BUILTIN_TYPES, handlers

    for type_, spec in handlers().items():
        if spec.source == "builtin":
            assert type_ in BUILTIN_TYPES, type_
            module = importlib.import_module(BUILTIN_TYPES[type_])
            assert spec.fn.__module__ == module.__name__ or spec.fn.__module__.startswith(module.__name__), type_


def test_running_demo_loads_no_other_builtin_module() -> None:
    code = (
        "import sys\n"
        "from engine.registry import get_handler\n"
        "get_handler('demo')\n"
        "ops = [m for m in sys.modules if m.startswith('engine.operations.')]\n"
        "print(sorted(m for m in ops if not m.split('.')[-1].startswith('_')))\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['engine.operations.demo']", out


MIGRATED_CALLS: list[int] = []


@migrate_timeout_operation("test_migrated_resumed")
async def migrated_resumed(n: int = 40, progress_callback: Any = None) -> dict[str, Any]:
    for i in range(n):
        MIGRATED_CALLS.append(i)
        await asyncio.sleep(0.005)
        await progress_callback(f"Step {i}", i + 1, n)
    return {"n": n}


async def test_a_migrated_function_resumed_says_it_starts_again_from_the_beginning(engine: Engine) -> None:
    """It keeps no state the engine can give back: resumed, it starts over. The log said "resuming from
    checkpoint 1 (12 items done)", the function ran those 12 again, and its progress went back to 1."""
    MIGRATED_CALLS.clear()
    op = await engine.submit(OperationSpec(type="test_migrated_resumed"))
    await until(lambda: (live := engine.live(op.id)) is not None and live.done >= 10)
    await engine.pause(op.id)
    paused = await engine.wait(op.id, timeout=20)
    assert paused.status is Status.PAUSED
    before = len(MIGRATED_CALLS)
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED and MIGRATED_CALLS[before:] == list(range(40))
    said = [r.message for r in (await engine.store.read_logs(op.id))[0] if r.level == "warning"]
    assert len(said) == 1 and said[0].startswith("migrated_resumed() (@migrate_timeout_operation) cannot resume"), said
    assert "items done before are done again" in said[0]


def test_an_async_generator_handler_is_named_for_what_it_is() -> None:
    """``async def`` with a ``yield`` in it was refused as "must be async def", which it was."""
    with pytest.raises(TypeError, match=r"handler .*agen is an async generator \(it yields\): a handler returns"):

        @operation("test_async_generator_handler")
        async def agen(ctx: Any, p: Any) -> Any:
            yield 1


async def test_a_migrated_generator_fails_when_run_and_is_left_alone_when_called(settings: Settings) -> None:
    """Run as an operation, its body never ran (it runs when iterated), and the operation completed with
    the generator's repr ("<generator object ...>") as its result: it fails, saying why. Its direct callers
    iterate it as before (refused when decorated, their module failed to import)."""

    def numbers(n: int = 3) -> Any:
        yield from range(n)

    async def async_numbers(n: int = 3) -> Any:
        yield n

    plain = migrate_timeout_operation("test_migrated_numbers")(numbers)
    agen = migrate_timeout_operation("test_migrated_async_numbers")(async_numbers)
    assert list(plain(2)) == [0, 1] and [x async for x in agen(5)] == [5]
    async with make_engine(settings) as engine:
        for type_ in ("test_migrated_numbers", "test_migrated_async_numbers"):
            op = await engine.wait((await engine.submit(OperationSpec(type=type_))).id, timeout=30)
            assert op.status is Status.FAILED, (op.status, op.result)
            assert op.error is not None and "is a generator (it yields), whose body runs only" in op.error, op.error


async def _first_dup(ctx: Any, params: Any) -> str:
    return "first"


async def _second_dup(ctx: Any, params: Any) -> str:
    return "second"


def test_a_type_registered_again_says_which_handler_replaced_which(caplog: pytest.LogCaptureFixture) -> None:
    """``@operation("dup")`` twice: the second won without a word."""
    caplog.set_level("WARNING", logger="outlast.registry")
    operation("test_registered_twice")(_first_dup)
    operation("test_registered_twice")(_first_dup)  # the very same function: nothing to say
    assert [r.getMessage() for r in caplog.records] == []
    operation("test_registered_twice")(_second_dup)
    assert [r.getMessage() for r in caplog.records] == [
        "operation type 'test_registered_twice': handler tests.test_engine_registry._second_dup replaces"
        " tests.test_engine_registry._first_dup for this process"
    ]
    assert get_handler("test_registered_twice").fn is _second_dup


def test_the_seeds_migration_of_a_builtin_type_replaces_it_saying_so() -> None:
    """The seed's ``@migrate_timeout_operation(OperationType.CODEBASE_INDEXING, ...)`` replaced the built-in
    ``codebase_indexing`` for the whole process in silence. It still replaces it (the seed means it), saying so
    once, and once only when the built-in modules load after it or it is imported again."""
    code = (
        "import tests.seed_samples, importlib\n"
        "from engine.registry import get_handler, load_builtins\n"
        "load_builtins()\n"
        "importlib.import_module('tests.seed_samples')\n"
        "print(get_handler('codebase_indexing').source, get_handler('code_analysis').source)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tests.seed_samples", "tests.seed_samples"]
    assert r.stderr.splitlines() == [
        "operation type 'codebase_indexing': handler tests.seed_samples.index_codebase replaces the built-in"
        " (engine.operations.indexing) for this process",
        "operation type 'code_analysis': handler tests.seed_samples.long_operation replaces the built-in"
        " (engine.operations.code_analysis) for this process",
    ], r.stderr


def test_an_unknown_type_says_what_it_may_be() -> None:
    """ "unknown operation type 'onlyone'" alone, for a plugin's type a worker elsewhere runs: a submit validates
    the params here, so the plugin is needed here too, which nothing said (an outside hour on Redis)."""
    with pytest.raises(InvalidInput, match=r"^unknown operation type 'demoo': did you mean 'demo'\? \(known: "):
        get_handler("demoo")
    with pytest.raises(InvalidInput, match=r"'onlyone': a plugin's type needs its plugin here too \(--plugin MODULE\)"):
        get_handler("onlyone")


def test_a_worker_without_the_plugin_that_replaces_a_builtin_leaves_its_operations_alone(
    cli: Cli, tmp_path: Path
) -> None:
    """The seed's ``@migrate_timeout_operation(OperationType.CODEBASE_INDEXING)`` submitted (by a server with its
    plugin) and claimed by a worker without it: the worker ran the built-in on the migrated function's params,
    failing on them, or, where they fit both (a ``root``), doing other work than asked and saying completed. It
    fails the operation naming the handler it is for, and a process with the plugin resumes it to run it."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.py").write_text("x = 1\n")
    params = ["-p", f"path={tmp_path / 'tree'}", "-p", 'patterns=["*.py"]']
    r = cli("--plugin", "tests.seed_samples", "-q", "submit", "codebase_indexing", *params)
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    assert cli.op(op_id).handler == "tests.seed_samples.index_codebase"
    r = cli("worker", "--exit-when-idle")  # the built-in codebase_indexing only
    assert r.returncode == 0, r.stderr
    failed = cli.op(op_id)
    assert failed.status.value == "failed" and failed.result is None
    assert failed.error is not None and "submitted for tests.seed_samples.index_codebase" in failed.error
    assert "built-in handler" in failed.error and "--plugin" in failed.error
    r = cli("--plugin", "tests.seed_samples", "--json", "resume", op_id)
    assert r.returncode == 0, r.stderr
    done = cli.op(op_id)
    assert done.status.value == "completed" and done.result == {"files": 1, "patterns": ["*.py"]}


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("async def h():\n    return {}", r"handler h\(\) \(\w+\.py:\d+\) cannot be called with \(ctx, params\)"),
        ("async def h(ctx, params, extra):\n    return {}", r"missing a required argument: 'extra'"),
        ("class Ops:\n    @operation('sig_173')\n    async def h(self, ctx, params):\n        return {}", r"Ops\.h"),
        ("import dataclasses\n@dataclasses.dataclass\nclass P:\n    n: int = 1", r"params='P' is not a pydantic"),
        ("P = dict", r"params='dict' is not a pydantic model"),
        ("def h(ctx, params):\n    return {}", r"handler h \(sig_ops\.py:2\) must be async def, not a plain def"),
        ("def h(ctx, params):\n    yield 1", r"handler h \(sig_ops\.py:2\) must be async def, not a generator"),
    ],
)
def test_a_handler_that_cannot_be_run_is_refused_when_registered(source: str, said: str, tmp_path: Path) -> None:
    """A handler with the wrong arguments, or params= that is no pydantic model, registered silently: every
    operation of its type was stored, then failed naming the engine's line ("at attempt.py:416"), or every
    submit was an internal error (exit 70). The plugin's import now fails in one line naming the handler and
    where it is (a plain ``def`` said "must be async def" without either)."""
    if source.startswith(("import", "P =")):
        body = f"{source}\n@operation('sig_173', params=P)\nasync def h(ctx, p):\n    return {{}}\n"
    elif source.startswith("class"):
        body = source + "\n"
    else:
        body = f"@operation('sig_173')\n{source}\n"
    (tmp_path / "sig_ops.py").write_text("from engine import operation\n" + body)
    r = _with_plugin(tmp_path, "sig_ops", "submit", "sig_173")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
    assert "plugin 'sig_ops' failed while being imported: TypeError: operation 'sig_173': " in r.stderr, r.stderr
    assert re.search(said, r.stderr), r.stderr
    assert r.stdout == ""


async def _star_args(ctx: Any, *args: Any) -> int:
    return 1


async def _defaults(ctx: Any, p: Any = None, **kw: Any) -> int:
    return 1


async def _context_alone(c: Any) -> int:
    return 1


@pytest.mark.parametrize("fn", [_star_args, _defaults, _context_alone])
def test_handlers_that_can_be_called_with_ctx_and_params_register(fn: Any) -> None:
    """What the check above lets through: anything ``fn(ctx, params)`` (or a handler of the context alone) binds."""
    operation(f"test_signature{fn.__name__}")(fn)
    assert get_handler(f"test_signature{fn.__name__}").fn is not None


def _with_plugin(tmp_path: Path, plugin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``outlast --plugin PLUGIN ARGS`` in a process of its own, the plugin's module in ``tmp_path``."""
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin", "OUTLAST_STATE_DIR": str(tmp_path / "s")}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--plugin", plugin, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
