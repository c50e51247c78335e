"""The broker hub: Bus / Registry / Ledger gRPC services over NATS JetStream.

Stateless: request state, idempotency keys and the replay cache live in NATS KV, events and
the watch log in JetStream streams, so several replicas can serve one NATS cluster. Every file
it reads (directory, authorization policy, SLA policy, keys) is named by its caller.
"""

from ._admission import AdmissionConfig
from ._allocation import Allocation, AllocationRule, Claim, Share, allocate, payable
from ._allocation_wire import allocation_message, claim_payable
from ._calendar import WorkingCalendar, WorkingDays
from ._deadlines import DeadlineTable, PhaseBudget
from ._deadlines_watch import DeadlineWatchConfig
from ._directory_reload import DirectoryReloadConfig, LiveRegistry
from ._errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConflictError,
    HubError,
    IllegalTransitionError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PolicyError,
    UnavailableError,
    UnroutableError,
)
from ._events import EventProcessorConfig
from ._ledger import LedgerConfig
from ._policy import Policy, load_policy
from ._server import SERVICE_NAMES, Broker, BrokerConfig
from ._sla_policy import SlaPolicy, load_sla_policy, parse_duration
from ._tls import TlsFiles

__all__ = [
    "SERVICE_NAMES",
    "AdmissionConfig",
    "Allocation",
    "AllocationRule",
    "AlreadyExistsError",
    "AuthenticationError",
    "Broker",
    "BrokerConfig",
    "Claim",
    "ConflictError",
    "DeadlineTable",
    "DeadlineWatchConfig",
    "DirectoryReloadConfig",
    "EventProcessorConfig",
    "HubError",
    "IllegalTransitionError",
    "InvalidRequestError",
    "LedgerConfig",
    "LiveRegistry",
    "NotFoundError",
    "PermissionDeniedError",
    "PhaseBudget",
    "Policy",
    "PolicyError",
    "Share",
    "SlaPolicy",
    "TlsFiles",
    "UnavailableError",
    "UnroutableError",
    "WorkingCalendar",
    "WorkingDays",
    "allocate",
    "allocation_message",
    "claim_payable",
    "load_policy",
    "load_sla_policy",
    "parse_duration",
    "payable",
]
