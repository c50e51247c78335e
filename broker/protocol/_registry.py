"""The agency directory in memory: who is on the bus, their public keys, and where requests go.

The file format lives in :mod:`._directory`; this module holds the validated model and the
routing indexes, so a registry built in code (tests, NATS KV) obeys the same rules as one
loaded from TOML. Error field paths use the TOML spelling (``key[1].kid``, ``bank_prefixes[0]``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ._errors import RegistryError, UnknownAgencyError
from ._keys import KeyUse, PublicKey

__all__ = ["BROKER_ID", "Agency", "AgencyKind", "Registry"]

AGENCY_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
BROKER_ID = "greenchannel-broker"
"""The broker's identity: issuer of notarizations, audience of events and bearer tokens.

Reserved here because the registry is what hands out identities: no agency may take it.
"""
_REGION = re.compile(r"[0-9]{6}")
_REGION_PREFIX = re.compile(r"[0-9]{2,6}")
_BANK_PREFIX = re.compile(r"[0-9]{2,19}")  # ISO/IEC 7812: a PAN has at most 19 digits
_SEGMENT = re.compile(r"\+[1-9][0-9]{0,14}")  # E.164: at most 15 digits after the "+"
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_PLATFORM_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_CONTACT = re.compile(r"\S{3,254}")


class AgencyKind(enum.StrEnum):
    """What an agency is; decides which routing data it carries and which messages it may send."""

    POLICE = "police"
    BANK = "bank"
    """Banks and payment institutions."""
    CARRIER = "carrier"
    PLATFORM = "platform"
    REGULATOR = "regulator"


class _FieldError(RegistryError):
    """A field of one agency is invalid; ``field`` is relative to the agency entry.

    Private so the TOML loader can re-anchor the path at ``agency[i]`` and name the file.
    """

    def __init__(self, detail: str, field: str) -> None:
        super().__init__(detail, field=field)
        self.detail = detail


# Routing attribute -> the one kind allowed to carry it, and the format of its entries.
_ROUTING: Mapping[str, tuple[AgencyKind, re.Pattern[str], str]] = MappingProxyType(
    {
        "bank_prefixes": (AgencyKind.BANK, _BANK_PREFIX, "2 to 19 digits"),
        "number_segments": (AgencyKind.CARRIER, _SEGMENT, "an E.164 prefix such as '+86139'"),
        "ported_numbers": (AgencyKind.CARRIER, _E164, "a full E.164 number such as '+8613812345678'"),
        "platform_codes": (AgencyKind.PLATFORM, _PLATFORM_CODE, "a lowercase code such as 'wechat'"),
        "police_regions": (AgencyKind.POLICE, _REGION_PREFIX, "a region code prefix of 2 to 6 digits"),
    }
)


@dataclass(frozen=True, kw_only=True)
class Agency:
    """One participant of the bus. Construction validates every field."""

    id: str
    """One NATS subject token, e.g. ``bank-icbc``; also the JWS ``iss`` / ``aud``."""
    kind: AgencyKind
    """Police, bank, carrier, platform or regulator."""
    name: str
    """Display name of the institution (never a person's name)."""
    region: str
    """GB/T 2260 division code of the agency's seat, exactly 6 digits (``310115``)."""
    duty_contact: str
    """Role contact for escalations (``duty-desk@bank-icbc``), never a person."""
    supervisor: str | None = None
    """Id of the supervisory agency, told about SLA breaches; must exist in the registry."""
    keys: tuple[PublicKey, ...] = ()
    """Ed25519 ``sig`` and X25519 ``enc`` public keys, directory keys first, then overlay keys."""
    bank_prefixes: tuple[str, ...] = ()
    """Banks: account-number / BIN prefixes (digits) routed to this bank."""
    number_segments: tuple[str, ...] = ()
    """Carriers: E.164 number prefixes (``+86139``) allocated to this carrier."""
    ported_numbers: tuple[str, ...] = ()
    """Carriers: full E.164 numbers ported in; they win over every segment."""
    platform_codes: tuple[str, ...] = ()
    """Platforms: the platform codes requests name (``wechat``)."""
    police_regions: tuple[str, ...] = ()
    """Police: region code prefixes (2-6 digits) this agency serves; ``31`` is all of Shanghai."""

    def __post_init__(self) -> None:
        _validate_agency(self)

    def signing_keys(self) -> tuple[PublicKey, ...]:
        return tuple(key for key in self.keys if key.use is KeyUse.SIG)

    def encryption_keys(self) -> tuple[PublicKey, ...]:
        return tuple(key for key in self.keys if key.use is KeyUse.ENC)

    def key(self, kid: str) -> PublicKey | None:
        return next((key for key in self.keys if key.kid == kid), None)


def _validate_agency(agency: Agency) -> None:
    if not AGENCY_ID.fullmatch(agency.id):
        raise _FieldError("must match ^[a-z0-9][a-z0-9-]{1,62}$ (one NATS subject token)", "id")
    if agency.id == BROKER_ID:
        raise _FieldError(f"{BROKER_ID!r} is reserved for the broker", "id")
    if not isinstance(agency.kind, AgencyKind):
        raise _FieldError(f"must be one of {', '.join(AgencyKind)}", "kind")
    if not agency.name.strip():
        raise _FieldError("must not be empty", "name")
    if not _REGION.fullmatch(agency.region):
        raise _FieldError("must be a GB/T 2260 division code of exactly 6 digits", "region")
    # Whitespace is refused because a role address has none, while a person's name usually does.
    if not _CONTACT.fullmatch(agency.duty_contact):
        raise _FieldError(
            "must be a role contact without spaces, such as 'duty-desk@bank-icbc'", "duty_contact"
        )
    if agency.supervisor is not None:
        if not AGENCY_ID.fullmatch(agency.supervisor):
            raise _FieldError("must be an agency id", "supervisor")
        if agency.supervisor == agency.id:
            raise _FieldError("an agency cannot supervise itself", "supervisor")
    for attr, (kind, pattern, shape) in _ROUTING.items():
        values: tuple[str, ...] = getattr(agency, attr)
        if values and agency.kind is not kind:
            raise _FieldError(f"only agencies of kind '{kind}' carry {attr}", attr)
        seen: set[str] = set()
        for i, value in enumerate(values):
            if not pattern.fullmatch(value):
                raise _FieldError(f"{value!r} is not {shape}", f"{attr}[{i}]")
            if value in seen:
                raise _FieldError(f"{value!r} is listed twice", f"{attr}[{i}]")
            seen.add(value)
    kids: set[str] = set()
    for i, key in enumerate(agency.keys):
        if key.kid in kids:
            raise _FieldError(f"duplicate kid {key.kid!r}", f"key[{i}].kid")
        kids.add(key.kid)


@dataclass(frozen=True)
class _PrefixIndex:
    """Longest-prefix lookup: one dict probe per distinct prefix length, longest first."""

    entries: Mapping[str, Agency]
    lengths: tuple[int, ...]

    def longest(self, value: str) -> Agency | None:
        for length in self.lengths:
            if length <= len(value) and (hit := self.entries.get(value[:length])) is not None:
                return hit
        return None


class Registry:
    """An immutable agency directory with routing indexes built once.

    Satisfies the ``KeyStore`` protocol through :meth:`public_keys`.
    """

    __slots__ = (
        "_agencies",
        "_banks",
        "_broker_keys",
        "_by_id",
        "_jurisdiction",
        "_platforms",
        "_police",
        "_ported",
        "_segments",
    )

    def __init__(
        self,
        agencies: Iterable[Agency],
        *,
        broker_keys: Iterable[PublicKey] = (),
        jurisdiction: str | None = None,
        source: str | None = None,
    ) -> None:
        """Build and cross-check the directory; ``source`` names the origin in every error."""
        self._agencies = tuple(agencies)
        self._jurisdiction = jurisdiction
        by_id: dict[str, Agency] = {}
        for i, agency in enumerate(self._agencies):
            if agency.id in by_id:
                raise RegistryError(
                    f"duplicate agency id {agency.id!r}", file=source, field=f"agency[{i}].id"
                )
            by_id[agency.id] = agency
        self._by_id: Mapping[str, Agency] = MappingProxyType(by_id)
        self._check_supervisors(source)
        self._broker_keys = tuple(broker_keys)
        self._check_kids(source)
        self._banks = self._prefix_index("bank_prefixes", source)
        self._segments = self._prefix_index("number_segments", source)
        self._police = self._prefix_index("police_regions", source)
        self._ported = self._exact_index("ported_numbers", source)
        self._platforms = self._exact_index("platform_codes", source)

    # -- construction checks ------------------------------------------------------------------

    def _check_supervisors(self, source: str | None) -> None:
        for i, agency in enumerate(self._agencies):
            if agency.supervisor is not None and agency.supervisor not in self._by_id:
                raise RegistryError(
                    f"unknown supervisor {agency.supervisor!r}", file=source, field=f"agency[{i}].supervisor"
                )
        # A cycle would bounce an SLA escalation around forever.
        for i, agency in enumerate(self._agencies):
            seen = {agency.id}
            current = agency.supervisor
            while current is not None:
                if current in seen:
                    raise RegistryError(
                        f"supervisor chain of {agency.id!r} loops back to {current!r}",
                        file=source,
                        field=f"agency[{i}].supervisor",
                    )
                seen.add(current)
                current = self._by_id[current].supervisor

    def _check_kids(self, source: str | None) -> None:
        # Two owners of one key could sign as each other.
        owner: dict[str, str] = {}
        for j, key in enumerate(self._broker_keys):
            if key.kid in owner:
                raise RegistryError(f"duplicate kid {key.kid!r}", file=source, field=f"broker_key[{j}].kid")
            owner[key.kid] = "the broker"
        for i, agency in enumerate(self._agencies):
            for j, key in enumerate(agency.keys):
                if key.kid in owner:
                    raise RegistryError(
                        f"kid {key.kid!r} already belongs to {owner[key.kid]}",
                        file=source,
                        field=f"agency[{i}].key[{j}].kid",
                    )
                owner[key.kid] = repr(agency.id)

    def _entries(self, attr: str, source: str | None) -> dict[str, Agency]:
        index: dict[str, Agency] = {}
        for i, agency in enumerate(self._agencies):
            for j, value in enumerate(getattr(agency, attr)):
                if value in index:
                    raise RegistryError(
                        f"{value!r} is already routed to {index[value].id!r}",
                        file=source,
                        field=f"agency[{i}].{attr}[{j}]",
                    )
                index[value] = agency
        return index

    def _prefix_index(self, attr: str, source: str | None) -> _PrefixIndex:
        entries = self._entries(attr, source)
        lengths = tuple(sorted({len(prefix) for prefix in entries}, reverse=True))
        return _PrefixIndex(MappingProxyType(entries), lengths)

    def _exact_index(self, attr: str, source: str | None) -> Mapping[str, Agency]:
        return MappingProxyType(self._entries(attr, source))

    # -- lookups ------------------------------------------------------------------------------

    @property
    def jurisdiction(self) -> str | None:
        """ISO 3166 code whose SLA defaults apply (``CN``), if the source declared one."""
        return self._jurisdiction

    def __len__(self) -> int:
        return len(self._agencies)

    def __contains__(self, agency_id: object) -> bool:
        return agency_id in self._by_id

    def get(self, agency_id: str) -> Agency:
        try:
            return self._by_id[agency_id]
        except KeyError:
            raise UnknownAgencyError(f"unknown agency {agency_id!r}") from None

    def agencies(self, kind: AgencyKind | None = None, region: str | None = None) -> tuple[Agency, ...]:
        """Agencies in directory order; ``region`` is a division-code prefix (``"31"``, ``"310115"``)."""
        return tuple(
            agency
            for agency in self._agencies
            if (kind is None or agency.kind == kind) and (region is None or agency.region.startswith(region))
        )

    def public_keys(self, agency_id: str) -> Sequence[PublicKey]:
        """Every key of the agency, both uses; callers pick by ``kid`` and check ``use``.

        :data:`BROKER_ID` yields the broker keys, so one store verifies notarizations too.
        An unknown agency has no keys rather than raising: to a verifier, a message from a
        stranger is an unknown key (a verification failure), not a broken directory.
        """
        if agency_id == BROKER_ID:
            return self._broker_keys
        agency = self._by_id.get(agency_id)
        return agency.keys if agency is not None else ()

    def broker_keys(self) -> tuple[PublicKey, ...]:
        """The broker's keys, both uses: ``sig`` notarizes, ``enc`` receives sealed result details."""
        return self._broker_keys

    # -- routing ------------------------------------------------------------------------------

    def bank_for_account(self, account_number: str) -> Agency | None:
        """The bank owning the longest matching prefix; digits only, anything else is unroutable."""
        if not account_number.isascii() or not account_number.isdigit():
            return None
        return self._banks.longest(account_number)

    def carrier_for_number(self, e164: str) -> Agency | None:
        """A ported-in number first, then the carrier with the longest matching segment."""
        if not _E164.fullmatch(e164):
            return None
        return self._ported.get(e164) or self._segments.longest(e164)

    def platform_for_code(self, code: str) -> Agency | None:
        return self._platforms.get(code)

    def police_for_region(self, region_code: str) -> Agency | None:
        """The police agency with the longest ``police_regions`` prefix of a 6-digit region code."""
        if not _REGION.fullmatch(region_code):
            return None
        return self._police.longest(region_code)
