"""The request journal as the request store: compare-and-set per request subject, idempotency by
the first record's ``Nats-Msg-Id``, and remembered copies that are only guesses (two replicas on
one real GC_WATCH stream)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2
from nats.js.client import JetStreamContext

from broker.hub._store import RequestStore, idempotency_msg_id
from broker.protocol import WATCH_STREAM, ensure_streams, new_uuid7, status_filter, stream_specs

pytestmark = pytest.mark.integration


async def _replicas(js: JetStreamContext) -> tuple[RequestStore, RequestStore]:
    await ensure_streams(js, [spec for spec in stream_specs() if spec.name == WATCH_STREAM])
    # Two stores on one stream: two broker replicas, each with its own remembered copies.
    return RequestStore(js), RequestStore(js)


def _event(
    state: common_pb2.RequestState.ValueType = common_pb2.REQUEST_STATE_SUBMITTED,
) -> lifecycle_pb2.RecordedEvent:
    event = lifecycle_pb2.LifecycleEvent(event_id=str(uuid.uuid4()), state=state)
    return lifecycle_pb2.RecordedEvent(event=envelope_pb2.SignedMessage(payload=event.SerializeToString()))


def _submitted(request_id: str | None = None) -> lifecycle_pb2.RequestStatus:
    return lifecycle_pb2.RequestStatus(
        id=request_id or new_uuid7(),
        sender="police-310115",
        recipient="bank-icbc",
        case_ref=common_pb2.CaseRef(case_number="STORE-0001", issuing_agency="police-310115"),
        state=common_pb2.REQUEST_STATE_SUBMITTED,
        events=[_event()],
    )


async def _created(store: RequestStore) -> str:
    status = _submitted()
    assert (await store.create(status, msg_id=str(uuid.uuid4()))).stored
    return status.id


Change = Callable[[lifecycle_pb2.RequestStatus], lifecycle_pb2.RequestStatus | None]


def _add_reason(reason: str) -> Change:
    def change(status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus:
        status.target_id = (status.target_id + "," + reason).strip(",")
        status.events.append(_event(common_pb2.REQUEST_STATE_REMINDED))
        return status

    return change


async def _records(js: JetStreamContext, request_id: str) -> int:
    info = await js.stream_info(WATCH_STREAM, subjects_filter=status_filter(request_id=request_id))
    return sum((info.state.subjects or {}).values())


async def test_each_change_is_one_record_on_the_request_subject(js: JetStreamContext) -> None:
    a, _ = await _replicas(js)
    request_id = await _created(a)
    await a.update(request_id, _add_reason("first"))
    await a.update(request_id, lambda status: None)  # nothing to do: nothing written
    stored = await a.get(request_id)
    assert stored.status.target_id == "first"
    assert await _records(js, request_id) == 2


async def test_a_stale_copy_never_overwrites_what_another_replica_wrote(js: JetStreamContext) -> None:
    a, b = await _replicas(js)
    request_id = await _created(a)
    await a.update(request_id, _add_reason("first"))
    await b.update(request_id, _add_reason("second"))  # a's copy is stale now
    await a.update(request_id, _add_reason("third"))
    assert (await b.get(request_id)).status.target_id == "first,second,third"
    assert await _records(js, request_id) == 4


async def test_a_refusal_on_a_stale_copy_is_decided_again_on_the_current_state(js: JetStreamContext) -> None:
    a, b = await _replicas(js)
    request_id = await _created(a)

    def execute(status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus:
        status.state = common_pb2.REQUEST_STATE_EXECUTED
        status.events.append(_event(common_pb2.REQUEST_STATE_EXECUTED))
        return status

    await b.update(request_id, execute)  # a still remembers SUBMITTED

    def extend(status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus:
        # Like a hold event: only legal once the request is executed.
        if status.state != common_pb2.REQUEST_STATE_EXECUTED:
            raise ValueError("no hold yet")
        status.state = common_pb2.REQUEST_STATE_EXTENDED
        status.events.append(_event(common_pb2.REQUEST_STATE_EXTENDED))
        return status

    updated = await a.update(request_id, extend)
    assert updated.state == common_pb2.REQUEST_STATE_EXTENDED
    assert (await b.get(request_id)).status.state == common_pb2.REQUEST_STATE_EXTENDED


async def test_nothing_to_do_on_a_stale_copy_is_checked_on_the_current_state(js: JetStreamContext) -> None:
    a, b = await _replicas(js)
    request_id = await _created(a)
    await b.update(request_id, _add_reason("delivered"))

    def only_once(status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus | None:
        return None if "delivered" not in status.target_id else status

    # On a's copy there is nothing to do; on the current state there is: the current state wins.
    returned = await a.update(request_id, only_once)
    assert returned.target_id == "delivered"


async def test_the_first_record_binds_the_idempotency_key(js: JetStreamContext) -> None:
    a, b = await _replicas(js)
    key = idempotency_msg_id("police-310115", f"key-{uuid.uuid4().hex}")
    first = _submitted()
    assert (await a.create(first, msg_id=key, content="digest-1")).stored
    await a.update(first.id, _add_reason("moved on"))
    # A retry on another replica, under a new request id: told which request holds the key.
    retry = await b.create(_submitted(), msg_id=key, content="digest-2")
    assert not retry.stored
    assert retry.bound is not None
    assert retry.bound.status.id == first.id
    assert retry.bound_content == "digest-1"
    # The same id twice (a write that landed although it reported an error): refused, not doubled.
    again = await b.create(_submitted(first.id), msg_id=str(uuid.uuid4()))
    assert not again.stored
    assert again.bound is None
    assert await _records(js, first.id) == 2


async def test_an_unknown_or_malformed_id_is_not_found(js: JetStreamContext) -> None:
    from broker.hub import NotFoundError

    a, _ = await _replicas(js)
    for request_id in (new_uuid7(), "not-a-uuid", "a.b.>"):
        with pytest.raises(NotFoundError):
            await a.get(request_id)
