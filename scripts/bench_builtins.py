"""Figures of the built-in operations: codebase_indexing and security_scan against the same per-file work
in a bare loop (and in one thread against two worker processes), and
backup_operation against ``cp -a`` on the same tree."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_common import REPO, Bench, Row
from bench_engine import run_op

MB = 1 << 20
_PY = "".join(f"def f{i}(x):\n    # step {i}\n    return x + {i}\n\n" for i in range(30))
_JS = "".join(f"export function g{i}(a) {{\n  // step\n  return a * {i};\n}}\n" for i in range(30))
_BODIES = [
    (".py", "import os\n" + _PY),
    (".js", "import x from './x';\n" + _JS),
    (".md", "# Title\n\n" + "Some text. " * 100 + "\n"),
    (".go", 'package p\n\nimport "fmt"\n\n' + "func A() { fmt.Println() }\n" * 40),
]


def make_source_tree(root: Path, n: int) -> None:
    """``n`` files of about 1-2 KB in four languages, 250 to a directory."""
    for i in range(n):
        d = root / f"d{i // 250:03d}"
        d.mkdir(parents=True, exist_ok=True)
        ext, body = _BODIES[i % 4]
        (d / f"f{i:05d}{ext}").write_text(f"// file {i}\n{body}" if ext != ".py" else f"# file {i}\n{body}")


def _hash_files(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            hashlib.sha256(fh.read()).hexdigest()


def _analysis_loop(root: Path) -> float:
    """What the indexer computes per file, in a bare loop without engine or SQLite; seconds."""
    from engine.operations._lang import count_lines, language_of, symbols_and_imports

    t0 = time.perf_counter()
    for d, _, fs in os.walk(root):
        for f in fs:
            with open(os.path.join(d, f), "rb") as fh:
                data = fh.read()
            hashlib.sha256(data).hexdigest()
            lang = language_of(f)
            text = data.decode("utf-8")
            count_lines(text, lang)
            symbols_and_imports(text, lang)
    return time.perf_counter() - t0


def _bare_loop(root: Path, listing: list[str] | None = None) -> tuple[float, int]:
    """The anchor: list the files and sha256 each, nothing else; (seconds, files)."""
    t0 = time.perf_counter()
    if listing is None:
        paths = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    else:
        paths = [str(root / rel) for rel in listing]
    _hash_files(paths)
    return time.perf_counter() - t0, len(paths)


async def _index_rate(bench: Bench, root: Path, label: str, workers: str = "") -> tuple[float, int]:
    """files/s of one codebase_indexing run through a real engine (started and stopped in the time) into a
    fresh index, and the files it indexed; ``workers`` sets OUTLAST_WORKERS ("" leaves the engine's choice)."""
    out = bench.root / f"index-{label}.sqlite"
    with _workers(workers):
        t0 = time.perf_counter()
        res = await run_op(bench, "codebase_indexing", {"root": str(root), "output": str(out)})
        secs = time.perf_counter() - t0
    if res["reused"]:
        raise RuntimeError(f"{out.name} was not a fresh index: {res['reused']} files reused")
    files = res["files"] + res["failures"]
    return files / secs, files


@contextlib.contextmanager
def _workers(value: str) -> Iterator[None]:
    """OUTLAST_WORKERS set to ``value`` (unset if empty) for the block."""
    old = os.environ.pop("OUTLAST_WORKERS", None)
    if value:
        os.environ["OUTLAST_WORKERS"] = value
    try:
        yield
    finally:
        os.environ.pop("OUTLAST_WORKERS", None)
        if old is not None:
            os.environ["OUTLAST_WORKERS"] = old


async def bench_indexing(bench: Bench) -> list[Row]:
    """codebase_indexing of a generated tree (20,000 files; 1,500 with --quick) and of this repository.

    Each round measures the bare loop, then the engine's choice of workers, one thread and two worker
    processes, back to back: the ratio of each round is taken under that round's load (the machine is
    shared), and the figure is the median round."""
    n = bench.pick(1500, 20000)
    tree = bench.root / "tree"
    make_source_tree(tree, n)
    bare = [n / _bare_loop(tree)[0] for _ in range(4)][1:]  # the first pass warms the page cache
    _analysis_loop(tree)  # and this one the parsers
    rounds = 1 if bench.smoke else 3
    analysis: list[float] = []
    runs: dict[str, list[float]] = {"auto": [], "1": [], "2": []}
    for r in range(rounds):
        analysis.append(n / _analysis_loop(tree))
        for workers, rates in runs.items():
            rate, files = await _index_rate(bench, tree, f"{workers}-{r}", "" if workers == "auto" else workers)
            if files != n:
                raise RuntimeError(f"indexed {files} files of {n}")
            rates.append(rate)
    med = statistics.median
    ratios = {w: med(x / a for x, a in zip(rates, analysis, strict=True)) for w, rates in runs.items()}
    repo = await _repository(bench, rounds)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    one, two = med(runs["1"]), med(runs["2"])
    return [
        Row(
            "indexing",
            f"codebase_indexing of a {n:,}-file tree",
            med(runs["auto"]),
            "files/s",
            anchor=med(analysis),
            anchor_unit="files/s",
            anchor_desc="the same per-file analysis (read, sha256, lines, tree-sitter/ast symbols) in a bare loop",
            ratio=ratios["auto"],
            target=">= 0.8x bare single-process loop, scaling with cores",
            met=ratios["auto"] >= 0.8,
            stats={
                "runs": runs["auto"],
                "one_worker": runs["1"],
                "two_workers": runs["2"],
                "bare_analysis": analysis,
                "ratios": ratios,
                "bare_list_sha256": bare,
                "files": n,
                "cores": cores,
                "repository": repo,
            },
            note=f"{cores} cores; median of {rounds} rounds, each against the bare loop of the same round; engine start"
            f" and stop included; in one thread {one:,.0f} files/s ({ratios['1']:.2f}x), in 2 worker processes"
            f" {two:,.0f} files/s ({ratios['2']:.2f}x; {two / one:.2f}x one thread); list + sha256 alone"
            f" {med(bare):,.0f} files/s; this repository ({repo['files']} files): {repo['rate']:,.0f} files/s",
        )
    ]


async def _repository(bench: Bench, repeats: int) -> dict[str, Any]:
    """codebase_indexing of this repository against the bare loop over git's file list (the smoke check: of
    its scripts/ only, the same steps over a tenth of the files)."""
    root = REPO / "scripts" if bench.smoke else REPO
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True, check=False
    ).stdout.split()
    listing = [f for f in listing if (root / f).is_file()]
    bare = [len(listing) / _bare_loop(root, listing)[0] for _ in range(repeats + 1)][1:]
    rates = [(await _index_rate(bench, root, f"repo-{r}"))[0] for r in range(repeats)]
    return {"files": len(listing), "rate": statistics.median(rates), "bare": statistics.median(bare), "runs": rates}


def make_backup_tree(root: Path, big: int, big_mb: int, small: int) -> int:
    """``big`` files of ``big_mb`` MB and ``small`` files of 1-21 KB; the total bytes."""
    block = os.urandom(MB)
    (root / "big").mkdir(parents=True)
    for j in range(big):
        with open(root / "big" / f"b{j}.bin", "wb") as fh:
            for i in range(big_mb):
                fh.write(i.to_bytes(4, "big") + block[4:])
    for i in range(small):
        d = root / f"s{i // 250:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_bytes(block[: 1000 + (i * 37) % 20000])
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _cp(src: Path, dst: Path) -> tuple[float, float]:
    """Seconds of ``cp -a`` alone and of ``cp -a`` then sync (the data on disk, as a backup reports it)."""
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    plain = time.perf_counter() - t0
    os.sync()
    return plain, time.perf_counter() - t0


async def bench_backup(bench: Bench) -> list[Row]:
    """backup_operation (verify on) of large and small files against ``cp -a`` of the same tree."""
    big, big_mb, small = bench.pick((1, 16, 300), (2, 100, 5000))
    repeats = bench.pick(1, 3)
    src = bench.root / "src"
    total = make_backup_tree(src, big, big_mb, small)
    cp_sync: list[float] = []
    cp_plain: list[float] = []
    runs: list[float] = []
    # Nothing deleted until the end, and cp and the backup take turns going first: on a file system without a
    # journal (ext4 here), each file made steps over the inodes freed in the last minutes, so deleting one copy
    # before making the next (as this did) made every create of the one run later slower (40-657 MB/s floors).
    for r in range(repeats):
        for cp_turn in (True, False) if r % 2 == 0 else (False, True):
            if cp_turn:
                plain, synced = _cp(src, bench.root / f"cp-{r}")
                cp_plain.append(total / plain)
                cp_sync.append(total / synced)
                continue
            dst = bench.root / f"backup-{r}"
            os.sync()
            t0 = time.perf_counter()
            res: dict[str, Any] = await run_op(bench, "backup_operation", {"source": str(src), "destination": str(dst)})
            runs.append(total / (time.perf_counter() - t0))
            if res["bytes"] != total or res["failures"]:
                raise RuntimeError(f"backup copied {res['bytes']} of {total} bytes, {res['failures']} failures")
    for r in range(repeats):
        shutil.rmtree(bench.root / f"cp-{r}")
        shutil.rmtree(bench.root / f"backup-{r}")
    rate, anchor = statistics.median(runs), statistics.median(cp_sync)
    return [
        Row(
            "backup",
            f"backup_operation of {big} x {big_mb} MB + {small:,} small files, verified",
            rate / MB,
            "MB/s",
            anchor=anchor / MB,
            anchor_unit="MB/s",
            anchor_desc=f"cp -a then sync ({statistics.median(cp_plain) / MB:,.0f} MB/s without the sync)",
            ratio=rate / anchor,
            target=">= 0.5x cp -a",
            met=rate / anchor >= 0.5,
            stats={"runs": runs, "cp_sync": cp_sync, "cp": cp_plain, "bytes": total},
            note="the backup hashes every byte once (the manifest's sha256), compares every block written with what"
            " was read, and has every file on disk before it counts as done; cp -a does neither, so its anchor"
            " includes one sync",
        )
    ]


def _scan_loop(root: Path) -> float:
    """The anchor: the scanner's own per-file work (read, decode, every rule) in a bare loop; seconds."""
    from engine.operations._scan_rules import select_rules
    from engine.operations.security_scan import scan_file

    selected = select_rules([])
    t0 = time.perf_counter()
    for d, _, fs in os.walk(root):
        for f in fs:
            scan_file(root, os.path.relpath(os.path.join(d, f), root), selected, 5 << 20)
    return time.perf_counter() - t0


async def bench_scan(bench: Bench) -> list[Row]:
    """security_scan of the same kind of generated tree as indexing (4,000 files; 200 with --quick: bandit
    and detect-secrets cost about 100 times the hashing per file)."""
    n = bench.pick(200, 4000)
    repeats = bench.pick(1, 3)
    tree = bench.root / "scan-tree"
    make_source_tree(tree, n)
    passes = 1 if bench.smoke else repeats + 1  # the smoke check needs no warm pass: it wants the figure, not its time
    bare = [n / _scan_loop(tree) for _ in range(passes)][-repeats:]  # the first pass warms the page cache
    runs: dict[str, list[float]] = {}
    for workers in bench.pick(("",), ("", "1", "2")):
        rates = runs.setdefault(workers or "auto", [])
        for r in range(repeats):
            with _workers(workers):
                t0 = time.perf_counter()
                out = str(bench.root / f"scan-{workers or 'auto'}-{r}")
                res = await run_op(bench, "security_scan", {"root": str(tree), "output": out})
                rates.append(res["files"] / (time.perf_counter() - t0))
            if res["files"] != n:
                raise RuntimeError(f"scanned {res['files']} files of {n}")
    rate, anchor = statistics.median(runs["auto"]), statistics.median(bare)
    one, two = statistics.median(runs.get("1", runs["auto"])), statistics.median(runs.get("2", runs["auto"]))
    return [
        Row(
            "indexing",
            f"security_scan of a {n:,}-file tree",
            rate,
            "files/s",
            anchor=anchor,
            anchor_unit="files/s",
            anchor_desc="the same scan_file work (bandit, detect-secrets, own rules) in a bare loop",
            ratio=rate / anchor,
            target=">= 0.8x bare single-process loop, scaling with cores",
            met=rate / anchor >= 0.8,
            stats={"runs": runs, "bare": bare, "files": n},
            note=f"through the engine: listing, progress, checkpoints, JSON and SARIF reports included; in one"
            f" thread {one:,.0f} files/s, in 2 worker processes {two:,.0f} files/s ({two / one:.2f}x)",
        )
    ]


async def _bare_output_loop(argv: list[str], log: Path) -> tuple[int, float]:
    """The anchor: the same command's output read line by line by a bare asyncio loop, each line written
    to a JSON-lines file as a log record (the least a command runner that keeps its output does)."""
    import asyncio
    import json

    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    n = 0
    with log.open("w") as f:
        while line := await proc.stdout.readline():
            f.write(json.dumps({"ts": time.time(), "level": "info", "message": line.decode().rstrip("\n")}) + "\n")
            n += 1
    await proc.wait()
    return n, time.perf_counter() - t0


async def bench_command(bench: Bench) -> list[Row]:
    """The command operation following a chatty command (every line logged, counted, a sign of life).

    The target: a line costs the engine at most about three times what the bare loop spends on it (a
    validated record, progress, an event, the record's JSON on disk). A readline task and a timed wait
    per line made it 0.12x; reading 64 KB at a time, 0.33-0.48x here (--quick, beside other work)."""
    lines, repeats = bench.pick(20_000, 200_000), bench.pick(1, 3)
    argv = ["seq", str(lines)]
    bare: list[float] = []
    runs: list[float] = []
    for r in range(repeats):
        n, secs = await _bare_output_loop(argv, bench.root / f"bare-{r}.jsonl")
        bare.append(n / secs)
        t0 = time.perf_counter()
        res: dict[str, Any] = await run_op(bench, "command", {"argv": argv})
        runs.append(lines / (time.perf_counter() - t0))
        if res["lines"] != lines or n != lines:
            raise RuntimeError(f"command counted {res['lines']} lines, the bare loop {n}, of {lines}")
    rate, anchor = statistics.median(runs), statistics.median(bare)
    return [
        Row(
            "command",
            f"command operation, {lines:,} lines of output",
            rate,
            "lines/s",
            anchor=anchor,
            anchor_unit="lines/s",
            anchor_desc="asyncio readline loop writing each line as a JSON log record",
            ratio=rate / anchor,
            target=">= 0.3x the bare loop",
            met=rate / anchor >= 0.3,
            stats={"runs": runs, "bare": bare, "lines": lines},
            note="each line becomes a log record in the store, counts as progress and restarts the stall clock;"
            " through a real engine, submit to completed",
        )
    ]
