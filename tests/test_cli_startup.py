"""Start-up: ``outlast --help`` and ``ls`` load neither the engine nor pydantic, asyncio, psutil or the
entry points (they took 10x a bare ``python -c pass``); what they print is what the full path prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from tests.fixtures_cli import CLI, REPO, Cli

HEAVY = ("pydantic", "asyncio", "psutil", "importlib.metadata", "engine.engine", "engine.models", "logging")


def loaded_after(args: list[str], env: dict[str, str]) -> tuple[int, list[str], str]:
    code = (
        "import sys\n"
        "from engine.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(f'RC={rc} HEAVY={\",\".join(heavy)}')\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO)
    rc, heavy = re.fullmatch(r"RC=(\d+) HEAVY=(.*)", r.stdout.strip().splitlines()[-1]).groups()  # type: ignore[union-attr]
    return int(rc), [h for h in heavy.split(",") if h], r.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["ls"], ["ls", "-s", "queued", "-t", "demo", "-n", "3"], ["ls", "--help"]]
)
def test_help_and_ls_load_nothing_heavy(cli: Cli, args: list[str]) -> None:
    assert cli.here("submit", "demo", "-p", "items=2").returncode == 0  # set up in this process: no start
    rc, heavy, out = loaded_after(args, cli.env)
    assert (rc, heavy) == (0, []), out


def test_submit_loads_no_event_loop_and_no_importlib_metadata(cli: Cli) -> None:
    """At its first model pydantic imported its plugin loader, and with it ``importlib.metadata`` (half a bare
    ``python -c pass``), to find no plugin: once a scan found no ``pydantic`` entry point (remembered as the
    operations' are), ``submit`` goes without it (one installed is loaded: test_registry_entry_point_cache).
    Nor does it load asyncio (a tenth of its start-up), which its quick path never runs: the store's modules
    and the command type's import it when they run."""
    submit = ["submit", "command", "--params-json", '{"command": "true"}']
    for remembered in (False, True):  # the first scans (and remembers), the next trusts what it found
        rc, heavy, out = loaded_after(submit, cli.env)
        assert rc == 0 and ("importlib.metadata" in heavy) is not remembered and "asyncio" not in heavy, out


def test_every_public_name_is_importable_and_import_engine_is_light() -> None:
    for name in engine.__all__:
        exec(f"from engine import {name}", {})
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import engine, sys; print(sorted(m for m in ('pydantic', 'asyncio') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
    with pytest.raises(AttributeError):
        engine.NoSuchName  # noqa: B018


def normalised(text: str) -> list[str]:
    """Table lines with the CREATED column's age (which moves between two runs) and padding taken out."""
    return [re.sub(r"\s+", " ", re.sub(r"\S+ ago", "AGO", line)).strip() for line in text.splitlines()]


def test_quick_ls_prints_what_the_full_path_prints(cli: Cli, tmp_path: Path) -> None:
    assert cli("-q", "run", "demo", "-p", "items=3", "-p", "seconds=0", "--name", "W1").returncode == 0
    for i in range(3):
        assert cli.here("submit", "demo", "-p", f"items={i}", "--priority", "low").returncode == 0
    slow = {**cli.env, "OUTLAST_MAX_CONCURRENT": "3"}  # a setting: the settings are loaded, the engine lists
    for args in (["ls"], ["ls", "-n", "2"], ["ls", "-s", "completed"], ["ls", "-t", "nothing"]):
        quick, full = cli(*args), cli(*args, env=slow)
        assert (quick.returncode, normalised(quick.stdout), quick.stderr) == (
            full.returncode,
            normalised(full.stdout),
            full.stderr,
        ), args


def test_quick_ls_leaves_an_orphan_to_the_full_path(cli: Cli) -> None:
    """A running operation whose process was SIGKILLed is shown interrupted, as every command shows it."""
    p = cli.start("--state-dir", str(cli.state_dir), "run", "demo", "-p", "items=1000", "-p", "seconds=0.05")
    line = p.wait_line(lambda ln: " submitted: " in ln)
    op_id = line.split()[1]
    cli.wait_status(op_id, {"running"})
    assert re.search(rf"^1\s+{op_id}\s+running\s", cli("ls").stdout, re.M)  # alive: the quick path
    p.kill()
    assert cli.op(op_id).status.value == "running"
    assert re.search(rf"^1\s+{op_id}\s+interrupted\s", cli("ls").stdout, re.M)
    assert cli.op(op_id).status.value == "interrupted"


def test_quick_paths_agree_with_the_store_and_the_settings() -> None:
    from engine.cli.common import SETTINGS_KEYS
    from engine.config import Settings
    from engine.store import quick
    from engine.store.sqlite import LocalStore
    from engine.store.sqlite.schema import SCHEMA_VERSION

    assert set(SETTINGS_KEYS) == set(Settings.model_fields) - {"profiles", "origins"}
    store = LocalStore(Path("/nonexistent-state"))
    assert (store.db_path.name, store.lock_dir.name, store.log_dir.name, SCHEMA_VERSION) == (
        quick.DB_NAME,
        quick.LOCK_DIR,
        quick.LOG_DIR,
        quick.SCHEMA_VERSION,
    )


def test_a_config_file_checked_once_keeps_ls_quick_until_it_changes(cli: Cli, tmp_path: Path) -> None:
    """With a config file (the dashboard writes its theme to one) every ``ls`` took the slow path: only
    the settings model can tell the file is valid. Its content, once accepted, is trusted by content:
    an edited file is checked in full again and says what is wrong with it."""
    assert cli.here("submit", "demo", "-p", "items=2").returncode == 0
    config = tmp_path / "config" / "outlast" / "config.toml"  # the default one (conftest's XDG_CONFIG_HOME)
    config.parent.mkdir(parents=True)
    config.write_text('theme = "outlast-light"\nmax_concurrent = 2\n')
    rc, heavy, first = loaded_after(["ls"], cli.env)
    assert rc == 0 and "pydantic" in heavy, first  # never seen: checked in full
    rc, heavy, again = loaded_after(["ls"], cli.env)
    assert (rc, heavy) == (0, []) and normalised(again)[:-1] == normalised(first)[:-1], again
    config.write_text('theme = "outlast-light"\nmax_concurrent = 0\n')  # edited: now invalid
    r = cli("ls")
    assert r.returncode == 2 and "max_concurrent" in r.stderr, r.stderr
    # A state dir named by the config file is where the quick path looks.
    other = tmp_path / "other"
    config.write_text(f"state_dir = {str(other)!r}\n")
    env = {k: v for k, v in cli.env.items() if k != "OUTLAST_STATE_DIR"}
    submitted = cli("submit", "demo", env=env)  # the full path, which checks the file
    assert submitted.returncode == 0, submitted.stderr
    rc, heavy, out = loaded_after(["ls"], env)
    assert (rc, heavy) == (0, []) and submitted.stdout.strip() in out and out.count("demo") == 1, out
    # A store in the config file is never taken on trust: the full path, every time.
    config.write_text('store = "redis://127.0.0.1:1/0"\n')
    for _ in range(2):
        rc, heavy, out = loaded_after(["ls"], env)
        assert rc == 8 and "pydantic" in heavy, out


def test_a_relative_state_dir_in_a_config_file_is_the_files_directorys(cli: Cli, tmp_path: Path) -> None:
    """``state_dir = "state"`` in the config file was read from the working directory: every directory a
    command ran in had a store of its own (a worker started elsewhere never saw what ``submit`` queued,
    ``ls`` elsewhere listed nothing), the quick ``ls`` too."""
    config = tmp_path / "config" / "outlast" / "config.toml"  # the default one (conftest's XDG_CONFIG_HOME)
    config.parent.mkdir(parents=True)
    config.write_text('state_dir = "state-here"\n')
    env = {k: v for k, v in cli.env.items() if k != "OUTLAST_STATE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()

    def outlast(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)

    submitted = outlast(one, "-q", "submit", "demo")
    assert submitted.returncode == 0, submitted.stderr
    op_id = submitted.stdout.strip()
    for _ in range(2):  # the full path (checks the file), then the quick one (trusts it by content)
        listed = outlast(two, "ls")
        assert listed.returncode == 0 and op_id in listed.stdout, listed
    assert (config.parent / "state-here" / "outlast.db").is_file()
    assert sorted(os.listdir(one)) == sorted(os.listdir(two)) == []


def test_ctrl_c_while_outlast_starts_is_one_line_not_a_traceback(cli: Cli) -> None:
    """Ctrl-C pressed as the command starts lands in the import of the command line (about 0.1 s of
    it), before ``root.main`` maps it to one line: it printed a traceback. The interrupt is raised by an
    import hook at that very import, so the test does not depend on timing a signal."""
    code = (
        "import sys\n"
        "class Stop:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'engine.cli.root':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Stop())\n"
        "from engine.cli import main\n"
        "main(['ls'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli.env, cwd=REPO)
    assert (r.returncode, r.stderr, r.stdout) == (130, "outlast: stopped\n", "")


def test_quick_ls_json_fields_are_the_models() -> None:
    """The quick ``ls --json`` prints a record as read only when it is its model's dump: its table of
    fields and kinds is the models' (a field added to ``Operation`` without it would take the full path
    every time; one with another kind of value could print what validation would have changed)."""
    from typing import Any

    from pydantic import BaseModel

    from engine.cli import quickjson
    from engine.lifecycle import Status
    from engine.limits import Priority
    from engine.models import Operation, Progress, WorkerInfo

    kinds: dict[Any, str] = {
        str: "str",
        str | None: "str?",
        int: "int",
        int | None: "int?",
        float: "float",
        float | None: "float?",
        dict[str, Any]: "dict",
        dict[str, str]: "tags",
        Any: "any",
        Status: "status",
        Priority: "priority",
        Progress: "progress",
        WorkerInfo | None: "worker?",
    }

    def table(model: type[BaseModel]) -> dict[str, str]:
        return {name: kinds[f.annotation] for name, f in model.model_fields.items()}

    assert (
        table(Operation),
        table(Progress),
        table(WorkerInfo),
    ) == (quickjson.FIELDS, quickjson.PROGRESS_FIELDS, quickjson.WORKER_FIELDS)
    assert Operation.model_config.get("extra") == "ignore"  # other keys are dropped: the quick path refuses them


def test_quick_ls_json_prints_what_the_full_path_prints(cli: Cli) -> None:
    """``ls --json`` reads the local store without pydantic or asyncio, and prints byte for byte what the
    full path (validate each record, dump it again) prints; a record the dump would change (an int where
    the model holds a float) sends it to the full path."""
    import asyncio
    import sqlite3

    from engine import Operation, Progress, Status, WorkerInfo, open_store
    from engine.models import new_id

    assert (
        cli("-q", "run", "demo", "-p", "items=4", "-p", "seconds=0", "--profile", "checkpoint_every=1").returncode == 0
    )
    cli("-q", "run", "command", "--params-json", '{"command": "exit 3"}', "--name", "Zürich ✓ \u202e")
    assert cli.here("submit", "demo", "--priority", "high", "--idempotency-key", "k-1").returncode == 0

    async def add() -> None:
        store = open_store(cli.state_dir)
        await store.open()
        try:
            t = 1_700_000_000.25
            await store.create(
                Operation(
                    id=new_id(),
                    type="demo",
                    params={"deep": [1, 2.5, {"x": None, "é": "\u2028"}], "big": 2**70},
                    tags={"team": "ops"},
                    status=Status.PAUSED,
                    created_at=t,
                    queued_at=t,
                    started_at=t + 1,
                    updated_at=t + 2,
                    progress=Progress(done=3, total=7, rate=0.5, eta=8.0, metrics={"mb": 1.5}, updated_at=t + 2),
                    worker=WorkerInfo(host="h", pid=1, boot="b", start=5),
                    result={"partial": [True, False]},
                    error="a\nb",
                )
            )
        finally:
            await store.close()

    asyncio.run(add())
    full_env = {**cli.env, "OUTLAST_MAX_CONCURRENT": "3"}  # a setting: the full path

    def same(*args: str) -> str:
        quick, full = cli(*args), cli(*args, env=full_env)
        assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr), args
        return quick.stdout

    for args in (
        ["ls", "--json"],
        ["ls", "--json", "-n", "2"],
        ["--json", "ls", "-s", "paused"],
        ["ls", "--json", "-t", "no"],
    ):
        same(*args)
    rc, heavy, out = loaded_after(["ls", "--json"], cli.env)
    assert (rc, heavy) == (0, []), out

    db = sqlite3.connect(cli.state_dir / "outlast.db")
    with db:  # records stored before progress had its fraction and ran: still quick, printed as the full path does
        db.execute("UPDATE operations SET record = json_remove(record, '$.progress.fraction', '$.progress.ran')")
    assert '"fraction": 0.0, "ran": null' in same("ls", "--json")
    rc, heavy, out = loaded_after(["ls", "--json"], cli.env)
    assert (rc, heavy) == (0, []), out
    with db:
        db.execute("UPDATE operations SET record = json_set(record, '$.progress.rate', 2) WHERE status = 'paused'")
    db.close()
    assert '"rate": 2.0' in same("ls", "--json")
    rc, heavy, out = loaded_after(["ls", "--json"], cli.env)
    assert rc == 0 and "pydantic" in heavy, out


COLLECTED_WHILE_IMPORTING = (
    "import gc, sys\n"
    "from engine.cli import main\n"
    "importing = []\n"
    "def seen(phase, info):\n"
    "    if phase == 'start':\n"
    "        frame, modules = sys._getframe().f_back, 0\n"  # none above it: a collection Python 3.13 starts itself
    "        while frame is not None:\n"
    "            modules += frame.f_code.co_name == '<module>'\n"
    "            frame = frame.f_back\n"
    "        if modules > 1:  # a module's body runs under this script's\n"
    "            importing.append(1)\n"
    "gc.callbacks.append(seen)\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
    "print(f'RC={rc} FROZEN={gc.get_freeze_count() > 0} ON={gc.isenabled()} IMPORTING={len(importing)}')\n"
)


@pytest.mark.parametrize(
    "args",
    [
        *(["show", "ID"], ["logs", "ID"], ["checkpoints", "ID"], ["watch", "ID"]),
        *(["pause", "ID"], ["cancel", "ID"], ["resume", "ID", "--queue"], ["submit", "demo"], ["ls"]),
    ],
)
def test_a_command_imports_with_the_cycle_collector_paused(cli: Cli, args: list[str]) -> None:
    """Importing the command line (click, the command's module), pydantic, the models, the engine's modules
    and asyncio makes objects by the hundred thousand and next to no garbage: every command imports them
    with the collector paused and what they made frozen (``engine.cli.collector_paused``), as ``submit``
    did; the collector is on again after. Without it ``show`` collected 78 times, ``run`` 80."""
    # The setting up answered in this process: the command below, in a process of its own, is the test.
    op_id = cli.here("submit", "demo", "-p", "items=2").stdout.strip()
    if args[0] == "watch":
        assert cli.here("-q", "cancel", op_id).returncode == 0
    args = [op_id if a == "ID" else a for a in args]
    r = subprocess.run(
        [sys.executable, "-c", COLLECTED_WHILE_IMPORTING, *args], capture_output=True, text=True, env=cli.env, cwd=REPO
    )
    rc = 4 if args[0] == "watch" else 0  # the code of the operation watched: cancelled
    expected = f"RC={rc} FROZEN=True ON=True IMPORTING=0"
    assert r.stdout.strip().splitlines()[-1] == expected, (r.stdout, r.stderr)


def test_help_imports_with_the_cycle_collector_paused(cli: Cli) -> None:
    """``--help`` (click imports ``shutil`` as it lays the help out: that collection is click's)."""
    r = subprocess.run(
        [sys.executable, "-c", COLLECTED_WHILE_IMPORTING, "--help"],
        capture_output=True,
        text=True,
        env=cli.env,
        cwd=REPO,
    )
    assert r.stdout.strip().splitlines()[-1].startswith("RC=0 FROZEN=True ON=True "), (r.stdout, r.stderr)


def test_every_command_remembers_the_entry_points_it_finds(cli: Cli) -> None:
    """``run`` (and ``resume``, a worker) find the ``outlast.operations`` entry points as ``submit`` does:
    from the cache the last process with the same installed distributions wrote, not by reading every
    distribution's metadata again (``registry.remember_entry_points``)."""
    from engine.installed import ENTRY_POINTS_CACHE
    from engine.paths import cache_dir

    cache = cache_dir() / ENTRY_POINTS_CACHE
    assert not cache.exists()
    assert cli("-q", "run", "demo", "-p", "items=1", "-p", "seconds=0").returncode == 0
    assert cache.is_file()
