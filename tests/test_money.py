"""Exact money: amounts, dollar strings and JSON numbers."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendguard._money import ceil_int, format_amount, parse_dollars, parse_number, to_amount


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, Decimal(1)),
        ("0.5", Decimal("0.5")),
        (" 2.25 ", Decimal("2.25")),
        (Decimal("1.50"), Decimal("1.50")),
        (0.1, Decimal("0.1")),
        (0, Decimal(0)),
        ("-0", Decimal(0)),
    ],
)
def test_to_amount_accepts_numbers(value: object, expected: Decimal) -> None:
    """Ints, Decimals, numeric strings and floats (through str) become exact Decimals."""
    assert to_amount(value) == expected
    assert str(to_amount(0.1)) == "0.1"


@pytest.mark.parametrize(
    "value", [-1, "-0.01", Decimal("-5"), float("nan"), "NaN", "inf", "abc", ""]
)
def test_to_amount_rejects_bad_values(value: object) -> None:
    """Negative, NaN, infinite and non-numeric amounts are ValueErrors."""
    with pytest.raises(ValueError, match="amount"):
        to_amount(value)


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}, b"1"])
def test_to_amount_rejects_bad_types(value: object) -> None:
    """Booleans and non-numeric types are TypeErrors."""
    with pytest.raises(TypeError, match="amount must be"):
        to_amount(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$5.00", "5.00"),
        ("$1,234.56", "1234.56"),
        ("-$0.50", "-0.50"),
        ("$-0.50", "-0.50"),
        (" $5 ", "5"),
        ("0.03", "0.03"),
        ("$0.001", "0.001"),
        ("$1,000,000.00", "1000000.00"),
        ("-$0.00", "0.00"),
    ],
)
def test_parse_dollars(text: str, expected: str) -> None:
    """Documented and observed dollar strings parse exactly."""
    result = parse_dollars(text)
    assert result == Decimal(expected)
    assert result.as_tuple() == Decimal(expected).as_tuple()


@pytest.mark.parametrize(
    "text",
    ["", "$", "five", "$5.", "$.5", "$1,23.00", "--$1", "-$-1", "$1e3", "NaN", "$ 5 $", "1,2345"],
)
def test_parse_dollars_rejects(text: str) -> None:
    """Anything that is not a dollar amount is a ValueError naming the text."""
    with pytest.raises(ValueError, match="not a dollar amount"):
        parse_dollars(text)


@given(st.decimals(min_value=-(10**12), max_value=10**12, places=2))
def test_parse_dollars_round_trips_formatted_money(value: Decimal) -> None:
    """Any amount rendered as '$1,234.56' (or '-$…') parses back to itself."""
    text = f"{'-' if value < 0 else ''}${abs(value):,.2f}"
    assert parse_dollars(text) == value


@given(st.text(max_size=30))
def test_parse_dollars_only_raises_value_error(text: str) -> None:
    """Arbitrary text either parses or raises ValueError, nothing else."""
    try:
        result = parse_dollars(text)
    except ValueError:
        return
    assert result.is_finite()


@given(
    st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(), st.lists(st.integers()))
)
def test_parse_number_rejects_non_numbers(value: object) -> None:
    """JSON values that are not ints or Decimals are refused."""
    with pytest.raises(ValueError):  # noqa: PT011
        parse_number(value)


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), 10**16, Decimal("1E+400")])
def test_parse_number_rejects_implausible(value: object) -> None:
    """Non-finite and absurdly large numbers are refused."""
    with pytest.raises(ValueError, match="implausible"):
        parse_number(value)


def test_parse_number_accepts_exact_decimals() -> None:
    """Fractional and exponent numbers stay exact."""
    assert parse_number(Decimal("12.5")) == Decimal("12.5")
    assert parse_number(Decimal("1E+3")) == 1000
    assert parse_number(7) == 7


@pytest.mark.parametrize(
    ("value", "expected"), [("0", 0), ("0.00001", 1), ("2", 2), ("2.000001", 3)]
)
def test_ceil_int_rounds_up(value: str, expected: int) -> None:
    """Amounts are rounded up, never down."""
    assert ceil_int(Decimal(value)) == expected


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("0.1", "USD", "$0.10"),
        ("-0.5", "USD", "-$0.50"),
        ("0.001", "USD", "$0.001"),
        ("2", "credits", "2 credits"),
        ("1.50", "credits", "1.5 credits"),
        ("1E+2", "credits", "100 credits"),
    ],
)
def test_format_amount(value: str, unit: str, expected: str) -> None:
    """Amounts render as a person reads them."""
    assert format_amount(Decimal(value), unit) == expected
