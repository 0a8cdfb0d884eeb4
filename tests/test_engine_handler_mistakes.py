"""What a plugin author's first handler gets wrong says so in its operation's error, at their own line.

A handler declared without a params model read its params as a dict (``params.get("n", 5)``) and
failed with "'AnyParams' object has no attribute 'get' (at main.py:1110)": the name of a class the
author never wrote and a line of pydantic's. A plain ``for`` over ``ctx.items()`` said "'_Items' object
is not iterable".
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from engine import Engine, OperationContext, OperationFailed, OperationSpec, Status, operation


@operation("test_dict_params")
async def dict_params(ctx: OperationContext, params: Any) -> dict:
    return {
        "n": params["n"],
        "default": params.get("missing", 5),
        "has": ["n" in params, "missing" in params],
        "as_dict": dict(params),
        "spread": json.dumps({**params}, sort_keys=True),
        "attribute": params.n,
    }


@operation("test_bad_key")
async def bad_key(ctx: OperationContext, params: Any) -> None:
    params["nope"]


@operation("test_library_raises")
async def library_raises(ctx: OperationContext, params: Any) -> None:
    json.loads(params.text)  # raises inside the json module


@operation("test_sync_for")
async def sync_for(ctx: OperationContext, params: Any) -> None:
    for _ in ctx.items(range(3)):  # type: ignore[attr-defined]
        pass


async def run(engine: Engine, type_: str, **params: Any) -> Any:
    op = await engine.submit(OperationSpec(type=type_, params=params))
    return await engine.wait(op.id, timeout=30)


async def test_params_without_a_model_read_as_a_mapping(engine: Engine) -> None:
    final = await run(engine, "test_dict_params", n=3, s="x")
    assert final.status is Status.COMPLETED, final.error
    assert final.result == {
        "n": 3,
        "default": 5,
        "has": [True, False],
        "as_dict": {"n": 3, "s": "x"},
        "spread": '{"n": 3, "s": "x"}',
        "attribute": 3,
    }
    missing = await run(engine, "test_bad_key", n=1)
    assert missing.status is Status.FAILED
    assert missing.error.startswith("KeyError: 'nope' (at test_engine_handler_mistakes.py:"), missing.error


async def test_an_error_raised_in_a_library_names_the_handlers_line(engine: Engine) -> None:
    final = await run(engine, "test_library_raises", text="{not json")
    assert final.status is Status.FAILED
    line = library_raises.__code__.co_firstlineno + 2
    assert final.error.startswith("JSONDecodeError: Expecting property name"), final.error
    assert final.error.endswith(f"(at test_engine_handler_mistakes.py:{line})"), final.error


async def test_a_plain_for_over_items_says_async_for(engine: Engine) -> None:
    final = await run(engine, "test_sync_for")
    assert final.status is Status.FAILED
    line = sync_for.__code__.co_firstlineno + 2
    assert final.error == (
        "TypeError: ctx.items() is iterated with `async for`, not `for` (its items are checkpointed between)"
        f" (at test_engine_handler_mistakes.py:{line})"
    )


async def test_a_spec_changed_after_it_was_built_is_checked_again_and_stores_nothing(engine: Engine) -> None:
    """An ``OperationSpec`` is validated when built; one changed afterwards (a field assigned, its params
    dict edited) was queued as it stood, past every check: a name with an escape sequence, a priority
    no scheduler knows, params that are not JSON."""
    from engine import InvalidInput

    before = len(await engine.list())
    changes: list[tuple[str, Any]] = [
        ("name", "\x1b]0;owned\x07"),
        ("priority", "urgent"),
        ("total_items", -5),
        ("tags", {"k": "a\nb"}),
    ]
    for field, value in changes:
        spec = OperationSpec(type="demo", params={"items": 1})
        setattr(spec, field, value)
        try:
            await engine.submit(spec)
        except InvalidInput as e:
            assert str(e).startswith("operation spec: "), e
        else:
            raise AssertionError(f"a spec whose {field} was set to {value!r} after it was built was queued")
    spec = OperationSpec(type="demo", params={"items": 1})
    spec.params["items"] = object()
    try:
        await engine.submit(spec)
    except InvalidInput as e:
        assert "items" in str(e), e
    else:
        raise AssertionError("a spec whose params dict was edited after it was built was queued")
    assert len(await engine.list()) == before  # nothing stored
    ok = OperationSpec(type="demo", params={"items": 1}, name="kept")
    op = await engine.submit(ok)
    ok.params["items"] = 99  # the caller's later edit is not the queued operation's
    assert (await engine.get(op.id)).params["items"] == 1 and op.name == "kept"


@operation("test_says_why")
async def says_why(ctx: OperationContext, params: Any) -> None:
    raise OperationFailed(f"no such table {params.table!r}: create it first")


async def test_a_failure_meant_for_the_user_is_its_message_alone(engine: Engine) -> None:
    """``engine.OperationFailed``: the reason a handler gives its user, without a type or a line of code."""
    final = await run(engine, "test_says_why", table="t1")
    assert final.status is Status.FAILED and final.error == "no such table 't1': create it first", final.error


@operation("test_says_why_in_an_item")
async def says_why_in_an_item(ctx: OperationContext, params: Any) -> dict:
    ran = []
    async for i in ctx.items(range(10), key=str):
        ran.append(i)
        if i == 3:
            raise OperationFailed("the source database is gone; nothing more can be done")
    return {"ran": ran}


async def test_a_failure_meant_for_the_user_raised_in_an_item_fails_the_operation(engine: Engine) -> None:
    """Raised in an item's body it was taken as that item's failure: logged "item failed: 3", the loop went on
    and the operation completed with all ten items run, though the handler said nothing more could be done."""
    final = await run(engine, "test_says_why_in_an_item")
    assert final.status is Status.FAILED, (final.status, final.result)
    assert final.error == "the source database is gone; nothing more can be done", final.error
    assert final.progress.done == 3 and final.progress.failed == 0, final.progress


@operation("test_swallows_too_many_failures")
async def swallows_too_many_failures(ctx: OperationContext, params: Any) -> dict:
    async for i in ctx.items(range(8)):
        try:
            try:
                raise ValueError(f"bad {i}")
            except ValueError as e:
                ctx.fail(str(i), e)  # raises TooManyFailures past the threshold
        except Exception:  # "log it, go on with the next file"
            pass
    return {"failures": ctx.failures}


async def test_a_handler_that_catches_too_many_failures_and_returns_fails(engine: Engine) -> None:
    """It completed with every item failed, past the threshold that was to fail it."""
    op = await engine.submit(OperationSpec(type="test_swallows_too_many_failures", profile={"failure_threshold": 2}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED, final.result
    assert final.error is not None and final.error.startswith("8 item failures exceed failure_threshold (2)"), (
        final.error
    )
    said = [r.message for r in (await engine.store.read_logs(op.id))[0] if "caught TooManyFailures" in r.message]
    assert said == ["the handler caught TooManyFailures and returned: failed, not completed"], said


_LEFT_RUNNING: list[Any] = []
_COMPLETED: list[Any] = []


@operation("test_leaves_a_logging_task")
async def leaves_a_logging_task(ctx: OperationContext, p: Any) -> dict:
    import asyncio

    completed = asyncio.Event()
    _COMPLETED.append(completed)

    async def later() -> None:
        await completed.wait()  # the test saw the operation completed: a line logged by timing raced the settle
        for i in range(20):
            await asyncio.sleep(0.02)
            ctx.log.info("late line %d", i)

    ctx.log.info("copied %s of %d", "3", 3)  # as a logger is called: a TypeError, the item's failure
    ctx.log.warning("50% done", "now")  # args that do not fit the message: written after it, not lost
    _LEFT_RUNNING.append(asyncio.get_running_loop().create_task(later()))
    return {}


async def test_logging_style_args_are_formatted_and_a_context_kept_past_the_end_writes_no_line(
    engine: Engine,
) -> None:
    """``ctx.log.info("copied %s", path)``, as a logger is called, raised TypeError (an item's failure); and a
    task the handler left running kept adding lines to the log of an operation that had completed, stamped
    after it completed. Now the arguments are formatted as logging does, and a context whose attempt is over
    writes nothing more."""
    import asyncio

    op = await engine.submit(OperationSpec(type="test_leaves_a_logging_task"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    _COMPLETED[-1].set()
    await asyncio.gather(*_LEFT_RUNNING)
    await engine.log_buffer.flush()
    messages = [r.message for r in (await engine.store.read_logs(op.id))[0]]
    assert "copied 3 of 3" in messages and "50% done now" in messages, messages
    assert not [m for m in messages if m.startswith("late line")], messages


class DefaultOfAnotherType(BaseModel):
    depth: int = "all"  # type: ignore[assignment]  # pydantic does not check a default
    n: int | str = 3  # a union's value dumps as it is, with no warning


@operation("test_default_of_another_type", params=DefaultOfAnotherType)
async def default_of_another_type(ctx: OperationContext, p: DefaultOfAnotherType) -> dict:
    return {"depth": p.depth}


async def test_a_params_default_of_another_type_is_refused_at_submit(
    engine: Engine, capfd: pytest.CaptureFixture[str]
) -> None:
    """A params model whose default does not fit its own field was stored, with pydantic's serializer warning
    and a line of its source on stderr, and every such operation failed when it ran ("depth: Input should be
    a valid integer"), later, on a worker. The submit now refuses it in one line naming the field."""
    from engine import InvalidInput

    with pytest.raises(InvalidInput, match=r"^test_default_of_another_type params: depth: Input should be a valid"):
        await engine.submit(OperationSpec(type="test_default_of_another_type"))
    assert await engine.list() == []  # nothing stored
    assert "PydanticSerializationUnexpectedValue" not in capfd.readouterr().err
    final = await run(engine, "test_default_of_another_type", depth=2, n="x")  # given: what the type holds
    assert final.status is Status.COMPLETED and final.result == {"depth": 2}, final.error
