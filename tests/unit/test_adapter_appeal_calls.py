"""The adapter's call table for appeals: FileAppeal gets the statement opened, EXECUTED is "filed",
and the broker's lifting orders reach carriers and platforms as LiftBlock / LiftRestriction.

A recording stub stands in for the agency's gRPC service (what it is sent is the point here; the
integration tests run the real services).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from greenchannel.v1 import (
    agency_pb2,
    carrier_pb2,
    common_pb2,
    envelope_pb2,
    platform_pb2,
    police_pb2,
    requests_pb2,
    results_pb2,
)

from adapters import AgencyCallError, GrpcAgencyBackend, backend_for
from broker.protocol import (
    APPEAL_STATEMENT_CONTENT_TYPE,
    AgencyKind,
    Claims,
    KeyUse,
    OpenedEnvelope,
    PublicKey,
    appeal_sealing_context,
    seal,
)

RESTRICTION = "01890000-0000-7000-8000-000000000001"
NOW = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)


class Recorder:
    """Answers every call with ``outcome`` and keeps what it was sent."""

    def __init__(self, response: Any) -> None:
        self.sent: list[Any] = []
        self._response = response

    def __getattr__(self, method: str) -> Any:
        async def call(request: Any, *, timeout: float) -> Any:  # noqa: ASYNC109 -- the stub's signature
            self.sent.append((method, request))
            return self._response

        return call


def claims() -> Claims:
    return Claims(
        iss="bank-icbc", aud="x", jti="j", iat=NOW, exp=NOW, message_type="REQUEST", digest="d", kid="k"
    )


def opened_appeal(police_key: x25519.X25519PrivateKey, *, text: str = "my salary") -> OpenedEnvelope:
    raw = police_key.public_key().public_bytes_raw()
    statement = seal(
        requests_pb2.AppealStatement(statement=text).SerializeToString(),
        PublicKey.from_raw(raw, use=KeyUse.ENC),
        request_id=appeal_sealing_context(RESTRICTION),
        sender="bank-icbc",
        recipient="police-310115",
        content_type=APPEAL_STATEMENT_CONTENT_TYPE,
    )
    request = requests_pb2.Request(
        appeal=requests_pb2.Appeal(
            restriction_request_id=RESTRICTION,
            ground=requests_pb2.APPEAL_GROUND_NOT_INVOLVED,
            statement=statement,
        )
    )
    header = envelope_pb2.EnvelopeHeader(
        id="01890000-0000-7000-8000-000000000002",
        sender="bank-icbc",
        recipient="police-310115",
        type=common_pb2.REQUEST_TYPE_APPEAL,
    )
    return OpenedEnvelope(header=header, request=request, sender_claims=claims(), notary_claims=claims())


def police(response: police_pb2.FileAppealResponse, keys: Any) -> tuple[GrpcAgencyBackend, Recorder]:
    stub = Recorder(response)
    # A channel that is never used (nothing listens there): the recorder answers instead.
    backend = backend_for(AgencyKind.POLICE, grpc.aio.insecure_channel("127.0.0.1:1"), keys=keys)
    assert isinstance(backend, GrpcAgencyBackend)
    backend._stub = stub
    return backend, stub


async def test_file_appeal_gets_the_statement_opened_and_executed_means_filed() -> None:
    key = x25519.X25519PrivateKey.generate()
    filed = police_pb2.FileAppealResponse(
        result=results_pb2.Result(outcome=common_pb2.REQUEST_STATE_EXECUTED)
    )
    backend, stub = police(filed, (key,))
    assert backend.supports(common_pb2.REQUEST_TYPE_APPEAL)
    outcome = await backend.execute(opened_appeal(key), agency_pb2.OrderContext(), timeout=1.0)
    assert outcome.filed
    ((method, sent),) = stub.sent
    assert method == "FileAppeal"
    assert sent.statement.statement == "my salary"
    assert sent.order.restriction_request_id == RESTRICTION

    refused = police_pb2.FileAppealResponse(
        result=results_pb2.Result(
            outcome=common_pb2.REQUEST_STATE_REJECTED, reason=results_pb2.REASON_CODE_DECLINED
        )
    )
    backend, _ = police(refused, (key,))
    outcome = await backend.execute(opened_appeal(key), agency_pb2.OrderContext(), timeout=1.0)
    assert not outcome.filed  # a refusal is an outcome as usual


@pytest.mark.parametrize("keys", [None, "other"])
async def test_a_statement_that_does_not_open_is_an_invalid_order(keys: str | None) -> None:
    key = x25519.X25519PrivateKey.generate()
    ring = None if keys is None else (x25519.X25519PrivateKey.generate(),)
    backend, stub = police(police_pb2.FileAppealResponse(), ring)
    with pytest.raises(AgencyCallError) as info:
        await backend.execute(opened_appeal(key), agency_pb2.OrderContext(), timeout=1.0)
    assert info.value.code == "INVALID_ARGUMENT"
    assert "my salary" not in str(info.value)
    assert stub.sent == []  # never called


@pytest.mark.parametrize(
    ("kind", "method", "response"),
    [
        (AgencyKind.CARRIER, "LiftBlock", carrier_pb2.LiftBlockResponse()),
        (AgencyKind.PLATFORM, "LiftRestriction", platform_pb2.LiftRestrictionResponse()),
    ],
)
async def test_lifting_orders_reach_carriers_and_platforms(
    kind: AgencyKind, method: str, response: Any
) -> None:
    backend = backend_for(kind, grpc.aio.insecure_channel("127.0.0.1:1"))
    assert isinstance(backend, GrpcAgencyBackend)
    stub = Recorder(response)
    backend._stub = stub
    assert backend.supports(common_pb2.REQUEST_TYPE_RELEASE)
    release = requests_pb2.Request(
        release=requests_pb2.Release(
            target_request_id=RESTRICTION, purpose=requests_pb2.RELEASE_PURPOSE_APPEAL_LIFTED
        )
    )
    header = envelope_pb2.EnvelopeHeader(type=common_pb2.REQUEST_TYPE_RELEASE)
    opened = OpenedEnvelope(header=header, request=release, sender_claims=claims(), notary_claims=claims())
    outcome = await backend.execute(opened, agency_pb2.OrderContext(), timeout=1.0)
    assert not outcome.filed
    ((called, sent),) = stub.sent
    assert called == method
    assert sent.order.target_request_id == RESTRICTION
