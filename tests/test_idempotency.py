"""A submit sent again (a client that timed out and retried, a cron job run twice) never runs the work twice.

With an idempotency key (``OperationSpec.idempotency_key``, the ``Idempotency-Key`` header, ``outlast submit
--idempotency-key``), a submit whose key an operation of the store already has queues nothing and answers
with that operation, however many submit at once; the key is checked and taken in the same atomic step as
the record is written, in both stores; a key used for other work is refused in one line; removing the
operation frees its key. A retried POST without a key made a second operation, and the client had no way
to find the first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Engine, OperationSpec, Status, load_settings, open_store
from engine.errors import Conflict, InvalidInput
from engine.store.base import Store
from tests.fixtures_api import Server
from tests.fixtures_cli import Cli


@pytest.fixture
async def two(make_store: Callable[[], Store], tmp_path: Path) -> AsyncIterator[tuple[Engine, Engine]]:
    """Two engines on one store (two processes' worth: each its own store object), running nothing."""
    s = load_settings(state_dir=tmp_path / "state", plugins=["tests.ops_for_tests"])
    async with (
        Engine(store=make_store(), settings=s, run_queue=False) as a,
        Engine(store=make_store(), settings=s, run_queue=False) as b,
    ):
        yield a, b


def spec(key: str | None, items: int = 3) -> OperationSpec:
    return OperationSpec(type="demo", params={"items": items}, idempotency_key=key)


async def test_submits_racing_with_one_key_queue_one_operation(two: tuple[Engine, Engine]) -> None:
    a, b = two
    ops = await asyncio.gather(*(e.submit(spec("nightly-2026-12-04")) for _ in range(10) for e in (a, b)))
    assert len({op.id for op in ops}) == 1, {op.id for op in ops}
    stored = await a.list_operations()
    assert [op.id for op in stored] == [ops[0].id] and stored[0].idempotency_key == "nightly-2026-12-04"
    other = await b.submit(spec("nightly-2026-12-05"))  # another key: another operation
    assert other.id != ops[0].id and len(await a.list_operations()) == 2


async def test_a_retry_gets_the_first_operation_as_it_stands_and_a_removal_frees_the_key(
    two: tuple[Engine, Engine],
) -> None:
    a, b = two
    first = await a.submit(spec("k1"))
    await a.cancel(first.id)
    again = await b.submit(spec("k1"))
    assert again.id == first.id and again.status is Status.CANCELLED  # as it stands now: not queued again
    await a.remove(first.id)
    fresh = await b.submit(spec("k1"))
    assert fresh.id != first.id and fresh.status is Status.QUEUED
    assert [op.id for op in await a.list_operations()] == [fresh.id]


async def test_a_key_used_for_other_work_is_refused_naming_it_and_nothing_is_stored(
    two: tuple[Engine, Engine],
) -> None:
    a, _ = two
    first = await a.submit(spec("k2", items=3))
    with pytest.raises(Conflict, match=f"idempotency key 'k2' was used for operation {first.id}"):
        await a.submit(spec("k2", items=4))
    assert [op.id for op in await a.list_operations()] == [first.id]


@pytest.mark.parametrize(
    ("first", "other"),
    [
        ({"params": {"items": 1}}, {"params": {"items": 2}}),
        ({"params": {"items": 1}}, {"params": {"items": 1}, "name": "other"}),
        ({"params": {"items": 1}}, {"params": {"items": 1}, "tags": {"k": "v"}}),
        ({"params": {"items": 1}}, {"params": {"items": 1}, "timeout": 30}),
        ({"params": {"items": 1}}, {"params": {"items": 1}, "profile": {"checkpoint_interval": 9}}),
        ({"params": {"items": 1}}, {"type": "ledger", "params": {"items": 1}}),
    ],
)
async def test_the_same_key_with_another_request_is_refused(
    two: tuple[Engine, Engine], first: dict[str, Any], other: dict[str, Any]
) -> None:
    a, b = two
    made = await a.submit({"type": "demo", "idempotency_key": "k4", **first})
    with pytest.raises(Conflict, match=made.id):
        await b.submit({"type": "demo", "idempotency_key": "k4", **other})
    again, before = await b.submit_once({"type": "demo", "idempotency_key": "k4", **first, "priority": "high"})
    assert before and again.id == made.id  # the priority is not the request's: `outlast priority` changes it


def test_requests_are_compared_as_json_not_as_python_values() -> None:
    """``True == 1 == 1.0`` in Python: a request for flag=1 got the operation of flag=true back."""
    from engine.engine import _request
    from engine.models import Operation

    def op(params: dict[str, Any]) -> Operation:
        return Operation(id="06bhn0fd4tyqj", type="t", params=params, created_at=1, queued_at=1, updated_at=1)

    assert _request(op({"flag": True})) != _request(op({"flag": 1})) != _request(op({"flag": 1.0}))
    assert _request(op({"a": 1, "b": [True]})) == _request(op({"b": [True], "a": 1}))  # key order is no difference


async def test_submits_racing_a_removal_of_the_keys_operation_get_one_new_operation(
    two: tuple[Engine, Engine],
) -> None:
    a, b = two
    for round_ in range(5):
        first = await a.submit(spec(f"k5-{round_}"))
        await a.cancel(first.id)
        results = await asyncio.gather(
            a.remove(first.id), *(e.submit(spec(f"k5-{round_}")) for _ in range(4) for e in (a, b))
        )
        ids = {op.id for op in results[1:]}  # none refused as another request: they are the same one
        left = [op.id for op in await a.list_operations() if op.idempotency_key == f"k5-{round_}"]
        # Every submit got the removed one (all came before the removal) or the one new operation.
        assert len(left) <= 1 and ids <= {first.id, *left} and (ids - {first.id}) == set(left) - {first.id}, (ids, left)


async def test_no_key_is_no_check(two: tuple[Engine, Engine]) -> None:
    a, _ = two
    ids = {(await a.submit(spec(None))).id for _ in range(3)}
    assert len(ids) == 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(max_size=300))
def test_any_text_is_a_key_or_one_line_naming_what_is_wrong(key: str) -> None:
    try:
        got = OperationSpec(type="demo", idempotency_key=key).idempotency_key
    except ValueError as e:  # pydantic's ValidationError, from InvalidInput in the validator
        text = str(e)
        assert "idempotency_key" in text and ("empty" in text or "limit" in text or "printable" in text), text
        assert "idempotency key" not in text  # the field is named once
    else:
        assert got == key and 1 <= len(key) <= 255 and key.isascii() and key.isprintable() and " " not in key


def test_check_is_one_line() -> None:
    from engine.models import check_idempotency_key

    for bad, why in (("", "empty"), ("a b", "printable"), ("x" * 256, "limit"), ("é", "printable")):
        with pytest.raises(InvalidInput, match=why):
            check_idempotency_key(bad)


def test_the_api_answers_a_request_sent_again_with_the_first_operation(observer: Server) -> None:
    body = {"type": "demo", "params": {"items": 2}}
    first = observer.http.post("/api/operations", json=body, headers={"Idempotency-Key": "req-1"})
    assert first.status_code == 202, first.text
    again = observer.http.post("/api/operations", json=body, headers={"Idempotency-Key": "req-1"})
    assert again.status_code == 202 and again.json() == first.json(), again.text
    assert again.headers["Location"] == first.headers["Location"]
    # The seed's typed endpoint, the key in the body: the same rule.
    typed = {"params": {"root": str(Path(__file__).parent)}, "idempotency_key": "req-2"}
    one = observer.http.post("/api/operations/codebase/index", json=typed)
    two = observer.http.post("/api/operations/codebase/index", json=typed)
    assert one.status_code == 202 and two.json()["operation_id"] == one.json()["operation_id"], two.text
    other = observer.http.post(
        "/api/operations", json={**body, "params": {"items": 3}}, headers={"Idempotency-Key": "req-1"}
    )
    assert other.status_code == 409 and first.json()["operation_id"] in other.json()["detail"], other.text
    for bad in ("", "a b", "x" * 300):
        r = observer.http.post("/api/operations", json=body, headers={"Idempotency-Key": bad})
        assert r.status_code == 422 and r.json()["detail"].startswith("Idempotency-Key header: "), (bad, r.text)
    r = observer.http.post("/api/operations", json=body, headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    assert r.status_code == 422 and "sent 2 times" in r.json()["detail"], r.text
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    r = observer.http.post("/api/operations", json={**body, "idempotency_key": "x"}, headers={"Idempotency-Key": "y"})
    assert r.status_code == 422 and "different keys" in r.json()["detail"], r.text
    got = observer.http.get(first.headers["Location"]).json()
    assert got["idempotency_key"] == "req-1"


def test_outlast_submit_with_a_key_prints_the_first_operation(cli: Cli) -> None:
    args = ("submit", "demo", "-p", "items=2", "--idempotency-key", "cron-0400")
    first, again = cli.here(*args), cli.here(*args)
    assert first.returncode == 0 and again.stdout == first.stdout, (first, again)
    assert first.stderr == "" and again.stderr.strip() == (
        f"submitted before with this idempotency key: {first.stdout.strip()} is queued; nothing queued"
    ), again.stderr
    refused = cli.here("submit", "demo", "-p", "items=5", "--idempotency-key", "cron-0400")
    assert refused.returncode == 7 and first.stdout.strip() in refused.stderr, refused
    assert len(refused.stderr.strip().splitlines()) == 1
    bad = cli.here("submit", "demo", "--idempotency-key", "has space")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad
    assert "idempotency_key: printable ASCII characters only, no spaces" in bad.stderr, bad.stderr
    listed = json.loads(cli.here("ls", "--json").stdout)
    assert [op["id"] for op in listed] == [first.stdout.strip()]


async def test_a_key_whose_operation_an_older_version_removed_is_free(tmp_path: Path) -> None:
    """A version before keys removes an operation and leaves its key's row: the key names nothing, so a
    submit with it is new work, not refused for ever."""
    import sqlite3

    s = load_settings(state_dir=tmp_path / "state", plugins=["tests.ops_for_tests"])
    async with Engine(store=open_store(s.state_dir), settings=s, run_queue=False) as e:
        first = await e.submit(spec("k3"))
    db = sqlite3.connect(s.state_dir / "outlast.db")
    with db:  # what the older version's delete leaves: the record gone, the key's row kept
        db.execute("DELETE FROM operations WHERE id=?", (first.id,))
    db.close()
    async with Engine(store=open_store(s.state_dir), settings=s, run_queue=False) as e:
        fresh = await e.submit(spec("k3"))
        assert fresh.id != first.id and [op.id for op in await e.list_operations()] == [fresh.id]
