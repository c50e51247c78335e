"""A WARNING's seed: whom it warns, sealed to the broker at intake, for in-person dissuasion later
(:mod:`broker.hub._dissuasions`)."""

from __future__ import annotations

from datetime import datetime

import structlog
from greenchannel.v1 import lifecycle_pb2, requests_pb2

from broker.protocol import (
    BROKER_ID,
    Registry,
    RegistryError,
    SealingError,
    current_broker_encryption_key,
    seal,
)

__all__ = ["WARNING_SEED_CONTENT_TYPE", "warning_seed"]

log = structlog.get_logger(__name__)

WARNING_SEED_CONTENT_TYPE = requests_pb2.Warning.DESCRIPTOR.full_name
"""Content type of a warning's body sealed to the broker (``WarningSeed.warning``)."""


def _region(request: requests_pb2.Request, registry: Registry) -> str:
    if request.warning.region:
        return request.warning.region
    try:
        return registry.get(request.case_ref.issuing_agency).region
    except RegistryError:
        return ""


def warning_seed(
    request: requests_pb2.Request, *, request_id: str, registry: Registry, now: datetime
) -> lifecycle_pb2.WarningSeed | None:
    """A WARNING's seed (None for other requests): its body sealed to the broker, and the region
    where the person is looked for. A body that cannot be sealed leaves the seed without it (the
    warning cannot then escalate in person; logged)."""
    if request.WhichOneof("body") != "warning":
        return None
    seed = lifecycle_pb2.WarningSeed(region=_region(request, registry))
    try:
        seed.warning.CopyFrom(
            seal(
                request.warning.SerializeToString(),
                current_broker_encryption_key(registry, at=now),
                request_id=request_id,
                sender=BROKER_ID,
                recipient=BROKER_ID,
                content_type=WARNING_SEED_CONTENT_TYPE,
            )
        )
    except SealingError as exc:
        log.warning("warning.seed_not_sealed", request_id=request_id, error=str(exc))
    return seed
