"""Reading the personal details of a result: the onward transfers in full.

A ``Result`` travels with its onward transfers redacted (no receiving account, no beneficiary
name); the answering adapter seals the full ``ResultDetails`` twice, with the same associated data
(request id, the answering agency, the requester):

* ``Result.sealed_details`` to the requester, who reads it with :func:`broker.client.open_result_details`;
* ``Result.broker_details`` to the broker, which chases the money with
  :func:`onward_transfers_for_broker` and keeps what it opens in memory only.

Both take the request's parties as a ``RequestStatus`` names them: ``sender`` is the agency that
asked (``status.sender``), ``recipient`` the agency that answered and sealed (``status.recipient``).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import x25519
from greenchannel.v1 import results_pb2

from broker.protocol import open_details

__all__ = ["onward_transfers_for_broker"]


def onward_transfers_for_broker(
    result: results_pb2.Result,
    *,
    broker_key: x25519.X25519PrivateKey,
    request_id: str,
    sender: str,
    recipient: str,
) -> list[results_pb2.OnwardTransfer]:
    """The onward transfers in full, opened from ``result.broker_details`` with the broker's key.

    Call as ``onward_transfers_for_broker(status.result, broker_key=key, request_id=status.id,
    sender=status.sender, recipient=status.recipient)``. Returns ``[]`` when the result carries no
    broker copy (no onward transfers). Raises :class:`~broker.protocol.SealingError` when the copy
    does not open with this key for this request, breaks the contract, or lists other transfers
    than the signed result does. Never log what it returns.
    """
    if not result.HasField("broker_details"):
        return []
    details = open_details(
        result,
        result.broker_details,
        broker_key,
        request_id=request_id,
        sender=recipient,  # the sealing parties: the agency that answered, to the one that asked
        recipient=sender,
    )
    return list(details.onward_transfers)
