"""Closing the case: a competing claim, appeals, a living-expense release, the return of the money.

The demo's second act, after the freeze and the risk signals (the first act is
:mod:`agencies.demo._demo`, the signals :mod:`agencies.demo._signals`):

- a second victim, in Shenzhen Nanshan, paid 8,000.00 CNY into the bank-abc mule account shortly
  before the police acted, so the hold the broker placed there for the Pudong case also holds her
  money; Nanshan police (police-440305) freeze the account under their own case: the two cases
  compete for one account, and the broker's allocation gives each victim her share (latest
  deposit first: what left the account left from the earliest deposits);
- the holder of the last mule account (bank-ccb, hop 3) appeals through her bank: she sold goods
  and was paid, nothing more; Pudong police lift the restriction and the broker releases the hold;
- the holder of the bank-cmb mule account appeals too; the appeal is upheld and the money stays;
- the holder of the second bank-icbc mule account gets part of the frozen money released for
  living expenses;
- Pudong and Nanshan police order the returns: every bank pays its victims back.

At the end each frozen account's money adds up: frozen = returned + released + still held, the
first three from the broker's records, the last from the banks' own books.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import grpc
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2, trail_pb2

from agencies import _seed as seed
from agencies._seed import seed_anchor
from agencies.bank import BankCore
from broker.client import error_details
from broker.hub import claim_payable
from broker.protocol import EXECUTED_STATES, FINAL_STATES, to_timestamp

if TYPE_CHECKING:
    from ._demo import _Scenario

__all__ = ["CASE_B", "AccountMoney", "Closing", "deposit_second_victim", "nanshan_freeze"]

POLICE = "police-310115"
POLICE_B = "police-440305"
CASE = "SH-PD-2026-1121-0001"
CASE_B = "SZ-NS-2026-1121-0007"
VICTIM_B_BANK = "bank-ccb"
VICTIM_B_ACCOUNT = "6217000010055501234"
VICTIM_B_HOLDER = "黄某某"
VICTIM_B_AMOUNT = 800_000
VICTIM_B_MINUTES_BEFORE = 100
VICTIM_B_TRANSFER_ID = "CCB3300000090"
LIVING_EXPENSES = 100_000

_EXECUTED = (common_pb2.REQUEST_STATE_EXECUTED, common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED)


@dataclass(kw_only=True)
class AccountMoney:
    """One frozen account's money, from the broker's records and the bank's own books."""

    bank: str
    """Agency id of the bank."""
    account: str
    """The account number, masked to its last four digits."""
    frozen: int = 0
    """Minor units the holds on it held when they were placed, over every case."""
    returned: int = 0
    """Paid back to victims (executed RETURN_FUNDS)."""
    released: int = 0
    """Lifted: living expenses, appeals decided LIFTED."""
    held: int = 0
    """Still held, by the bank's own books."""
    cases: list[str] = field(default_factory=list)
    """The cases holding it."""

    @property
    def balances(self) -> bool:
        return self.frozen == self.returned + self.released + self.held

    def as_json(self) -> dict[str, object]:
        return {
            "bank": self.bank,
            "account": self.account,
            "cases": sorted(self.cases),
            "frozen": self.frozen,
            "returned": self.returned,
            "released": self.released,
            "held": self.held,
            "balances": self.balances,
        }


def deposit_second_victim(banks: dict[str, BankCore], now: datetime) -> datetime:
    """Book the Nanshan victim's 8,000.00 into the bank-abc mule account, as both banks record it.

    Returns when the money arrived. Done before the police act, so the Pudong case's hold there
    takes her money too: that is what makes the two cases compete.
    """
    at = seed_anchor(now) - timedelta(minutes=VICTIM_B_MINUTES_BEFORE)
    ccb, abc = banks[VICTIM_B_BANK], banks["bank-abc"]
    if ccb.account(VICTIM_B_ACCOUNT) is None:
        ccb.open_account(
            VICTIM_B_ACCOUNT,
            VICTIM_B_HOLDER,
            balance=2_000_000,
            id_type="居民身份证",
            id_number="440305199002140025",
            phone="+8613512340009",
            opened_at=at - timedelta(days=1800),
        )
        ccb.transfer(
            VICTIM_B_ACCOUNT,
            seed.MULE_ABC_ACCOUNT,
            "bank-abc",
            VICTIM_B_AMOUNT,
            at,
            VICTIM_B_TRANSFER_ID,
            to_holder=seed.MULE_ABC_HOLDER,
        )
        abc.transfer(
            VICTIM_B_ACCOUNT,
            seed.MULE_ABC_ACCOUNT,
            "",
            VICTIM_B_AMOUNT,
            at,
            VICTIM_B_TRANSFER_ID,
            from_bank=VICTIM_B_BANK,
        )
    return at


def nanshan_freeze(deposited_at: datetime) -> tuple[common_pb2.CaseRef, requests_pb2.Freeze]:
    """Nanshan police's freeze of the bank-abc mule account for their victim's 8,000.00."""
    case = _case(POLICE_B, common_pb2.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE, "深公(南)冻字[2026]1121号")
    return case, requests_pb2.Freeze(
        account=_ref(seed.MULE_ABC_ACCOUNT, seed.MULE_ABC_HOLDER),
        amount=_money(VICTIM_B_AMOUNT),
        fraud_transfer_id=VICTIM_B_TRANSFER_ID,
        victim_account=_ref(VICTIM_B_ACCOUNT, VICTIM_B_HOLDER, VICTIM_B_BANK),
        deposited_at=to_timestamp(deposited_at),
    )


def _ref(number: str, holder: str, bank: str = "") -> common_pb2.BankAccountRef:
    return common_pb2.BankAccountRef(account_number=number, holder_name=holder, bank=bank)


def _money(minor_units: int) -> common_pb2.Money:
    return common_pb2.Money(currency="CNY", minor_units=minor_units)


def _yuan(minor_units: int) -> str:
    return f"{minor_units / 100:,.2f} CNY"


class Closing:
    """The second act, played on the first act's scenario (its clients, stack and report)."""

    def __init__(self, scenario: _Scenario) -> None:
        self.s = scenario
        self.say: Callable[[str], None] = scenario.say
        self.returned: dict[str, int] = {}
        self.released: dict[str, int] = {}

    async def run(self, trail: trail_pb2.Trail) -> dict[str, AccountMoney]:
        """Appeals, a living-expense release and the returns; the accounting per frozen account."""
        holds = _holds(trail, self.s.report.trail_accounts)
        self.say("12. Holders appeal through the banks that restricted them.")
        await self._appeal(
            holds[seed.MULE_CCB2_ACCOUNT][0],
            bank="bank-ccb",
            ground=requests_pb2.APPEAL_GROUND_NOT_INVOLVED,
            statement="I sold a used car and was paid for it; I do not know the payer.",
            decision=results_pb2.APPEAL_DECISION_LIFTED,
            reason="The payment matches a documented sale; the holder is not involved.",
            account=seed.MULE_CCB2_ACCOUNT,
        )
        await self._appeal(
            holds[seed.MULE_CMB_ACCOUNT][0],
            bank="bank-cmb",
            ground=requests_pb2.APPEAL_GROUND_LEGITIMATE_FUNDS,
            statement="The money is my salary.",
            decision=results_pb2.APPEAL_DECISION_UPHELD,
            reason="The money arrived from a mule account minutes after the fraud; it stays frozen.",
            account=seed.MULE_CMB_ACCOUNT,
        )
        self.say(
            f"13. Pudong police release {_yuan(LIVING_EXPENSES)} of a frozen account for living expenses."
        )
        target = holds[seed.MULE_ICBC_ACCOUNT][0]
        release = await self.s.client(POLICE).release(
            self.s._request(
                _case(
                    POLICE, common_pb2.LEGAL_INSTRUMENT_TYPE_RELEASE_NOTICE, "沪公(浦)解冻字[2026]1121-1号"
                ),
                release=requests_pb2.Release(
                    target_request_id=target,
                    account=_ref(seed.MULE_ICBC_ACCOUNT, seed.MULE_ICBC_HOLDER),
                    amount=_money(LIVING_EXPENSES),
                    purpose=requests_pb2.RELEASE_PURPOSE_LIVING_EXPENSES,
                    reason="living expenses of the holder's family",
                ),
            )
        )
        done = await self._finished("release for living expenses", release, POLICE)
        self._count(self.released, seed.MULE_ICBC_ACCOUNT, done.result.amount_released.minor_units)
        self.say("14. The police order the return of the frozen money; the banks pay the victims back.")
        await self._refused_overclaim()
        for number, holder in (
            (seed.FRAUD_ACCOUNT, seed.FRAUD_HOLDER),
            (seed.MULE_CCB_ACCOUNT, seed.MULE_CCB_HOLDER),
            (seed.MULE_ICBC_ACCOUNT, seed.MULE_ICBC_HOLDER),
            (seed.MULE_ABC_ACCOUNT, seed.MULE_ABC_HOLDER),
        ):
            await self._return(
                POLICE, number, holder, _ref(seed.VICTIM_ACCOUNT, seed.VICTIM_HOLDER, seed.VICTIM_BANK)
            )
        await self._return(
            POLICE_B,
            seed.MULE_ABC_ACCOUNT,
            seed.MULE_ABC_HOLDER,
            _ref(VICTIM_B_ACCOUNT, VICTIM_B_HOLDER, VICTIM_B_BANK),
        )
        return await self._accounting()

    async def _appeal(
        self,
        restriction: str,
        *,
        bank: str,
        ground: requests_pb2.AppealGround.ValueType,
        statement: str,
        decision: results_pb2.AppealDecision.ValueType,
        reason: str,
        account: str,
    ) -> None:
        filed = await self.s.client(bank).file_appeal(
            restriction,
            ground=ground,
            statement=requests_pb2.AppealStatement(statement=statement),
            ticket=f"{bank.upper()}-APL-{restriction[-6:]}",
        )
        police = self.s.client(POLICE)
        # Filed: the police desk has it (ACKNOWLEDGED); the decision is the police's, later.
        await police.wait_for(filed.id, {common_pb2.REQUEST_STATE_ACKNOWLEDGED}, within=self.s.config.wait)
        decided = await police.decide_appeal(filed.id, decision, reason)
        verdict = results_pb2.AppealDecision.Name(decision).removeprefix("APPEAL_DECISION_")
        status = await police.wait_for(decided.status.id, FINAL_STATES, within=self.s.config.wait)
        self.s._record(
            f"appeal by the holder at {bank} ({verdict.lower()})", status, [common_pb2.REQUEST_STATE_EXECUTED]
        )
        for order in decided.lifting:
            lifted = await self._finished("lifting order sent by the broker", order, POLICE)
            self._count(self.released, account, lifted.result.amount_released.minor_units)

    async def _refused_overclaim(self) -> None:
        """Pudong police ask for everything frozen on the shared account: the broker refuses."""
        police = self.s.client(POLICE)
        account = _ref(seed.MULE_ABC_ACCOUNT, seed.MULE_ABC_HOLDER)
        allocation = await police.allocation(CASE, account)
        victim = _ref(seed.VICTIM_ACCOUNT, seed.VICTIM_HOLDER, seed.VICTIM_BANK)
        try:
            await police.submit(self._return_request(POLICE, account, victim, allocation.frozen.minor_units))
        except grpc.aio.AioRpcError as exc:
            reason = error_details(exc).reason or exc.code().name
            self.s.report.refusals.append(reason)
            everything = _yuan(allocation.frozen.minor_units)
            self.say(
                f"   asking to return all {everything} frozen on the shared account is refused "
                f"({reason}): part of it is the Nanshan victim's"
            )
        else:
            self.say("   !! an order for more than the case's share was accepted")
            self.s.report.refusals.append("ACCEPTED")

    def _return_request(
        self, owner: str, account: common_pb2.BankAccountRef, victim: common_pb2.BankAccountRef, amount: int
    ) -> requests_pb2.Request:
        return self.s._request(
            _case(owner, common_pb2.LEGAL_INSTRUMENT_TYPE_RETURN_NOTICE, f"返还字[2026]{amount}"),
            return_funds=requests_pb2.ReturnFunds(
                account=account,
                payouts=[requests_pb2.VictimPayout(victim_account=victim, amount=_money(amount))],
            ),
        )

    async def _return(self, owner: str, number: str, holder: str, victim: common_pb2.BankAccountRef) -> None:
        bus = self.s.client(owner)
        account = _ref(number, holder)
        allocation = await bus.allocation(_case_number(owner), account)
        now = self.s.config.clock.now()
        payable = sum(
            claim_payable(claim, at=now)
            for claim in allocation.claims
            if claim.case_number == _case_number(owner)
        )
        shares = ", ".join(
            f"{c.case_number}: {_yuan(c.share.minor_units)}" for c in allocation.claims if c.share.minor_units
        )
        frozen = _yuan(allocation.frozen.minor_units)
        self.say(f"   account ...{number[-4:]} at {allocation.bank}: {frozen} frozen; shares {shares}")
        if not payable:
            return
        accepted = await bus.submit(self._return_request(owner, account, victim, payable))
        done = await self._finished(f"return to the victim of {_case_number(owner)}", accepted.status, owner)
        self._count(self.returned, number, done.result.amount_returned.minor_units)
        await self._followed_up(owner, done)

    async def _followed_up(self, owner: str, returned: lifecycle_pb2.RequestStatus) -> None:
        """The broker's victim follow-ups (回访) of a return, one per paid payout, answered by the police."""
        paid = sum(1 for p in returned.result.returns if p.amount.minor_units > 0)
        if returned.state not in EXECUTED_STATES or not paid:
            return
        bus = self.s.client(owner)
        sent = await self.s.until(
            lambda: bus.follow_ups(returned),
            lambda sent: len(sent) >= paid,
            what=f"the follow-ups of return {returned.id}",
        )
        for follow_up in sorted(sent, key=lambda s: s.id):
            done = await self._finished(
                f"victim follow-up after the return of {_case_number(owner)}", follow_up, owner
            )
            outcome = results_pb2.FollowUpOutcome.Name(done.result.follow_up).removeprefix(
                "FOLLOW_UP_OUTCOME_"
            )
            self.say(f"   the victim is called back (回访) by {owner}: {outcome.lower().replace('_', ' ')}")

    async def _finished(
        self, label: str, status: lifecycle_pb2.RequestStatus, reader: str
    ) -> lifecycle_pb2.RequestStatus:
        final = await self.s.client(reader).wait_for(status.id, FINAL_STATES, within=self.s.config.wait)
        return self.s._record(label, final, [common_pb2.REQUEST_STATE_EXECUTED])

    @staticmethod
    def _count(book: dict[str, int], account: str, amount: int) -> None:
        book[account] = book.get(account, 0) + amount

    async def _accounting(self) -> dict[str, AccountMoney]:
        """Per frozen account: frozen, returned and released from the broker's records, held from the bank."""
        banks = {a.agency.id: a.core for a in self.s.stack.agencies.values() if isinstance(a.core, BankCore)}
        trail = await self.s.client(POLICE).trail(CASE)
        nanshan = await self.s.client(POLICE_B).trail(CASE_B)
        books: dict[str, AccountMoney] = {}
        accounts = dict(self.s.report.trail_accounts)
        accounts.update({node.node_id: _ref(seed.MULE_ABC_ACCOUNT, "", "bank-abc") for node in nanshan.nodes})
        for case, case_trail in ((CASE, trail), (CASE_B, nanshan)):
            for node in case_trail.nodes:
                ref = accounts.get(node.node_id)
                frozen = _frozen(node)
                if ref is None or not frozen:
                    continue
                entry = books.setdefault(
                    node.node_id,
                    AccountMoney(bank=node.bank, account=f"…{ref.account_number[-4:]}"),
                )
                entry.frozen += frozen
                entry.cases.append(case)
                entry.returned = self.returned.get(ref.account_number, 0)
                entry.released = self.released.get(ref.account_number, 0)
                core = banks[node.bank]
                entry.held = core.balance(ref.account_number) - core.available(ref.account_number)
        for entry in books.values():
            mark = "ok " if entry.balances else "!! "
            self.say(
                f"  {mark}{entry.bank} {entry.account}: frozen {_yuan(entry.frozen)} = returned "
                f"{_yuan(entry.returned)} + released {_yuan(entry.released)} + held {_yuan(entry.held)}"
            )
        return books


def _frozen(node: trail_pb2.TrailNode) -> int:
    """What the holds on a node held when placed, a converted stop-payment counted once (as its freeze)."""
    converted = {r.parent_id for r in node.requests if r.role == trail_pb2.TRAIL_ROLE_CONVERSION}
    return sum(r.held.minor_units for r in node.requests if r.request_id not in converted)


def _case_number(owner: str) -> str:
    return CASE if owner == POLICE else CASE_B


def _case(
    owner: str, instrument: common_pb2.LegalInstrumentType.ValueType, number: str
) -> common_pb2.CaseRef:
    return common_pb2.CaseRef(
        case_number=_case_number(owner),
        issuing_agency=owner,
        legal_instrument_id=number,
        legal_instrument_type=instrument,
    )


def _holds(trail: trail_pb2.Trail, accounts: dict[str, common_pb2.BankAccountRef]) -> dict[str, list[str]]:
    """Account number -> request ids of the trail's holds on it that held money, oldest first."""
    out: dict[str, list[str]] = {}
    for node in trail.nodes:
        account = accounts.get(node.node_id)
        if account is not None:
            out[account.account_number] = [r.request_id for r in node.requests if r.held.minor_units > 0]
    return out
