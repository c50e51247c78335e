"""How a holder's appeal statement is sealed to the police: the terms both sides share.

The restricting agency seals the ``AppealStatement`` to the police's X25519 key before it signs
the appeal, when the appeal has no request id yet; the police adapter opens it. The associated
data binds the restriction appealed, the restricting agency (sender) and the police (recipient),
so a statement cannot be moved onto an appeal against another restriction.
"""

from __future__ import annotations

from greenchannel.v1 import requests_pb2

__all__ = ["APPEAL_STATEMENT_CONTENT_TYPE", "appeal_sealing_context"]

APPEAL_STATEMENT_CONTENT_TYPE = requests_pb2.AppealStatement.DESCRIPTOR.full_name
"""``greenchannel.v1.AppealStatement``: what ``Appeal.statement`` opens to."""


def appeal_sealing_context(restriction_request_id: str) -> str:
    """The ``request_id`` an appeal statement is sealed under: binds the restriction appealed."""
    return f"appeal:{restriction_request_id}"
