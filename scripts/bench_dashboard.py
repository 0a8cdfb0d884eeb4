"""Dashboard figures: key press to repaint, start to first paint, CPU and peak memory.

The real app (``tui.app.OutlastApp`` with its embedded engine) runs in a fresh child process,
headless through Textual's pilot at 160x50, over a store of 10,000 operations of which 100
run in that engine and report progress 20 times a second. Times come from the app's own
repaints: the app runs with a driver of ours (Textual's public ``Driver`` API) that reads no
input and discards the output, but is not headless, so Textual encodes every frame for the
terminal exactly as a real terminal would get it, hands it to the driver and flushes; each
flush is a frame. Each figure has its floor, measured in the same run: for CPU, the same engine
running the same 100 operations with no dashboard, in its own child; for start-up, ``python -c pass``
(round-robin with the dashboard's starts); for a key press, the same dashboard over a small store
(one operation per press) with nothing reporting (what Textual itself costs per key and frame).

    python scripts/bench_dashboard.py --child dashboard|start|engine|textual STATE_DIR N_LIVE PRESSES WINDOW SPAWNED_AT
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
for _p in (str(SCRIPTS.parent), str(SCRIPTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

if __name__ != "__main__":  # the parent (bench.py). A child (this file run as a script) times an app's start
    # from process start: the harness's imports (statistics, platform, shutil: ~15 ms) are not the app's.
    from bench_common import Bench, Row, module_exists, python, summarize, time_command, unavailable
    from bench_surface import populate

SIZE = (160, 50)
FLOOR_SPARE = 20
"""The key-press floor's store holds one operation per press and these: every press moves the cursor
(at the last row a press repaints nothing), and nothing reports."""
FIGURES = {
    "keys": ("dashboard key press to repaint, {ops} ops, {live} reporting (p99)", "< 100 ms"),
    "start": ("dashboard start to first paint, {ops} ops", "<= 12x python -c pass"),
    "cpu": ("dashboard CPU while {live} operations report progress", "<= 2x the engine alone"),
    "memory": ("peak memory, dashboard with {ops} ops", "< 150 MB"),
}


def _figure(key: str, ops: int, live: int) -> tuple[str, str]:
    label, target = FIGURES[key]
    return label.format(ops=f"{ops:,}", live=live), target


# ---- the parent: data, children, rows ----------------------------------------------------------


async def _submit_reporters(bench: Bench, state: Path, n: int) -> None:
    """``n`` high-priority bench_report operations: claimed before the store's queued history."""
    from engine import OperationSpec, Priority

    async with bench.engine(state, run_queue=False) as engine:
        for i in range(n):
            spec = OperationSpec(type="bench_report", name=f"reporter {i}", priority=Priority.HIGH)
            await engine.submit(spec)


def _child(bench: Bench, mode: str, state: Path, live: int, presses: int, window: float) -> dict[str, Any]:
    argv = [python(), str(Path(__file__)), "--child", mode, str(state), str(live), str(presses), str(window)]
    argv.append(repr(time.time()))  # the child's start, for start to first paint (fork and interpreter included)
    r = subprocess.run(argv, env=bench.env(state), capture_output=True, text=True, timeout=180, check=False)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        err = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{mode} child exited {r.returncode}: {err}")
    return json.loads(lines[-1])


async def bench_dashboard(bench: Bench) -> list[Row]:
    n_ops, live, presses, window, runs = bench.pick((10_000, 100, 12, 2.0, 3), (10_000, 100, 200, 8.0, 5))
    if bench.smoke:  # the smoke check wants every figure, not its spread: one run, a few presses
        runs, presses = 1, 3
    if not module_exists("tui/app.py"):
        why = "tui/app.py not in the repository yet"
        return [unavailable("dashboard", *_figure(k, n_ops, live), why) for k in FIGURES]
    state = bench.fresh_dir()
    await populate(state, n_ops)
    await _submit_reporters(bench, state, live)
    floor_state = bench.fresh_dir()
    floor_ops = presses + FLOOR_SPARE
    await populate(floor_state, floor_ops)
    # One a run (the reporters are left running); the smoke check runs the engine alone once, before.
    anchor_states = [bench.fresh_dir() for _ in range(1 if bench.smoke else 2)]
    for anchor_state in anchor_states:
        await _submit_reporters(bench, anchor_state, live)
    # The engine alone before and after the dashboard: the machine's load drifts (the anchor moved by 40%
    # between runs), and one anchor taken at one end of the dashboard's run made the ratio a coin toss.
    engine_only_runs = [await asyncio.to_thread(_child, bench, "engine", anchor_states[0], live, 0, window)]
    pythons: list[float] = []
    bare: list[float] = []
    starts: list[float] = []
    dash: dict[str, Any] = {}
    if not bench.smoke:  # warm-up: the bytecode written, as users have it (the smoke check needs no timing)
        await asyncio.to_thread(_child, bench, "start", state, 0, 0, 0)
    for i in range(runs):  # round-robin with the floor: the machine's load drifts alike for both
        pythons += await asyncio.to_thread(time_command, [python(), "-c", "pass"], 1, bench.env())
        bare.append((await asyncio.to_thread(_child, bench, "textual", state, 0, 0, 0))["first_rows"])
        if i == runs - 1:  # last: the runs before leave the store as it was (they run nothing)
            dash = await asyncio.to_thread(_child, bench, "dashboard", state, live, presses, window)
            starts.append(dash["first_rows"])
        else:  # a start only, watching (nothing run): the first frame listing operations
            starts.append((await asyncio.to_thread(_child, bench, "start", state, 0, 0, 0))["first_rows"])
    floor_keys = await asyncio.to_thread(_child, bench, "dashboard", floor_state, 0, presses, 0.1)
    if not bench.smoke:
        engine_only_runs.append(await asyncio.to_thread(_child, bench, "engine", anchor_states[1], live, 0, window))
    engine_only = {
        "cpu": sum(r["cpu"] for r in engine_only_runs) / len(engine_only_runs),
        "peak_kb": max(r["peak_kb"] for r in engine_only_runs),
    }
    start, python_pass, textual = summarize(starts), summarize(pythons), summarize(bare)

    keys = summarize(dash["keys"])
    keys_floor = summarize(floor_keys["keys"])
    detail = summarize(dash["detail"]) if dash["detail"] else None
    cpu, cpu_anchor = dash["cpu"], engine_only["cpu"]
    anchors = ", ".join(f"{r['cpu']:.1f}%" for r in engine_only_runs)
    peak, peak_anchor = dash["peak_kb"] * 1024, engine_only["peak_kb"] * 1024
    focus = "; the table had no focus once loaded, so the bench focused it first" if dash["focus_lost"] else ""

    def row(key: str, value: float, unit: str, met: bool, note: str, **kw: Any) -> Row:
        label, target = _figure(key, n_ops, live)
        return Row("dashboard", label, value, unit, target=target, met=met, note=note, **kw)

    return [
        row(
            "keys",
            keys["p99"],
            "s",
            keys["p99"] < 0.1,
            f"{keys['n']} presses of down (scrolling 10,000 rows), p50 {keys['p50'] * 1e3:.1f} ms; "
            f"floor: the same dashboard over {floor_ops} operations, nothing reporting; "
            "first frame that shows the moved cursor, encoded for the terminal"
            + (f"; the detail pane follows at the next frame, p99 {detail['p99'] * 1e3:.0f} ms" if detail else "")
            + focus,
            anchor=keys_floor["p99"],
            anchor_unit="s",
            anchor_desc=f"the same key, {floor_ops} ops, none reporting (p99)",
            ratio=keys["p99"] / keys_floor["p99"],
            stats={"cursor": keys, "detail": detail, "frames_per_s": dash["fps"], "floor": keys_floor},
        ),
        row(
            "start",
            start["p50"],
            "s",
            start["p50"] <= 12 * python_pass["p50"],
            f"from process start to the first frame listing operations, p50 of {runs} (round-robin with the "
            f"floor); first frame at {dash['first_frame'] * 1e3:.0f} ms, imports {dash['import'] * 1e3:.0f} ms "
            f"in the full run; a bare Textual app (header, 50-row table, footer) through the same driver: "
            f"{textual['p50'] * 1e3:.0f} ms ({textual['p50'] / python_pass['p50']:.1f}x python -c pass; the "
            f"dashboard {start['p50'] / textual['p50']:.2f}x it)",
            anchor=python_pass["p50"],
            anchor_unit="s",
            anchor_desc="python -c pass",
            ratio=start["p50"] / python_pass["p50"],
            stats={
                "start": start,
                "python": python_pass,
                "bare_textual": textual,
                **{k: dash[k] for k in ("first_frame", "import")},
            },
        ),
        row(
            "cpu",
            cpu,
            "%",
            cpu <= 2 * cpu_anchor,
            f"process CPU over {window:g} s once every operation is read, all threads, percent of one core, "
            f"including the engine running "
            f"the {live} operations; the dashboard's own share is {cpu - cpu_anchor:.1f} points; the engine alone"
            f" is the mean of a run before and one after ({anchors})",
            anchor=cpu_anchor or None,
            anchor_unit="%",
            anchor_desc="the same engine and operations, no dashboard",
            ratio=cpu / cpu_anchor if cpu_anchor else None,
            stats={
                "dashboard": cpu,
                "engine_only": cpu_anchor,
                "engine_only_runs": [r["cpu"] for r in engine_only_runs],
                "window_s": window,
            },
        ),
        row(
            "memory",
            peak,
            "B",
            peak < 150 * 2**20,
            "VmHWM of the dashboard process at the end (every operation loaded, the reporters running)",
            anchor=peak_anchor or None,
            anchor_unit="B",
            anchor_desc="engine alone",
            ratio=peak / peak_anchor if peak_anchor else None,
            stats={"peak_kb": dash["peak_kb"], "engine_only_kb": engine_only["peak_kb"]},
        ),
    ]


async def bench_queue(bench: Bench) -> list[Row]:
    """What a long queue costs the dashboard each second while another process drains it: the CPU of the
    model's polls (all threads: its reads run on the store's thread), a queue of ``n`` against one of
    1,000. Each second another store on the same state dir (another process, as far as the model knows)
    claims and completes DRAINED of them, outside the timed part. A poll that passes over every queued
    record, or reads them all every ten seconds, grows with the queue; one that reads what changed does
    not."""
    if not module_exists("tui/model.py"):
        return [
            unavailable("dashboard_queue", "dashboard polls, long queue draining", "< 5% of a core", "no tui/model.py")
        ]
    n, seconds, short = bench.pick((20_000, 10, 1_000), (100_000, 30, 1_000))
    if bench.smoke:  # two polls: the ten-second look (the first) and a plain one
        seconds = 2
    runs = [await _queue_cpu(bench, short, seconds), await _queue_cpu(bench, n, seconds)]
    runs.append(await _queue_cpu(bench, short, seconds))  # the floor on both sides: the machine drifts
    floor = (runs[0] + runs[2]) / 2
    value = runs[1]
    return [
        Row(
            "dashboard_queue",
            f"dashboard polls while a queue of {n:,} drains (CPU per second)",
            value,
            "s",
            anchor=floor,
            anchor_unit="s",
            anchor_desc=f"the same with {short:,} queued",
            ratio=value / floor if floor else None,
            target="< 5% of a core (50 ms a second)",
            met=value < 0.05,
            note=f"{seconds} polls of OperationsModel (a second each, the ten-second look every tenth), "
            f"each after another store took {DRAINED} operations off the queue (claimed and completed); "
            f"process CPU (all threads) of the polls per poll; floor runs {runs[0] * 1e3:.1f} and "
            f"{runs[2] * 1e3:.1f} ms",
            stats={"runs_s": runs},
        )
    ]


DRAINED = 50
"""Operations another process takes off the queue (claimed, completed) each second of bench_queue."""


async def _queue_cpu(bench: Bench, n: int, seconds: int) -> float:
    from engine import Operation, Status, WorkerInfo, open_store
    from engine.models import new_id
    from tui.model import OperationsModel

    state = bench.fresh_dir("queue")
    other = open_store(state)
    await other.open()
    try:
        now = time.time() - n
        for start in range(0, n, 500):  # 500 at a time: they share group commits
            await asyncio.gather(
                *(
                    other.create(
                        Operation(
                            id=new_id(),
                            type="demo",
                            status=Status.QUEUED,
                            created_at=now + i,
                            queued_at=now + i,
                            updated_at=now + i,
                        )
                    )
                    for i in range(start, min(n, start + 500))
                )
            )
        async with bench.engine(state, run_queue=False) as engine:
            model = OperationsModel(engine)
            model.started = True
            await model.reload_all()
            await model.poll()
            cpu = 0.0
            worker = WorkerInfo(host="bench", pid=os.getpid())
            for tick in range(seconds):
                for _ in range(DRAINED):
                    op = await other.claim(worker, time.time(), 300.0)
                    if op is not None:
                        await other.transition(
                            op.id, Status.COMPLETED, epoch=op.epoch, expect=frozenset({Status.RUNNING})
                        )
                if tick % 10 == 0:
                    model.last_stopped = 0.0  # the ten-second look, as the clock would have it
                c0 = time.process_time()
                await model.poll()
                cpu += time.process_time() - c0
            return cpu / seconds
    finally:
        await other.close()


# ---- the children ------------------------------------------------------------------------------


def _peak_kb() -> int:
    m = re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def _until(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise RuntimeError(f"{what} not reached within {timeout:g}s")
        await asyncio.sleep(0.02)


async def _cpu_over(window: float) -> float:
    c0, w0 = _cpu_seconds(), time.perf_counter()
    await asyncio.sleep(window)
    return 100 * (_cpu_seconds() - c0) / (time.perf_counter() - w0)


async def child_engine(state: Path, live: int, window: float) -> dict[str, Any]:
    """The anchor: the engine alone running the reporters."""
    from bench_common import PLUGIN

    from engine import Engine, load_settings, open_store

    settings = load_settings(state_dir=state, plugins=[PLUGIN], max_concurrent=live)
    engine = Engine(store=open_store(state), settings=settings)
    await engine.start()
    await _until(lambda: len(engine.running_ids) >= live, 60, f"{live} running")
    await asyncio.sleep(0.5)
    cpu = await _cpu_over(window)
    return {"cpu": cpu, "peak_kb": _peak_kb()}


async def child_dashboard(
    state: Path, live: int, presses: int, window: float, started: float, start_only: bool = False
) -> dict[str, Any]:
    """The real app, headless; every figure from its own frames. ``live`` 0: it runs nothing (watch
    only); ``start_only``: out at the first frame listing operations."""
    # Frames encoded as for a truecolor terminal whatever the environment says (read at Textual's import).
    os.environ["TEXTUAL_COLOR_SYSTEM"] = "truecolor"
    from engine.cli import collector_paused

    with collector_paused():  # as ``outlast`` imports the dashboard (``open_dashboard``)
        from textual import events
        from textual.drivers.headless_driver import HeadlessDriver

        from tui.app import OutlastApp
        from tui.widgets.operations import OperationsTable

    imported = time.time() - started

    def settings() -> Any:
        """Loaded after the first frame, as ``outlast`` does when every setting but the state dir is a
        default (``open_dashboard``): the first frame needs only the theme."""
        from bench_common import PLUGIN

        from engine import load_settings

        return load_settings(state_dir=state, plugins=[PLUGIN], max_concurrent=max(1, live))

    frames: list[float] = []
    first: dict[str, float] = {}
    waiting: dict[str, Any] = {}
    drivers: list[HeadlessDriver] = []

    def on_frame() -> None:
        now = time.perf_counter()
        frames.append(now)
        first.setdefault("frame", time.time())
        table = app.query_one(OperationsTable)
        if table.ids:  # the first frame that lists operations (the rest load in pages after it)
            first.setdefault("rows", time.time())
        if waiting.get("cursor") is not None and table.cursor != waiting["cursor"] and "cursor_at" not in waiting:
            waiting["cursor_at"] = now
        if waiting.get("detail") is not None and "detail_at" not in waiting:
            shown = app.dashboard.selected  # what the side panes were last given
            if shown == table.selected_id and shown != waiting["detail"]:
                waiting["detail_at"] = now

    # The first frame lists what the store's quick read (as ``outlast ls`` reads it) finds, before the
    # engine has started: what ``outlast`` hands the dashboard (``tui.app.main(first_look=...)``).
    from engine.store.quick import quick_list

    app = OutlastApp(
        settings, watch_only=live == 0, first_look=lambda statuses, limit: quick_list(state, statuses, None, limit)
    )
    loading = app.model.last_full
    app.driver_class = _frame_driver(on_frame, drivers)  # as App(driver_class=...); run_test(headless=False) uses it
    keys: list[float] = []
    detail: list[float] = []
    async with app.run_test(size=SIZE, headless=False) as pilot:
        await _until(lambda: "rows" in first, 60, "first frame with operations")
        if start_only:
            sys.__stdout__.write(json.dumps({"first_rows": first["rows"] - started}) + "\n")
            sys.__stdout__.flush()
            os._exit(0)
        await _until(lambda: len(app.engine.running_ids) >= live, 60, f"{live} running")
        # The steady state: every record read (the first full read ends by stamping last_full).
        await _until(lambda: app.model.last_full > loading, 60, "every operation read")
        await pilot.pause(1.0)  # and the poll that follows it (the whole queue, the stopped ones) done
        n0 = len(frames)
        cpu = await _cpu_over(window)
        fps = (len(frames) - n0) / window
        table = app.query_one(OperationsTable)
        focus_lost = app.focused is not table
        if focus_lost:  # as a person would press tab: the keys go to the table
            table.focus()
            await pilot.pause(0.3)
        [driver] = drivers
        profiler = _profiler()
        for _ in range(presses):
            waiting.clear()
            waiting["cursor"] = table.cursor
            waiting["detail"] = table.selected_id
            t0 = time.perf_counter()
            driver.send_message(events.Key("down", None))
            await _until(lambda: "cursor_at" in waiting, 10, "repaint after a key")
            keys.append(waiting["cursor_at"] - t0)
            await pilot.pause(0.15)  # a held key's pace; the side panes catch up at the next frame
            if "detail_at" in waiting:
                detail.append(waiting["detail_at"] - t0)
        if profiler is not None:
            profiler.stop()
            show_all = os.environ.get("BENCH_PROFILE_ALL") == "1"
            Path(os.environ["BENCH_PROFILE"]).write_text(profiler.output_text(color=False, show_all=show_all))
        result = {
            "import": imported,
            "first_frame": first["frame"] - started,
            "first_rows": first["rows"] - started,
            "cpu": cpu,
            "fps": fps,
            "keys": keys,
            "detail": detail,
            "peak_kb": _peak_kb(),
            "focus_lost": focus_lost,
        }
        # Not print(): a running app that is not headless takes over sys.stdout.
        sys.__stdout__.write(json.dumps(result) + "\n")
        sys.__stdout__.flush()
        os._exit(0)  # the figures are out; pausing 100 operations on the way out is not measured
    return result


def _frame_driver(on_frame: Callable[[], None], drivers: list[Any]) -> type[Any]:
    """A driver with no terminal in or out, but not headless: Textual renders and encodes every frame
    (batched updates and empty frames are never handed over), writes it here and flushes once per frame."""
    from textual.drivers.headless_driver import HeadlessDriver

    class FrameDriver(HeadlessDriver):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            drivers.append(self)

        @property
        def is_headless(self) -> bool:
            return False

        def write(self, data: str) -> None:
            """The encoded frame: what a terminal would be sent; dropped."""

        def flush(self) -> None:
            on_frame()

    return FrameDriver


async def child_textual(started: float) -> dict[str, Any]:
    """The start-up floor of any Textual dashboard: a bare app (a header, a table of 50 rows, a footer)
    through the same driver, from process start to its first frame with the table's rows."""
    os.environ["TEXTUAL_COLOR_SYSTEM"] = "truecolor"
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable, Footer, Header

    first: dict[str, float] = {}

    class Bare(App[None]):
        def compose(self) -> ComposeResult:
            yield Header()
            yield DataTable()
            yield Footer()

        def on_mount(self) -> None:
            table = self.query_one(DataTable)
            table.add_columns("id", "type", "status", "progress", "rate", "eta")
            for i in range(50):
                table.add_row(f"op{i:05d}", "demo", "queued", "0%", "-", "-")

    def on_frame() -> None:
        tables = app.query(DataTable)
        if tables and tables.first().row_count:
            first.setdefault("rows", time.time())

    app = Bare()
    app.driver_class = _frame_driver(on_frame, [])
    async with app.run_test(size=SIZE, headless=False):
        await _until(lambda: "rows" in first, 60, "first frame with rows")
    return {"first_rows": first["rows"] - started}


def _profiler() -> Any:
    """With BENCH_PROFILE=FILE: pyinstrument over the key presses, written to FILE (every frame with
    BENCH_PROFILE_ALL=1)."""
    if not os.environ.get("BENCH_PROFILE"):
        return None
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    return profiler


def main(argv: list[str]) -> int:
    if len(argv) != 8 or argv[1] != "--child":
        print(__doc__, file=sys.stderr)
        return 2
    mode, state, live, presses, window = argv[2], Path(argv[3]), int(argv[4]), int(argv[5]), float(argv[6])
    if mode == "engine":
        result = asyncio.run(child_engine(state, live, window))
    elif mode == "textual":
        result = asyncio.run(child_textual(float(argv[7])))
    else:
        result = asyncio.run(child_dashboard(state, live, presses, window, float(argv[7]), mode == "start"))
    print(json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
