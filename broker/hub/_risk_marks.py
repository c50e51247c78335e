"""The risk registry's store: one KV record per mark (bucket ``gc_risk_marks``, key = mark id).

A record holds the mark's :class:`~greenchannel.v1.risk_pb2.MarkStatus` (kind, keyed digest of the
identifier, grade, reason, case, marker, times, state), the digest of its content (what makes a
second Mark with the same id a duplicate), and the proofs: the signed mark **sealed to the police
owning the case** (it names the identifier in clear, so it never lies in NATS readable), and the
signed decision and unmark as sent (they name only the mark id), or the police's signed ruling on
the appeal that lifted it (it names only the appeal). Nothing else; never the identifier.

Writes are compare-and-set (``create`` for a new mark, ``update(last=revision)`` for a step), so
two replicas deciding one mark at once cannot both win.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, replace
from datetime import datetime

import nats.errors
import nats.js.errors
from greenchannel.v1 import envelope_pb2, results_pb2, risk_pb2
from nats.js.kv import KeyValue

from broker.protocol import from_timestamp

from ._errors import ConflictError, NotFoundError, UnavailableError
from ._store import LazyBucket

__all__ = ["RISK_MARKS_BUCKET", "MarkRecord", "MarkStore", "StoredMark", "is_expired"]

RISK_MARKS_BUCKET = "gc_risk_marks"
"""KV bucket of the risk registry's marks, keyed by mark id."""

_S = risk_pb2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def _signed(data: dict[str, str], name: str) -> envelope_pb2.SignedMessage | None:
    """A signed message the record keeps under ``name``, if any."""
    return envelope_pb2.SignedMessage.FromString(_unb64(data[name])) if data.get(name) else None


@dataclass(frozen=True, kw_only=True)
class MarkRecord:
    """One mark as the bucket holds it."""

    status: risk_pb2.MarkStatus
    """The mark, without the identifier."""
    content: str
    """Digest of what the mark says (marker, identifier digest, grade, reason, case, validity)."""
    valid_for_seconds: int
    """How long it lasts once ACTIVE."""
    mark_digest: str = ""
    """Digest of the signed mark's payload (what its MARK ledger entries name)."""
    proof: results_pb2.EncryptedPayload | None = None
    """The signed mark, sealed to the police owning the case (None when they have no usable key)."""
    decision: envelope_pb2.SignedMessage | None = None
    """The signed MarkDecision that confirmed or refused it."""
    unmark: envelope_pb2.SignedMessage | None = None
    """The signed RiskUnmark that lifted it."""
    ruling: envelope_pb2.SignedMessage | None = None
    """The police's signed AppealRuling (LIFTED) that lifted it, on a holder's appeal."""
    extra: dict[str, str] = field(default_factory=dict)
    """Fields a newer broker wrote that this one does not know: kept on rewrite."""

    def encode(self) -> bytes:
        data = dict(self.extra)
        data.update(
            {
                "status": _b64(self.status.SerializeToString(deterministic=True)),
                "content": self.content,
                "valid_for": str(self.valid_for_seconds),
                "mark_digest": self.mark_digest,
            }
        )
        if self.proof is not None:
            data["proof"] = _b64(self.proof.SerializeToString(deterministic=True))
        for name, signed in (("decision", self.decision), ("unmark", self.unmark), ("ruling", self.ruling)):
            if signed is not None:
                data[name] = _b64(signed.SerializeToString(deterministic=True))
        return json.dumps(data, sort_keys=True).encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> MarkRecord:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a mark record is a JSON object")
        known = {"status", "content", "valid_for", "mark_digest", "proof", "decision", "unmark", "ruling"}
        return cls(
            status=_S.MarkStatus.FromString(_unb64(data["status"])),
            content=data["content"],
            valid_for_seconds=int(data["valid_for"]),
            mark_digest=data.get("mark_digest", ""),
            proof=results_pb2.EncryptedPayload.FromString(_unb64(data["proof"]))
            if data.get("proof")
            else None,
            decision=_signed(data, "decision"),
            unmark=_signed(data, "unmark"),
            ruling=_signed(data, "ruling"),
            extra={k: v for k, v in data.items() if k not in known and isinstance(v, str)},
        )

    def but(self, **changes: object) -> MarkRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StoredMark:
    """A record and the revision it was read at (for compare-and-set)."""

    record: MarkRecord
    revision: int


def is_expired(status: risk_pb2.MarkStatus, now: datetime) -> bool:
    """An ACTIVE mark whose time ran out (Check no longer returns it, whatever the record says)."""
    return (
        status.state == _S.MARK_STATE_ACTIVE
        and status.HasField("expires_at")
        and from_timestamp(status.expires_at) <= now
    )


class MarkStore:
    """The ``gc_risk_marks`` bucket, opened on first use."""

    def __init__(self, bucket: LazyBucket) -> None:
        self._bucket = bucket

    async def kv(self) -> KeyValue:
        return await self._bucket.get()

    async def get(self, mark_id: str) -> StoredMark:
        """The mark; NotFoundError (``NO_SUCH_MARK``) when there is none."""
        kv = await self.kv()
        try:
            entry = await kv.get(mark_id)
        except nats.js.errors.KeyNotFoundError as exc:
            raise NotFoundError(f"there is no mark {mark_id!r}", reason="NO_SUCH_MARK") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read the risk registry: {exc}") from exc
        if entry.value is None or entry.revision is None:
            raise NotFoundError(f"there is no mark {mark_id!r}", reason="NO_SUCH_MARK")
        return StoredMark(MarkRecord.decode(entry.value), entry.revision)

    async def create(self, record: MarkRecord) -> StoredMark | None:
        """Store a new mark; None when its id is taken (read it to compare)."""
        kv = await self.kv()
        try:
            revision = await kv.create(record.status.mark_id, record.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot write the risk registry: {exc}") from exc
        return StoredMark(record, revision)

    async def update(self, record: MarkRecord, *, revision: int) -> StoredMark:
        """Replace the mark read at ``revision``; ConflictError when it changed meanwhile."""
        kv = await self.kv()
        try:
            new = await kv.update(record.status.mark_id, record.encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise ConflictError("the mark changed meanwhile; retry", reason="MARK_CHANGED") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot write the risk registry: {exc}") from exc
        return StoredMark(record, new)

    async def all(self) -> list[StoredMark]:
        """Every mark (ListMarks scans; the registry is small next to the request journal)."""
        kv = await self.kv()
        found: list[StoredMark] = []
        try:
            watcher = await kv.watchall()
            try:
                while True:
                    entry = await watcher.updates(timeout=5.0)  # type: ignore[no-untyped-call]
                    if entry is None:
                        break
                    if entry.value and entry.revision is not None:
                        found.append(StoredMark(MarkRecord.decode(entry.value), entry.revision))
                    if entry.delta == 0:
                        break
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read the risk registry: {exc}") from exc
        return found
