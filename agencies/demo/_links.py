"""Case linkage (串并) in the demo: Nanshan's case and Pudong's share a mule account.

Nanshan police froze the mule account at bank-abc (step 0) before the broker, chasing Pudong's
money, stopped the same account under Pudong's case (step 3). The broker saw the account's digest
in both cases and sent each owner a signed linkage notice, and, the regions being different, the
coordinator the directory suggests (the police supervising the earlier case's owner). This step
reads the link as Pudong's police list it (``greenchannel cases linked``), waits for each notice to
be executed, and records them: the requests in the report's rows, the link in ``links`` (case
numbers, owners, regions: never an account number).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2

from agencies.police import PoliceDesk
from broker.protocol import FINAL_STATES, state_name

if TYPE_CHECKING:
    from ._demo import _Scenario

__all__ = ["record_links"]

POLICE = "police-310115"
CASE = "SH-PD-2026-1121-0001"


async def record_links(scenario: _Scenario) -> None:
    """Step 11: the link between the run's cases, its notices followed to their outcome."""
    scenario.say("11. The broker links Nanshan's case with Pudong's: they share a mule account (串并).")
    links = await _listed(scenario)
    for link in links:
        notices = await _notices(scenario, link)
        for recipient, status in sorted(notices.items()):
            role = "coordinator" if recipient == link.coordinator else "case owner"
            scenario._record(f"linkage notice to the {role}", status, [common_pb2.REQUEST_STATE_EXECUTED])
        kind = requests_pb2.IdentifierKind.Name(link.kind).removeprefix("IDENTIFIER_KIND_")
        cases = [f"{case.owner}/{case.case_number}" for case in link.cases]
        scenario.report.links.append(
            {
                "link_id": link.link_id,
                "kind": kind,
                "cases": cases,
                "cross_region": link.cross_region,
                "coordinator": link.coordinator,
                "notices": {to: state_name(status.state) for to, status in sorted(notices.items())},
                "ok": all(s.state == common_pb2.REQUEST_STATE_EXECUTED for s in notices.values()),
            }
        )
        scenario.say(
            f"   a shared {kind.lower().replace('_', ' ')} links {', '.join(cases)};"
            f" coordinator: {link.coordinator or 'none'}"
        )


async def _listed(scenario: _Scenario) -> list[requests_pb2.LinkageNotice]:
    """Pudong's links, asked again until the broker has linked (it links as the chase's answers
    come in, which may be after the trail reads settled)."""
    police = scenario.client(POLICE)
    return await scenario.until(lambda: police.risk.links(CASE), bool, what=f"a link of case {CASE}")


async def _notices(
    scenario: _Scenario, link: requests_pb2.LinkageNotice
) -> dict[str, lifecycle_pb2.RequestStatus]:
    """Each police agency's notice of ``link`` (its desk records the request id), at its outcome."""
    recipients = {case.owner for case in link.cases} | ({link.coordinator} if link.coordinator else set())

    async def received() -> dict[str, str]:
        found: dict[str, str] = {}
        for agency in recipients:
            desk = scenario.stack.agencies[agency].core
            if not isinstance(desk, PoliceDesk):
                raise TypeError(f"{agency} is not a police desk")
            ids = [n.request_id for n in desk.linkage_notices() if n.link_id == link.link_id]
            if ids:
                found[agency] = ids[0]
        return found

    found = await scenario.until(
        received, lambda found: found.keys() == recipients, what=f"the notices of link {link.link_id}"
    )
    wait = scenario.config.wait
    return {
        agency: await scenario.client(agency).wait_for(request_id, FINAL_STATES, within=wait)
        for agency, request_id in found.items()
    }
