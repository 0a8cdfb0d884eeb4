"""The command line against Redis: what goes wrong is one clear line and exit code 8 (STORE)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, load_settings, open_store
from engine.exitcodes import ExitCode
from tests import zygote
from tests.fixtures_cli import REPO, CliAt
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


def outlast(*args: str, ns: str = "cli") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUTLAST_NAMESPACE": ns, "PYTHONPATH": str(REPO)}
    env.pop("OUTLAST_DEBUG", None)
    return zygote.run([*args], capture_output=True, text=True, timeout=60, env=env, cwd=REPO, stdin=subprocess.DEVNULL)


def submit(url: str, n: int) -> list[str]:
    async def go() -> list[str]:
        settings = load_settings(plugins=["tests.ops_for_tests"])
        store = open_store(url, namespace="cli", checkpoint_mirror=None)
        async with Engine(store=store, settings=settings, run_queue=False) as engine:
            return [(await engine.submit(OperationSpec(type="ledger"))).id for _ in range(n)]

    return asyncio.run(go())


def test_a_unix_url_naming_a_directory_or_a_file_says_it_is_no_socket(tmp_path: Path) -> None:
    """``unix:///var/run/redis`` (the socket's directory) was "cannot connect: connection refused", as if a
    Redis were there and down."""
    plain = tmp_path / "redis.conf"
    plain.write_text("")
    for path, what in ((tmp_path, "a directory"), (plain, "a plain file")):
        r = outlast("--store", f"unix://{path}", "ls")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 8 and len(lines) == 1, r
        assert f"redis {path}: cannot connect: it is {what}, not a socket" in lines[0], lines


def test_wrong_password_and_wrong_host_are_one_line(redis_factory, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_factory(password="right-one")
    bad = server.url.replace("right-one", "not-it")
    for args, expected in (
        (["--store", bad, "ls"], f"redis 127.0.0.1:{server.port}: authentication failed"),
        (["--store", bad, "worker"], f"redis 127.0.0.1:{server.port}: authentication failed"),
        (["--store", "redis://127.0.0.1:1/0", "ls"], "redis 127.0.0.1:1: cannot connect: connection refused"),
        (["--store", "redis://127.0.0.1:1/0", "worker"], "redis 127.0.0.1:1: cannot connect: connection refused"),
    ):
        r = outlast(*args)
        assert r.returncode == 8, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], r.stderr
        assert "not-it" not in r.stderr + r.stdout
    ok = outlast("--store", server.url, "ls")
    assert ok.returncode == 0, ok.stderr


def test_a_hint_pasted_with_its_masked_password_says_to_put_the_password_back(  # type: ignore[no-untyped-def]
    redis_factory, state_dir: Path
) -> None:
    """Every hint carries --store with the password as ***: pasted as printed, it said "authentication failed:
    check the user and password in the store URL", as if the user had mistyped one."""
    server: RedisServer = redis_factory(password="right-one")
    r = outlast("--store", server.url, "--plugin", "tests.ops_for_tests", "submit", "ledger")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    paused = outlast("--store", server.url, "--plugin", "tests.ops_for_tests", "pause", op_id)
    assert paused.returncode == 0, paused.stderr
    hint = (paused.stdout + paused.stderr).split("resume with: ", 1)[1].splitlines()[0]
    assert "right-one" not in hint and "***" in hint, hint
    argv = shlex.split(hint)
    assert argv[0] == "outlast"
    pasted = outlast(*argv[1:])
    assert pasted.returncode == 8, pasted
    lines = pasted.stderr.strip().splitlines()
    assert len(lines) == 1, pasted.stderr
    assert "the store URL's password is ***, which Outlast prints in place of the password" in lines[0]
    assert "right-one" not in pasted.stderr + pasted.stdout


def test_store_url_mistakes_are_one_line(redis_server: RedisServer, state_dir: Path) -> None:
    """A typo in a store URL's query (redis-py handed it to its connection: TypeError, exit 70), a database
    the server does not have, a negative one: each one line naming it, and nothing written to Redis."""
    for url, code, expected in (
        (
            f"{redis_server.url}?lease_tll=9",
            2,
            "store URL: unknown parameter 'lease_tll' (Outlast's own: lease_ttl, retry_for; any other must be a"
            " redis-py connection option)",
        ),
        (f"{redis_server.url}?foo=1&bar=2", 2, "store URL: unknown parameters 'bar', 'foo'"),
        (
            redis_server.url.rsplit("/", 1)[0] + "/99",
            8,
            f"redis 127.0.0.1:{redis_server.port}: no such database: the number in the store URL (/DB) is not"
            " below the server's `databases`",
        ),
        (redis_server.url.rsplit("/", 1)[0] + "/-1", 2, "database '-1' is not a database number: 0 or above"),
    ):
        for args in (["ls"], ["run", "--detach", "ledger"]):
            r = outlast("--store", url, "--plugin", "tests.ops_for_tests", *args)
            assert r.returncode == code, r
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and expected in lines[0], r.stderr
    assert redis_server.client().dbsize() == 0
    ok = outlast("--store", f"{redis_server.url}?client_name=outlast-test&health_check_interval=5", "ls")
    assert ok.returncode == 0, ok.stderr


def test_tampered_record_is_one_line_and_skipped_in_listings(redis_server: RedisServer, state_dir: Path) -> None:
    good, bad = submit(redis_server.url, 2)
    redis_server.client().hset(f"cli:op:{bad}", "priority", '"urgent!!"')
    r = outlast("--store", redis_server.url, "show", bad)
    assert r.returncode == 8
    assert r.stderr.strip().splitlines() == [
        f"outlast: operation {bad}: stored record in redis is malformed: priority: Input should be 'high',"
        " 'normal' or 'low'"
    ]
    listing = outlast("--store", redis_server.url, "--json", "ls")
    assert listing.returncode == 0, listing.stderr
    assert [op["id"] for op in json.loads(listing.stdout)] == [good]
    assert f"operation {bad}: stored record in redis is malformed" in listing.stderr
    assert len(listing.stderr.strip().splitlines()) == 1
    assert redis_server.client().hget(f"cli:op:{bad}", "priority") == b'"urgent!!"'  # nothing changed


def test_a_run_whose_operation_is_emptied_out_of_redis_says_so_once_at_its_end(
    redis_server: RedisServer, state_dir: Path
) -> None:
    """Redis emptied (FLUSHALL, no mirror) under ``outlast run``: it said the same thing four times (the
    store's lost lease, the attempt's refused write, the attempt's stop, then "no operation ID"). Now the
    store's line when it noticed, the attempt's when its stop took effect, and a last line saying why."""
    cli = CliAt(state_dir, OUTLAST_NAMESPACE="cli", OUTLAST_STORE=redis_server.url)
    try:
        proc = cli.start("run", "demo", "-p", "items=400", "-p", "seconds=0.02")
        op_id = proc.wait_line(lambda ln: " submitted" in ln).split()[1]
        proc.wait_line(lambda ln: "running" in ln and " 0/400" not in ln)
        redis_server.client().flushall()
        assert proc.wait(60) == ExitCode.NOT_FOUND
        err = [ln for ln in proc.err if ln.strip()]
        assert len(err) == 3 and "the operation is gone from the store" in err[0], err
        assert "stopped after losing its lease" in err[1], err
        assert err[2] == f"{op_id} stopped: it is gone from the store (deleted, or the store emptied)", err
    finally:
        cli.close()


def test_a_run_whose_operation_the_mirror_restores_says_so_and_exits_6(
    redis_server: RedisServer, state_dir: Path, tmp_path: Path
) -> None:
    """Redis emptied under ``outlast run`` with a checkpoint mirror: its own process restored the operation
    a line before the run ended "it is gone from the store", exit 3 (no such operation). Now the last
    line says it is back, from the mirror, and how to go on; exit 6 (resume it)."""
    mirror = tmp_path / "mirror"
    env = {"OUTLAST_NAMESPACE": "cli", "OUTLAST_STORE": redis_server.url, "OUTLAST_CHECKPOINT_MIRROR": str(mirror)}
    cli = CliAt(state_dir, **env)
    try:
        # No checkpoint before the lease renewal finds the record gone (a checkpoint write finding it
        # missing restores it, and the run goes on); the mirror holds the record written at its start.
        profile = ("--profile", "checkpoint_interval=600")
        proc = cli.start("run", "demo", "-p", "items=400", "-p", "seconds=0.02", *profile)
        op_id = proc.wait_line(lambda ln: " submitted" in ln).split()[1]
        proc.wait_line(lambda ln: "running" in ln and " 0/400" not in ln)
        # Emptied just after the run's look for orphans (every 2 s) read the store's mark, so that its lease
        # renewal (every second) finds the record gone before the next look. That look, first (its time drifts
        # from the renewal's under load), restored the record while the attempt held it: its lease was set
        # again, and the run went on to complete, exit 0.
        client = redis_server.client()
        with client.monitor() as seen:  # every command Redis runs, as it runs it
            for command in seen.listen():
                if command["client_type"] != "lua" and command["command"].startswith("HMGET cli:meta "):
                    break
        client.flushall()
        assert proc.wait(60) == ExitCode.PAUSED, "\n".join(proc.err)
        last = [ln for ln in proc.err if ln.strip()][-1]
        said = f"{op_id} stopped: the store lost it, and it is restored from the checkpoint mirror {mirror} ("
        assert last.startswith(said), last
        # Restored queued (a slower machine: found leaseless before the run read it), it adds that a worker
        # picks it up.
        go_on = f"go on with: outlast resume {op_id}"
        assert last.endswith((go_on, f"{go_on}, or a running `outlast worker` picks it up")), last
        shown = outlast("--store", redis_server.url, "--json", "show", op_id)
        assert shown.returncode == 0, shown.stderr
        # Running, leaseless, until a process finds it so past the fresh Redis's first lease_ttl seconds.
        assert json.loads(shown.stdout)["status"] in ("queued", "interrupted", "running")
    finally:
        cli.close()


def test_a_cron_drain_exits_8_when_redis_takes_no_claim(redis_server: RedisServer, state_dir: Path) -> None:
    """``worker --exit-when-idle`` with work queued and a Redis over maxmemory (every claim refused) ran
    until it was killed: a cron drain that never ends. It ends as a store failure does: one line, 8."""
    submit(redis_server.url, 1)
    client = redis_server.client()
    client.config_set("maxmemory", max(1, int(client.info("memory")["used_memory"]) - 1000))
    env = {"OUTLAST_STORE_OUTAGE_LIMIT": "1"}
    r = zygote.run(
        ["--store", redis_server.url, "--plugin", "tests.ops_for_tests", "worker", "--exit-when-idle"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUTLAST_NAMESPACE": "cli", "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == ExitCode.STORE, (r.returncode, r.stderr)
    assert "no queued work can be claimed" in r.stderr and "is full" in r.stderr, r.stderr


def test_an_idle_worker_stops_at_once_on_sigterm_while_redis_is_down(
    redis_server: RedisServer, state_dir: Path
) -> None:
    """Asked to stop while it looked at a queue on a Redis that did not answer, an idle worker waited out
    the store's retries (about 30 s), then exited 8: nothing runs there, so it goes at once, 0."""
    env = {**os.environ, "OUTLAST_NAMESPACE": "cli", "PYTHONPATH": str(REPO)}
    worker = zygote.popen(
        ["--store", redis_server.url, "worker"],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and "slots" in worker.stdout.readline()
        redis_server.kill()
        time.sleep(3)  # the worker's look at the queue is retrying by now
        worker.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = worker.wait(20)
        assert code == 0 and time.monotonic() - t0 < 5, (code, time.monotonic() - t0, worker.stderr.read())  # type: ignore[union-attr]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_the_namespace_of_a_config_file_given_with_config_is_the_one_used(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``outlast --config team-a.toml`` with ``namespace = "team-a"``: the store was opened with the
    settings of the default config file, so the work went to the default namespace, where any other
    team's workers ran it, and ``ls`` with the same config listed nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")} | {"PYTHONPATH": str(REPO)}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "no-config")  # no default config file either

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return zygote.run(
            [*args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL
        )

    for team in ("team-a", "team-b"):
        (tmp_path / f"{team}.toml").write_text(
            f'store = "{redis_server.url}"\nnamespace = "{team}"\nstate_dir = "{tmp_path / team}"\n'
        )
    r = run("--config", "team-a.toml", "submit", "demo", "-p", "items=1")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    listed = {t: json.loads(run("--config", f"{t}.toml", "ls", "--json").stdout) for t in ("team-a", "team-b")}
    assert [o["id"] for o in listed["team-a"]] == [op_id] and listed["team-b"] == []
    r = run("--config", "team-b.toml", "worker", "--exit-when-idle")  # team b's worker: not its work
    assert r.returncode == 0, r.stderr
    assert json.loads(run("--config", "team-a.toml", "show", "--json", op_id).stdout)["status"] == "queued"
    r = run("--config", "team-a.toml", "worker", "--exit-when-idle")
    assert r.returncode == 0, r.stderr
    assert json.loads(run("--config", "team-a.toml", "show", "--json", op_id).stdout)["status"] == "completed"


def _run_killed(cli: CliAt, before: Callable[[], object] = lambda: None) -> tuple[str, int]:
    """``outlast run`` of a long demo, SIGKILLed once it runs (``before`` called just before the kill): its
    operation's id and the killed process's pid."""
    proc = cli.start("run", "demo", "-p", "items=1000", "-p", "seconds=0.05")
    op_id = proc.wait_line(lambda ln: " submitted" in ln).split()[1]
    proc.wait_line(lambda ln: "running" in ln)
    before()
    proc.signal(signal.SIGKILL)
    proc.wait(30)
    return op_id, proc.popen.pid


def test_a_pause_asked_of_work_whose_worker_died_settles_once_its_lease_is_gone(
    redis_server: RedisServer, state_dir: Path
) -> None:
    """``outlast pause ID`` of work whose process had just died (its lease not yet run out) waited its 10 s
    and said "still running after 10s; it stops at its next safe point": nobody was left to stop it. The wait
    looks for orphans as a follower does, so it ends paused once the lease is gone. (A cancel did already.)"""
    url = f"{redis_server.url}?lease_ttl=1"
    cli = CliAt(state_dir, OUTLAST_NAMESPACE="cli", OUTLAST_STORE=url)
    try:
        # A fresh Redis trusts no missing lease before lease_ttl.
        op_id, _ = _run_killed(cli, lambda: asyncio.run(redis_server.up_for(2)))
        asked = outlast("--store", url, "pause", op_id)
        assert asked.returncode == 0, asked.stderr
        assert f"{op_id} paused" in asked.stdout, asked.stdout + asked.stderr
        shown = outlast("--store", url, "--json", "show", op_id)
        assert json.loads(shown.stdout)["status"] == "paused", shown.stdout
    finally:
        cli.close()


def test_show_and_ls_say_the_process_of_work_killed_here_is_gone_before_its_lease_runs_out(
    redis_server: RedisServer, state_dir: Path
) -> None:
    """``outlast run`` on Redis, SIGKILLed: until its lease runs out (60 s here) the record says running, and
    ``show`` gave its last rate and ETA ("eta 7s", ever older) as if it ran. The process was this host's:
    ``show`` and ``ls`` say it is gone, and what becomes of the work."""
    url = f"{redis_server.url}?lease_ttl=60"
    cli = CliAt(state_dir, OUTLAST_NAMESPACE="cli", OUTLAST_STORE=url)
    try:
        op_id, pid = _run_killed(cli)
        said = f"gone (process {pid} no longer runs: killed?): it is marked interrupted once found orphaned"
        shown = outlast("--store", url, "show", op_id)
        assert shown.returncode == 0 and "running" in shown.stdout, shown.stdout + shown.stderr
        assert said in " ".join(shown.stdout.split()), shown.stdout
        listed = outlast("--store", url, "ls")
        assert f"gone (process {pid}" in listed.stdout, listed.stdout
    finally:
        cli.close()


def _stopped_while_frozen(
    server: RedisServer,
    args: list[str],
    env: dict[str, str],
    ready: Callable[[subprocess.Popen[str]], None],
    frozen_for: float,
) -> tuple[int, str]:
    """``outlast ARGS`` started, waited for (``ready``), Redis frozen, Ctrl-C ``frozen_for`` seconds later: the
    exit code and stderr (Redis thawed, the process killed if it is still there after 30 s)."""
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = zygote.popen(args, env=env, cwd=REPO, stdin=subprocess.DEVNULL, text=True, **pipes)
    try:
        ready(proc)
        with server.frozen():
            time.sleep(frozen_for)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(30)
        return code, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_run_stopped_while_redis_is_frozen_exits_8_once_it_has_not_answered_for_the_outage_limit(
    redis_server: RedisServer, state_dir: Path
) -> None:
    """A Redis stopped with SIGSTOP answers nothing, and each call gives up only after ``retry_for`` (30 s):
    ``outlast run`` asked to stop, three times, was still there 42 s later. As on a local disk that does not
    answer: one line, exit 8, once Redis has not answered for store_outage_limit; the operation, found
    interrupted once its lease has run out, resumes from its newest checkpoint to the uninterrupted sum."""
    url = f"{redis_server.url}?lease_ttl=1"
    env = {**os.environ, "OUTLAST_NAMESPACE": "cli", "PYTHONPATH": str(REPO), "OUTLAST_STORE_OUTAGE_LIMIT": "2"}
    env.pop("OUTLAST_DEBUG", None)
    args = ["--store", url, "run", "demo", "-p", "items=200", "-p", "seconds=0.005", "--profile", "checkpoint_every=10"]

    def checkpointing(run: subprocess.Popen[str]) -> None:
        assert run.stdout is not None and "submitted" in run.stdout.readline()
        time.sleep(0.5)  # checkpoints written

    code, err = _stopped_while_frozen(redis_server, args, env, checkpointing, 0.3)
    assert code == ExitCode.STORE, (code, err)
    said = [ln for ln in err.splitlines() if "has not answered for" in ln]
    assert len(said) == 1 and "Redis answers nothing" in said[0] and "resume it then" in said[0], err
    op_id = said[0].split("operation ")[1].split()[0]
    time.sleep(1.5)  # its lease runs out: the next command finds it interrupted
    r = zygote.run(["--store", url, "resume", op_id], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"sum": 19900' in r.stdout, r.stdout


@pytest.mark.parametrize("follow", [["watch"], ["logs", "-f"]])
def test_a_watcher_stopped_while_redis_is_frozen_stops_at_once(
    redis_server: RedisServer, state_dir: Path, follow: list[str]
) -> None:
    """``outlast watch ID`` (and ``logs -f``) runs nothing: Ctrl-C stops watching. With a Redis stopped by
    SIGSTOP, the read under way retried for 30 s first, and the watcher stayed 8-40 s after Ctrl-C; it stops
    within a second or two now, 130, saying it did not wait for the store."""
    (op_id,) = submit(redis_server.url, 1)
    env = {**os.environ, "OUTLAST_NAMESPACE": "cli", "PYTHONPATH": str(REPO)}
    env.pop("OUTLAST_DEBUG", None)
    args = ["--store", redis_server.url, *follow, op_id]
    code, err = _stopped_while_frozen(redis_server, args, env, lambda _: time.sleep(1.5), 1.0)  # a read under way
    assert code == 130, (code, err)
    assert "stopped watching without waiting for the store, which has not answered" in err, err


def test_quiet_ls_prints_the_ids_alone_newest_first(redis_server: RedisServer, state_dir: Path) -> None:
    """``outlast -q ls`` printed the whole table (the quick local path and Redis's alike): a script had to cut
    the ids out of it. It prints the ids, one a line, newest first, as ``docker ps -q``; nothing when none."""
    ids = submit(redis_server.url, 3)
    r = outlast("--store", redis_server.url, "-q", "ls")
    assert r.returncode == 0 and r.stdout.split() == ids[::-1] and not r.stderr, (r.stdout, r.stderr)
    cli = CliAt(state_dir)
    local = [cli("-q", "submit", "demo").stdout.strip() for _ in range(2)]
    r = cli("-q", "ls")
    assert r.returncode == 0 and r.stdout.split() == local[::-1] and not r.stderr, (r.stdout, r.stderr)
    r = cli("-q", "ls", "-s", "failed")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
