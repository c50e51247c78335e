"""What every reference agency system shares: the SQLite store, the execution journal, results."""

from ._core import AgencyCore, Rule
from ._db import MEMORY, Database
from ._errors import (
    AccountClosedError,
    AgencyServerError,
    AgencySystemError,
    BankError,
    CarrierError,
    CurrencyMismatchError,
    InsufficientFundsError,
    PlatformError,
    StorageError,
    UnknownAccountError,
)
from ._grpc import answer
from ._journal import JOURNAL_SCHEMA, Execution, ExecutionJournal
from ._results import (
    Reach,
    describe_violations,
    executed,
    invalid_request,
    money,
    new_reference,
    rejected,
    warned,
)
from ._time import from_timestamp, from_us, rfc3339, to_timestamp, to_us

__all__ = [
    "JOURNAL_SCHEMA",
    "MEMORY",
    "AccountClosedError",
    "AgencyCore",
    "AgencyServerError",
    "AgencySystemError",
    "BankError",
    "CarrierError",
    "CurrencyMismatchError",
    "Database",
    "Execution",
    "ExecutionJournal",
    "InsufficientFundsError",
    "PlatformError",
    "Reach",
    "Rule",
    "StorageError",
    "UnknownAccountError",
    "answer",
    "describe_violations",
    "executed",
    "from_timestamp",
    "from_us",
    "invalid_request",
    "money",
    "new_reference",
    "rejected",
    "rfc3339",
    "to_timestamp",
    "to_us",
    "warned",
]
