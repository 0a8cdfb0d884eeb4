"""Shared fixtures. Area-specific fixtures live in tests/fixtures_<area>.py, listed in pytest_plugins."""

from __future__ import annotations

import compileall
import gc
import os
import signal
import sys
from pathlib import Path

import pytest

pytest_plugins: list[str] = [
    "tests.fixtures_engine",
    "tests.fixtures_cli",
    "tests.fixtures_api",
    "tests.fixtures_redis",
    "tests.fixtures_tui",
    "tests.fixtures_disk",
]

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Compile the project's modules once, before any test starts a process.

    The suite starts about 1,500 ``outlast`` processes. Where ``PYTHONDONTWRITEBYTECODE`` is set (as on CI
    machines, and on a fresh clone whose editable install was never imported), none of them writes its
    bytecode, so each compiled every module it imports again: about 50 ms of every start-up, which no
    installed Outlast pays (pip compiles what it installs). Run by the controller, not by each xdist worker.
    """
    _sigint_as_at_a_terminal()
    if not hasattr(config, "workerinput"):
        for package in ("engine", "tui"):
            compileall.compile_dir(REPO / package, quiet=1)
        _rewrite_test_modules_once(config)
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", default=None):
        _no_plugin_autoload_in_nested_pytests()


def _sigint_as_at_a_terminal() -> None:
    """Give SIGINT (and SIGHUP) back its default handling where the suite was started with it ignored.

    A shell starts its background jobs (``pytest ... &``, ``nohup``) with SIGINT ignored, every process
    they start inherits that, and Python keeps it: each ``outlast`` the tests interrupt, as a user's Ctrl-C
    or ``kill -INT`` does, went on running (the dashboard's SIGINT test timed out after 30 s every time in
    a suite run from a script). Python's own handler here makes the processes started see SIGINT's
    default, as they do under a terminal; the tests of a process started with SIGINT ignored set it so.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # The same for SIGHUP, which ``nohup`` (and CI runners started under it) ignores: ``outlast run`` started
    # with it ignored leaves it so (the work outlives the session), and the tests that hang up on a run, as a
    # dropped SSH session does, saw it run on. Its default, as a process started from a terminal has.
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _no_plugin_autoload_in_nested_pytests() -> None:
    """The pytest processes the tests start (the test-suite, performance and profiling operations on small
    projects, about a hundred of them) load only the plugins they name, not every one installed here.

    Each loaded the ten this environment's test extras install (hypothesis, textual-snapshot, xdist, asyncio,
    schemathesis, ...): 1.3 s of CPU against 0.24 s for a one-test project, before its first test. Set in a
    process that runs tests (an xdist worker, or a run without ``-n``), after its own plugins loaded: not in
    xdist's controller, whose workers would start without theirs. A test of a plugin loaded as users load it
    (pytest-xdist, from its entry point) sets the variable empty for its own run."""
    os.environ.setdefault("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def _rewrite_test_modules_once(config: pytest.Config) -> None:
    """Rewrite the asserts of every test module once, in the controller, into pytest's own cache files.

    Each xdist worker imports every test module to collect, and pytest rewrites a module's asserts at
    import unless a rewritten copy is cached beside it. Where ``PYTHONDONTWRITEBYTECODE`` is set no copy
    is ever cached, and on a fresh clone (CI) the six workers all rewrite at once, before any copy exists:
    about 3.5 s of CPU a worker, 20 s in all, at the start of every run. Written here, each worker reads
    them (collection 5.9 s -> 2.3 s of CPU). This uses pytest's private rewrite functions, the ones its
    import hook calls; if they move, nothing is written and each worker rewrites as before.
    """
    try:
        from _pytest.assertion.rewrite import (
            PYC_TAIL,
            _read_pyc,
            _rewrite_test,
            _write_pyc,
            assertstate_key,
            get_cache_dir,
        )
    except ImportError:
        return
    if config.getoption("assertmode") != "rewrite":
        return
    state = config.stash[assertstate_key]
    for source in sorted((REPO / "tests").glob("*.py")):
        if not source.name.startswith(("test_", "fixtures_")) and source.name != "conftest.py":
            continue
        cache = get_cache_dir(source)
        pyc = cache / (source.name[:-3] + PYC_TAIL)
        if _read_pyc(source, pyc) is not None:
            continue
        try:
            cache.mkdir(exist_ok=True)
            stat, code = _rewrite_test(source, config)
        except (OSError, SyntaxError):
            continue  # the worker's import says what is wrong
        _write_pyc(state, code, stat, pyc)


# Modules whose tests run first. xdist hands tests out in collection (alphabetical) order, and these two came
# last: a wheel built and installed, three colour-contrast checks of every theme and three real tmux sessions,
# 8-14 s each, which ran on two or three workers after the other workers had finished (the last 10-15 s
# of a run). Run first, they end while the short tests still flow to every worker. So do the exact-kill tests,
# 10-18 s each, most of it waiting on processes and leases.
RUN_FIRST = (
    "test_tui_tmux.py",
    "test_tui_themes.py",
    "test_fault_kill_statements.py",
    "test_fault_kill_redis_commands.py",
    "test_op_output_db_kill.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)  # stable: the order within stays


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported (textual, FastAPI, pydantic, hypothesis, every test module: about 190,000
    objects the collector tracks) is frozen out of the cycle collector, and its first generation collected
    every 10,000 new objects, not 700: each full collection walked all of it again, about 3,200 collections
    in the 117 tests of three files, 4.4-5.0 s of their 26-28 s of CPU (319 and 1.4-2.3 s after). Garbage is
    still collected; a test that needs it gone calls gc.collect() as before."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state dir; config and state env pointed into tmp so no test touches the user's files."""
    d = tmp_path / "state"
    monkeypatch.setenv("OUTLAST_STATE_DIR", str(d))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in list(os.environ):
        if var.startswith("OUTLAST_") and var not in ("OUTLAST_STATE_DIR", "OUTLAST_REQUIRE_REDIS"):
            monkeypatch.delenv(var)
    return d


@pytest.fixture
def python() -> str:
    return sys.executable
