"""Amounts people type (``48000.00``): to minor units, exactly, or a message saying what is wrong.

One reading for every place a person types an amount (the CLI's options, the console's forms), so
the same text means the same money everywhere.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["minor_units"]

_PLAIN_DECIMAL = re.compile(r"\+?[0-9]+(\.[0-9]*)?")
_MAX_MINOR_UNITS = 2**63 - 1  # Money.minor_units is an int64


def minor_units(text: str) -> int:
    """A positive decimal amount with at most two decimals, in minor units; never via float.
    Raises ValueError with a message for people."""
    garbage = ValueError(f"{text!r} is not a decimal amount such as 48000.00")
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise garbage from None
    if not amount.is_finite():
        raise garbage
    if amount.is_signed() and amount != 0:
        raise ValueError(f"{text!r} is negative; give the amount as a positive number")
    if amount == 0:
        raise ValueError(f"{text!r} is zero; give the amount as a positive number")
    # Decimal also reads "1e3" and "1_000": fine for programs, too easy to misread on a legal notice.
    if not _PLAIN_DECIMAL.fullmatch(text.strip()):
        raise garbage
    minor = amount * 100
    if minor != minor.to_integral_value():
        raise ValueError(f"{text!r} has more than 2 decimal places")
    if minor > _MAX_MINOR_UNITS:
        raise ValueError(f"{text!r} is too large")
    return int(minor)
