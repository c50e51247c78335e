"""RegistryService and LedgerService: the read-only services."""

from __future__ import annotations

import grpc
from greenchannel.v1 import common_pb2, registry_pb2, registry_pb2_grpc

from broker.protocol import (
    Agency,
    AgencyKind,
    KeyUse,
    PublicKey,
    Registry,
    optional_timestamp,
    validate_message,
)

from ._auth import Authenticator
from ._errors import NotFoundError, UnroutableError
from ._grpc_status import guard_unary, to_hub_error
from ._refusals import RefusalSink

__all__ = ["RegistryServicer", "agency_to_proto", "key_to_proto"]

_KINDS = {
    AgencyKind.POLICE: common_pb2.AGENCY_KIND_POLICE,
    AgencyKind.BANK: common_pb2.AGENCY_KIND_BANK,
    AgencyKind.CARRIER: common_pb2.AGENCY_KIND_CARRIER,
    AgencyKind.PLATFORM: common_pb2.AGENCY_KIND_PLATFORM,
    AgencyKind.REGULATOR: common_pb2.AGENCY_KIND_REGULATOR,
}
_KINDS_BACK = {value: key for key, value in _KINDS.items()}


def key_to_proto(key: PublicKey) -> registry_pb2.AgencyKey:
    return registry_pb2.AgencyKey(
        kid=key.kid,
        public_key=key.raw,
        use=registry_pb2.KEY_USE_SIG if key.use is KeyUse.SIG else registry_pb2.KEY_USE_ENC,
        not_before=optional_timestamp(key.not_before),
        not_after=optional_timestamp(key.not_after),
        revoked_at=optional_timestamp(key.revoked_at),
    )


def agency_to_proto(agency: Agency) -> registry_pb2.Agency:
    return registry_pb2.Agency(
        id=agency.id,
        kind=_KINDS[agency.kind],
        name=agency.name,
        region=agency.region,
        supervisor=agency.supervisor or "",
        duty_contact=agency.duty_contact,
        keys=[key_to_proto(key) for key in agency.keys],
    )


def _checked(message: object) -> None:
    try:
        validate_message(message)  # type: ignore[arg-type]
    except Exception as exc:
        raise to_hub_error(exc) from exc


def _found(agency: Agency | None, subject: str, what: str) -> registry_pb2.Agency:
    if agency is None:
        raise UnroutableError(
            f"no agency in the directory serves this {what}", subject=subject, reason="NO_ROUTE"
        )
    return agency_to_proto(agency)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(
        self, *, auth: Authenticator, registry: Registry, refusals: RefusalSink | None = None
    ) -> None:
        self.refusals = refusals
        """Where refused calls are reported (the guards read it)."""
        self._auth = auth
        self._registry = registry

    @guard_unary
    async def GetAgency(
        self, request: registry_pb2.GetAgencyRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetAgencyResponse:
        await self._auth.authenticate(context)
        _checked(request)
        if request.id not in self._registry:
            raise NotFoundError(f"no agency {request.id!r}")
        return registry_pb2.GetAgencyResponse(agency=agency_to_proto(self._registry.get(request.id)))

    @guard_unary
    async def ListAgencies(
        self, request: registry_pb2.ListAgenciesRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListAgenciesResponse:
        await self._auth.authenticate(context)
        _checked(request)
        kind = _KINDS_BACK.get(request.kind) if request.kind else None
        agencies = [
            a for a in self._registry.agencies(kind=kind) if not request.region or a.region == request.region
        ]
        return registry_pb2.ListAgenciesResponse(
            agencies=[agency_to_proto(a) for a in sorted(agencies, key=lambda a: a.id)]
        )

    @guard_unary
    async def ResolveAccount(
        self, request: registry_pb2.ResolveAccountRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ResolveAccountResponse:
        await self._auth.authenticate(context)
        _checked(request)
        agency = self._registry.bank_for_account(request.account_number)
        return registry_pb2.ResolveAccountResponse(agency=_found(agency, "account_number", "account prefix"))

    @guard_unary
    async def ResolvePhone(
        self, request: registry_pb2.ResolvePhoneRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ResolvePhoneResponse:
        await self._auth.authenticate(context)
        _checked(request)
        agency = self._registry.carrier_for_number(request.e164)
        return registry_pb2.ResolvePhoneResponse(agency=_found(agency, "e164", "number"))

    @guard_unary
    async def ResolvePlatform(
        self, request: registry_pb2.ResolvePlatformRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ResolvePlatformResponse:
        await self._auth.authenticate(context)
        _checked(request)
        agency = self._registry.platform_for_code(request.platform)
        return registry_pb2.ResolvePlatformResponse(agency=_found(agency, "platform", "platform code"))

    @guard_unary
    async def ResolveRegion(
        self, request: registry_pb2.ResolveRegionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ResolveRegionResponse:
        await self._auth.authenticate(context)
        _checked(request)
        agency = self._registry.police_for_region(request.region)
        return registry_pb2.ResolveRegionResponse(agency=_found(agency, "region", "region"))

    @guard_unary
    async def ListBrokerKeys(
        self, request: registry_pb2.ListBrokerKeysRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListBrokerKeysResponse:
        # Public keys, yet authenticated like every other call: deny by default.
        await self._auth.authenticate(context)
        _checked(request)
        return registry_pb2.ListBrokerKeysResponse(
            keys=[key_to_proto(k) for k in self._registry.broker_keys()]
        )
