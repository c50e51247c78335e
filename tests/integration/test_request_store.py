"""The request store's remembered copies are only guesses: two replicas on one real KV bucket."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from greenchannel.v1 import common_pb2, lifecycle_pb2
from nats.js.client import JetStreamContext

from broker.hub._store import RequestStore, open_bucket

pytestmark = pytest.mark.integration


async def _replicas(js: JetStreamContext) -> tuple[RequestStore, RequestStore]:
    bucket = f"gc_requests_test_{uuid.uuid4().hex[:8]}"
    kv = await open_bucket(js, bucket)
    # Two stores on one bucket: two broker replicas, each with its own remembered copies.
    return RequestStore(kv, js, bucket), RequestStore(kv, js, bucket)


def _submitted(request_id: str) -> lifecycle_pb2.RequestStatus:
    return lifecycle_pb2.RequestStatus(id=request_id, state=common_pb2.REQUEST_STATE_SUBMITTED)


Change = Callable[[lifecycle_pb2.RequestStatus], lifecycle_pb2.RequestStatus | None]


def _add_reason(reason: str) -> Change:
    def change(status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus:
        status.recipient = (status.recipient + "," + reason).strip(",")
        return status

    return change


async def test_a_stale_copy_never_overwrites_what_another_replica_wrote(js: JetStreamContext) -> None:
    a, b = await _replicas(js)
    request_id = str(uuid.uuid4())
    assert await a.create(
        lifecycle_pb2.RequestStatus(id=request_id, state=common_pb2.REQUEST_STATE_SUBMITTED)
    )
    await a.update(request_id, _add_reason("first"))
    await b.update(request_id, _add_reason("second"))  # a's copy is stale now
    await a.update(request_id, _add_reason("third"))
    assert (await b.get(request_id)).status.recipient == "first,second,third"


async def test_a_refusal_on_a_stale_copy_is_decided_again_on_the_current_state(js: JetStreamContext) -> None:
    a, b = await _replicas(js)
    request_id = str(uuid.uuid4())
    assert await a.create(
        lifecycle_pb2.RequestStatus(id=request_id, state=common_pb2.REQUEST_STATE_SUBMITTED)
    )

    def execute(status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus:
        status.state = common_pb2.REQUEST_STATE_EXECUTED
        return status

    await b.update(request_id, execute)  # a still remembers SUBMITTED

    def extend(status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus:
        # Like a hold event: only legal once the request is executed.
        if status.state != common_pb2.REQUEST_STATE_EXECUTED:
            raise ValueError("no hold yet")
        status.state = common_pb2.REQUEST_STATE_EXTENDED
        return status

    updated = await a.update(request_id, extend)
    assert updated.state == common_pb2.REQUEST_STATE_EXTENDED
    assert (await b.get(request_id)).status.state == common_pb2.REQUEST_STATE_EXTENDED


async def test_nothing_to_do_on_a_stale_copy_is_checked_on_the_current_state(js: JetStreamContext) -> None:
    a, b = await _replicas(js)
    request_id = str(uuid.uuid4())
    assert await a.create(
        lifecycle_pb2.RequestStatus(id=request_id, state=common_pb2.REQUEST_STATE_SUBMITTED)
    )
    await b.update(request_id, _add_reason("delivered"))

    def only_once(status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus | None:
        return None if "delivered" not in status.recipient else status

    # On a's copy there is nothing to do; on the current state there is: the current state wins.
    returned = await a.update(request_id, only_once)
    assert returned.recipient == "delivered"
