"""Exact money: user amounts, provider balance strings and JSON numbers, all as ``Decimal``.

Every operation that could round runs in :data:`CONTEXT`, the library's own decimal
context, never in the caller's (``decimal.getcontext()`` belongs to the application, which
may have lowered its precision or enabled traps). Constructing a ``Decimal`` from text or
an int is exact in any context; arithmetic, ``normalize`` and ``quantize`` are not, so they
take ``CONTEXT`` explicitly.

Inside the guard, amounts are whole numbers of :data:`ATOM` (10**-18 of the provider's
unit): Python ints, exact in any context and about twice as fast as ``Decimal`` on the
hot path (21 ns against 48 ns a subtraction, measured on the benchmark machine).
Costs are rounded up to an atom and balances down, so rounding never admits more.
"""

from __future__ import annotations

import decimal
import re
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation

#: The library's own decimal context: enough digits for any sum of plausible amounts
#: (up to 10**15, down to 10**-18) to be exact, and only the signals that mean a bug trap.
CONTEXT = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_HALF_EVEN,
    Emax=999_999,
    Emin=-999_999,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)

#: Decimal places of an atom, the guard's internal unit of account.
ATOM_PLACES = 18
ATOM = 10**ATOM_PLACES


#: Larger magnitudes are not balances but garbage (or an attempt to overflow arithmetic).
MAX_MAGNITUDE = Decimal(10) ** 15

#: Smaller non-zero magnitudes are not balances either; printed in full they run to
#: megabytes (``1E-900000`` is a valid JSON number).
MIN_MAGNITUDE = Decimal(10) ** -18

# Only the digits are matched by a regular expression, and that one cannot backtrack far:
# sign, dollar sign and spaces around them are peeled off by hand (adjacent optional
# ``\s*`` groups made an earlier pattern take minutes on a few thousand spaces).
_DIGITS = re.compile(r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?")

_ZERO = Decimal(0)
# More digits than any plausible amount has (MAX_MAGNITUDE has 16): a cheap bound checked
# before text becomes a number, so a megabyte of digits is never converted.
_MAX_DIGITS = 40
_MAX_EXPONENT = 100
_MAX_TEXT = 64
_INT_MAX = int(MAX_MAGNITUDE)
_CACHE_SIZE = 256
# Amounts recur (cost=2, cost="0.5"): converting each once keeps the hot path cheap.
_INT_AMOUNTS: dict[int, Decimal] = {}
_TEXT_AMOUNTS: dict[str, Decimal] = {}
_DECIMAL_AMOUNTS: dict[Decimal, Decimal] = {}

Amount = int | str | Decimal | float
"""What callers may pass as an amount: ``int``, ``Decimal``, a numeric ``str`` or ``float``."""


def to_amount(value: object, *, name: str = "amount") -> Decimal:
    """Convert a user-supplied amount to a finite, non-negative ``Decimal``.

    Floats go through ``str`` so that ``0.1`` means ``Decimal("0.1")``.

    Raises:
        TypeError: ``value`` is not an int, Decimal, str or float (``bool`` included).
        ValueError: ``value`` is not a number, or is negative, NaN or infinite.
    """
    if type(value) is int:
        cached = _INT_AMOUNTS.get(value)
        if cached is not None:
            return cached
        if 0 <= value <= _INT_MAX:
            result = Decimal(value)
            if len(_INT_AMOUNTS) < _CACHE_SIZE:
                _INT_AMOUNTS[value] = result
            return result
    elif type(value) is Decimal:
        cached = _DECIMAL_AMOUNTS.get(value) if value.is_finite() else None
        if cached is not None:
            return cached
        result = _to_amount(value, name)
        if len(_DECIMAL_AMOUNTS) < _CACHE_SIZE:
            _DECIMAL_AMOUNTS[result] = result
        return result
    elif type(value) is str:
        cached = _TEXT_AMOUNTS.get(value)
        if cached is not None:
            return cached
        result = _to_amount(value, name)
        if len(_TEXT_AMOUNTS) < _CACHE_SIZE:
            _TEXT_AMOUNTS[value] = result
        return result
    return _to_amount(value, name)


def _to_amount(value: object, name: str) -> Decimal:
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool) or not isinstance(value, int | str | float):
        raise TypeError(
            f"{name} must be an int, Decimal, numeric str or float, not {type(value).__name__}"
        )
    else:
        try:
            result = Decimal(value.strip() if isinstance(value, str) else str(value))
        except InvalidOperation:
            raise ValueError(f"{name} is not a number: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    if result < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    if result > MAX_MAGNITUDE:
        raise ValueError(f"{name} is implausibly large: {value!r}")
    return tidy(result)


def tidy(value: Decimal) -> Decimal:
    """``value`` without trailing zeros or a negative zero, exactly: ``110.0`` -> ``110``,
    ``1.50`` -> ``1.5``, ``-0`` -> ``0``; never in exponent form for whole numbers."""
    if not value:
        return _ZERO
    if value == value.to_integral_value(context=CONTEXT):
        return Decimal(int(value))
    return value.normalize(CONTEXT)


def atoms_up(value: Decimal) -> int:
    """``value`` in whole atoms, rounded up (for what is spent or asked: never under-count)."""
    scaled = value.scaleb(ATOM_PLACES, CONTEXT)
    return int(scaled.to_integral_value(rounding=ROUND_CEILING, context=CONTEXT))


def atoms_down(value: Decimal) -> int:
    """``value`` in whole atoms, rounded down (for what is available: never over-count)."""
    scaled = value.scaleb(ATOM_PLACES, CONTEXT)
    return int(scaled.to_integral_value(rounding=ROUND_FLOOR, context=CONTEXT))


def from_atoms(value: int) -> Decimal:
    """The ``Decimal`` a number of atoms stands for, exact and tidy."""
    whole, part = divmod(value, ATOM)
    if not part:
        return _INT_AMOUNTS.get(whole) or Decimal(whole)
    return Decimal(value).scaleb(-ATOM_PLACES, CONTEXT).normalize(CONTEXT)


def parse_dollars(text: str) -> Decimal:
    """Parse a dollar string such as ``"$1,234.56"``, ``"-$0.50"``, ``"$-0.50"`` or ``" $5 "``.

    Raises:
        ValueError: ``text`` is not a dollar amount.
    """
    with decimal.localcontext(CONTEXT):
        return _parse_dollars(text)


def _parse_dollars(text: str) -> Decimal:
    rest = text.strip()
    negative = rest.startswith("-")
    if negative:
        rest = rest[1:].lstrip()
    if rest.startswith("$"):
        rest = rest[1:].lstrip()
        if rest.startswith("-") and not negative:
            negative, rest = True, rest[1:]
    if len(rest) > _MAX_TEXT:
        raise ValueError(f"not a dollar amount (too long): {_shorten(text)}")
    match = _DIGITS.fullmatch(rest)
    if match is None:
        raise ValueError(f"not a dollar amount: {_shorten(text)}")
    whole = match["int"].replace(",", "").lstrip("0")
    if len(whole) > _MAX_DIGITS:
        raise ValueError(f"implausibly large amount: {_shorten(text)}")
    value = Decimal((whole or "0") + (match["frac"] or ""))
    if value > MAX_MAGNITUDE:
        raise ValueError(f"implausibly large amount: {_shorten(text)}")
    if value and value < MIN_MAGNITUDE:
        raise ValueError(f"implausibly small amount: {_shorten(text)}")
    return value.copy_negate() if negative and value else value


class UnusableNumber(str):
    """A JSON number no balance can be: too many digits or an exponent out of range.

    :func:`parse_json_float` and :func:`parse_json_int` return it instead of raising, so
    that one absurd number makes its field malformed, not the whole answer unreadable;
    :func:`parse_number` refuses it with a ValueError.
    """

    __slots__ = ()


def parse_json_float(text: str) -> Decimal | UnusableNumber:
    """``parse_float`` for ``json.loads``: the exact ``Decimal``, or an :class:`UnusableNumber`.

    Works in :data:`CONTEXT`, never in the caller's context; ``1e999999999`` and
    ``1e99999999999999999999`` are returned as unusable, not raised.
    """
    if len(text) > _MAX_TEXT:
        return UnusableNumber(text)
    with decimal.localcontext(CONTEXT):
        try:
            value = Decimal(text)
        except ArithmeticError:
            return UnusableNumber(text)
    if not value.is_finite() or abs(value.adjusted()) > _MAX_EXPONENT:
        return UnusableNumber(text)
    return value


def parse_json_int(text: str) -> int | UnusableNumber:
    """``parse_int`` for ``json.loads``: the ``int``, or an :class:`UnusableNumber` when it has
    more digits than any balance (Python refuses to convert very long ones at all)."""
    digits = text.lstrip("-").lstrip("0")
    return UnusableNumber(text) if len(digits) > _MAX_DIGITS else int(text)


def parse_number(value: object) -> Decimal:
    """Parse a JSON number decoded with ``parse_float=Decimal`` (never a float or a bool).

    Raises:
        ValueError: ``value`` is not a finite number of plausible size.
    """
    with decimal.localcontext(CONTEXT):
        return _parse_number(value)


def _parse_number(value: object) -> Decimal:
    if isinstance(value, UnusableNumber):
        raise ValueError(f"implausible number: {_shorten(str(value))}")
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(f"expected a number, got {_describe(value)}")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"implausible number: {_shorten(str(result))}")
    magnitude = result.copy_abs()
    if magnitude > MAX_MAGNITUDE or 0 < magnitude < MIN_MAGNITUDE:
        raise ValueError(f"implausible number: {_shorten(str(result))}")
    return result if result else _ZERO


def ceil_int(value: Decimal) -> int:
    """Round up to an integer (never under-ask)."""
    return int(value.to_integral_value(rounding=ROUND_CEILING, context=CONTEXT))


def format_amount(value: Decimal, unit: str, *, bare: bool = False) -> str:
    """Render an amount for people: ``$0.10`` for USD, ``1.5 credits`` or ``1 credit``.

    ``bare`` leaves out a unit name (not the dollar sign), for the second and later
    amounts of a sentence: "need 2 credits, 1.5 available".
    """
    if unit == "USD":
        text = _plain(value.copy_abs())
        whole, _, frac = text.partition(".")
        text = f"{whole}.{frac.ljust(2, '0')}"
        return f"-${text}" if value < 0 else f"${text}"
    if bare:
        return _plain(value)
    if value == 1 and unit.endswith("s"):
        unit = unit[:-1]
    return f"{_plain(value)} {unit}"


def _plain(value: Decimal) -> str:
    """``Decimal`` without exponent or trailing zeros: ``1.50`` -> ``1.5``, ``1E+2`` -> ``100``."""
    text = format(value.normalize(CONTEXT), "f")
    return "0" if text in ("-0", "0") else text


def _shorten(text: str) -> str:
    """``repr`` of at most the first 40 characters: messages stay one line long."""
    return repr(text[:40]) + ("…" if len(text) > 40 else "")


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string {_shorten(value)}"
    return f"a {type(value).__name__}"
