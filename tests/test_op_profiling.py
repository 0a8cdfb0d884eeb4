"""performance_profiling of a generated script: the top functions with exact call counts, pstats and
speedscope files other tools read, py-spy's sampled stacks when it is installed; a worker SIGKILLed
mid-run and resumed gives the same calls as an uninterrupted run; bad params."""

from __future__ import annotations

import json
import os
import pstats
import textwrap
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Status
from engine.operations.profiling import py_spy
from tests.fixtures_cli import Cli
from tests.fixtures_engine import until
from tests.fixtures_ops import bad_params, checkpoint_state, kill_worker_when, resume, run_json, submit

SCRIPT = textwrap.dedent(
    """
    import sys, time

    def leaf(i):
        return i * i

    def middle(n):
        return sum(leaf(i) for i in range(n))

    def main(seconds):
        middle(5000)
        time.sleep(seconds)  # long enough a run to be killed in
        for _ in range(20):
            middle(100)

    main(float(sys.argv[1]))
    """
)


def calls(result: dict) -> list[tuple[str, int, int]]:
    """The table without what timing decides: (function, calls, primitive calls), in the table's order."""
    return [(r["function"], r["calls"], r["primitive_calls"]) for r in result["top"]]


def test_profile_table_and_files(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "work.py"
    script.write_text(SCRIPT)
    params = {"script": str(script), "args": ["0"], "sort": "calls", "top": 5, "sampler": "none"}
    code, final, err = run_json(cli, "run", "performance_profiling", "--params-json", json.dumps(params))
    assert code == 0, err
    res = final["result"]
    assert res["exit_codes"] == [0] and res["sampler"] is None
    top = {r["function"].rsplit("(", 1)[-1].rstrip(")"): r for r in res["top"]}
    assert top["leaf"]["calls"] == 5000 + 20 * 100 and top["middle"]["calls"] == 21
    st = pstats.Stats(res["pstats"])  # readable by pstats (and snakeviz, gprof2dot)
    assert any(f[2] == "main" for f in st.stats)  # type: ignore[attr-defined]
    scope = json.loads(Path(res["speedscope"]).read_text())
    names = [f["name"] for f in scope["shared"]["frames"]]
    stacks = [[names[i] for i in s] for s in scope["profiles"][0]["samples"]]
    chain = ["<module>", "main", "middle", "<built-in method builtins.sum>", "<genexpr>", "leaf"]
    assert any(s[-6:] == chain for s in stacks), stacks
    assert len(scope["profiles"][0]["weights"]) == len(stacks)
    assert "middle" in Path(res["table"]).read_text()


@pytest.mark.skipif(py_spy() is None, reason="py-spy is not installed")
def test_py_spy_samples_the_program(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "work.py"
    # Busy, not asleep: py-spy records only running frames, and a loaded machine leaves few samples.
    script.write_text(
        SCRIPT.replace("time.sleep(seconds)", "end = time.time() + seconds\n    while time.time() < end: middle(200)")
    )
    params = {"script": str(script), "args": ["0.6"], "sampler": "py-spy", "rate": 200}
    code, final, err = run_json(cli, "run", "performance_profiling", "--params-json", json.dumps(params))
    assert code == 0, err
    res = final["result"]
    assert res["sampler"] == "py-spy" and res["sampler_error"] is None, res
    scope = json.loads(Path(res["sampled"][0]).read_text())
    assert scope["profiles"] and any(f["name"] == "main" for f in scope["shared"]["frames"])


def test_sigkilled_worker_resumes_to_the_uninterrupted_profile(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "work.py"
    script.write_text(SCRIPT)
    params = {"script": str(script), "args": ["0.3"], "runs": 3, "sort": "calls", "top": 8, "sampler": "none"}
    code, whole, err = run_json(cli, "run", "performance_profiling", "--params-json", json.dumps(params))
    assert code == 0, err
    assert whole["result"]["runs"] == 3
    op_id = submit(cli, "performance_profiling", params, "checkpoint_interval=0.05")
    killed = kill_worker_when(cli, op_id, lambda op: len(checkpoint_state(cli, op_id).get("runs", {})) >= 1)
    assert killed.status is Status.RUNNING, "the runs were finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert final["result"]["runs"] == 3
    assert calls(final["result"]) == calls(whole["result"])


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    bad_params(cli, "performance_profiling", {}, "give script or module")
    bad_params(cli, "performance_profiling", {"script": str(tmp_path / "nope.py")}, "script")
    bad_params(cli, "performance_profiling", {"module": "not a module"}, "module")


async def test_a_pause_kills_the_running_program_and_a_resume_runs_it_again(engine: Engine, tmp_path: Path) -> None:
    """A pause does not wait for the program: its process group is killed at once and that run is not done."""
    script = tmp_path / "work.py"
    gate = tmp_path / "slow"
    gate.write_text("")
    script.write_text(f"import os, time\nif os.path.exists({str(gate)!r}):\n    time.sleep(120)\n")
    params = {"script": str(script), "runs": 2, "sampler": "none"}
    op = await engine.submit(OperationSpec(type="performance_profiling", params=params))
    pids = await until(lambda: engine.child_pids().get(op.id), timeout=30)
    await engine.pause(op.id)
    paused = await engine.wait(op.id, timeout=30)
    assert paused.status is Status.PAUSED, paused.status_message
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert paused.progress.done == 0
    gate.unlink()
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    assert final.result["runs"] == 2 and final.result["exit_codes"] == [0]


async def test_an_output_another_profiling_is_writing_is_refused(engine: Engine, tmp_path: Path) -> None:
    """Two operations given one output directory replaced each other's run files while both ran, and each
    merged the other's runs into its profile. The second is refused while the first runs; the first's profile
    is its program's alone."""
    gate = tmp_path / "gate"
    first = tmp_path / "first.py"
    first.write_text(
        f"import os, time\n\ndef first_program():\n    while not os.path.exists({str(gate)!r}):\n"
        "        time.sleep(0.02)\n\nfirst_program()\n"
    )
    second = tmp_path / "second.py"
    second.write_text("def second_program():\n    return 1\n\nsecond_program()\n")
    out = tmp_path / "profiles"
    a = await engine.submit(
        OperationSpec(
            type="performance_profiling", params={"script": str(first), "sampler": "none", "output": str(out)}
        )
    )
    await until(lambda: engine.child_pids().get(a.id), timeout=30)
    b = await engine.submit(
        OperationSpec(
            type="performance_profiling", params={"script": str(second), "sampler": "none", "output": str(out)}
        )
    )
    refused = await engine.wait(b.id, timeout=30)
    assert refused.status is Status.FAILED, (refused.status, refused.result)
    assert f"output {str(out)!r} is being written by another operation" in (refused.error or ""), refused.error
    gate.touch()
    done = await engine.wait(a.id, timeout=60)
    assert done.status is Status.COMPLETED, done.error
    names = {row["function"] for row in done.result["top"]}
    assert any("first_program" in n for n in names) and not any("second_program" in n for n in names), names
    # Once it is over, the directory is the profiles' again: another operation writes there
    again = await engine.submit(
        OperationSpec(
            type="performance_profiling", params={"script": str(second), "sampler": "none", "output": str(out)}
        )
    )
    assert (await engine.wait(again.id, timeout=60)).status is Status.COMPLETED


async def test_the_program_s_own_exit_code_is_recorded(engine: Engine, tmp_path: Path) -> None:
    """cProfile's runner catches SystemExit to write its statistics, and ``python -m cProfile`` then exited 0:
    a script's ``sys.exit(3)`` (or an argparse usage error, 2) was recorded as exit code 0."""
    script = tmp_path / "work.py"
    script.write_text("import sys\n\n\ndef main():\n    return int(sys.argv[1])\n\n\nsys.exit(main())\n")
    codes = []
    for arg in ("3", "0"):
        params = {"script": str(script), "args": [arg], "sampler": "none"}
        op = await engine.submit(OperationSpec(type="performance_profiling", params=params))
        final = await engine.wait(op.id, timeout=60)
        assert final.status is Status.COMPLETED, final.error
        assert any(r["function"].endswith("(main)") for r in final.result["top"]), final.result  # still profiled
        codes.append(final.result["exit_codes"])
    assert codes == [[3], [0]]
