from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest

from broker.protocol import (
    DEADLINES_STREAM,
    INBOX_STREAM,
    KV_BUCKETS,
    LEDGER_CHECKPOINT_SUBJECT,
    LEDGER_ENTRY_SUBJECT,
    LEDGER_STREAM,
    REQUEST_TYPES,
    StatusSubject,
    StreamSpec,
    deadletter_subject,
    deadline_fired_filter,
    deadline_fired_subject,
    deadline_subject,
    event_subject,
    events_filter,
    inbox_consumer,
    inbox_filter,
    inbox_subject,
    notice_subject,
    parse_status_subject,
    status_filter,
    status_parties,
    status_subject,
    stream_specs,
    validate_agency_id,
    validate_request_id,
)

RID = "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"

# Everything that could widen or redirect a subject if it slipped into a token.
INJECTIONS = [
    "",
    "bank.a",
    "bank-*",
    "*",
    ">",
    "bank->",
    "bank a",
    "bank\ta",
    "bank\n",
    " bank",
    "Bank",
    "-bank",
    "bank_a",
    "bank/a",
    "银行",
]


def _subject_matches(filter_: str, subject: str) -> bool:
    """NATS wildcard semantics, to check filters against the subjects they must select."""
    f, s = filter_.split("."), subject.split(".")
    for i, tok in enumerate(f):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(f) == len(s)


def test_inbox_names() -> None:
    assert inbox_subject("bank-icbc", "green", "freeze") == "gc.inbox.bank-icbc.green.freeze"
    assert (
        inbox_subject("bank-icbc", "STANDARD", "DATA_REQUEST") == "gc.inbox.bank-icbc.standard.data_request"
    )
    assert inbox_filter("bank-icbc") == "gc.inbox.bank-icbc.>"
    assert inbox_filter("bank-icbc", "green") == "gc.inbox.bank-icbc.green.>"
    assert inbox_consumer("bank-icbc", "green") == "inbox-bank-icbc-green"
    assert inbox_consumer("bank-icbc") == "inbox-bank-icbc-all"


@pytest.mark.parametrize("request_type", REQUEST_TYPES)
def test_every_request_type_is_one_token(request_type: str) -> None:
    subject = inbox_subject("police-310115", "green", request_type)
    assert subject.split(".")[-1] == request_type
    assert re.fullmatch(r"[a-z_]+", request_type)


def test_filters_select_exactly_their_subjects() -> None:
    green = inbox_subject("bank-a", "green", "stop_payment")
    standard = inbox_subject("bank-a", "standard", "stop_payment")
    other_bank = inbox_subject("bank-ab", "green", "stop_payment")
    assert _subject_matches(inbox_filter("bank-a", "green"), green)
    assert not _subject_matches(inbox_filter("bank-a", "green"), standard)
    assert _subject_matches(inbox_filter("bank-a"), standard)
    assert not _subject_matches(inbox_filter("bank-a"), other_bank)
    # Schedules and their fired messages share a stream but never a filter.
    schedule, fired = deadline_subject(RID, "execute"), deadline_fired_subject(RID, "execute")
    assert _subject_matches(deadline_fired_filter(), fired)
    assert not _subject_matches(deadline_fired_filter(), schedule)
    assert not _subject_matches("gc.deadline.*.*", fired)


def test_event_status_deadline_deadletter_ledger_names() -> None:
    assert event_subject("bank-icbc", RID) == f"gc.events.bank-icbc.{RID}"
    assert events_filter() == "gc.events.>"
    assert events_filter("bank-icbc") == "gc.events.bank-icbc.>"
    assert (
        status_subject(
            sender="police-1",
            recipient="bank-a",
            case_owner="police-1",
            case_number="SH-2026-1",
            request_id=RID,
        )
        == f"gc.status.{RID}.police-1.bank-a.police-1.SH-2026-1"
    )
    assert status_filter(request_id=RID) == f"gc.status.{RID}.*.*.*.*"
    assert status_filter(recipient="bank-a") == "gc.status.*.*.bank-a.*.*"
    assert status_filter() == "gc.status.*.*.*.*.*"
    with pytest.raises(ValueError, match="case number"):
        status_filter(case_number="a.b")
    assert deadline_subject(RID, "acknowledge") == f"gc.deadline.{RID}.acknowledge"
    assert deadline_fired_subject(RID, "acknowledge") == f"gc.deadline.fired.{RID}.acknowledge"
    assert deadletter_subject("carrier-cmcc") == "gc.deadletter.carrier-cmcc"
    assert (LEDGER_ENTRY_SUBJECT, LEDGER_CHECKPOINT_SUBJECT) == ("gc.ledger.entry", "gc.ledger.checkpoint")
    assert KV_BUCKETS == ("gc_registry", "gc_replay", "gc_idempotency")


def test_request_id_accepts_uuid_objects_and_canonical_strings() -> None:
    value = uuid.UUID(RID)
    assert validate_request_id(value) == RID
    assert status_subject(
        sender="police-1",
        recipient="bank-a",
        case_owner="police-1",
        case_number="SH-2026-1",
        request_id=value,
    ).startswith(f"gc.status.{RID}.")


@pytest.mark.parametrize("agency", INJECTIONS)
def test_agency_injection_rejected(agency: str) -> None:
    with pytest.raises(ValueError, match="agency id"):
        validate_agency_id(agency)
    with pytest.raises(ValueError, match="invalid"):
        inbox_subject(agency, "green", "freeze")
    with pytest.raises(ValueError, match="invalid"):
        inbox_filter(agency)
    with pytest.raises(ValueError, match="invalid"):
        inbox_consumer(agency, "green")
    with pytest.raises(ValueError, match="invalid"):
        event_subject(agency, RID)
    with pytest.raises(ValueError, match="invalid"):
        deadletter_subject(agency)


@pytest.mark.parametrize(
    "request_id",
    [
        "",
        "*",
        ">",
        "not-a-uuid",
        f"{RID}.x",
        f"{RID} ",
        RID.upper(),
        "{" + RID + "}",
        f"urn:uuid:{RID}",
        RID.replace("-", ""),
    ],
)
def test_request_id_injection_and_non_canonical_rejected(request_id: str) -> None:
    with pytest.raises(ValueError, match="request id"):
        validate_request_id(request_id)
    with pytest.raises(ValueError, match="invalid"):
        status_subject(
            sender="police-1",
            recipient="bank-a",
            case_owner="police-1",
            case_number="SH-2026-1",
            request_id=request_id,
        )
    with pytest.raises(ValueError, match="invalid"):
        event_subject("bank-a", request_id)
    with pytest.raises(ValueError, match="invalid"):
        deadline_subject(request_id, "execute")


@pytest.mark.parametrize("bad", ["", "*", ">", "green.x", "urgent", "green "])
def test_priority_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="priority"):
        inbox_subject("bank-a", bad, "freeze")
    with pytest.raises(ValueError, match="priority"):
        inbox_filter("bank-a", bad)


@pytest.mark.parametrize("bad", ["", "*", ">", "freeze.x", "transfer", "freeze "])
def test_request_type_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="request type"):
        inbox_subject("bank-a", "green", bad)


@pytest.mark.parametrize("bad", ["", "*", ">", "a.b", "Execute", "1st", "ex ecute"])
def test_phase_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="phase"):
        deadline_subject(RID, bad)
    with pytest.raises(ValueError, match="phase"):
        deadline_fired_subject(RID, bad)


def test_non_strings_rejected() -> None:
    with pytest.raises(ValueError, match="invalid"):
        validate_agency_id(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid"):
        validate_request_id(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid"):
        inbox_subject("bank-a", None, "freeze")  # type: ignore[arg-type]


def test_stream_specs() -> None:
    specs = {spec.name: spec for spec in stream_specs(replicas=3)}
    assert set(specs) == {
        "GC_INBOX",
        "GC_EVENTS",
        "GC_WATCH",
        "GC_LEDGER",
        "GC_DEADLINES",
        "GC_DEADLETTER",
        "GC_NOTICES",
    }
    assert all(spec.replicas == 3 and spec.storage == "file" for spec in specs.values())
    assert all(spec.duplicate_window > timedelta(0) for spec in specs.values())
    ledger = specs[LEDGER_STREAM]
    assert ledger.deny_delete
    assert ledger.deny_purge
    assert ledger.max_age is None
    assert specs[DEADLINES_STREAM].allow_msg_schedules
    # Only the deadline stream may hold schedules; only the ledger is append-only.
    assert [s.name for s in specs.values() if s.allow_msg_schedules] == [DEADLINES_STREAM]
    assert [s.name for s in specs.values() if s.deny_delete or s.deny_purge] == [LEDGER_STREAM]
    assert specs[INBOX_STREAM].subjects == ("gc.inbox.>",)
    assert stream_specs()[0].replicas == 1


def test_every_subject_lands_in_exactly_one_stream() -> None:
    specs = stream_specs()
    subjects = [
        inbox_subject("bank-a", "green", "freeze"),
        event_subject("bank-a", RID),
        status_subject(
            sender="police-1",
            recipient="bank-a",
            case_owner="police-1",
            case_number="SH-2026-1",
            request_id=RID,
        ),
        LEDGER_ENTRY_SUBJECT,
        LEDGER_CHECKPOINT_SUBJECT,
        deadline_subject(RID, "deliver"),
        deadline_fired_subject(RID, "deliver"),
        deadletter_subject("bank-a"),
        notice_subject("bank-a"),
    ]
    for subject in subjects:
        owners = [s.name for s in specs if any(_subject_matches(f, subject) for f in s.subjects)]
        assert len(owners) == 1, (subject, owners)


def test_stream_spec_validation() -> None:
    with pytest.raises(ValueError, match="replicas"):
        StreamSpec(name="X", subjects=("x",), description="x", replicas=0)
    with pytest.raises(ValueError, match="subject"):
        StreamSpec(name="X", subjects=(), description="x")


def test_a_status_subject_parses_back_into_its_tokens() -> None:
    subject = status_subject(
        sender="police-1", recipient="bank-a", case_owner="police-2", case_number="SH-2026-1", request_id=RID
    )
    parsed = parse_status_subject(subject)
    assert parsed == StatusSubject(RID, "police-1", "bank-a", "police-2", "SH-2026-1")
    assert status_parties(subject) == ("police-1", "bank-a", "police-2")
    for other in ("gc.events.bank-a.x", "gc.status.a.b", f"gc.status.{RID}.a.b.c.d.e"):
        assert parse_status_subject(other) is None
        assert status_parties(other) == ()
