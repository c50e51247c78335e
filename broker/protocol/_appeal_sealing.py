"""How a holder's appeal statement is sealed to the police: the terms both sides share.

The restricting agency seals the ``AppealStatement`` to the police's X25519 key before it signs
the appeal, when the appeal has no request id yet; the police adapter opens it. The associated
data binds the restriction (or risk mark) appealed, the holder's agency (sender) and the police
(recipient), so a statement cannot be moved onto an appeal against another restriction or mark.
"""

from __future__ import annotations

from greenchannel.v1 import requests_pb2

__all__ = ["APPEAL_STATEMENT_CONTENT_TYPE", "appeal_sealing_context"]

APPEAL_STATEMENT_CONTENT_TYPE = requests_pb2.AppealStatement.DESCRIPTOR.full_name
"""``greenchannel.v1.AppealStatement``: what ``Appeal.statement`` opens to."""


def appeal_sealing_context(restriction_request_id: str = "", *, mark_id: str = "") -> str:
    """The ``request_id`` an appeal statement is sealed under: binds the restriction appealed, or
    the risk mark (``Appeal.mark_id``; its own prefix, so no mark id can pass for a request id)."""
    return f"appeal:mark:{mark_id}" if mark_id else f"appeal:{restriction_request_id}"
