"""Errors of the reference agency systems.

The tree::

    AgencySystemError                 root of every error raised by :mod:`agencies`' systems
    ├── StorageError                  the SQLite store could not be opened or written (sqlite3, translated)
    ├── AgencyServerError             a gRPC server could not bind or start
    ├── BankError                     a bank core refused a direct (non-gRPC) call
    │   ├── UnknownAccountError       no such account at this bank
    │   ├── AccountClosedError        the account is closed
    │   ├── CurrencyMismatchError     the amount is in another currency than the account
    │   └── InsufficientFundsError    the transfer exceeds the available balance
    ├── CarrierError                  a carrier core refused a direct call (unknown line, duplicate)
    └── PlatformError                 a platform core refused a direct call (unknown account, foreign code)

Answers to gRPC calls never raise these: an order that cannot be executed is a signed REJECTED
result with a reason code. They are for seeding, demos and operators calling the cores directly.
"""

from __future__ import annotations

__all__ = [
    "AccountClosedError",
    "AgencyServerError",
    "AgencySystemError",
    "BankError",
    "CarrierError",
    "CurrencyMismatchError",
    "InsufficientFundsError",
    "PlatformError",
    "StorageError",
    "UnknownAccountError",
]


class AgencySystemError(Exception):
    """Root of every error raised by the reference agency systems."""


class StorageError(AgencySystemError):
    """The SQLite store failed; the sqlite3 error is the ``__cause__``."""


class AgencyServerError(AgencySystemError):
    """A gRPC server could not bind its address or start."""


class BankError(AgencySystemError):
    """A bank core refused a direct call."""


class UnknownAccountError(BankError):
    """No such account at this bank."""


class AccountClosedError(BankError):
    """The account is closed."""


class CurrencyMismatchError(BankError):
    """The amount's currency is not the account's currency."""


class InsufficientFundsError(BankError):
    """The transfer exceeds the available balance (balance minus active holds)."""


class CarrierError(AgencySystemError):
    """A carrier core refused a direct call."""


class PlatformError(AgencySystemError):
    """A platform core refused a direct call."""
