"""The ledger's hash chain: every single tampering is found once, as itself, naming its entry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from greenchannel.v1 import common_pb2, envelope_pb2, ledger_pb2

from broker.protocol import (
    BROKER_ID,
    CHECKPOINT_TYPE,
    ChainRecord,
    ChainReport,
    DigestMismatchError,
    ManualClock,
    ProblemKind,
    RevokedKeyError,
    SigningKey,
    StaticKeyStore,
    WrongAudienceError,
    build_entry,
    entry_hash,
    generate_signing_key,
    link_entry,
    parse_unlinked,
    sign_checkpoint,
    sign_message,
    verify_chain,
    verify_checkpoint,
)

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
N = 20
RID = "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"
FIRST, MIDDLE, LAST = 1, 10, N
POSITIONS = pytest.mark.parametrize("seq", [FIRST, MIDDLE, LAST], ids=["first", "middle", "last"])

Records = list[ChainRecord]


def record_bytes(i: int) -> bytes:
    return build_entry(
        kind=ledger_pb2.LEDGER_ENTRY_KIND_EVENT,
        actor="bank-icbc" if i % 2 else "police-310115",
        at=T0 + timedelta(seconds=i),
        request_id=RID,
        case_number="SH-PD-2026-0001",
        parties=["police-310115", "bank-icbc"],
        state=common_pb2.REQUEST_STATE_DELIVERED,
        subject_digest="sha-256:" + "A" * 43,
    )


def chain(n: int = N) -> Records:
    records: Records = []
    prev = ""
    for seq in range(1, n + 1):
        entry = link_entry(record_bytes(seq), seq=seq, prev_hash=prev)
        records.append(ChainRecord(seq=seq, hash=entry_hash(entry), prev_hash=prev, entry=entry))
        prev = entry_hash(entry)
    return records


@dataclasses.dataclass
class Ledger:
    key: SigningKey
    clock: ManualClock
    records: Records
    checkpoints: list[envelope_pb2.SignedMessage]

    @property
    def keys(self) -> StaticKeyStore:
        return StaticKeyStore({BROKER_ID: [self.key.public(not_before=T0 - timedelta(days=1))]})

    def verify(
        self,
        records: Records | None = None,
        checkpoints: list[envelope_pb2.SignedMessage] | None = None,
    ) -> ChainReport:
        return verify_chain(
            self.records if records is None else records,
            self.checkpoints if checkpoints is None else checkpoints,
            keys=self.keys,
        )

    def checkpoint(self, seq: int, head_hash: str | None = None) -> envelope_pb2.SignedMessage:
        head = self.records[seq - 1].hash if head_hash is None else head_hash
        return sign_checkpoint(seq=seq, head_hash=head, key=self.key, clock=self.clock)


@pytest.fixture
def ledger() -> Ledger:
    key = generate_signing_key()
    clock = ManualClock(T0)
    led = Ledger(key=key, clock=clock, records=chain(), checkpoints=[])
    led.checkpoints = [led.checkpoint(10), led.checkpoint(N)]
    return led


def only_problem(report: ChainReport) -> tuple[ProblemKind, int]:
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    problem = report.problems[0]
    return problem.kind, problem.seq


def forged(record: ChainRecord, *, rehash: bool) -> ChainRecord:
    """The same entry with another actor; with ``rehash`` its stated hash follows the new bytes."""
    assert record.entry is not None
    entry = ledger_pb2.LedgerEntry.FromString(record.entry)
    entry.actor = "bank-forged"
    data = entry.SerializeToString()
    return dataclasses.replace(record, entry=data, hash=entry_hash(data) if rehash else record.hash)


# -- the untouched chain -----------------------------------------------------------------------


def test_unmodified_chain_verifies(ledger: Ledger) -> None:
    report = ledger.verify()
    assert report.ok, [str(p) for p in report.problems]
    assert (report.records, report.head_seq, report.head_hash) == (N, N, ledger.records[-1].hash)
    assert (report.checkpoints, report.covered_seq, report.uncovered) == (2, N, 0)


def test_withheld_entries_still_verify(ledger: Ledger) -> None:
    withheld = [dataclasses.replace(r, entry=None) if r.seq % 3 else r for r in ledger.records]
    report = ledger.verify(withheld)
    assert report.ok, [str(p) for p in report.problems]
    assert report.withheld == sum(1 for r in withheld if r.entry is None) > 0


def test_tail_after_last_checkpoint_is_reported_as_uncovered(ledger: Ledger) -> None:
    report = ledger.verify(checkpoints=ledger.checkpoints[:1])
    assert report.ok
    assert (report.covered_seq, report.uncovered) == (10, N - 10)


def test_empty_ledger_verifies(ledger: Ledger) -> None:
    assert ledger.verify([], []).ok


# -- one tampering, one finding ----------------------------------------------------------------


@POSITIONS
def test_changed_bytes(ledger: Ledger, seq: int) -> None:
    records = list(ledger.records)
    records[seq - 1] = forged(records[seq - 1], rehash=False)
    assert only_problem(ledger.verify(records)) == (ProblemKind.CHANGED, seq)


@POSITIONS
def test_changed_bytes_with_hash_rewritten(ledger: Ledger, seq: int) -> None:
    records = list(ledger.records)
    records[seq - 1] = forged(records[seq - 1], rehash=True)
    assert only_problem(ledger.verify(records)) == (ProblemKind.CHANGED, seq)


@POSITIONS
def test_changed_stated_hash(ledger: Ledger, seq: int) -> None:
    records = list(ledger.records)
    records[seq - 1] = dataclasses.replace(records[seq - 1], hash="sha-256:" + "B" * 43)
    assert only_problem(ledger.verify(records)) == (ProblemKind.CHANGED, seq)


@POSITIONS
def test_changed_stated_seq(ledger: Ledger, seq: int) -> None:
    records = list(ledger.records)
    records[seq - 1] = dataclasses.replace(records[seq - 1], seq=seq + 3 if seq < N else seq - 3)
    assert only_problem(ledger.verify(records)) == (ProblemKind.CHANGED, seq)


@POSITIONS
def test_changed_withheld_entry(ledger: Ledger, seq: int) -> None:
    withheld = [dataclasses.replace(r, entry=None) for r in ledger.records]
    withheld[seq - 1] = dataclasses.replace(withheld[seq - 1], hash="sha-256:" + "C" * 43)
    assert only_problem(ledger.verify(withheld)) == (ProblemKind.CHANGED, seq)


@POSITIONS
def test_deleted(ledger: Ledger, seq: int) -> None:
    records = [r for r in ledger.records if r.seq != seq]
    report = ledger.verify(records)
    assert only_problem(report) == (ProblemKind.MISSING, seq)
    assert report.problems[0].last_seq == seq


@POSITIONS
def test_inserted_forgery(ledger: Ledger, seq: int) -> None:
    records = list(ledger.records)
    records.insert(seq, forged(records[seq - 1], rehash=True))
    report = ledger.verify(records)
    assert only_problem(report) == (ProblemKind.INSERTED, seq)
    assert report.problems[0].record_index == seq  # the forgery, not the original


@POSITIONS
def test_inserted_copy(ledger: Ledger, seq: int) -> None:
    records = list(ledger.records)
    records.insert(3, records[seq - 1])
    assert only_problem(ledger.verify(records)) == (ProblemKind.INSERTED, seq)


def test_inserted_stray_record(ledger: Ledger) -> None:
    records = list(ledger.records)
    stray = link_entry(record_bytes(99), seq=57, prev_hash="sha-256:" + "D" * 43)
    records.insert(
        7, ChainRecord(seq=57, hash=entry_hash(stray), prev_hash="sha-256:" + "D" * 43, entry=stray)
    )
    assert only_problem(ledger.verify(records)) == (ProblemKind.INSERTED, 57)


@POSITIONS
def test_reordered(ledger: Ledger, seq: int) -> None:
    records = list(ledger.records)
    moved = records.pop(seq - 1)
    records.insert(seq + 3 if seq < N else seq - 5, moved)
    report = ledger.verify(records)
    assert only_problem(report) == (ProblemKind.REORDERED, seq)


def test_adjacent_swap_names_one_of_the_two(ledger: Ledger) -> None:
    records = list(ledger.records)
    records[4], records[5] = records[5], records[4]
    kind, seq = only_problem(ledger.verify(records))
    assert kind is ProblemKind.REORDERED
    assert seq in (5, 6)


def test_rewritten_prev_hash_is_blamed_on_the_entry_that_holds_it(ledger: Ledger) -> None:
    # Entry 6 changed and entry 7 re-pointed at it: the links hold up to 7; 7 -> 8 breaks.
    records = list(ledger.records)
    records[5] = forged(records[5], rehash=True)
    seven = ledger_pb2.LedgerEntry.FromString(records[6].entry or b"")
    seven.prev_hash = records[5].hash
    data = seven.SerializeToString()
    records[6] = ChainRecord(seq=7, hash=entry_hash(data), prev_hash=records[5].hash, entry=data)
    assert only_problem(ledger.verify(records)) == (ProblemKind.CHANGED, 7)


def test_checkpoint_pins_the_first_culprit(ledger: Ledger) -> None:
    # As above, but with entry 10 changed and 11 re-pointed: the checkpoint at 10 names 10, and
    # the break 11 -> 12 is the end of that same cover-up, not a second finding.
    records = list(ledger.records)
    records[9] = forged(records[9], rehash=True)
    eleven = ledger_pb2.LedgerEntry.FromString(records[10].entry or b"")
    eleven.prev_hash = records[9].hash
    data = eleven.SerializeToString()
    records[10] = ChainRecord(seq=11, hash=entry_hash(data), prev_hash=records[9].hash, entry=data)
    assert only_problem(ledger.verify(records)) == (ProblemKind.CHANGED, 10)


def test_rewritten_history_up_to_the_head_is_caught_by_the_checkpoints(ledger: Ledger) -> None:
    # Entry 15 changed and every later entry re-linked: no link breaks, the checkpoint at 20 does.
    records = list(ledger.records[:14])
    prev = records[-1].hash
    for original in ledger.records[14:]:
        entry = ledger_pb2.LedgerEntry.FromString(original.entry or b"")
        entry.prev_hash = prev
        if original.seq == 15:
            entry.actor = "bank-forged"
        data = entry.SerializeToString()
        records.append(ChainRecord(seq=original.seq, hash=entry_hash(data), prev_hash=prev, entry=data))
        prev = entry_hash(data)
    assert only_problem(ledger.verify(records)) == (ProblemKind.CHANGED, N)


# -- checkpoints -------------------------------------------------------------------------------


def test_tampered_checkpoint_signature(ledger: Ledger) -> None:
    bad = envelope_pb2.SignedMessage()
    bad.CopyFrom(ledger.checkpoints[0])
    bad.signature = bad.signature[:-4] + ("AAAA" if not bad.signature.endswith("AAAA") else "BBBB")
    report = ledger.verify(checkpoints=[bad, ledger.checkpoints[1]])
    assert only_problem(report) == (ProblemKind.BAD_CHECKPOINT_SIGNATURE, 10)
    assert report.problems[0].checkpoint_index == 0


def test_tampered_checkpoint_payload(ledger: Ledger) -> None:
    checkpoint = ledger_pb2.Checkpoint.FromString(ledger.checkpoints[1].payload)
    checkpoint.seq = 12
    bad = envelope_pb2.SignedMessage(
        payload=checkpoint.SerializeToString(), signature=ledger.checkpoints[1].signature
    )
    report = ledger.verify(checkpoints=[ledger.checkpoints[0], bad])
    assert only_problem(report) == (ProblemKind.BAD_CHECKPOINT_SIGNATURE, 12)


def test_checkpoint_from_another_key(ledger: Ledger) -> None:
    impostor = sign_checkpoint(
        seq=N, head_hash=ledger.records[-1].hash, key=generate_signing_key(), clock=ledger.clock
    )
    assert only_problem(ledger.verify(checkpoints=[impostor])) == (ProblemKind.BAD_CHECKPOINT_SIGNATURE, N)


def test_checkpoint_head_mismatch(ledger: Ledger) -> None:
    lying = ledger.checkpoint(10, head_hash=ledger.records[3].hash)
    report = ledger.verify(checkpoints=[lying, ledger.checkpoints[1]])
    assert only_problem(report) == (ProblemKind.CHECKPOINT_MISMATCH, 10)
    assert report.problems[0].checkpoint_index == 0


def test_checkpoint_beyond_the_export_reports_the_missing_tail(ledger: Ledger) -> None:
    report = ledger.verify(ledger.records[:16])
    assert only_problem(report) == (ProblemKind.MISSING, 17)
    assert report.problems[0].last_seq == N


def test_checkpoint_verifies_long_after_signing_and_after_rotation(ledger: Ledger) -> None:
    # The key retired since: a checkpoint signed while it was valid still verifies.
    retired = StaticKeyStore(
        {BROKER_ID: [ledger.key.public(not_before=T0 - timedelta(days=1), not_after=T0 + timedelta(days=1))]}
    )
    checkpoint = verify_checkpoint(ledger.checkpoints[1], keys=retired)
    assert (checkpoint.seq, checkpoint.head_hash, checkpoint.broker_kid) == (
        N,
        ledger.records[-1].hash,
        ledger.key.kid,
    )


def test_checkpoint_signed_after_revocation_is_refused(ledger: Ledger) -> None:
    revoked = StaticKeyStore({BROKER_ID: [ledger.key.public(revoked_at=T0 - timedelta(hours=1))]})
    with pytest.raises(RevokedKeyError):
        verify_checkpoint(ledger.checkpoints[1], keys=revoked)


def test_only_checkpoint_signatures_count(ledger: Ledger) -> None:
    other = sign_message(
        ledger.checkpoints[0].payload,
        key=ledger.key,
        issuer=BROKER_ID,
        audience="bank-icbc",
        message_type=CHECKPOINT_TYPE,
        clock=ledger.clock,
    )
    with pytest.raises(WrongAudienceError):
        verify_checkpoint(other, keys=ledger.keys)
    swapped = envelope_pb2.SignedMessage(
        payload=ledger.checkpoints[0].payload, signature=ledger.checkpoints[1].signature
    )
    with pytest.raises(DigestMismatchError):
        verify_checkpoint(swapped, keys=ledger.keys)


# -- building entries --------------------------------------------------------------------------


def test_link_entry_depends_only_on_record_seq_and_prev() -> None:
    record = record_bytes(1)
    first = link_entry(record, seq=1, prev_hash="")
    assert first == link_entry(record, seq=1, prev_hash="")
    parsed = ledger_pb2.LedgerEntry.FromString(first)
    assert (parsed.seq, parsed.prev_hash, parsed.hash) == (1, "", "")
    second = link_entry(record, seq=2, prev_hash=entry_hash(first))
    assert ledger_pb2.LedgerEntry.FromString(second).prev_hash == entry_hash(first)


@pytest.mark.parametrize(
    ("seq", "prev"),
    [(0, ""), (1, "sha-256:x"), (2, "")],
    ids=["seq-0", "first-with-prev", "later-without-prev"],
)
def test_link_entry_refuses_impossible_links(seq: int, prev: str) -> None:
    with pytest.raises(ValueError, match=r"seq|prev_hash"):
        link_entry(record_bytes(1), seq=seq, prev_hash=prev)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda e: setattr(e, "seq", 4),
        lambda e: setattr(e, "prev_hash", "sha-256:x"),
        lambda e: setattr(e, "hash", "sha-256:x"),
        lambda e: setattr(e, "actor", ""),
        lambda e: setattr(e, "kind", ledger_pb2.LEDGER_ENTRY_KIND_UNSPECIFIED),
    ],
    ids=["seq", "prev_hash", "hash", "no-actor", "no-kind"],
)
def test_parse_unlinked_refuses_what_is_not_an_intake_record(
    mangle: Callable[[ledger_pb2.LedgerEntry], None],
) -> None:
    entry = ledger_pb2.LedgerEntry.FromString(record_bytes(1))
    mangle(entry)
    with pytest.raises(ValueError, match="intake record"):
        parse_unlinked(entry.SerializeToString())
    with pytest.raises(ValueError, match="LedgerEntry"):
        parse_unlinked(b"\xff\xff")


def test_build_entry_requires_kind_actor_and_aware_time() -> None:
    with pytest.raises(ValueError, match="kind"):
        build_entry(kind=ledger_pb2.LEDGER_ENTRY_KIND_UNSPECIFIED, actor="x", at=T0)
    with pytest.raises(ValueError, match="actor"):
        build_entry(kind=ledger_pb2.LEDGER_ENTRY_KIND_BREACH, actor="", at=T0)
    with pytest.raises(ValueError, match="timezone"):
        build_entry(kind=ledger_pb2.LEDGER_ENTRY_KIND_BREACH, actor="x", at=datetime(2026, 1, 1))


def test_problems_read_as_sentences(ledger: Ledger) -> None:
    records = [r for r in ledger.records if r.seq not in (4, 5)]
    (problem,) = ledger.verify(records).problems
    assert str(problem) == "MISSING: entries 4..5: absent: the chain skips them"


def test_checkpoint_far_beyond_the_ledger_is_one_missing_range(ledger: Ledger) -> None:
    beyond = sign_checkpoint(seq=10**9, head_hash=ledger.records[9].hash, key=ledger.key, clock=ledger.clock)
    report = ledger.verify(checkpoints=[*ledger.checkpoints, beyond])
    assert only_problem(report) == (ProblemKind.MISSING, N + 1)
    assert report.problems[0].last_seq == 10**9


TAMPERINGS: dict[str, tuple[ProblemKind, Callable[[Records, int], Records]]] = {
    "changed": (
        ProblemKind.CHANGED,
        lambda r, i: [*r[:i], forged(r[i], rehash=True), *r[i + 1 :]],
    ),
    "deleted": (ProblemKind.MISSING, lambda r, i: [*r[:i], *r[i + 1 :]]),
    "inserted": (ProblemKind.INSERTED, lambda r, i: [*r[: i + 1], forged(r[i], rehash=True), *r[i + 1 :]]),
    "moved": (
        ProblemKind.REORDERED,
        lambda r, i: (
            [*r[:i], *r[i + 1 : i + 4], r[i], *r[i + 4 :]]
            if i + 4 <= len(r)
            else [*r[: i - 3], r[i], *r[i - 3 : i], *r[i + 1 :]]
        ),
    ),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_every_entry_every_tampering_one_finding(ledger: Ledger, tampering: str) -> None:
    kind, tamper = TAMPERINGS[tampering]
    for index in range(N):
        report = ledger.verify(tamper(list(ledger.records), index))
        assert [(p.kind, p.seq) for p in report.problems] == [(kind, index + 1)], [
            str(p) for p in report.problems
        ]
