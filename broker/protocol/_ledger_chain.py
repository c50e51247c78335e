"""The ledger's hash chain: building entries, signing checkpoints, and verifying a chain offline.

Pure: no NATS, no I/O. The broker's sequencer builds entries with these functions and
``greenchannel ledger verify`` checks an export with them, so both agree on every byte.

An entry is stored as serialized :class:`LedgerEntry` bytes whose ``hash`` field is empty, and
its hash is :func:`entry_hash` of exactly those bytes (serialization is not canonical, so the
bytes that travel are what is hashed, never a re-encoding). Entry ``k`` carries ``seq = k`` and
``prev_hash = hash(k - 1)`` (empty for the first). The broker periodically signs a
:class:`Checkpoint` of the head, ``(seq, head_hash)``, so the tail is protected too.

:func:`verify_chain` does not stop at the first broken link: it explains what it sees as the
smallest set of tamperings (an entry changed, missing, inserted or moved) and names each entry,
so a single change is reported once, as that change, rather than as a cascade downstream.
"""

from __future__ import annotations

import enum
import hmac
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2, ledger_pb2

from ._clock import Clock, ManualClock
from ._envelope import sign_message
from ._errors import MalformedSignatureError, VerificationError
from ._keys import SigningKey
from ._registry import BROKER_ID
from ._signing import KeyStore, body_digest, verify_detached
from ._timestamps import to_timestamp

__all__ = [
    "CHECKPOINT_AUDIENCE",
    "CHECKPOINT_TYPE",
    "ChainProblem",
    "ChainRecord",
    "ChainReport",
    "ProblemKind",
    "build_entry",
    "entry_hash",
    "link_entry",
    "parse_unlinked",
    "sign_checkpoint",
    "verify_chain",
    "verify_checkpoint",
]

CHECKPOINT_AUDIENCE = "greenchannel-ledger"
"""Audience of checkpoint signatures: anyone who verifies the ledger."""

CHECKPOINT_TYPE = "CHECKPOINT"
"""Message type (``gct``) of checkpoint signatures."""

# A checkpoint must verify for as long as anyone may audit the ledger; the ledger keeps entries
# forever. Verification lifts the lifetime cap (max_ttl=None) and judges the key at signing time.
_CHECKPOINT_TTL = timedelta(days=100 * 365)


def entry_hash(entry: bytes) -> str:
    """``"sha-256:" + base64url(sha256(entry))``: the hash of a stored entry."""
    return body_digest(entry)


def _timestamp(when: datetime) -> Timestamp:
    if when.utcoffset() is None:
        raise ValueError("ledger times must be timezone-aware")
    return to_timestamp(when.astimezone(UTC))


def build_entry(
    *,
    kind: ledger_pb2.LedgerEntryKind.ValueType,
    actor: str,
    at: datetime,
    request_id: str = "",
    case_number: str = "",
    parties: Iterable[str] = (),
    state: common_pb2.RequestState.ValueType = common_pb2.REQUEST_STATE_UNSPECIFIED,
    subject_digest: str = "",
    refusal: ledger_pb2.Refusal | None = None,
    mark_id: str = "",
    mark_step: str = "",
) -> bytes:
    """The serialized, not yet linked entry (``seq`` 0, no ``prev_hash``) that the intake holds.

    ``refusal`` goes with REJECTION entries that record refused API calls; ``mark_id`` and
    ``mark_step`` with MARK entries.
    """
    if kind == ledger_pb2.LEDGER_ENTRY_KIND_UNSPECIFIED:
        raise ValueError("a ledger entry needs a kind")
    if not actor:
        raise ValueError("a ledger entry needs an actor")
    entry = ledger_pb2.LedgerEntry(
        at=_timestamp(at),
        actor=actor,
        kind=kind,
        request_id=request_id,
        case_number=case_number,
        parties=list(parties),
        state=state,
        subject_digest=subject_digest,
        refusal=refusal,
        mark_id=mark_id,
        mark_step=mark_step,
    )
    return entry.SerializeToString(deterministic=True)


def parse_unlinked(record: bytes) -> ledger_pb2.LedgerEntry:
    """Parse an intake record; ValueError unless it is an entry with no seq, prev_hash or hash."""
    try:
        entry = ledger_pb2.LedgerEntry.FromString(record)
    except DecodeError as exc:
        raise ValueError("not a serialized LedgerEntry") from exc
    if entry.seq or entry.prev_hash or entry.hash:
        raise ValueError("an intake record must not carry seq, prev_hash or hash")
    if entry.kind == ledger_pb2.LEDGER_ENTRY_KIND_UNSPECIFIED or not entry.actor:
        raise ValueError("an intake record needs a kind and an actor")
    return entry


def link_entry(record: bytes, *, seq: int, prev_hash: str) -> bytes:
    """The stored bytes of entry ``seq``: the intake ``record`` followed by ``seq`` and ``prev_hash``.

    Appending the two fields (protobuf merges concatenated messages) rather than re-encoding
    makes the bytes a function of (record, seq, prev_hash) alone, whatever protobuf runtime or
    contract version a broker replica runs. Two replicas that race on the same record therefore
    build the very same entry, which the sequencer's pipelined appends rely on.
    """
    if seq < 1:
        raise ValueError(f"entry seq starts at 1, got {seq}")
    if (seq == 1) != (not prev_hash):
        raise ValueError("the first entry has no prev_hash; every later one has one")
    return record + ledger_pb2.LedgerEntry(seq=seq, prev_hash=prev_hash).SerializeToString()


# -- checkpoints --------------------------------------------------------------------------------


def sign_checkpoint(*, seq: int, head_hash: str, key: SigningKey, clock: Clock) -> envelope_pb2.SignedMessage:
    """The broker's signed statement that entry ``seq`` of the ledger has hash ``head_hash``."""
    if seq < 1 or not head_hash:
        raise ValueError("a checkpoint covers an entry: seq >= 1 and its hash")
    checkpoint = ledger_pb2.Checkpoint(
        seq=seq, head_hash=head_hash, at=_timestamp(clock.now()), broker_kid=key.kid
    )
    return sign_message(
        checkpoint.SerializeToString(),
        key=key,
        issuer=BROKER_ID,
        audience=CHECKPOINT_AUDIENCE,
        message_type=CHECKPOINT_TYPE,
        clock=clock,
        ttl=_CHECKPOINT_TTL,
    )


def verify_checkpoint(signed: envelope_pb2.SignedMessage, *, keys: KeyStore) -> ledger_pb2.Checkpoint:
    """The checkpoint, if the broker signed exactly these bytes with a key valid at the time.

    Judged as of its signing time (the ``at`` it states, which the signature covers): a
    checkpoint stays valid after the key that signed it is rotated out, and one dated after the
    key's revocation is refused. Raises :class:`~broker.protocol.VerificationError`.
    """
    try:
        checkpoint = ledger_pb2.Checkpoint.FromString(signed.payload)
    except DecodeError as exc:
        raise MalformedSignatureError("checkpoint payload is not a Checkpoint") from exc
    if not checkpoint.HasField("at"):
        raise MalformedSignatureError("checkpoint has no signing time")
    claims = verify_detached(
        signed.signature,
        signed.payload,
        keys=keys,
        audience=CHECKPOINT_AUDIENCE,
        clock=ManualClock(checkpoint.at.ToDatetime(tzinfo=UTC)),
        expected_issuer=BROKER_ID,
        expected_type=CHECKPOINT_TYPE,
        max_ttl=None,
    )
    if checkpoint.broker_kid and checkpoint.broker_kid != claims.kid:
        raise MalformedSignatureError("checkpoint names another key than the one that signed it")
    if checkpoint.seq < 1 or not checkpoint.head_hash:
        raise MalformedSignatureError("checkpoint covers no entry")
    return checkpoint


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ChainRecord:
    """One line of the chain as exported: what the ledger states about entry ``seq``."""

    seq: int
    """Position in the chain, as stated."""
    hash: str
    """The entry's hash, as stated."""
    prev_hash: str
    """The previous entry's hash, as stated."""
    entry: bytes | None = None
    """The stored entry bytes; ``None`` when withheld (checked by stated hash and links only)."""


class ProblemKind(enum.StrEnum):
    """What :func:`verify_chain` found wrong."""

    CHANGED = "CHANGED"
    """An entry's content is not what the chain committed to."""
    MISSING = "MISSING"
    """Entries are absent: a gap in the chain, or entries a checkpoint covers."""
    INSERTED = "INSERTED"
    """A record that is no part of the chain (a second copy, a forgery, a stray)."""
    REORDERED = "REORDERED"
    """An entry appears out of chain order."""
    BAD_CHECKPOINT_SIGNATURE = "BAD_CHECKPOINT_SIGNATURE"
    """A checkpoint whose broker signature does not verify."""
    CHECKPOINT_MISMATCH = "CHECKPOINT_MISMATCH"
    """A validly signed checkpoint disagrees with a chain whose links hold: history rewritten."""


@dataclass(frozen=True, kw_only=True)
class ChainProblem:
    """One finding, naming the entry concerned."""

    kind: ProblemKind
    """What is wrong."""
    seq: int
    """The entry concerned (first of a range for MISSING; the checkpoint's seq for checkpoint
    problems, 0 when it cannot be read)."""
    detail: str
    """What was seen, for people."""
    record_index: int | None = None
    """Position of the offending record in the ``records`` given, if a record is at fault."""
    checkpoint_index: int | None = None
    """Position of the offending checkpoint in the ``checkpoints`` given, if one is at fault."""
    last_seq: int | None = None
    """Last entry of a MISSING range (equal to ``seq`` for one entry)."""

    def __str__(self) -> str:
        if self.kind is ProblemKind.MISSING and self.last_seq is not None and self.last_seq != self.seq:
            return f"{self.kind}: entries {self.seq}..{self.last_seq}: {self.detail}"
        if self.kind in (ProblemKind.BAD_CHECKPOINT_SIGNATURE, ProblemKind.CHECKPOINT_MISMATCH):
            return f"{self.kind}: checkpoint of entry {self.seq}: {self.detail}"
        return f"{self.kind}: entry {self.seq}: {self.detail}"


@dataclass(frozen=True, kw_only=True)
class ChainReport:
    """The verdict of :func:`verify_chain`."""

    problems: tuple[ChainProblem, ...]
    """Everything found, by entry; empty when the chain verifies."""
    records: int
    """Records examined."""
    withheld: int
    """Records whose entry bytes were withheld (checked by stated hash and links)."""
    head_seq: int
    """Seq of the last entry of the chain."""
    head_hash: str
    """Hash of that entry."""
    checkpoints: int
    """Checkpoints whose signature verified."""
    covered_seq: int
    """Highest seq a verified checkpoint vouches for, and the chain agrees with."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def uncovered(self) -> int:
        """Entries after the last matching checkpoint: linked, but not yet vouched for by a signature."""
        return max(0, self.head_seq - self.covered_seq)


@dataclass(eq=False)
class _Rec:
    """A record as examined: every value it could stand for, and whether they agree."""

    index: int
    stated: ChainRecord
    seqs: tuple[int, ...]
    hashes: frozenset[str]
    prevs: frozenset[str]
    inconsistency: str | None
    seq: int = 0

    @property
    def withheld(self) -> bool:
        return self.stated.entry is None


def _examine(index: int, record: ChainRecord) -> _Rec:
    """Compare what a record states with what its bytes say.

    A record whose bytes and statements disagree is CHANGED in itself; for the links both
    versions are kept, so whichever one the attacker left alone still ties it into the chain and
    the change is reported once, here, not again as a broken link.
    """
    seqs = [record.seq]
    hashes = {record.hash}
    prevs = {record.prev_hash}
    reasons: list[str] = []
    if record.entry is not None:
        content_hash = entry_hash(record.entry)
        hashes.add(content_hash)
        # As bytes: compare_digest refuses str with non-ASCII characters (a forged export).
        if not hmac.compare_digest(content_hash.encode(), record.hash.encode()):
            reasons.append("its bytes do not hash to its stated hash")
        try:
            parsed = ledger_pb2.LedgerEntry.FromString(record.entry)
        except DecodeError:
            reasons.append("its bytes are not a ledger entry")
        else:
            if parsed.seq != record.seq:
                seqs.append(parsed.seq)
                reasons.append(f"its bytes say seq {parsed.seq}")
            prevs.add(parsed.prev_hash)
            if parsed.prev_hash != record.prev_hash:
                reasons.append("its bytes hold another prev_hash than stated")
            if parsed.hash:
                reasons.append("its bytes carry a hash field, which stored entries leave empty")
    return _Rec(
        index=index,
        stated=record,
        seqs=tuple(seqs),
        hashes=frozenset(hashes),
        prevs=frozenset(prevs),
        inconsistency="; ".join(reasons) or None,
        seq=record.seq,
    )


def _links(earlier: _Rec, later: _Rec) -> bool:
    return not earlier.hashes.isdisjoint(later.prevs)


@dataclass(frozen=True)
class _Checkpoint:
    index: int
    seq: int
    head_hash: str


class _Verifier:
    def __init__(
        self, records: Sequence[ChainRecord], checkpoints: Sequence[envelope_pb2.SignedMessage]
    ) -> None:
        self.recs = [_examine(i, r) for i, r in enumerate(records)]
        self.checkpoints_in = checkpoints
        self.problems: list[ChainProblem] = []
        self.valid_checkpoints: list[_Checkpoint] = []
        self.by_seq: dict[int, _Rec] = {}
        self.culprits: set[int] = set()  # seqs already reported as CHANGED
        self.absorbed: set[int] = set()  # seqs whose incoming broken link a finding explains
        self.checkpoint_hashes: dict[int, set[str]] = defaultdict(set)
        self.top = 0

    def report(
        self,
        kind: ProblemKind,
        seq: int,
        detail: str,
        *,
        record_index: int | None = None,
        checkpoint_index: int | None = None,
        last_seq: int | None = None,
    ) -> None:
        self.problems.append(
            ChainProblem(
                kind=kind,
                seq=seq,
                detail=detail,
                record_index=record_index,
                checkpoint_index=checkpoint_index,
                last_seq=last_seq,
            )
        )

    # -- checkpoints ----------------------------------------------------------------------------

    def check_signatures(self, keys: KeyStore) -> None:
        for index, signed in enumerate(self.checkpoints_in):
            try:
                checkpoint = verify_checkpoint(signed, keys=keys)
            except VerificationError as exc:
                self.report(
                    ProblemKind.BAD_CHECKPOINT_SIGNATURE,
                    _unverified_seq(signed),
                    f"the broker signature does not verify ({exc.reason}: {exc})",
                    checkpoint_index=index,
                )
                continue
            self.valid_checkpoints.append(_Checkpoint(index, checkpoint.seq, checkpoint.head_hash))
        for cp in self.valid_checkpoints:
            self.checkpoint_hashes[cp.seq].add(cp.head_hash)

    def vouched(self, rec: _Rec) -> bool | None:
        """True / False if a checkpoint covers ``rec``'s seq and agrees / disagrees; None if none does."""
        hashes = self.checkpoint_hashes.get(rec.seq)
        if not hashes:
            return None
        return not rec.hashes.isdisjoint(hashes)

    # -- slots ----------------------------------------------------------------------------------

    def assign_seqs(self) -> None:
        """A record whose bytes and statement name different seqs takes the one no one else claims."""
        claimed: dict[int, int] = defaultdict(int)
        for rec in self.recs:
            if len(rec.seqs) == 1:
                claimed[rec.seqs[0]] += 1
        for rec in self.recs:
            if len(rec.seqs) > 1:
                stated, parsed = rec.seqs
                rec.seq = stated if claimed[parsed] and not claimed[stated] else parsed

    def choose_genuine(self) -> None:
        """One record per seq; the others claiming it are INSERTED."""
        slots: dict[int, list[_Rec]] = defaultdict(list)
        for rec in self.recs:
            slots[rec.seq].append(rec)
        for seq in sorted(slots):
            candidates = slots[seq]
            if seq < 1:
                for rec in candidates:
                    self.report(
                        ProblemKind.INSERTED,
                        seq,
                        "a record with no valid position (seq must start at 1)",
                        record_index=rec.index,
                    )
                continue
            if len(candidates) == 1:
                self.by_seq[seq] = candidates[0]
                continue
            ranked = sorted(candidates, key=lambda c: self._rank(c, slots), reverse=True)
            genuine = ranked[0]
            self.by_seq[seq] = genuine
            for rec in ranked[1:]:
                copy = rec.stated == genuine.stated
                self.report(
                    ProblemKind.INSERTED,
                    seq,
                    "a second copy of this entry"
                    if copy
                    else "a second record claims this seq, and the chain does not run through it",
                    record_index=rec.index,
                )

    def _rank(self, rec: _Rec, slots: dict[int, list[_Rec]]) -> tuple[int, int, int]:
        score = 0
        if any(_links(rec, nxt) for nxt in slots.get(rec.seq + 1, ())):
            score += 4  # the next entry committed to this one
        if self.vouched(rec):
            score += 4
        if (rec.seq == 1 and "" in rec.prevs) or any(_links(prv, rec) for prv in slots.get(rec.seq - 1, ())):
            score += 2
        if rec.inconsistency is None:
            score += 1
        # Ties (an exact copy): the one standing where the chain order puts it, else the first.
        before = [p.index for p in slots.get(rec.seq - 1, ())]
        after = [n.index for n in slots.get(rec.seq + 1, ())]
        in_place = all(i < rec.index for i in before) and all(rec.index < i for i in after)
        return score, int(in_place), -rec.index

    def drop_strays(self) -> None:
        """A record tied to nothing, past the end of the linked chain, is INSERTED, not a gap."""
        linked_top = max((cp.seq for cp in self.valid_checkpoints), default=0)
        loose: list[_Rec] = []
        for seq, rec in self.by_seq.items():
            prv, nxt = self.by_seq.get(seq - 1), self.by_seq.get(seq + 1)
            tied = (
                (prv is not None and _links(prv, rec))
                or (seq == 1 and "" in rec.prevs)
                or (nxt is not None and _links(rec, nxt))
                or bool(self.vouched(rec))
            )
            if tied:
                linked_top = max(linked_top, seq)
            else:
                loose.append(rec)
        for rec in loose:
            if rec.seq > linked_top + 1:
                del self.by_seq[rec.seq]
                self.report(
                    ProblemKind.INSERTED,
                    rec.seq,
                    "a record tied to no other: nothing links to it and it links to nothing",
                    record_index=rec.index,
                )
        self.top = max([*self.by_seq, linked_top], default=0)

    def report_gaps(self) -> None:
        """One MISSING per run of absent seqs (walking the present ones, not the whole range)."""
        present = sorted(self.by_seq)
        edges = zip([0, *present], [*present, self.top + 1], strict=True)
        for before, after in edges:
            if after - before < 2:
                continue
            first, last = before + 1, after - 1
            if after > self.top:
                why = "covered by a signed checkpoint but absent"
            else:
                why = "absent: the chain skips it" if first == last else "absent: the chain skips them"
            self.report(ProblemKind.MISSING, first, why, last_seq=last)

    # -- links ----------------------------------------------------------------------------------

    def flag_inconsistent(self) -> None:
        for seq, rec in self.by_seq.items():
            if rec.inconsistency is not None:
                self.culprits.add(seq)
                self.report(ProblemKind.CHANGED, seq, rec.inconsistency, record_index=rec.index)

    def broken(self, seq: int) -> bool | None:
        """Whether the link into entry ``seq`` is broken; None if either end is absent."""
        rec = self.by_seq.get(seq)
        if rec is None:
            return None
        if seq == 1:
            return "" not in rec.prevs
        prv = self.by_seq.get(seq - 1)
        if prv is None:
            return None
        return not _links(prv, rec)

    def trace_rewrites(self) -> None:
        """Blame each checkpoint that disagrees with a linked chain on the first culprit it proves.

        Entry ``m`` hashes to something else than the broker signed. If the link ``m -> m+1``
        still holds, the attacker re-linked the entries after ``m`` to hide the change; where that
        re-linking stops, one more link breaks. That break belongs to the same tampering, so it
        is absorbed and ``m`` is reported, once. A chain re-linked through to its end leaves only
        the signature to disagree: CHECKPOINT_MISMATCH, the history up to ``m`` was rewritten.
        """
        run_end = 0
        for cp in sorted(self.valid_checkpoints, key=lambda c: c.seq):
            rec = self.by_seq.get(cp.seq)
            if rec is None or cp.seq in self.culprits or cp.head_hash in rec.hashes:
                continue  # MISSING, CHANGED already, or vouched for
            if cp.seq <= run_end:
                continue  # inside a rewrite already reported
            if cp.seq + 1 not in self.by_seq:
                self.blame(cp.seq, "its hash differs from the one the broker signed in a checkpoint")
                continue
            if self.broken(cp.seq + 1):
                continue  # a plain change of entry m: the link pass blames it
            last = cp.seq + 1
            while self.broken(last + 1) is False:
                last += 1
            run_end = last
            if self.broken(last + 1):
                self.absorbed.add(last + 1)
                self.blame(
                    cp.seq,
                    "its hash differs from the one the broker signed in a checkpoint, and entries "
                    f"{cp.seq + 1}..{last} were re-linked to hide it",
                )
            else:
                self.report(
                    ProblemKind.CHECKPOINT_MISMATCH,
                    cp.seq,
                    "the broker signed another hash for this entry, yet the chain is linked from it "
                    f"to entry {last}: the history up to here was rewritten",
                    checkpoint_index=cp.index,
                )

    def blame(self, seq: int, why: str) -> None:
        if seq not in self.culprits:
            self.culprits.add(seq)
            self.report(ProblemKind.CHANGED, seq, why, record_index=self.by_seq[seq].index)

    def attribute_links(self) -> None:
        """Each broken link blames one entry, chosen so that one change is one finding.

        A changed entry ``k`` breaks only the link ``k -> k+1``. An entry whose ``prev_hash`` was
        rewritten changes its own hash too, so it breaks both ``k-1 -> k`` and ``k -> k+1``.
        Checkpoints settle the remaining doubt where they exist.
        """
        for seq in sorted(self.by_seq):
            if not self.broken(seq) or seq in self.absorbed:
                continue
            if seq == 1:
                self.blame(1, "it claims a predecessor, but the chain starts with it")
                continue
            if {seq - 1, seq} & self.culprits:
                continue  # already explained by a change found at one of its ends
            later = self.vouched(self.by_seq[seq]) is False or self.broken(seq + 1) is True
            if later or self.vouched(self.by_seq[seq - 1]) is True:
                self.blame(seq, f"its prev_hash does not match entry {seq - 1}, so its content changed")
            else:
                self.blame(seq - 1, f"it no longer hashes to what entry {seq} committed to as its prev_hash")

    def coverage(self) -> int:
        """The highest seq a valid checkpoint vouches for; reports any disagreement not yet explained."""
        covered = 0
        for cp in self.valid_checkpoints:
            rec = self.by_seq.get(cp.seq)
            if rec is None:
                continue
            if cp.head_hash in rec.hashes:
                covered = max(covered, cp.seq)
            elif not any(p.seq == cp.seq for p in self.problems):
                self.blame(cp.seq, "its hash differs from the one the broker signed in a checkpoint")
        return covered

    # -- order ----------------------------------------------------------------------------------

    def check_order(self) -> None:
        """Entries not on the longest run in chain order are the ones that were moved."""
        seqs = sorted(self.by_seq)
        positions = [self.by_seq[s].index for s in seqs]
        keep = _longest_increasing(positions)
        for i, seq in enumerate(seqs):
            if i not in keep:
                rec = self.by_seq[seq]
                self.report(
                    ProblemKind.REORDERED,
                    seq,
                    f"out of chain order: it stands at record {rec.index + 1}",
                    record_index=rec.index,
                )


def _longest_increasing(values: Sequence[int]) -> set[int]:
    """Indices of one longest strictly increasing subsequence of ``values`` (patience sorting)."""
    tails: list[int] = []  # tails[k]: index of the smallest tail of an increasing run of length k+1
    parent: list[int] = [-1] * len(values)
    for i, value in enumerate(values):
        lo, hi = 0, len(tails)
        while lo < hi:
            mid = (lo + hi) // 2
            if values[tails[mid]] < value:
                lo = mid + 1
            else:
                hi = mid
        parent[i] = tails[lo - 1] if lo else -1
        if lo == len(tails):
            tails.append(i)
        else:
            tails[lo] = i
    keep: set[int] = set()
    i = tails[-1] if tails else -1
    while i >= 0:
        keep.add(i)
        i = parent[i]
    return keep


def _unverified_seq(signed: envelope_pb2.SignedMessage) -> int:
    """The seq a checkpoint claims, for naming it in a report; 0 if it cannot be read."""
    try:
        return int(ledger_pb2.Checkpoint.FromString(signed.payload).seq)
    except DecodeError:
        return 0


def verify_chain(
    records: Sequence[ChainRecord],
    checkpoints: Sequence[envelope_pb2.SignedMessage],
    *,
    keys: KeyStore,
) -> ChainReport:
    """Prove a full ledger (from entry 1) and every checkpoint signature, offline.

    ``records`` in the order they were exported; ``keys`` needs only the broker's public keys.
    Each problem names the entry it is about. One tampering (an entry changed, removed,
    inserted or moved) yields one problem of the matching kind; what only a signature can
    vouch for, the tail after the last checkpoint, is reported as :attr:`ChainReport.uncovered`.
    """
    verifier = _Verifier(records, checkpoints)
    verifier.check_signatures(keys)
    verifier.assign_seqs()
    verifier.choose_genuine()
    verifier.drop_strays()
    verifier.report_gaps()
    verifier.flag_inconsistent()
    verifier.trace_rewrites()
    verifier.attribute_links()
    covered = verifier.coverage()
    verifier.check_order()
    head = verifier.by_seq.get(max(verifier.by_seq, default=0))
    problems = sorted(verifier.problems, key=lambda p: (p.seq, p.kind.value))
    return ChainReport(
        problems=tuple(problems),
        records=len(records),
        withheld=sum(1 for r in records if r.entry is None),
        head_seq=head.seq if head is not None else 0,
        head_hash=head.stated.hash if head is not None else "",
        checkpoints=len(verifier.valid_checkpoints),
        covered_seq=covered,
    )
