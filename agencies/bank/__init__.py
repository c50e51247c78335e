"""A reference bank core system implementing ``greenchannel.v1.BankService``."""

from ._config import BankConfig
from ._core import BankCore
from ._model import Account, AccountStatus, Hold, HoldKind, HoldStatus, Transfer, same_holder
from ._payments import Payment, PaymentDesk, RiskScreen, TransferRefusedError
from ._servicer import BANK_SERVICE, BankServicer

__all__ = [
    "BANK_SERVICE",
    "Account",
    "AccountStatus",
    "BankConfig",
    "BankCore",
    "BankServicer",
    "Hold",
    "HoldKind",
    "HoldStatus",
    "Payment",
    "PaymentDesk",
    "RiskScreen",
    "Transfer",
    "TransferRefusedError",
    "same_holder",
]
