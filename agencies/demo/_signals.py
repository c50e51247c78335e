"""Shared risk signals (issue 14) in the demo: a mark that stops the next payment, and a warning that
cannot reach its person and ends in an in-person dissuasion.

Played once the fraud account is stopped and chased, before the case is closed:

- police-310115 mark the fraud account HIGH (mule account) in the risk registry under the Pudong
  case; the fraudster talks the victim into paying again, and her bank (bank-cmb) checks the
  destination before moving any money: HIGH, refused;
- another potential victim's phone is off: carrier-ctcc records the line unreachable, so the
  warning police-310115 send her ends UNREACHABLE; the broker then asks the police of her region
  (police-440305) to dissuade her in person (DISSUASION), which they do.

What happened goes to the report as plain dicts (``risk_checks``, ``warnings``) that ``--json``
prints as they are: account numbers masked to their last four digits, no phone number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2, risk_pb2

from agencies import _seed as seed
from agencies._common import Reach
from agencies.carrier import CarrierCore
from broker.protocol import FINAL_STATES, state_name

from ._pre_payment import customer_transfer

if TYPE_CHECKING:
    from ._demo import _Scenario

__all__ = ["Signals"]

POLICE = "police-310115"
CASE = "SH-PD-2026-1121-0001"
WARNING_CARRIER = "carrier-ctcc"
WARNING_REGION = "440305"
AGAIN_AMOUNT = 1_000_000
"""10,000.00 CNY: what the fraudster talks the victim into paying a second time."""


def _case(instrument: common_pb2.LegalInstrumentType.ValueType, number: str) -> common_pb2.CaseRef:
    return common_pb2.CaseRef(
        case_number=CASE,
        issuing_agency=POLICE,
        legal_instrument_id=number,
        legal_instrument_type=instrument,
    )


def _outcome(outcome: results_pb2.WarningOutcome.ValueType) -> str:
    return results_pb2.WarningOutcome.Name(outcome).removeprefix("WARNING_OUTCOME_")


class Signals:
    """Steps 9 and 10, played on the first act's scenario (its clients, stack and report)."""

    def __init__(self, scenario: _Scenario) -> None:
        self.s = scenario
        self.say: Callable[[str], None] = scenario.say

    async def run(self) -> None:
        await self._mark_and_refuse()
        await self._warn_the_unreachable()

    async def _mark_and_refuse(self) -> None:
        self.say(
            "9. Pudong police mark the fraud account HIGH in the shared risk registry; "
            "a payment to it is refused."
        )
        marked = await self.s.client(POLICE).risk.mark(
            risk_pb2.RiskIdentifier(bank_account=seed.FRAUD_ACCOUNT),
            grade=risk_pb2.RISK_GRADE_HIGH,
            reason=risk_pb2.RISK_REASON_MULE_ACCOUNT,
            case=_case(common_pb2.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE, "沪公(浦)冻字[2026]1121号"),
        )
        mark_state = risk_pb2.MarkState.Name(marked.status.state)
        shown = mark_state.removeprefix("MARK_STATE_")
        self.say(f"   marked by {marked.status.marked_by} under {marked.status.case_number}: {shown}")
        # The victim's own bank screens her next payment: the same money would be lost again.
        tried = await customer_transfer(
            self.s.stack,
            bank=seed.VICTIM_BANK,
            from_account=seed.VICTIM_ACCOUNT,
            to_account=seed.FRAUD_ACCOUNT,
            to_bank=seed.FRAUD_BANK,
            amount=AGAIN_AMOUNT,
        )
        refused = not tried.made and tried.grade == risk_pb2.RiskGrade.Name(risk_pb2.RISK_GRADE_HIGH)
        self.s.report.risk_checks.append(
            {
                "bank": tried.bank,
                "to_bank": seed.FRAUD_BANK,
                "to_account": f"…{seed.FRAUD_ACCOUNT[-4:]}",
                "amount_minor_units": AGAIN_AMOUNT,
                "mark_state": mark_state,
                "made": tried.made,
                "grade": tried.grade,
                "reason": tried.reason,
                "ok": refused,
            }
        )
        mark = "ok " if refused else "!! "
        verdict = "refused before any money moved" if not tried.made else "MADE"
        self.say(
            f"  {mark}{tried.bank} checks a {AGAIN_AMOUNT / 100:,.2f} CNY payment to account "
            f"…{seed.FRAUD_ACCOUNT[-4:]}: {tried.grade}, {verdict}"
        )

    async def _warn_the_unreachable(self) -> None:
        self.say(
            "10. A warning cannot reach another potential victim; Nanshan police dissuade her in person."
        )
        carrier = self.s.stack.agencies[WARNING_CARRIER].core
        if not isinstance(carrier, CarrierCore):
            raise TypeError(f"{WARNING_CARRIER} is not a carrier")
        # The seed records her line so already; said here so the step does not rest on the seed.
        carrier.set_reach(seed.UNREACHABLE_PHONE, Reach.UNREACHABLE)
        warned = await self.s.send(
            "warn a potential victim who cannot be reached",
            self.s._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER, "沪公(浦)劝阻字[2026]1121-2号"),
                warning=requests_pb2.Warning(
                    phone=common_pb2.PhoneRef(e164=seed.UNREACHABLE_PHONE),
                    channel=requests_pb2.WARNING_CHANNEL_CALL,
                    template_id="investment-scam-call",
                    region=WARNING_REGION,
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
        )
        entry: dict[str, object] = {
            "warning_id": warned.id,
            "recipient": warned.recipient,
            "state": state_name(warned.state),
            "outcome": _outcome(warned.result.warning),
            "region": WARNING_REGION,
            "dissuasion_id": "",
            "dissuasion_recipient": "",
            "dissuasion_state": "",
            "dissuasion_outcome": "",
            "ok": False,
        }
        self.s.report.warnings.append(entry)
        if warned.result.warning != results_pb2.WARNING_OUTCOME_UNREACHABLE:
            self.say(f"   !! the warning ended {entry['outcome']}, not UNREACHABLE: no dissuasion expected")
            return
        dissuasion = await self._dissuasion(warned)
        done = self.s._record(
            "in-person dissuasion sent by the broker", dissuasion, [common_pb2.REQUEST_STATE_EXECUTED]
        )
        entry.update(
            dissuasion_id=done.id,
            dissuasion_recipient=done.recipient,
            dissuasion_state=state_name(done.state),
            dissuasion_outcome=_outcome(done.result.warning),
            ok=done.state == common_pb2.REQUEST_STATE_EXECUTED,
        )
        self.say(
            f"   the warning ended {entry['outcome']}; {done.recipient} went to see her: "
            f"{entry['dissuasion_outcome'] or entry['dissuasion_state']}"
        )

    async def _dissuasion(self, warned: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus:
        """The broker's DISSUASION of ``warned``, followed to its outcome.

        The broker sends it once it has processed the warning's outcome, which may come after the
        warning's final status is visible: asked again until it is there.
        """
        police = self.s.client(POLICE)
        sent = await self.s.until(
            lambda: police.dissuasions(warned), bool, what=f"the dissuasion of warning {warned.id}"
        )
        return await police.wait_for(sent[0].id, FINAL_STATES, within=self.s.config.wait)
