"""Call metadata: a fresh single-use bearer token per call (the hub verifies it, once)."""

from __future__ import annotations

from datetime import timedelta

from broker.protocol import Clock, SigningKey, mint_bearer_token

__all__ = ["AUTHORIZATION_HEADER", "bearer_metadata"]

AUTHORIZATION_HEADER = "authorization"
"""The gRPC metadata key carrying ``Bearer <jwt>``."""


def bearer_metadata(
    key: SigningKey,
    *,
    agency_id: str,
    clock: Clock,
    ttl: timedelta = timedelta(minutes=2),
) -> tuple[tuple[str, str], ...]:
    """Call metadata with a fresh single-use bearer token; build it anew for every call."""
    token = mint_bearer_token(key, agency_id=agency_id, clock=clock, ttl=ttl)
    return ((AUTHORIZATION_HEADER, f"Bearer {token}"),)
