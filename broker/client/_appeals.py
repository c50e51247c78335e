"""An appeal's statement sealed to the police, from the police's keys as the registry lists them."""

from __future__ import annotations

from datetime import datetime

from greenchannel.v1 import registry_pb2, requests_pb2, results_pb2

from broker.protocol import (
    APPEAL_STATEMENT_CONTENT_TYPE,
    KeyUse,
    PublicKey,
    appeal_sealing_context,
    from_timestamp,
    newest_encryption_key,
    seal,
)

__all__ = ["seal_statement"]


def seal_statement(
    statement: requests_pb2.AppealStatement,
    police: registry_pb2.Agency,
    *,
    restriction_request_id: str = "",
    mark_id: str = "",
    sender: str,
    at: datetime,
) -> results_pb2.EncryptedPayload:
    """``statement`` sealed to the police's current X25519 key: only they can read it; bound to the
    restriction or the mark (``mark_id``) appealed."""
    keys = [
        PublicKey(
            kid=key.kid,
            raw=key.public_key,
            use=KeyUse.ENC,
            not_before=from_timestamp(key.not_before) if key.HasField("not_before") else None,
            not_after=from_timestamp(key.not_after) if key.HasField("not_after") else None,
            revoked_at=from_timestamp(key.revoked_at) if key.HasField("revoked_at") else None,
        )
        for key in police.keys
        if key.use == registry_pb2.KEY_USE_ENC
    ]
    key = newest_encryption_key(keys, at=at, owner=f"agency {police.id!r}")
    return seal(
        statement.SerializeToString(),
        key,
        request_id=appeal_sealing_context(restriction_request_id, mark_id=mark_id),
        sender=sender,
        recipient=police.id,
        content_type=APPEAL_STATEMENT_CONTENT_TYPE,
    )
