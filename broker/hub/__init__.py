"""The broker hub: Bus / Registry / Ledger gRPC services over NATS JetStream.

Stateless: request state, idempotency keys and the replay cache live in NATS KV, events and
the watch log in JetStream streams, so several replicas can serve one NATS cluster.
"""

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
    UnavailableError,
    UnroutableError,
)
from ._server import SERVICE_NAMES, Broker, BrokerConfig

__all__ = [
    "SERVICE_NAMES",
    "AlreadyExistsError",
    "AuthenticationError",
    "Broker",
    "BrokerConfig",
    "ConflictError",
    "DirectoryReloadConfig",
    "HubError",
    "IllegalTransitionError",
    "InvalidRequestError",
    "LiveRegistry",
    "NotFoundError",
    "PermissionDeniedError",
    "UnavailableError",
    "UnroutableError",
]
