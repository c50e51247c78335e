"""Bearer-token authentication and error statuses over a real grpc.aio server and a real NATS KV.

The servicers here are test doubles of the broker's own: they authenticate with the real
:class:`Authenticator`, then answer or fail on demand, behind the real guards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import grpc
import grpc.aio
import jwt
import pytest
import pytest_asyncio
from greenchannel.v1 import bus_pb2, bus_pb2_grpc, registry_pb2, registry_pb2_grpc
from nats.js.api import KeyValueConfig
from nats.js.client import JetStreamContext
from structlog.testing import capture_logs

from broker.client import ErrorDetails, bearer_metadata, error_details
from broker.embedded import EmbeddedNats
from broker.hub import InvalidRequestError, UnavailableError, UnroutableError
from broker.hub._auth import REPLAY_TTL, Authenticator, Caller, KvReplayCache, open_replay_cache
from broker.hub._grpc_status import guard_stream, guard_unary
from broker.protocol import (
    BROKER_AUDIENCE,
    FieldViolation,
    InvalidMessageError,
    ManualClock,
    NatsError,
    NatsSettings,
    Registry,
    SigningKey,
    connect,
    ensure_agency_keys,
    generate_signing_key,
    key_overlay_path,
    load_agency_signing_key,
    load_broker_signing_key,
    load_directory,
    mint_bearer_token,
    revoke_key,
)

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
BANK = "bank-icbc"
OTHER_BANK = "bank-ccb"
CALL_TIMEOUT = 10.0


# -- test servicers ------------------------------------------------------------------------------


def _raise_on_demand(trigger: str) -> None:
    if trigger == "invalid":
        raise InvalidRequestError(
            "request breaks the contract",
            (FieldViolation(field="stop_payment.amount", rule="int64.gt", description="must be > 0"),),
        )
    if trigger == "invalid-message":
        raise InvalidMessageError(
            "request breaks the contract",
            (FieldViolation(field="case.case_number", rule="required", description="is required"),),
        )
    if trigger == "unroutable":
        raise UnroutableError("no bank keeps account prefix 999", subject="stop_payment.account")
    if trigger == "unavailable":
        raise NatsError("publish GC_INBOX: timed out")
    if trigger == "boom":
        raise RuntimeError("SECRET-INTERNAL-DETAIL in /srv/broker/_submit.py line 42")


class RegistryDouble(registry_pb2_grpc.RegistryServiceServicer):
    """GetAgency answers the caller's own agency, or fails as ``request.id`` asks."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self.callers: list[Caller] = []

    @guard_unary
    async def GetAgency(
        self, request: registry_pb2.GetAgencyRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetAgencyResponse:
        caller = await self.auth.authenticate(context)
        self.callers.append(caller)
        if request.id == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "aborted by the servicer itself")
        _raise_on_demand(request.id)
        agency = caller.agency
        return registry_pb2.GetAgencyResponse(
            agency=registry_pb2.Agency(id=agency.id, name=agency.name, region=agency.region)
        )


@dataclass
class BusDouble(bus_pb2_grpc.BusServiceServicer):
    """Watch yields one message, then fails as ``case_number`` asks (or waits to be cancelled)."""

    auth: Authenticator
    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)

    @guard_stream
    async def Watch(
        self, request: bus_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bus_pb2.WatchResponse]:
        caller = await self.auth.authenticate(context)
        try:
            yield bus_pb2.WatchResponse(request_id=f"first-for-{caller.agency.id}")
            if request.case_number == "hang":
                await asyncio.Event().wait()
            _raise_on_demand(request.case_number)
            yield bus_pb2.WatchResponse(request_id="second")
        finally:
            self.stream_closed.set()


# -- fixtures -----------------------------------------------------------------------------------


@dataclass
class Env:
    state: Path
    clock: ManualClock
    auth: Authenticator
    registry_service: RegistryDouble
    bus_service: BusDouble
    registry_stub: registry_pb2_grpc.RegistryServiceAsyncStub
    bus_stub: bus_pb2_grpc.BusServiceAsyncStub

    def key(self, agency_id: str = BANK) -> SigningKey:
        return load_agency_signing_key(self.state, agency_id)

    def metadata(
        self, agency_id: str = BANK, *, ttl: timedelta = timedelta(minutes=2)
    ) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.key(agency_id), agency_id=agency_id, clock=self.clock, ttl=ttl)

    async def get_agency(
        self, metadata: tuple[tuple[str, str], ...] | None, trigger: str = BANK
    ) -> registry_pb2.GetAgencyResponse:
        response: registry_pb2.GetAgencyResponse = await self.registry_stub.GetAgency(
            registry_pb2.GetAgencyRequest(id=trigger), metadata=metadata, timeout=CALL_TIMEOUT
        )
        return response

    async def refused(
        self, metadata: tuple[tuple[str, str], ...] | None, trigger: str = BANK
    ) -> ErrorDetails:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.get_agency(metadata, trigger)
        return error_details(caught.value)

    def reload_registry(self) -> None:
        self.auth.use_registry(registry_of(self.state))


def registry_of(state: Path) -> Registry:
    return load_directory(SAMPLE, key_overlays=[key_overlay_path(state)])


def provisioned(tmp_path: Path) -> Path:
    ensure_agency_keys(SAMPLE, tmp_path, clock=ManualClock(T0 - timedelta(days=1)))
    return tmp_path


@pytest_asyncio.fixture
async def replay_bucket(js: JetStreamContext) -> AsyncIterator[str]:
    """A fresh replay bucket, so tests on the shared server never see each other's tokens."""
    bucket = f"gc_replay_test_{uuid.uuid4().hex[:12]}"
    yield bucket
    await js.delete_key_value(bucket)


@pytest_asyncio.fixture
async def env(tmp_path: Path, js: JetStreamContext, replay_bucket: str) -> AsyncIterator[Env]:
    state = provisioned(tmp_path)
    clock = ManualClock(T0)
    auth = Authenticator(registry_of(state), await open_replay_cache(js, bucket=replay_bucket), clock)
    async with serving(auth) as (registry_service, bus_service, channel):
        yield Env(
            state=state,
            clock=clock,
            auth=auth,
            registry_service=registry_service,
            bus_service=bus_service,
            # grpc ships no type hints, so the stubs' aio overloads need naming.
            registry_stub=cast(
                "registry_pb2_grpc.RegistryServiceAsyncStub", registry_pb2_grpc.RegistryServiceStub(channel)
            ),
            bus_stub=cast("bus_pb2_grpc.BusServiceAsyncStub", bus_pb2_grpc.BusServiceStub(channel)),
        )


class serving:
    """A real grpc.aio server on 127.0.0.1:0 with both doubles, and a channel to it."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth
        self._server = grpc.aio.server()
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> tuple[RegistryDouble, BusDouble, grpc.aio.Channel]:
        # The doubles implement one method each; grpc answers UNIMPLEMENTED for the rest.
        registry_service = RegistryDouble(self._auth)  # type: ignore[abstract]
        bus_service = BusDouble(self._auth)  # type: ignore[abstract]
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry_service, self._server)
        bus_pb2_grpc.add_BusServiceServicer_to_server(bus_service, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return registry_service, bus_service, self._channel

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()
        await self._server.stop(None)


def _expect(details: ErrorDetails, code: grpc.StatusCode, reason: str) -> None:
    assert (details.code, details.reason) == (code, reason), details.message


def _unauthenticated(details: ErrorDetails, reason: str) -> None:
    _expect(details, grpc.StatusCode.UNAUTHENTICATED, reason)


def _raw_token(
    key: SigningKey, *, iss: str = BANK, kid: str | None = None, iat: datetime = T0, ttl: int = 120
) -> str:
    seconds = int(iat.timestamp())
    claims = {
        "iss": iss,
        "sub": iss,
        "aud": BROKER_AUDIENCE,
        "iat": seconds,
        "exp": seconds + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": kid or key.kid})


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# -- the header ----------------------------------------------------------------------------------


async def test_a_valid_token_authenticates_the_agency(env: Env) -> None:
    response = await env.get_agency(env.metadata())
    assert response.agency.id == BANK
    (caller,) = env.registry_service.callers
    assert caller.agency.id == BANK
    assert caller.token.agency_id == BANK
    assert caller.token.kid == env.key().kid
    assert caller.tls_identity is None


async def test_no_token(env: Env) -> None:
    details = await env.refused(None)
    _unauthenticated(details, "MISSING_TOKEN")
    assert "authorization: Bearer" in details.message


async def test_two_authorization_headers(env: Env) -> None:
    details = await env.refused(env.metadata() + env.metadata())
    _unauthenticated(details, "MALFORMED_TOKEN")
    assert "exactly one" in details.message


@pytest.mark.parametrize("value", ["Basic YmFuazpwdw==", "Bearer", "Bearer a b", "eyJhbGciOi"])
async def test_anything_but_one_bearer_token_is_malformed(env: Env, value: str) -> None:
    _unauthenticated(await env.refused((("authorization", value),)), "MALFORMED_TOKEN")


async def test_the_scheme_is_case_insensitive(env: Env) -> None:
    ((key, value),) = env.metadata()
    token = value.split(" ", 1)[1]
    response = await env.get_agency(((key, f"bEaReR {token}"),))
    assert response.agency.id == BANK


async def test_a_garbage_token(env: Env) -> None:
    _unauthenticated(await env.refused(_bearer("not.a.jwt")), "MALFORMED_TOKEN")


# -- who signed -----------------------------------------------------------------------------------


async def test_a_token_of_an_unknown_agency(env: Env) -> None:
    stranger = generate_signing_key()
    token = mint_bearer_token(stranger, agency_id="bank-nowhere", clock=env.clock)
    details = await env.refused(_bearer(token))
    _unauthenticated(details, "UNKNOWN_AGENCY")
    assert "bank-nowhere" in details.message


async def test_the_broker_identity_is_no_agency_even_with_the_broker_key(env: Env) -> None:
    broker_key = load_broker_signing_key(env.state)
    token = mint_bearer_token(broker_key, agency_id="greenchannel-broker", clock=env.clock)
    _unauthenticated(await env.refused(_bearer(token)), "UNKNOWN_AGENCY")


async def test_a_token_signed_with_another_agencys_key(env: Env) -> None:
    token = mint_bearer_token(env.key(OTHER_BANK), agency_id=BANK, clock=env.clock)
    details = await env.refused(_bearer(token))
    _unauthenticated(details, "UNKNOWN_KEY")
    assert BANK in details.message


async def test_a_token_forged_under_the_agencys_kid(env: Env) -> None:
    forged = _raw_token(env.key(OTHER_BANK), kid=env.key(BANK).kid)
    _unauthenticated(await env.refused(_bearer(forged)), "BAD_SIGNATURE")


async def test_a_token_signed_with_a_revoked_key(env: Env) -> None:
    # The client keeps using the key it loaded before the revocation.
    metadata = env.metadata()
    kid = env.key().kid
    revoke_key(env.state, BANK, kid, at=T0 - timedelta(minutes=1))
    env.reload_registry()
    details = await env.refused(metadata)
    _unauthenticated(details, "REVOKED_KEY")
    assert kid in details.message


async def test_a_token_signed_before_the_key_was_valid(env: Env) -> None:
    early = _raw_token(env.key(), iat=T0 - timedelta(days=2))
    env.clock.set(T0 - timedelta(days=2))
    _unauthenticated(await env.refused(_bearer(early)), "KEY_NOT_VALID")


# -- when ----------------------------------------------------------------------------------------


async def test_an_expired_token(env: Env) -> None:
    metadata = env.metadata(ttl=timedelta(minutes=2))
    env.clock.advance(timedelta(minutes=2, seconds=31))
    details = await env.refused(metadata)
    _unauthenticated(details, "EXPIRED_TOKEN")
    assert "fresh token" in details.message


async def test_a_token_from_the_future(env: Env) -> None:
    ahead = ManualClock(T0 + timedelta(minutes=2))
    metadata = bearer_metadata(env.key(), agency_id=BANK, clock=ahead)
    _unauthenticated(await env.refused(metadata), "NOT_YET_VALID")


async def test_a_token_living_longer_than_five_minutes(env: Env) -> None:
    long_lived = _raw_token(env.key(), ttl=301)
    _unauthenticated(await env.refused(_bearer(long_lived)), "TOKEN_LIFETIME_TOO_LONG")


async def test_a_token_for_another_audience(env: Env) -> None:
    token = mint_bearer_token(env.key(), agency_id=BANK, clock=env.clock, audience="bank-ccb")
    details = await env.refused(_bearer(token))
    _unauthenticated(details, "WRONG_AUDIENCE")
    assert BROKER_AUDIENCE in details.message


# -- once -----------------------------------------------------------------------------------------


async def test_a_replayed_token(env: Env) -> None:
    metadata = env.metadata()
    assert (await env.get_agency(metadata)).agency.id == BANK
    details = await env.refused(metadata)
    _unauthenticated(details, "REPLAYED_TOKEN")
    # A fresh token for the next call works.
    assert (await env.get_agency(env.metadata())).agency.id == BANK


async def test_a_failed_signature_never_reaches_the_replay_cache(env: Env) -> None:
    forged = _raw_token(env.key(OTHER_BANK), kid=env.key(BANK).kid)
    for _ in range(2):
        _unauthenticated(await env.refused(_bearer(forged)), "BAD_SIGNATURE")


async def test_the_same_jti_of_two_agencies_is_not_a_replay(env: Env) -> None:
    jti = "shared-jti-0001"
    tokens = []
    for agency in (BANK, OTHER_BANK):
        seconds = int(T0.timestamp())
        claims = {
            "iss": agency,
            "sub": agency,
            "aud": BROKER_AUDIENCE,
            "iat": seconds,
            "exp": seconds + 60,
            "jti": jti,
        }
        key = env.key(agency)
        tokens.append(jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid}))
    for token in tokens:
        await env.get_agency(_bearer(token))


async def test_failures_are_logged_with_reason_and_agency_but_never_the_token(env: Env) -> None:
    metadata = env.metadata()
    await env.get_agency(metadata)
    with capture_logs() as logs:
        await env.refused(metadata)
    (event,) = [log for log in logs if log["event"] == "grpc.auth_failed"]
    assert event["reason"] == "REPLAYED_TOKEN"
    assert event["agency_id"] == BANK
    token = metadata[0][1].split(" ", 1)[1]
    assert all(token not in str(value) for log in logs for value in log.values())


# -- the replay cache itself -----------------------------------------------------------------------


async def test_two_replicas_racing_on_one_token_agree_on_a_single_first_use(
    js: JetStreamContext, replay_bucket: str
) -> None:
    replicas = await asyncio.gather(*(open_replay_cache(js, bucket=replay_bucket) for _ in range(4)))
    expires = T0 + timedelta(minutes=2)
    # A jti may hold characters no KV key allows.
    outcomes = await asyncio.gather(
        *(r.first_use("bank-icbc/jti with spaces * >", expires) for r in replicas)
    )
    assert sorted(outcomes) == [False, False, False, True]
    assert await replicas[0].first_use("bank-icbc/another", expires) is True


async def test_the_bucket_keeps_token_ids_longer_than_any_token_lives(
    js: JetStreamContext, replay_bucket: str
) -> None:
    await open_replay_cache(js, bucket=replay_bucket)
    info = await js.stream_info(f"KV_{replay_bucket}")
    assert info.config.max_age == REPLAY_TTL.total_seconds() >= 6 * 60


async def test_a_bucket_made_with_a_short_ttl_is_extended(js: JetStreamContext, replay_bucket: str) -> None:
    await js.create_key_value(KeyValueConfig(bucket=replay_bucket, history=1, ttl=60))
    cache = await open_replay_cache(js, bucket=replay_bucket)
    info = await js.stream_info(f"KV_{replay_bucket}")
    assert info.config.max_age == REPLAY_TTL.total_seconds()
    assert await cache.first_use("x", T0) is True


async def test_nats_failures_become_unavailable(nats_server: EmbeddedNats, replay_bucket: str) -> None:
    nc = await connect(NatsSettings(servers=(nats_server.url,), initial_connect_timeout=5.0))
    cache = await open_replay_cache(nc.jetstream(), bucket=replay_bucket)
    await nc.close()
    with pytest.raises(UnavailableError):
        await cache.first_use("bank-icbc/jti", T0)
    with pytest.raises(UnavailableError, match="replay bucket"):
        await open_replay_cache(nc.jetstream(), bucket="gc_replay_never_made")


async def test_an_unanswered_replay_cache_refuses_the_call_as_unavailable(
    nats_server: EmbeddedNats, tmp_path: Path, replay_bucket: str
) -> None:
    nc = await connect(NatsSettings(servers=(nats_server.url,), initial_connect_timeout=5.0))
    cache: KvReplayCache = await open_replay_cache(nc.jetstream(), bucket=replay_bucket)
    await nc.close()
    state = provisioned(tmp_path)
    clock = ManualClock(T0)
    async with serving(Authenticator(registry_of(state), cache, clock)) as (_, _, channel):
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        metadata = bearer_metadata(load_agency_signing_key(state, BANK), agency_id=BANK, clock=clock)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetAgency(
                registry_pb2.GetAgencyRequest(id=BANK), metadata=metadata, timeout=CALL_TIMEOUT
            )
    details = error_details(caught.value)
    _expect(details, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    assert details.retry_delay is not None


# -- guard_unary ------------------------------------------------------------------------------------


async def test_guard_unary_invalid_request_carries_field_violations(env: Env) -> None:
    details = await env.refused(env.metadata(), "invalid")
    _expect(details, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.field_violations == (("stop_payment.amount", "must be > 0"),)


async def test_guard_unary_translates_protocol_errors_once(env: Env) -> None:
    details = await env.refused(env.metadata(), "invalid-message")
    _expect(details, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.field_violations == (("case.case_number", "is required"),)
    details = await env.refused(env.metadata(), "unavailable")
    _expect(details, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    assert "GC_INBOX" not in details.message


async def test_guard_unary_unroutable_carries_a_precondition_failure(env: Env) -> None:
    details = await env.refused(env.metadata(), "unroutable")
    _expect(details, grpc.StatusCode.FAILED_PRECONDITION, "UNROUTABLE")
    assert details.precondition_subjects == ("stop_payment.account",)


async def test_guard_unary_hides_an_unexpected_error(env: Env) -> None:
    with capture_logs() as logs:
        details = await env.refused(env.metadata(), "boom")
    _expect(details, grpc.StatusCode.INTERNAL, "INTERNAL")
    assert details.message == "internal error"
    assert "SECRET" not in details.message
    assert "Traceback" not in details.message
    (event,) = [log for log in logs if log["event"] == "grpc.internal_error"]
    assert isinstance(event["exc_info"], RuntimeError)


async def test_guard_unary_lets_the_servicers_own_abort_through(env: Env) -> None:
    details = await env.refused(env.metadata(), "abort")
    assert details.code is grpc.StatusCode.NOT_FOUND
    assert details.message == "aborted by the servicer itself"
    assert details.reason is None


# -- guard_stream -------------------------------------------------------------------------------------


async def _watch(
    env: Env, trigger: str, metadata: tuple[tuple[str, str], ...] | None
) -> tuple[list[str], ErrorDetails]:
    received: list[str] = []
    call = env.bus_stub.Watch(
        bus_pb2.WatchRequest(case_number=trigger), metadata=metadata, timeout=CALL_TIMEOUT
    )

    async def drain() -> None:
        async for response in call:
            received.append(response.request_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain()
    return received, error_details(caught.value)


async def test_guard_stream_refuses_an_unauthenticated_watch(env: Env) -> None:
    received, details = await _watch(env, "ok", None)
    assert received == []
    _unauthenticated(details, "MISSING_TOKEN")


async def test_guard_stream_delivers_what_came_before_the_failure(env: Env) -> None:
    received, details = await _watch(env, "invalid", env.metadata())
    assert received == [f"first-for-{BANK}"]
    _expect(details, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert details.field_violations == (("stop_payment.amount", "must be > 0"),)


async def test_guard_stream_unroutable_and_internal(env: Env) -> None:
    _, details = await _watch(env, "unroutable", env.metadata())
    _expect(details, grpc.StatusCode.FAILED_PRECONDITION, "UNROUTABLE")
    assert details.precondition_subjects == ("stop_payment.account",)
    _, details = await _watch(env, "boom", env.metadata())
    _expect(details, grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "SECRET" not in details.message


async def test_guard_stream_ends_cleanly_when_the_client_cancels(env: Env) -> None:
    call = env.bus_stub.Watch(bus_pb2.WatchRequest(case_number="hang"), metadata=env.metadata())
    first = await call.read()
    assert first.request_id == f"first-for-{BANK}"
    with capture_logs() as logs:
        call.cancel()
        await asyncio.wait_for(env.bus_service.stream_closed.wait(), timeout=CALL_TIMEOUT)
    assert not [log for log in logs if log["event"] == "grpc.internal_error"]


async def test_a_successful_stream(env: Env) -> None:
    call = env.bus_stub.Watch(
        bus_pb2.WatchRequest(case_number="ok"), metadata=env.metadata(), timeout=CALL_TIMEOUT
    )
    received = [response.request_id async for response in call]
    assert received == [f"first-for-{BANK}", "second"]
    assert await call.code() is grpc.StatusCode.OK
