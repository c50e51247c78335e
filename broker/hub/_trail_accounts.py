"""How the money trail names accounts without holding them in clear.

Two mechanisms, one per audience:

- **Node ids** (the broker's own bookkeeping): HMAC-SHA256 over the bank and the account number,
  with a key derived by HKDF-SHA256 from the broker's Ed25519 signing key seed (info
  :data:`DIGEST_INFO`). Every replica holds that key already, so all of them compute the same id
  for the same account (merges and cycles are found by id), and nobody without the broker's key
  can test a guessed account number against the store. A rotated broker key gives new ids: an
  account reached again after a rotation becomes a second node (held once more, never beyond
  its balance), which is the price of not keeping another secret.
- **Sealed accounts** (for people): the account number, holder's name and bank as a
  ``BankAccountRef``, sealed to the X25519 key of the police owning the case, exactly as data
  answers are. Only that police agency opens it (``greenchannel trail`` does); the associated
  data binds the case and the node, so a sealed account cannot be moved onto another node.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from hashlib import sha256
from typing import Protocol

import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from greenchannel.v1 import common_pb2, results_pb2

from broker.protocol import (
    BROKER_ID,
    TRAIL_ACCOUNT_CONTENT_TYPE,
    Clock,
    ProtocolError,
    Registry,
    SealingError,
    SigningKey,
    current_encryption_key,
    seal,
    trail_sealing_context,
)

__all__ = [
    "DIGEST_INFO",
    "AccountBook",
    "BrokerAccountBook",
    "with_bank",
]

log = structlog.get_logger(__name__)

DIGEST_INFO = b"greenchannel/v1 trail account digest"
"""HKDF info of the node-id key: domain separation from every other use of the broker key."""

_NODE_ID_HEX = 32  # 128 bits: collisions are out of reach for any case's handful of accounts


class AccountBook(Protocol):
    """Names accounts (node ids) and seals them to the case owner; :class:`BrokerAccountBook` in
    the broker, a deterministic stand-in in unit tests."""

    def node_id(self, bank: str, account_number: str) -> str:
        """A stable id for the account that reveals nothing about it."""
        ...

    def seal(
        self, case_ref: common_pb2.CaseRef, node_id: str, account: common_pb2.BankAccountRef
    ) -> results_pb2.EncryptedPayload | None:
        """The account sealed to the case owner; None when it cannot be (no usable key)."""
        ...


@dataclass(frozen=True)
class _DigestKey:
    key: bytes

    def __repr__(self) -> str:  # never print the key
        return "_DigestKey(<secret>)"


class BrokerAccountBook:
    """Node ids keyed from the broker's signing key; accounts sealed to the case owner's ``enc`` key."""

    def __init__(self, *, broker_key: SigningKey, registry: Registry, clock: Clock) -> None:
        seed = broker_key.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DIGEST_INFO).derive(seed)
        self._key = _DigestKey(derived)
        self._registry = registry
        self._clock = clock

    def node_id(self, bank: str, account_number: str) -> str:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") never share an id.
        message = b"".join(
            len(part).to_bytes(4, "big") + part for part in (bank.encode(), account_number.encode())
        )
        return hmac.new(self._key.key, message, sha256).hexdigest()[:_NODE_ID_HEX]

    def seal(
        self, case_ref: common_pb2.CaseRef, node_id: str, account: common_pb2.BankAccountRef
    ) -> results_pb2.EncryptedPayload | None:
        owner = case_ref.issuing_agency
        try:
            agency = self._registry.get(owner)
            key = current_encryption_key(agency, at=self._clock.now())
            return seal(
                account.SerializeToString(),
                key,
                request_id=trail_sealing_context(case_ref, node_id),
                sender=BROKER_ID,
                recipient=owner,
                content_type=TRAIL_ACCOUNT_CONTENT_TYPE,
            )
        except (ProtocolError, SealingError) as exc:
            # The trail keeps the digest and the amounts; only the people-readable account is lost.
            log.warning("trail.account_not_sealed", case_owner=owner, node=node_id, error=type(exc).__name__)
            return None


def with_bank(registry: Registry, account: common_pb2.BankAccountRef) -> common_pb2.BankAccountRef:
    """``account`` naming its bank: as given, else the directory bank its number routes to.

    A victim's account is digested twice, when a hold names it and when a return pays it; both
    must name the same bank, whether or not the police wrote it out each time.
    """
    if account.bank:
        return account
    found = registry.bank_for_account(account.account_number)
    named = common_pb2.BankAccountRef()
    named.CopyFrom(account)
    named.bank = found.id if found is not None else ""
    return named
