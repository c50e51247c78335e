"""The requester's view of a result: its sealed details (onward transfers in full), opened.

A ``Result`` travels with its onward transfers redacted; the answering adapter seals the full
``ResultDetails`` to the requester (``Result.sealed_details``) and to the broker. The broker's
copy is the hub's business; this is the requester's.
"""

from __future__ import annotations

from greenchannel.v1 import results_pb2

from broker.protocol import DecryptionKeys, open_details

__all__ = ["open_result_details"]


def open_result_details(
    result: results_pb2.Result,
    private_key: DecryptionKeys,
    *,
    request_id: str,
    sender: str,
    recipient: str,
) -> results_pb2.ResultDetails:
    """The requester's view: ``result.sealed_details`` opened with its X25519 key(s).

    ``private_key`` may be several keys (current and rotated-out); the payload's kid picks one.
    Call as ``open_result_details(status.result, key, request_id=status.id, sender=status.sender,
    recipient=status.recipient)``. An empty ``ResultDetails`` when the result has no sealed details
    (no onward transfers); :class:`~broker.protocol.SealingError` when they do not open (another
    agency's key, tampered, another request) or do not match the signed result.
    """
    if not result.HasField("sealed_details"):
        return results_pb2.ResultDetails()
    return open_details(
        result,
        result.sealed_details,
        private_key,
        request_id=request_id,
        sender=recipient,
        recipient=sender,
    )
