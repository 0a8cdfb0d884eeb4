"""Numbers given to the built-in operations' numeric params: not finite (nan, inf, 1e309), negative zero, out
of bounds. Each refusal names the param, the value as typed and what is allowed, on one line; nothing is
stored. ``-p seconds=nan`` was refused as "Input should be less than or equal to 3600" (nan compares false
with every bound, and the first checked failed), and ``-p seconds=1e309`` as "inf is not a finite number".
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Engine, InvalidInput
from engine.cli.common import parse_value
from engine.profiles import error_message
from engine.registry import handlers
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, in_process, nothing_stored


def _numeric_fields() -> list[tuple[str, str, bool, dict[str, float]]]:
    """(type, field, whole numbers only, its bounds) of every numeric param of a built-in with bounds."""
    out = []
    for name, spec in handlers().items():
        for field, info in spec.params.model_fields.items():
            text = str(info.annotation)
            if ("float" not in text and "int" not in text) or "list" in text or "dict" in text:
                continue
            bounds = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
            if bounds:
                out.append((name, info.alias or field, "float" not in text, bounds))
    return out


FIELDS = _numeric_fields()
NOT_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e309", "-1e309", "1e999999", " nan "]
TEXTS = st.one_of(
    st.sampled_from([*NOT_FINITE, "-0", "-0.0", "0", "1e308", "-1", "0.5"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)


def _within(x: float, bounds: dict[str, float]) -> bool:
    return (
        x >= bounds.get("ge", -math.inf)
        and x > bounds.get("gt", -math.inf)
        and x <= bounds.get("le", math.inf)
        and x < bounds.get("lt", math.inf)
    )


def test_every_bounded_numeric_param_of_the_builtins_is_covered() -> None:
    assert ("demo", "seconds", False, {"ge": 0, "le": 3600}) in FIELDS
    assert len({t for t, *_ in FIELDS}) >= 10, FIELDS


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), text=TEXTS)
def test_a_number_for_a_builtin_param_is_taken_or_refused_naming_the_value_and_the_bounds(
    field: tuple[str, str, bool, dict[str, float]], text: str
) -> None:
    type_, name, whole, bounds = field
    model = handlers()[type_].params
    value = parse_value(text)
    if isinstance(value, float):
        assert math.isfinite(value), (text, value)  # kept as typed: the model says what is wrong with it
    errors: list[Any] = []
    try:
        model.model_validate({name: value})
    except Exception as e:  # the ValidationError of the other (required) params, or of this one
        errors = [err for err in getattr(e, "errors", list)() if err["loc"] == (name,)]
    x = float(text)
    if whole and isinstance(value, float):  # a float past 64 bits is no count (the spec refuses ints past them)
        bounds = {**bounds, "lt": min(bounds.get("lt", math.inf), 2.0**63)}
    if not math.isfinite(x) and ("nan" in text.lower() or "inf" in text.lower()):
        assert errors, (text, "accepted")
        message = error_message(errors[0], model)
        assert message.startswith(f"{text.strip()} is not a finite number (allowed: "), message
        assert name in message, message
    elif not math.isfinite(x):  # 1e309: a number, past what a float holds
        assert errors, (text, "accepted")
        message = error_message(errors[0], model)
        assert message.startswith(f"{text.strip()} is out of range (allowed: "), message
        assert name in message, message
    elif not _within(x, bounds):
        assert errors, (text, "accepted")
        message = error_message(errors[0], model)
        if not (whole and not x.is_integer()):  # 0.5 for a count: pydantic's "fractional part"
            shown, out, allowed = message.partition(" is out of range (allowed: ")
            assert out and name in allowed, message
            assert float(shown) == x, message  # as typed, or as JSON read it: 1e+308 for 1e308
    elif not whole or x.is_integer():  # -0 and -0.0 among them, where 0 is allowed
        assert not errors, (text, errors)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity", "1e309"])
def test_run_demo_with_a_seconds_that_is_not_finite_is_one_line_naming_it(cli: Cli, text: str) -> None:
    what = "is out of range" if text == "1e309" else "is not a finite number"
    bad_params_p(cli, "demo", "seconds", text, f"demo params: seconds: {text} {what}")
    assert in_process(cli, "submit", "demo", "-p", f"seconds={text}")[2].strip() == (
        f"outlast: demo params: seconds: {text} {what} (allowed: 0 <= seconds <= 3600)"
    )
    nothing_stored(cli)


def test_a_count_that_is_not_finite_or_out_of_range_is_named(cli: Cli) -> None:
    bad_params_p(cli, "demo", "items", "1e309", "items: 1e309 is out of range (allowed: 0 <= items <= 10000000)")
    bad_params_p(cli, "demo", "items", "nan", "items: nan is not a finite number (allowed: 0 <= items <= 10000000)")
    bad_params_p(cli, "demo", "items", "-1", "items: -1 is out of range (allowed: 0 <= items <= 10000000)")
    bad_params(cli, "monitoring_collection", {"interval": "nan"}, "interval: nan is not a finite number")


def bad_params_p(cli: Cli, type_: str, key: str, text: str, expect: str) -> None:
    """``outlast run TYPE -p KEY=TEXT``: exit 2, one line holding ``expect``, nothing stored."""
    code, _, err = in_process(cli, "run", type_, "-p", f"{key}={text}")
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], err
    nothing_stored(cli)


@pytest.mark.parametrize(
    ("pair", "says"),
    [
        ("max_timeout=1e999", "max_timeout: 1e999 is out of range (allowed: 0 < max_timeout <= 31622400)"),
        ("retry.jitter=nan", "retry.jitter: nan is not a finite number (allowed: 0 <= jitter <= 1)"),
        ("retry.backoff_max=1e999", "retry.backoff_max: 1e999 is out of range (allowed: 0 <= backoff_max <= "),
    ],
)
def test_a_profile_number_out_of_range_or_not_finite_names_the_bounds(cli: Cli, pair: str, says: str) -> None:
    """A nested one (``retry.``) was "allowed: a finite number", and 1e999 "not a finite number" there."""
    code, _, err = in_process(cli, "submit", "demo", "--profile", pair)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    nothing_stored(cli)


def test_true_or_false_for_a_number_is_refused_naming_it(cli: Cli) -> None:
    """``-p items=true`` ran one item and ``-p seconds=false`` none a second: pydantic takes a bool as 1 or 0.
    Every top-level number param of every built-in refuses them; a bool param still takes them."""
    bad_params_p(cli, "demo", "items", "true", "demo params: items: true is not a number")
    for type_, name, _whole, _bounds in FIELDS:
        bad_params(cli, type_, {name: False}, f"{type_} params: {name}: false is not a number")
    code, _, err = in_process(cli, "submit", "command", "-p", "command=true", "-p", "shell=true")
    assert code == 0, err


@pytest.mark.parametrize("n", [10**111, 10**400, -(10**5000)], ids=["111", "400", "-5000"])
async def test_an_integer_past_64_bits_is_invalid_input_at_any_size(engine: Engine, n: int) -> None:
    """``engine.submit`` of 10**400 raised OverflowError from the message's ``{v:.3g}``, not InvalidInput."""
    with pytest.raises(
        InvalidInput, match=r"^operation spec: params: n: -?1e\+\d+ is out of range \(\|n\| < 2\*\*63\)$"
    ):
        await engine.submit({"type": "demo", "params": {"n": n}})
    assert await engine.list_operations() == []
