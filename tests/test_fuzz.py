"""Fuzzing: money parsers and JSON decoding never fail in an undocumented way."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spendguard as sg
from spendguard._answer import NOT_JSON, Secret, read
from spendguard._money import (
    MAX_MAGNITUDE,
    MIN_MAGNITUDE,
    format_amount,
    parse_dollars,
    parse_number,
    to_amount,
)
from spendguard.testing import ProviderSimulator

H3D = "GET /api/v2/check_balance"
BALANCE = "GET /v1/credits/balance"
CHECK = "POST /v1/credits/check"

MONEYISH = st.text(alphabet=" \t\n-$,.0123456789eE+_", max_size=40)
"""Text made of what dollar strings are made of, so that near-misses are common."""

ANY_TEXT = st.one_of(MONEYISH, st.text(max_size=40))

DECIMALS = st.decimals(allow_nan=True, allow_infinity=True)

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**14, max_value=10**30),
    st.floats(),
    DECIMALS,
    ANY_TEXT,
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

MONEY = st.decimals(
    min_value=-(10**12), max_value=10**12, allow_nan=False, allow_infinity=False, places=6
)


MESSAGE_LIMIT = 600
"""Messages quote at most 40 characters of what they refuse (escaped, up to 10 each)."""


def _value_or_message(parse: Callable[[Any], Decimal], value: object) -> Decimal | str:
    """What ``parse`` returns, or the text of the ValueError it raises."""
    try:
        return parse(value)
    except ValueError as exc:
        return str(exc)


@given(ANY_TEXT)
def test_parse_dollars_raises_only_value_error(text: str) -> None:
    """Any text is a finite, plausible Decimal or a ValueError."""
    value = _value_or_message(parse_dollars, text)
    if isinstance(value, str):
        assert len(value) < MESSAGE_LIMIT
    else:
        assert value.is_finite()
        assert abs(value) <= MAX_MAGNITUDE


@given(ANYTHING)
def test_to_amount_raises_only_type_or_value_error(value: object) -> None:
    """Any value is a finite, non-negative Decimal, or a TypeError or ValueError."""
    try:
        amount = to_amount(value)
    except (TypeError, ValueError):
        return
    assert isinstance(amount, Decimal)
    assert amount.is_finite()
    assert 0 <= amount <= MAX_MAGNITUDE


@given(ANYTHING)
def test_parse_number_raises_only_value_error(value: object) -> None:
    """Any value is a plausible Decimal or a short ValueError; only ints and Decimals pass."""
    number = _value_or_message(parse_number, value)
    if isinstance(number, str):
        assert len(number) < MESSAGE_LIMIT
    else:
        assert isinstance(value, int | Decimal)
        assert not isinstance(value, bool)
        assert number == 0 or MIN_MAGNITUDE <= abs(number) <= MAX_MAGNITUDE


@given(MONEY)
def test_money_round_trips(value: Decimal) -> None:
    """Valid money survives every way in: dollar string, amount, JSON number."""
    text = format_amount(value, "USD")
    assert parse_dollars(text) == value
    assert parse_dollars(f"  {text}  ") == value
    assert parse_number(json.loads(str(value), parse_float=Decimal)) == value
    assert to_amount(str(abs(value))) == abs(value)
    assert to_amount(abs(value)) == abs(value)


@pytest.mark.parametrize(
    "text",
    [
        " " * 100_000 + "x",
        "-" + " " * 100_000 + "x",
        "$" + " " * 100_000 + "-x",
        "1," * 100_000,
        "9" * 100_000 + ".",
    ],
)
def test_parse_dollars_is_linear(text: str) -> None:
    """Long near-miss strings (a megabyte balance field) are refused at once."""
    started = time.perf_counter()
    with pytest.raises(ValueError, match="not a dollar amount"):
        parse_dollars(text)
    assert time.perf_counter() - started < 0.5


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    return False


@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_decode_never_raises(raw: bytes) -> None:
    """Any bytes decode to JSON without floats, or to the not-JSON marker."""
    _, body = read(raw, Secret("secret-key"))
    assert body is NOT_JSON or not _has_float(body)


JSON_NUMBERS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from(
        ["1e300", "1E+2", "5e-1", "-0", "0.000", "1e-900000", "12.5", "9" * 400, "-1e15"]
    ),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
)


def _number_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    JSON_NUMBERS.map(_number_text),
    st.text(max_size=12).map(json.dumps),
    st.sampled_from(['"$5.00"', '"-$0.50"', '"NaN"', '"OK"', '""', '"dynamic"', "NaN"]),
)


def _json_value(leaf: str | bool | None) -> str:
    if leaf is None:
        return "null"
    if isinstance(leaf, bool):
        return "true" if leaf else "false"
    return leaf


JSON_TEXT = st.recursive(
    JSON_LEAVES.map(_json_value),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.dictionaries(
            st.sampled_from(
                ["balance", "error", "message", "success", "sufficient", "balanceCents", "code"]
            ),
            inner,
            max_size=4,
        ).map(lambda d: "{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}"),
    ),
    max_leaves=8,
)

FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "balance": JSON_LEAVES.map(_json_value),
        "error": JSON_LEAVES.map(_json_value),
        "message": JSON_LEAVES.map(_json_value),
        "success": JSON_LEAVES.map(_json_value),
        "sufficient": JSON_LEAVES.map(_json_value),
        "balanceCents": JSON_LEAVES.map(_json_value),
        "code": JSON_LEAVES.map(_json_value),
    },
).map(lambda d: "{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}")

BODIES = st.one_of(
    FIELDS.map(str.encode),
    JSON_TEXT.map(str.encode),
    st.tuples(FIELDS, st.integers(min_value=0, max_value=60)).map(lambda t: t[0][: t[1]].encode()),
    st.binary(max_size=40),
)


def test_provider_answers_are_a_balance_or_a_provider_error() -> None:
    """Whatever a 2xx answer holds, a lookup yields a Decimal or a ProviderError."""
    with (
        ProviderSimulator(orthogonal_usd="5.00", hyper3d_credits="10") as sim,
        sg.Hyper3D(sim.api_key, base_url=sim.url, timeout=2, retries=0) as h3d,
        sg.Orthogonal(sim.api_key, base_url=sim.url, timeout=2, retries=0) as orth,
    ):

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(body=BODIES, which=st.sampled_from(["hyper3d", "orthogonal", "check"]))
        def lookup(body: bytes, which: str) -> None:
            sim.clear_faults()
            if which == "hyper3d":
                sim.fail(H3D, status=200, body=body)
                call: Any = h3d.fetch_balance
            elif which == "orthogonal":
                sim.fail(BALANCE, status=200, body=body)
                call = orth.fetch_balance
            else:
                sim.fail(CHECK, status=200, body=body)
                call = lambda: orth.check(1).available  # noqa: E731
            try:
                result = call()
            except sg.ProviderError as exc:
                result = str(exc)
            if isinstance(result, str):
                assert len(result) < MESSAGE_LIMIT
            else:
                assert isinstance(result, Decimal)
                assert result.is_finite()

        lookup()


NUMBER_TEXTS = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,60})(\.[0-9]{1,60})?([eE][+-]?[0-9]{1,25})?", fullmatch=True),
    st.sampled_from(["1e999999999", "1e99999999999999999999", "-1e-99999999999999999999"]),
)


@given(NUMBER_TEXTS)
def test_json_numbers_never_raise(text: str) -> None:
    """Any JSON number text is an exact Decimal parse_number can judge, or marked unusable."""
    _, body = read(f'{{"n": {text}}}'.encode(), None)
    number = _value_or_message(parse_number, body["n"])
    if isinstance(number, str):
        assert len(number) < MESSAGE_LIMIT
    else:
        assert number == Decimal(text)
