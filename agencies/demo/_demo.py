"""The demo scenario: a fraud reported in Shanghai, chased across banks, carriers, a platform and regions.

Everything is real: the embedded nats-server, the broker, every agency's reference system behind
its own adapter, signed and notarized messages, money held in SQLite bank cores. The scenario:

1. a victim in Pudong (region 310115) reports a transfer of 50,000.00 CNY to a fraud account;
   police-310115 sends a GREEN stop-payment to the fraud account's bank;
2. the bank holds what is left and lists where the rest went (accounts at other banks), the
   accounts and names sealed to the police: the bus sees amounts and banks only;
3. the broker chases that money by itself: child stop-payments to the receiving banks (parent id
   and hop), hop after hop, within the case's bounds; what left the directory becomes a lead;
   police convert the first hold into a freeze;
4. the carrier blocks the fraudster's number; another carrier warns the next potential victim;
5. the platform restricts the fraudster's account;
6. a data request brings back the fraud account holder's details, sealed to the police;
7. police in Pudong ask police in Shenzhen Nanshan (440305) for assistance: done;
8. a stop-payment naming the wrong holder is refused with MISMATCH;
9. police mark the fraud account HIGH in the shared risk registry: the victim's bank refuses her
   next payment to it;
10. a warning that cannot reach another potential victim ends UNREACHABLE, and the broker sends
    the police of her region to dissuade her in person;
11. to 13. the case is closed (:mod:`agencies.demo._closing`);
14. and 15. the regulator verifies the ledger and reads the SLA report.

:func:`run_demo` narrates as it goes (``say``) and returns a :class:`DemoReport`: every request
with its final state and times, the money trail, the SLA report, the risk signals. ``greenchannel
demo`` renders it.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from greenchannel.v1 import (
    common_pb2,
    envelope_pb2,
    ledger_pb2,
    lifecycle_pb2,
    requests_pb2,
    results_pb2,
    trail_pb2,
)

from agencies import DEFAULT_DIRECTORY
from agencies import _seed as seed
from agencies._seed import seed_anchor
from agencies.bank import BankCore
from agencies.carrier import CarrierCore
from broker.client import (
    BusClient,
    LedgerFile,
    SlaReport,
    export_ledger,
    fetch_trail,
    open_accounts,
    open_result_details,
    read_ledger_file,
    registry_keys,
    sla_report,
)
from broker.hub import LedgerConfig
from broker.protocol import (
    FINAL_STATES,
    LEDGER_INTAKE_STREAM,
    LEDGER_TIMELINE_CONSUMER,
    WATCH_STREAM,
    Clock,
    SigningKey,
    SystemClock,
    connect,
    load_agency_encryption_key,
    load_agency_signing_key,
    open_sealed,
    reason_name,
    state_name,
    to_timestamp,
    type_name,
    verify_chain,
)

from ._closing import AccountMoney, Closing, deposit_second_victim, nanshan_freeze
from ._links import record_links
from ._ring import register_ring_lines
from ._signals import Signals
from ._stack import Stack, StackConfig

__all__ = ["DemoConfig", "DemoReport", "DemoRequest", "run_demo"]

POLICE = "police-310115"
POLICE_B = "police-440305"
CASE = "SH-PD-2026-1121-0001"


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """How to run the demo."""

    state_dir: Path
    """Keys live here (generated on first run); each run's data goes to a fresh directory."""
    directory: Path = DEFAULT_DIRECTORY
    """The agency directory."""
    nats_url: str | None = None
    """An existing NATS with JetStream; None starts the embedded server."""
    clock: Clock = field(default_factory=SystemClock)
    """Time source."""
    wait: timedelta = timedelta(seconds=30)
    """How long to wait for any one request to finish before calling the run failed."""


@dataclass(kw_only=True)
class DemoRequest:
    """One request of the scenario and how it ended."""

    label: str
    id: str
    type: str
    priority: str
    sender: str
    recipient: str
    state: str
    reason: str
    parent: str
    hop: int
    deliver_ms: float | None
    acknowledge_ms: float | None
    finish_ms: float | None
    expected: tuple[str, ...]
    kind: str = ""
    """DATA_REQUEST: the category asked (the bus keeps no bodies; the demo knows what it sent)."""
    items: int | None = None
    """NUMBER_BLOCK: how many lines the order named, as the carriers' totals count them."""

    @property
    def ok(self) -> bool:
        return self.state in self.expected

    def as_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "id": self.id,
            "type": self.type,
            "priority": self.priority,
            "sender": self.sender,
            "recipient": self.recipient,
            "state": self.state,
            "reason": self.reason,
            "parent": self.parent,
            "hop": self.hop,
            "expected": list(self.expected),
            "kind": self.kind,
            "items": self.items,
            "timings_ms": {
                "deliver": self.deliver_ms,
                "acknowledge": self.acknowledge_ms,
                "finish": self.finish_ms,
            },
        }


@dataclass(kw_only=True)
class DemoReport:
    """The scenario's outcome."""

    requests: list[DemoRequest] = field(default_factory=list)
    """Every request, in the order it was sent."""
    held_minor_units: int = 0
    """Money held or frozen across all banks by the end."""
    data_answer_fields: int = 0
    """Fields of the decrypted data answer (the values are not reported)."""
    ledger_entries: int = 0
    """Entries in the ledger export the regulator verified."""
    ledger_verified: bool = False
    """Whether that export verified offline: chain and every checkpoint signature."""
    sla_met: int = 0
    """Phase deadlines met, over every request of the run."""
    sla_breached: int = 0
    """Phase deadlines breached."""
    trail: trail_pb2.Trail | None = None
    """The case's money trail as the police read it once it settled."""
    trail_accounts: dict[str, common_pb2.BankAccountRef] = field(default_factory=dict)
    """Node id -> account number and bank the police opened (holders' names left out of the demo)."""
    sla: SlaReport | None = None
    """The regulator's SLA report over every request of the run."""
    accounting: dict[str, AccountMoney] = field(default_factory=dict)
    """Node id -> each frozen account's money at the end: frozen = returned + released + held."""
    refusals: list[str] = field(default_factory=list)
    """ErrorInfo reasons of the orders the broker refused on purpose (an over-claim)."""
    located: bool = False
    """Whether the carrier located the fraudster's line on the cell of the latest fraud call."""
    risk_checks: list[dict[str, object]] = field(default_factory=list)
    """Customer payments screened by the risk registry (:mod:`agencies.demo._signals`): bank,
    destination (masked), grade, whether the money moved, and ``ok`` when it ended as the story says."""
    warnings: list[dict[str, object]] = field(default_factory=list)
    """Warnings that ended without dissuading: the outcome, the broker's DISSUASION (recipient,
    state, outcome), and ``ok`` when the police of the region executed it."""
    links: list[dict[str, object]] = field(default_factory=list)
    """Case links (串并) between the run's cases (:mod:`agencies.demo._links`): the cases by owner
    and number, the coordinator, each recipient's notice state, and ``ok`` when all executed."""

    @property
    def ok(self) -> bool:
        return (
            bool(self.requests)
            and all(r.ok for r in self.requests)
            and self.data_answer_fields > 0
            and self.ledger_verified
            and bool(self.accounting)
            and all(entry.balances for entry in self.accounting.values())
            and self.refusals == ["EXCEEDS_SHARE"]
            and self.located
            and bool(self.risk_checks)
            and all(check["ok"] for check in self.risk_checks)
            and bool(self.warnings)
            and all(warning["ok"] for warning in self.warnings)
            and bool(self.links)
            and all(link["ok"] for link in self.links)
        )


T = TypeVar("T")

_ACKNOWLEDGED_BY = frozenset({common_pb2.REQUEST_STATE_ACKNOWLEDGED, *FINAL_STATES})


def _ms(status: lifecycle_pb2.RequestStatus, states: Collection[int]) -> float | None:
    """Milliseconds from the broker's receipt to the first event reaching one of ``states``."""
    start = status.submitted_at.ToDatetime()
    for recorded in status.events:
        event = lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload)
        if event.state in states:
            return round((recorded.recorded_at.ToDatetime() - start).total_seconds() * 1000, 1)
    return None


def _case(
    instrument: common_pb2.LegalInstrumentType.ValueType, number: str, owner: str = POLICE
) -> common_pb2.CaseRef:
    return common_pb2.CaseRef(
        case_number=CASE if owner == POLICE else "SZ-NS-2026-1121-0007",
        issuing_agency=owner,
        legal_instrument_id=number,
        legal_instrument_type=instrument,
    )


def _money(minor_units: int) -> common_pb2.Money:
    return common_pb2.Money(currency="CNY", minor_units=minor_units)


def _yuan(money: common_pb2.Money) -> str:
    return f"{money.minor_units / 100:,.2f} {money.currency}"


class _Scenario:
    def __init__(self, stack: Stack, config: DemoConfig, say: Callable[[str], None]) -> None:
        self.stack = stack
        self.config = config
        self.say = say
        self.report = DemoReport()
        self.clients: dict[str, BusClient] = {}

    def client(self, agency: str) -> BusClient:
        if agency not in self.clients:
            self.clients[agency] = self.stack.client(agency)
        return self.clients[agency]

    async def until(self, read: Callable[[], Awaitable[T]], ready: Callable[[T], bool], *, what: str) -> T:
        """``read()`` again until ``ready`` takes its answer (what the broker sends by itself, after
        it processed an outcome, may come after that outcome is visible); TimeoutError after the
        run's wait."""
        deadline = asyncio.get_running_loop().time() + self.config.wait.total_seconds()
        while not ready(answer := await read()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{what} not there within {self.config.wait}")
            await asyncio.sleep(0.05)
        return answer

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def send(
        self,
        label: str,
        request: requests_pb2.Request,
        *,
        expect: Collection[common_pb2.RequestState.ValueType],
        sender: str = POLICE,
    ) -> lifecycle_pb2.RequestStatus:
        bus = self.client(sender)
        accepted = await bus.submit(request)
        status = await bus.wait_for(accepted.status.id, FINAL_STATES, within=self.config.wait)
        kind = ""
        if request.WhichOneof("body") == "data_request":
            kind = requests_pb2.DataCategory.Name(request.data_request.category).removeprefix(
                "DATA_CATEGORY_"
            )
        return self._record(label, status, expect, kind=kind)

    def _record(
        self,
        label: str,
        status: lifecycle_pb2.RequestStatus,
        expect: Collection[common_pb2.RequestState.ValueType],
        *,
        kind: str = "",
    ) -> lifecycle_pb2.RequestStatus:
        totals = status.result.block.totals
        counted = totals.blocked + totals.not_found + totals.not_ours + totals.already_blocked
        entry = DemoRequest(
            kind=kind,
            items=counted if status.result.block.HasField("totals") else None,
            label=label,
            id=status.id,
            type=type_name(status.type),
            priority=common_pb2.Priority.Name(status.priority).removeprefix("PRIORITY_"),
            sender=status.sender,
            recipient=status.recipient,
            state=state_name(status.state),
            reason=reason_name(status.reason) if status.reason else "",
            parent=status.parent_id,
            hop=status.hop,
            # Any later step meets a phase too (the adapter sends no DELIVERED, and ACKNOWLEDGED
            # only for an agency system slower than its grace), as the broker marks them done.
            deliver_ms=_ms(status, {*_ACKNOWLEDGED_BY, common_pb2.REQUEST_STATE_DELIVERED}),
            acknowledge_ms=_ms(status, _ACKNOWLEDGED_BY),
            finish_ms=_ms(status, FINAL_STATES),
            expected=tuple(state_name(s) for s in expect),
        )
        self.report.requests.append(entry)
        mark = "ok " if entry.ok else "!! "
        reason = f" ({entry.reason})" if entry.reason else ""
        self.say(f"  {mark}{label}: {entry.type} -> {entry.recipient}: {entry.state}{reason}")
        return status

    async def _settled_trail(self) -> trail_pb2.Trail:
        """The case's money trail once every stop-payment the broker sent has an outcome."""
        key = load_agency_signing_key(self.config.state_dir, POLICE)
        deadline = asyncio.get_running_loop().time() + self.config.wait.total_seconds()
        while True:
            trail = await fetch_trail(
                self.stack.broker_address, agency_id=POLICE, signing_key=key, case_number=CASE
            )
            if trail.settled or asyncio.get_running_loop().time() > deadline:
                return trail
            await asyncio.sleep(0.05)

    def _request(self, case: common_pb2.CaseRef, **fields: Any) -> requests_pb2.Request:
        return requests_pb2.Request(
            case_ref=case,
            priority=common_pb2.PRIORITY_GREEN,
            issued_at=to_timestamp(self.config.clock.now()),
            **fields,
        )

    async def run(self) -> DemoReport:
        say = self.say
        banks = {a.agency.id: a.core for a in self.stack.agencies.values() if isinstance(a.core, BankCore)}
        deposited_at = deposit_second_victim(banks, self.config.clock.now())
        say("0. A victim in Shenzhen Nanshan paid 8,000.00 CNY to a mule account; Nanshan police freeze it.")
        case_b, freeze_b = nanshan_freeze(deposited_at)
        await self.send(
            "Nanshan freezes the mule account",
            self._request(case_b, freeze=freeze_b),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
            sender=POLICE_B,
        )
        say(f"1. A victim in Pudong reports paying {_yuan(_money(seed.FRAUD_AMOUNT))} to a fraud account.")
        first = await self.send(
            "stop the fraud account",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE, "沪公(浦)急止字[2026]1121号"),
                stop_payment=requests_pb2.StopPayment(
                    account=common_pb2.BankAccountRef(
                        account_number=seed.FRAUD_ACCOUNT, holder_name=seed.FRAUD_HOLDER
                    ),
                    amount=_money(seed.FRAUD_AMOUNT),
                    fraud_transfer_id=seed.FRAUD_TRANSFER_ID,
                    # The victim's account and when her money arrived: what a return pays back to.
                    victim_account=common_pb2.BankAccountRef(
                        account_number=seed.VICTIM_ACCOUNT,
                        holder_name=seed.VICTIM_HOLDER,
                        bank=seed.VICTIM_BANK,
                    ),
                    deposited_at=to_timestamp(
                        seed_anchor(self.config.clock.now()) - timedelta(minutes=seed.FRAUD_MINUTES_BEFORE)
                    ),
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED],
        )
        say(
            f"2. The bank held {_yuan(first.result.amount_held)}; "
            f"{len(first.result.onward_transfers)} onward transfers show where the rest went."
        )
        # The result on the bus lists the transfers redacted; the accounts and names are sealed to us
        # (and to the broker, which chases them).
        details = open_result_details(
            first.result,
            load_agency_encryption_key(self.config.state_dir, POLICE),
            request_id=first.id,
            sender=first.sender,
            recipient=first.recipient,
        )
        say(f"   police open the sealed details: {len(details.onward_transfers)} receiving accounts.")
        say("3. The broker chases the money by itself, hop after hop; police convert the first hold.")
        trail = await self._settled_trail()
        chased = sorted(
            (
                (r.hop, node.bank, r.request_id)
                for node in trail.nodes
                for r in node.requests
                if r.role == trail_pb2.TRAIL_ROLE_CHASE
            ),
        )
        police = self.client(POLICE)
        for _hop, _bank, request_id in chased:
            status = await police.get(request_id)
            self._record(
                f"chased by the broker (hop {status.hop})",
                status,
                [common_pb2.REQUEST_STATE_EXECUTED, common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED],
            )
        for lead in trail.leads:
            where = lead.to_bank or "a bank outside the directory"
            say(f"   lead for investigators: {_yuan(lead.amount)} left for {where} (hop {lead.hop})")
        # The trail as `greenchannel trail` shows it to the police (account numbers opened with
        # their key; holders' names left out of the demo's report).
        opened = open_accounts(trail, load_agency_encryption_key(self.config.state_dir, POLICE))
        self.report.trail = trail
        self.report.trail_accounts = {
            node_id: common_pb2.BankAccountRef(account_number=account.account_number, bank=account.bank)
            for node_id, account in opened.items()
        }
        await self.send(
            "convert the hold into a freeze",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE, "沪公(浦)冻字[2026]1121号"),
                parent_id=first.id,
                freeze=requests_pb2.Freeze(
                    account=common_pb2.BankAccountRef(
                        account_number=seed.FRAUD_ACCOUNT, holder_name=seed.FRAUD_HOLDER
                    ),
                    amount=first.result.amount_held,
                    converts_request_id=first.id,
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
        )

        say("4. The carrier locates the fraudster's line and blocks it; the next potential victim is warned.")
        located = await self.send(
            "locate the fraudster's line",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE, "沪公(浦)定位字[2026]1121号"),
                data_request=requests_pb2.DataRequest(
                    category=requests_pb2.DATA_CATEGORY_LOCATION,
                    phone=common_pb2.PhoneRef(e164=seed.FRAUDSTER_PHONE),
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
        )
        self._read_location(located)
        await self.send(
            "block the fraudster's line",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER, "沪公(浦)停机字[2026]1121号"),
                number_block=requests_pb2.NumberBlock(
                    phone=common_pb2.PhoneRef(
                        e164=seed.FRAUDSTER_PHONE, iccid=seed.FRAUDSTER_ICCID, imei=seed.FRAUDSTER_IMEI
                    ),
                    scope=requests_pb2.BLOCK_SCOPE_ALL,
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
        )
        await self._block_the_ring()
        await self.send(
            "warn the potential victim",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER, "沪公(浦)劝阻字[2026]1121号"),
                warning=requests_pb2.Warning(
                    phone=common_pb2.PhoneRef(e164=seed.POTENTIAL_VICTIM_PHONE),
                    channel=requests_pb2.WARNING_CHANNEL_CALL,
                    template_id="investment-scam-call",
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
        )

        say("5. The platform restricts the fraudster's account.")
        await self.send(
            "restrict the fraudster's account",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER, "沪公(浦)封号字[2026]1121号"),
                account_block=requests_pb2.AccountBlock(
                    account=common_pb2.PlatformAccountRef(
                        platform=seed.WECHAT, account_id=seed.FRAUDSTER_WECHAT_ID
                    ),
                    level=requests_pb2.RESTRICTION_LEVEL_SUSPEND,
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
        )

        say("6. A data request brings back the fraud account holder's details, sealed to the police.")
        answered = await self.send(
            "who holds the fraud account",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE, "沪公(浦)调证字[2026]1121号"),
                data_request=requests_pb2.DataRequest(
                    category=requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER,
                    account=common_pb2.BankAccountRef(
                        account_number=seed.FRAUD_ACCOUNT, holder_name=seed.FRAUD_HOLDER
                    ),
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
        )
        self._read_answer(answered)

        say("7. Pudong police ask Shenzhen Nanshan police for assistance.")
        await self.send(
            "assistance from Shenzhen Nanshan",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_ASSISTANCE_LETTER, "沪公(浦)协字[2026]1121号"),
                assistance=requests_pb2.Assistance(
                    region="440305",
                    kind=requests_pb2.ASSISTANCE_KIND_COLLECT_EVIDENCE,
                    task="Collect the mule account holder's statements at the Nanshan branch.",
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
        )

        say("8. A stop-payment naming the wrong holder is refused rather than acted on.")
        await self.send(
            "stop with a wrong holder name",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE, "沪公(浦)急止字[2026]1121-9号"),
                stop_payment=requests_pb2.StopPayment(
                    account=common_pb2.BankAccountRef(
                        account_number=seed.MULE_ABC_ACCOUNT, holder_name="张某某"
                    ),
                    amount=_money(100_000),
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_REJECTED],
        )
        await Signals(self).run()
        await record_links(self)
        self.report.held_minor_units = self._held()
        self.report.accounting = await Closing(self).run(trail)
        return self.report

    def _open_answer(self, status: lifecycle_pb2.RequestStatus) -> results_pb2.DataAnswer | None:
        sealed = status.result.encrypted_payload
        if not sealed.ciphertext:
            self.say("   !! the answer carried no sealed payload")
            return None
        key = load_agency_encryption_key(self.config.state_dir, POLICE)
        clear = open_sealed(
            sealed, key, request_id=status.id, sender=status.recipient, recipient=status.sender
        )
        return results_pb2.DataAnswer.FromString(clear)

    def _read_answer(self, status: lifecycle_pb2.RequestStatus) -> None:
        answer = self._open_answer(status)
        if answer is None:
            return
        self.report.data_answer_fields = len(answer.holder)
        self.say(
            f"   decrypted by {POLICE} only: {len(answer.holder)} holder fields "
            f"({', '.join(sorted(answer.holder))}); the bus carried ciphertext"
        )

    async def _block_the_ring(self) -> None:
        """One signed batch order for the ring's other lines at two carriers: the broker splits it."""
        carriers = {
            a.agency.id: a.core for a in self.stack.agencies.values() if isinstance(a.core, CarrierCore)
        }
        numbers = register_ring_lines(carriers, self.config.clock.now())
        parent = await self.send(
            "block the ring's lines (one batch)",
            self._request(
                _case(common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER, "沪公(浦)停机字[2026]1121-2号"),
                number_block=requests_pb2.NumberBlock(
                    phones=[common_pb2.PhoneRef(e164=number) for number in numbers],
                    scope=requests_pb2.BLOCK_SCOPE_NUMBER,
                ),
            ),
            expect=[common_pb2.REQUEST_STATE_EXECUTED],
        )
        police = self.client(POLICE)
        for part in parent.batch_split.parts:
            child = await police.wait_for(part.child_id, FINAL_STATES, within=self.config.wait)
            self._record(f"batch block at {part.carrier}", child, [common_pb2.REQUEST_STATE_EXECUTED])
        totals = parent.result.block.totals
        self.say(
            f"   {len(numbers)} lines in one order, split over {len(parent.batch_split.parts)} carriers: "
            f"{totals.blocked} blocked, {totals.already_blocked} already blocked, "
            f"{totals.not_found} not found, {totals.not_ours} not theirs"
        )

    def _read_location(self, status: lifecycle_pb2.RequestStatus) -> None:
        answer = self._open_answer(status)
        if answer is None:
            return
        cells = {record.fields.get("cell_id", "") for record in answer.records}
        self.report.located = seed.FRAUDSTER_CELL in cells
        # The cell is personal data (where a person is): the demo says whether it matched, not where.
        self.say(
            f"   decrypted by {POLICE} only: {len(answer.records)} location record(s); "
            f"last seen on the cell of the latest fraud call: {'yes' if self.report.located else 'no'}"
        )

    def _held(self) -> int:
        total = 0
        for reference in self.stack.agencies.values():
            core = reference.core
            if isinstance(core, BankCore):
                for account in seed.ACCOUNTS:
                    if account.bank == reference.agency.id:
                        total += core.balance(account.number) - core.available(account.number)
        return total


async def run_demo(config: DemoConfig, *, say: Callable[[str], None] = print) -> DemoReport:
    """Start the whole stack in a fresh data directory and play the scenario."""
    with tempfile.TemporaryDirectory(prefix="greenchannel-demo-") as data:
        stack_config = StackConfig(
            keys_dir=config.state_dir,
            data_dir=Path(data),
            directory=config.directory,
            nats_url=config.nats_url,
            clock=config.clock,
            # Checkpoints every half second, so the regulator's export at the end is covered.
            ledger=LedgerConfig(checkpoint_interval=timedelta(seconds=0.5)),
            nats_auth=True,
        )
        say("Starting NATS, the broker, and every agency's system with its adapter ...")
        async with Stack(stack_config) as stack:
            say(f"Broker on {stack.broker_address}; {len(stack.adapters)} agencies online.")
            scenario = _Scenario(stack, config, say)
            try:
                report = await scenario.run()
                await _prove(stack, config, report, Path(data), say)
            finally:
                await scenario.close()
    return report


async def _prove(
    stack: Stack, config: DemoConfig, report: DemoReport, data: Path, say: Callable[[str], None]
) -> None:
    """As the regulator: export the ledger and verify it offline; then the SLA report."""
    regulator = "regulator-pboc"
    key = load_agency_signing_key(config.state_dir, regulator)
    export = data / "ledger.jsonl"
    ledger = await _covered_export(stack, key, export, regulator)
    keys = registry_keys(config.directory, config.state_dir)
    checked = verify_chain(ledger.records, ledger.checkpoints, keys=keys)
    report.ledger_entries = len(ledger.records)
    report.ledger_verified = checked.ok and checked.uncovered == 0
    verdict = "VERIFIED" if report.ledger_verified else "NOT VERIFIED"
    say(
        f"15. The regulator exports the ledger ({len(ledger.records)} entries, "
        f"{len(ledger.checkpoints)} signed checkpoints) and verifies it offline: {verdict}."
    )
    for problem in checked.problems:
        say(f"   !! {problem.kind}: entry {problem.seq}: {problem.detail}")
    async with stack.client(regulator) as bus:
        statuses = await bus.list_all()
    sla = sla_report(statuses, now=config.clock.now())
    report.sla = sla
    report.sla_met, report.sla_breached = sla.met, sla.breached
    say(f"16. SLA report: {sla.met} phase deadlines met, {sla.breached} breached.")


async def _covered_export(stack: Stack, key: SigningKey, out: Path, agency: str) -> LedgerFile:
    """An export whose last checkpoint covers every entry: the sequencer chains asynchronously."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        # Settled first: what is still to chain then cannot slip in between the export and it.
        settled = await _ledger_settled(stack)
        await export_ledger(broker=stack.broker_address, agency_id=agency, signing_key=key, out=out)
        ledger = read_ledger_file(out)
        covered = max((_checkpoint_seq(c) for c in ledger.checkpoints), default=0)
        if (settled and ledger.records and covered >= ledger.records[-1].seq) or (
            asyncio.get_running_loop().time() > deadline
        ):
            return ledger
        await asyncio.sleep(0.25)


def _checkpoint_seq(signed: envelope_pb2.SignedMessage) -> int:
    return ledger_pb2.Checkpoint.FromString(signed.payload).seq


async def _ledger_settled(stack: Stack) -> bool:
    """Nothing is left to chain: the intake queue is empty and the sequencers have taken and acked
    every journal record (they ack a record only once its block is appended, after a linger)."""
    nc = await connect(stack.nats_settings("greenchannel-demo-probe"))
    try:
        js = nc.jetstream()
        intake = await js.stream_info(LEDGER_INTAKE_STREAM)
        timeline = await js.consumer_info(WATCH_STREAM, LEDGER_TIMELINE_CONSUMER)
        return (
            int(intake.state.messages or 0) == 0
            and int(timeline.num_pending or 0) == 0
            and int(timeline.num_ack_pending or 0) == 0
        )
    finally:
        await nc.drain()
