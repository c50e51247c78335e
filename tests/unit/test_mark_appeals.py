"""The pure parts of an appeal against a risk mark: who serves the identifier, which marks can be
appealed, the open-appeal key, the ruling kept, and the record that keeps it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, requests_pb2, risk_pb2

from agencies import DEFAULT_DIRECTORY
from agencies import _seed as seed
from broker.hub._appeals import open_appeal_key
from broker.hub._decisions import ruling_of
from broker.hub._mark_appeals import appealable, serving_agency
from broker.hub._risk_marks import MarkRecord
from broker.protocol import Registry, load_directory, to_timestamp

R = risk_pb2
MARK = "0190f1a2-3b4c-7d5e-8f60-718293a4b5c6"
RESTRICTION = "0190f1a2-3b4c-7d5e-8f60-000000000001"
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_directory(DEFAULT_DIRECTORY)


def _served(held: requests_pb2.HolderIdentifier, registry: Registry) -> str | None:
    agency = serving_agency(held, registry)
    return agency.id if agency is not None else None


def test_the_serving_agency_is_the_one_the_directory_routes_to(registry: Registry) -> None:
    account = requests_pb2.HolderIdentifier(bank_account=seed.MULE_CCB_ACCOUNT)
    assert _served(account, registry) == "bank-ccb"
    phone = requests_pb2.HolderIdentifier(phone=seed.VICTIM_PHONE)
    carrier = registry.carrier_for_number(seed.VICTIM_PHONE)
    assert carrier is not None
    assert _served(phone, registry) == carrier.id
    wechat = requests_pb2.HolderIdentifier(
        platform_account=common_pb2.PlatformAccountRef(platform="wechat", account_id="wxid_1")
    )
    assert _served(wechat, registry) == "platform-wechat"
    # Nobody serves an unknown code, an unroutable number or nothing at all.
    unknown = requests_pb2.HolderIdentifier(
        platform_account=common_pb2.PlatformAccountRef(platform="nowhere", account_id="x")
    )
    assert _served(unknown, registry) is None
    assert _served(requests_pb2.HolderIdentifier(bank_account="ABCDEF123"), registry) is None
    assert _served(requests_pb2.HolderIdentifier(), registry) is None


def _mark(state: risk_pb2.MarkState.ValueType, *, expires_in: timedelta | None = None) -> risk_pb2.MarkStatus:
    status = R.MarkStatus(mark_id=MARK, state=state)
    if expires_in is not None:
        status.expires_at.CopyFrom(to_timestamp(NOW + expires_in))
    return status


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (_mark(R.MARK_STATE_ACTIVE, expires_in=timedelta(days=1)), True),
        (_mark(R.MARK_STATE_ACTIVE, expires_in=timedelta(0)), False),
        (_mark(R.MARK_STATE_PROPOSED), False),
        (_mark(R.MARK_STATE_REFUSED), False),
        (_mark(R.MARK_STATE_UNMARKED), False),
        (_mark(R.MARK_STATE_EXPIRED), False),
    ],
    ids=["active", "active but past its expiry", "proposed", "refused", "unmarked", "expired"],
)
def test_only_a_mark_in_force_is_appealed(status: risk_pb2.MarkStatus, expected: bool) -> None:
    assert appealable(status, NOW) is expected


def test_the_open_appeal_key_names_the_restriction_the_item_or_the_mark() -> None:
    assert open_appeal_key(requests_pb2.Appeal(restriction_request_id=RESTRICTION)) == RESTRICTION
    item = requests_pb2.Appeal(restriction_request_id=RESTRICTION, item_index=3)
    assert open_appeal_key(item) == f"{RESTRICTION}.3"
    # A mark's key can never be a restriction's, even were the ids the same.
    assert open_appeal_key(requests_pb2.Appeal(mark_id=RESTRICTION)) == f"mark-{RESTRICTION}"


def _event(state: common_pb2.RequestState.ValueType, ruling: bytes = b"") -> lifecycle_pb2.RecordedEvent:
    event = lifecycle_pb2.LifecycleEvent(state=state)
    if ruling:
        event.ruling.CopyFrom(envelope_pb2.SignedMessage(payload=ruling, signature="sig"))
    return lifecycle_pb2.RecordedEvent(event=envelope_pb2.SignedMessage(payload=event.SerializeToString()))


def test_the_ruling_is_the_one_recorded_with_the_outcome() -> None:
    status = lifecycle_pb2.RequestStatus(
        events=[_event(common_pb2.REQUEST_STATE_SUBMITTED), _event(common_pb2.REQUEST_STATE_ACKNOWLEDGED)]
    )
    assert ruling_of(status) is None
    status.events.append(_event(common_pb2.REQUEST_STATE_EXECUTED, b"ruling"))
    found = ruling_of(status)
    assert found is not None
    assert found.payload == b"ruling"


def test_a_mark_record_keeps_the_ruling_that_lifted_it() -> None:
    status = _mark(R.MARK_STATE_UNMARKED)
    status.lifted_by_appeal = RESTRICTION
    ruling = envelope_pb2.SignedMessage(payload=b"ruling", signature="sig")
    record = MarkRecord(status=status, content="sha-256:x", valid_for_seconds=60, ruling=ruling)
    again = MarkRecord.decode(record.encode())
    assert again.ruling == ruling
    assert again.status.lifted_by_appeal == RESTRICTION
    assert (again.decision, again.unmark, again.extra) == (None, None, {})
    # A record written before appeals on marks reads as it did.
    assert (
        MarkRecord.decode(MarkRecord(status=status, content="c", valid_for_seconds=1).encode()).ruling is None
    )
