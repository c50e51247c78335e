"""The check's in-memory index and the marks' stored form: no NATS needed for either."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from greenchannel.v1 import envelope_pb2, requests_pb2, risk_pb2

from broker.hub._risk_index import MarkIndex
from broker.hub._risk_marks import MarkRecord, is_expired
from broker.protocol import to_timestamp

R = risk_pb2
NOW = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)


def record(
    mark_id: str,
    *,
    digest: str = "d1",
    grade: risk_pb2.RiskGrade.ValueType = R.RISK_GRADE_HIGH,
    state: risk_pb2.MarkState.ValueType = R.MARK_STATE_ACTIVE,
    lasts: timedelta = timedelta(days=1),
) -> MarkRecord:
    status = R.MarkStatus(
        mark_id=mark_id,
        state=state,
        kind=requests_pb2.IDENTIFIER_KIND_BANK_ACCOUNT,
        identifier_digest=digest,
        grade=grade,
        reason=R.RISK_REASON_MULE_ACCOUNT,
        case_number="SH-PD-2026-0001",
        case_owner="police-310115",
        marked_by="police-310115",
        marked_at=to_timestamp(NOW),
        expires_at=to_timestamp(NOW + lasts),
    )
    return MarkRecord(status=status, content="sha-256:x", valid_for_seconds=int(lasts.total_seconds()))


class _NoStore:
    async def kv(self) -> object:  # pragma: no cover - the index is fed by hand here
        raise AssertionError("not used")


def index() -> MarkIndex:
    return MarkIndex(_NoStore())  # type: ignore[arg-type]


def test_the_highest_grade_in_force_wins_and_expiry_is_judged_at_check_time() -> None:
    marks = index()
    marks.apply(record("m1", grade=R.RISK_GRADE_LOW, lasts=timedelta(days=30)), 1)
    marks.apply(record("m2", grade=R.RISK_GRADE_HIGH, lasts=timedelta(hours=1)), 2)
    found = marks.verdict("d1", NOW)
    assert found is not None
    assert found.mark_id == "m2"
    later = marks.verdict("d1", NOW + timedelta(hours=2))  # m2 ran out: m1 still holds
    assert later is not None
    assert later.mark_id == "m1"
    assert marks.verdict("d1", NOW + timedelta(days=31)) is None
    assert marks.verdict("other", NOW) is None


def test_a_mark_leaving_active_leaves_the_index_and_old_revisions_are_ignored() -> None:
    marks = index()
    marks.apply(record("m1"), 5)
    marks.apply(record("m1", state=R.MARK_STATE_UNMARKED), 6)
    assert marks.verdict("d1", NOW) is None
    marks.apply(record("m1"), 5)  # a late copy of the older revision changes nothing
    assert marks.verdict("d1", NOW) is None
    assert marks.size == 0
    marks.apply(record("m3", state=R.MARK_STATE_PROPOSED), 7)
    assert marks.verdict("d1", NOW) is None


def test_a_record_keeps_its_proofs_and_unknown_fields_through_encoding() -> None:
    original = record("m1").but(
        mark_digest="sha-256:abc",
        decision=envelope_pb2.SignedMessage(payload=b"p", signature="s"),
        extra={"future": "kept"},
    )
    again = MarkRecord.decode(original.encode())
    assert again == original


def test_expiry() -> None:
    active = record("m1", lasts=timedelta(seconds=2)).status
    assert not is_expired(active, NOW)
    assert is_expired(active, NOW + timedelta(seconds=2))
    unmarked = record("m2", state=R.MARK_STATE_UNMARKED, lasts=timedelta(seconds=2)).status
    assert not is_expired(unmarked, NOW + timedelta(days=1))
