"""How a money trail's account is sealed to the police owning the case: the shared terms.

The broker seals each account it names on a trail (``BankAccountRef``) to the case owner's X25519
key; the owner's client opens it. Both sides must agree on the content type and on the
associated data, which binds the case and the node, so a sealed account cannot be moved onto
another node or case.
"""

from __future__ import annotations

from greenchannel.v1 import common_pb2

__all__ = ["TRAIL_ACCOUNT_CONTENT_TYPE", "trail_sealing_context"]

TRAIL_ACCOUNT_CONTENT_TYPE = common_pb2.BankAccountRef.DESCRIPTOR.full_name
"""``greenchannel.v1.BankAccountRef``: what a trail's sealed account opens to."""


def trail_sealing_context(case_ref: common_pb2.CaseRef, node_id: str) -> str:
    """The ``request_id`` a trail account is sealed under: binds the case and the node."""
    return f"trail:{case_ref.issuing_agency}:{case_ref.case_number}:{node_id}"
