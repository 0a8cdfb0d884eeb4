"""File names whose bytes are not UTF-8 (lone surrogates in Python) in everything a handler hands the engine.

Before: such a name in a progress step was stored escaped and then refused by every reader (``outlast ls``
failed for the whole store); in an item key or the checkpoint state it failed the checkpoint, so the
operation failed at every resume; in a log line it lost the batch of logs; in a result the completed
operation was left running and found interrupted (run twice on resume); in params it was an internal error.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from engine import (
    Engine,
    ItemFailed,
    OperationContext,
    OperationSpec,
    Settings,
    Status,
    load_settings,
    open_store,
    operation,
)
from engine.text import bad_text, clean, clean_json, clean_json_text, json_bytes, stored_name
from tests.fixtures_engine import collect, until
from tests.fixtures_redis import RedisServer

NAME = os.fsdecode(b"caf\xe9.py")  # what os.listdir gives for that file
SHOWN = "caf\\xe9.py"  # how it is stored where text is needed, and shown

# Any str Python can hold, lone surrogates included (hypothesis leaves them out by default).
TEXT = st.text(st.characters(codec=None, categories=None), max_size=20)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
STRICT = TypeAdapter(object)  # pydantic's JSON parser: what reads records back, and refuses lone surrogates


@given(JSONISH)
@settings(max_examples=300, deadline=None)
def test_exact_json_comes_back_unchanged_and_clean_json_is_strict_json(value: object) -> None:
    assert json.loads(json_bytes(value)) == value  # item keys and checkpoint state: exactly
    cleaned = clean_json(value)
    assert bad_text(cleaned, "v") is None
    text = clean_json_text(json.dumps(value, ensure_ascii=False))
    assert STRICT.validate_json(text.encode()) == cleaned  # what a record holds: valid for every reader
    assert (bad_text(value, "v") is None) == (cleaned == value)


@given(TEXT)
@settings(max_examples=300, deadline=None)
def test_clean_is_identity_on_text_and_makes_text_of_anything(s: str) -> None:
    c = clean(s)
    c.encode()  # never raises
    try:
        s.encode()
    except UnicodeEncodeError:
        assert c != s
    else:
        assert c is s


def test_a_file_names_byte_is_shown_as_its_hex() -> None:
    assert clean(NAME) == SHOWN
    assert bad_text({"a": [1, {"b": NAME}]}, "params") == "params.a[1].b"
    assert bad_text({NAME: 1}, "params") == f"params.{SHOWN}"


def unstored(t: str) -> str:
    """The name ``stored_name`` made ``t`` from: that there is one shows that no two names share a key."""
    out, i = [], 0
    while i < len(t):
        if t[i] != "\\":
            out.append(t[i])
            i += 1
        elif t[i + 1] == "\\":
            out.append("\\")
            i += 2
        elif t[i + 1] == "x":
            out.append(chr(0xDC00 + int(t[i + 2 : i + 4], 16)))
            i += 4
        else:
            assert t[i + 1] == "u", t
            out.append(chr(int(t[i + 2 : i + 6], 16)))
            i += 6
    return "".join(out)


@given(TEXT)
@settings(max_examples=300, deadline=None)
def test_stored_name_is_text_one_key_per_name_and_ordinary_names_as_they_are(s: str) -> None:
    k = stored_name(s)
    k.encode()  # never raises: a TEXT column takes it
    assert unstored(k) == s  # injective
    assert (k is s) == ("\\" not in s and clean(s) is s)


def test_a_byte_and_its_written_form_are_two_stored_names() -> None:
    """``clean`` shows the byte 0xff and the four characters ``\\xff`` alike; as keys they differ."""
    byte, written = os.fsdecode(b"a\xff.py"), "a\\xff.py"
    assert clean(byte) == clean(written) == "a\\xff.py"
    assert stored_name(byte) == "a\\xff.py" and stored_name(written) == "a\\\\xff.py"
    assert stored_name(NAME) == SHOWN and stored_name("caf\u00e9.py") == "caf\u00e9.py"


class Params(BaseModel):
    stop_at: int = -1


@operation("test_undecodable", params=Params)
async def undecodable(ctx: OperationContext, p: Params) -> dict:
    """Every way a handler hands text to the engine, with a file name that is not UTF-8 in each."""
    keys = ["a.py", NAME, "z.py"]
    ctx.state.setdefault("seen", [])
    async for i, key in ctx.items(enumerate(keys), key=lambda ik: ik[1]):
        ctx.state["seen"].append(key)
        ctx.progress(step=f"at {key}", message=key)
        ctx.log.info(f"reading {key}", path=key)
        if key == NAME and not ctx.resuming:
            ctx.fail(key, f"cannot read {key}")
            continue
        while i == p.stop_at and not ctx.resuming:  # held inside the last item until paused
            ctx.progress(step=f"holding after {NAME}")
            await ctx.checkpoint(now=True)  # raises OperationStopped once the pause is asked for
            await asyncio.sleep(0.02)
    return {"seen": ctx.state["seen"], NAME: NAME}


@pytest.fixture(params=["local", "redis"])
async def any_engine(request: pytest.FixtureRequest, state_dir: Path) -> AsyncIterator[Callable[[], Engine]]:
    s: Settings = load_settings(state_dir=state_dir, plugins=["tests.test_engine_undecodable"], grace_period=2.0)
    if request.param == "local":
        yield lambda: Engine(store=open_store(s.state_dir), settings=s)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        yield lambda: Engine(store=open_store(server.url, namespace="u", checkpoint_mirror=None), settings=s)


async def test_names_that_are_not_utf8_go_through_every_path_and_resume_exactly(
    any_engine: Callable[[], Engine],
) -> None:
    async with any_engine() as engine:
        failed = collect(engine, (ItemFailed,))
        op = await engine.submit(OperationSpec(type="test_undecodable", params={"stop_at": 2}))

        async def stored_step() -> str | None:
            return (await engine.store.get(op.id)).progress.step

        # The step naming the file is stored, and the record (and so the listing) reads back.
        await until(lambda: _is(stored_step, f"holding after {SHOWN}"))
        assert [o.id for o in await engine.list()] == [op.id]
        await engine.pause(op.id)
        paused = await engine.wait(op.id, timeout=20)
        assert paused.status is Status.PAUSED, paused.status_message
        failures = await engine.store.item_failures(op.id)
        assert [(f.key, f.error) for f in failures] == [(SHOWN, f"cannot read {SHOWN}")]
        assert [(e.key, e.error) for e in failed] == [(SHOWN, f"cannot read {SHOWN}")]  # as every face shows it
        loaded = await engine.store.load_checkpoint(op.id)
        assert loaded is not None
        cp, ledger = loaded
        assert ledger.done == {"a.py"} and set(ledger.failed) == {NAME}  # the exact key, for the resume
        assert cp.state["seen"] == ["a.py", NAME, "z.py"]  # the state exactly as the handler had it

        await engine.resume(op.id)
        final = await engine.wait(op.id, timeout=20)
        assert final.status is Status.COMPLETED, final.status_message
        # a.py not again (done); the failed item and z.py (not done at the pause) again; the result as text.
        assert final.result == {"seen": ["a.py", SHOWN, "z.py", SHOWN, "z.py"], SHOWN: SHOWN}
        assert await engine.store.item_failures(op.id) == []  # done now: no longer listed as failed
        records, _ = await engine.logs(op.id)
        reading = [r for r in records if r.message == f"reading {SHOWN}"]
        assert len(reading) == 2 and all(r.fields == {"path": SHOWN} for r in reading)
        assert [o.id for o in await engine.list()] == [op.id]


async def _is(read: Callable[[], Awaitable[object]], want: object) -> bool:
    return await read() == want


def test_params_that_are_not_utf8_are_one_line_exit_2_and_store_nothing(state_dir: Path, tmp_path: Path) -> None:
    root = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(root)
    env = {**os.environ, "OUTLAST_STATE_DIR": str(state_dir)}
    for argv in (
        [b"submit", b"codebase_indexing", b"-p", b"root=" + root],
        [b"submit", b"demo", b"--name", b"n\xe9"],
        [b"submit", b"demo", b"--params-json", b'{"items": 3, "x\xe9": 1}'],
    ):
        res = subprocess.run([os.fsencode(sys.executable), b"-m", b"engine.cli", *argv], env=env, capture_output=True)
        err = res.stderr.decode()
        assert res.returncode == 2, err
        assert err.count("\n") == 1 and "\\xe9" in err and "not text" in err, err
    listed = subprocess.run([sys.executable, "-m", "engine.cli", "ls", "--json"], env=env, capture_output=True)
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr


def test_json_output_keeps_such_a_name_exactly_and_a_strict_utf8_stream_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``outlast --json checkpoints ID --full`` prints the state exactly. Under a UTF-8 locale other than
    C.UTF-8 Python's stdout is strict, and a lone surrogate in it was an internal error (exit 70)."""
    from engine.cli import format as fmt

    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="utf-8", errors="strict"))
    fmt.echo(fmt.dumps({"state": {NAME: [NAME]}}))
    fmt.echo(f"a line naming {NAME}")  # the last guard, for a caller that forgot to escape
    sys.stdout.flush()
    first, second = out.getvalue().decode().splitlines()  # valid UTF-8
    assert json.loads(first) == {"state": {NAME: [NAME]}}  # exactly, as Python's json reads it
    assert second == "a line naming caf\\udce9.py"


def test_a_long_value_is_shown_around_its_byte_that_is_not_utf8() -> None:
    """A value longer than the line shows is cut around the byte the line is about, not at its end (a deep
    path's last name was the one cut off)."""
    for value in ("/" + "d" * 120 + "/" + NAME, NAME + "e" * 120, "d" * 60 + NAME + "e" * 60):
        with pytest.raises(ValidationError) as got:
            OperationSpec(type="demo", params={"root": value})
        [shown] = re.findall(r'"([^"]*)" is not text', str(got.value))
        assert SHOWN in shown and len(shown) <= 80, shown
