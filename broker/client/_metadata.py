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
    request_payload: bytes | None = None,
) -> tuple[tuple[str, str], ...]:
    """Call metadata with a fresh single-use bearer token; build it anew for every call.

    ``request_payload``: the payload of the signed request the call carries (Submit, Extend,
    Release); binds the token to it (claim ``req``), so the broker skips its replay cache."""
    token = mint_bearer_token(key, agency_id=agency_id, clock=clock, ttl=ttl, request_payload=request_payload)
    return ((AUTHORIZATION_HEADER, f"Bearer {token}"),)
