"""Money graphs, seeded into the reference banks, and a stack whose broker chases them.

- :class:`MoneyGraph` and its generators: splits, merges, cycles, long chains and banks outside
  the directory, from a seeded random generator over the directory's four banks;
- :func:`seed_graph` books a graph into the banks' cores the way ``agencies/_seed.py`` books the
  demo (the same transfer at the paying and the receiving bank);
- :func:`check_trail` asserts what chasing must guarantee, against the banks' own records;
- :func:`trail_stack` runs ``agencies.Stack``. Until the broker wires the money trail itself
  (``BusServicer.GetTrail``), the stack's broker is given the wiring the lead applies to
  ``broker/hub/_server.py``, through three subclasses patched in for the run; once it is wired,
  the real broker runs untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import x25519
from greenchannel.v1 import (
    bus_pb2,
    bus_pb2_grpc,
    common_pb2,
    lifecycle_pb2,
    requests_pb2,
    results_pb2,
    trail_pb2,
)

from agencies.bank import BankCore
from agencies.demo import Stack, StackConfig
from broker.client import fetch_trail
from broker.hub import _server
from broker.hub._bus import BusServicer
from broker.hub._events import HoldLifecycle
from broker.hub._submit import Intake
from broker.hub._trail import TrailChaser, TrailRecorder, sealed_onward_transfers
from broker.hub._trail_service import TrailService
from broker.hub._trail_store import TrailStore
from broker.protocol import SigningKey, ensure_agency_keys, load_broker_encryption_key

__all__ = [
    "BANKS",
    "POLICE",
    "GraphAccount",
    "GraphTransfer",
    "MoneyGraph",
    "bank_cores",
    "chain_graph",
    "check_trail",
    "fan_graph",
    "random_graph",
    "root_request",
    "seed_graph",
    "trail_stack",
    "wait_settled",
    "wired",
]

POLICE = "police-310115"
BANKS = ("bank-icbc", "bank-ccb", "bank-cmb", "bank-abc")
_PREFIX = {"bank-icbc": "622202", "bank-ccb": "621700", "bank-cmb": "622588", "bank-abc": "622848"}
_OUTSIDE_CODES = ("307584007998", "313100000013", "402641000014")
_HOP = timedelta(minutes=4)


# -- graphs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GraphAccount:
    """An account of a money graph."""

    bank: str
    """Agency id of a directory bank; empty for a bank outside the directory."""
    number: str
    """Account number (routes to ``bank`` by prefix)."""
    holder: str
    """Holder's name."""
    bank_code: str = ""
    """Clearing code of a bank outside the directory."""

    @property
    def outside(self) -> bool:
        return not self.bank


@dataclass(frozen=True, kw_only=True)
class GraphTransfer:
    """A transfer of a money graph, booked alike at both banks."""

    transfer_id: str
    """Clearing reference."""
    source: GraphAccount
    """Paying account."""
    target: GraphAccount
    """Receiving account."""
    amount: int
    """Minor units."""
    before: timedelta
    """How long before the anchor it happened."""


@dataclass(kw_only=True)
class MoneyGraph:
    """Where a victim's payment went: the root account and every transfer after it."""

    name: str
    """For messages."""
    root: GraphAccount
    """The account the victim paid into."""
    fraud_transfer_id: str
    """The victim's payment."""
    amount: int
    """What the victim paid, minor units."""
    accounts: list[GraphAccount] = field(default_factory=list)
    """Every account, the victim's and the outside ones included."""
    transfers: list[GraphTransfer] = field(default_factory=list)
    """Oldest first."""

    def by_number(self) -> dict[str, GraphAccount]:
        return {a.number: a for a in self.accounts}


class _Builder:
    """Builds a graph whose transfers never overdraw an account."""

    def __init__(self, name: str, salt: int) -> None:
        self.name = name
        self.salt = salt
        self.accounts: list[GraphAccount] = []
        self.transfers: list[GraphTransfer] = []
        self.balance: dict[str, int] = {}

    def account(self, bank: str) -> GraphAccount:
        n = len(self.accounts)
        if bank:
            number = f"{_PREFIX[bank]}88{self.salt:05d}{n:04d}"
            account = GraphAccount(bank=bank, number=number, holder=f"测试{self.salt}-{n}")
        else:
            code = _OUTSIDE_CODES[n % len(_OUTSIDE_CODES)]
            account = GraphAccount(
                bank="",
                number=f"6230588{self.salt:05d}{n:04d}",
                holder=f"境外{self.salt}-{n}",
                bank_code=code,
            )
        self.accounts.append(account)
        self.balance[account.number] = 0
        return account

    def send(self, source: GraphAccount, target: GraphAccount, amount: int, before: timedelta) -> None:
        if not source.outside:
            assert self.balance[source.number] >= amount, "the generator overdrew an account"
            self.balance[source.number] -= amount
        self.balance[target.number] += amount
        transfer_id = f"G{self.salt:05d}T{len(self.transfers):04d}"
        self.transfers.append(
            GraphTransfer(transfer_id=transfer_id, source=source, target=target, amount=amount, before=before)
        )

    def graph(self, root: GraphAccount, amount: int) -> MoneyGraph:
        return MoneyGraph(
            name=self.name,
            root=root,
            fraud_transfer_id=self.transfers[0].transfer_id,
            amount=amount,
            accounts=self.accounts,
            transfers=sorted(self.transfers, key=lambda t: -t.before),
        )


def _split(rng: random.Random, total: int, parts: int, unit: int = 100) -> list[int]:
    """``total`` in ``parts`` random amounts, each a positive multiple of ``unit`` (whole yuan)."""
    if total < parts * unit:
        return [total]
    cuts = sorted(rng.sample(range(1, total // unit), parts - 1))
    bounds = [0, *(c * unit for c in cuts), total]
    return [b - a for a, b in itertools.pairwise(bounds)]


def random_graph(
    seed: int,
    *,
    salt: int,
    hops: int = 5,
    max_split: int = 3,
    merge: float = 0.25,
    cycle: float = 0.12,
    outside: float = 0.15,
) -> MoneyGraph:
    """A layered money graph: each account keeps some money and splits the rest over up to
    ``max_split`` transfers one hop on, to new accounts at random banks, to an account this hop
    already pays (a merge), back to one of its ancestors (a cycle) or out of the directory."""
    rng = random.Random(seed)
    b = _Builder(f"random-{seed}", salt)
    victim = b.account("")
    root = b.account(rng.choice(BANKS))
    amount = rng.randrange(3_000_000, 9_000_000, 100)
    start = _HOP * (hops + 2)
    b.send(victim, root, amount, start)
    layers = [[root]]
    ancestors: dict[str, list[GraphAccount]] = {root.number: []}
    for depth in range(1, hops + 1):
        nxt: list[GraphAccount] = []
        when = start - _HOP * depth
        for account in layers[-1]:
            have = b.balance[account.number]
            if have < 200_000:
                continue
            keep = rng.choice([0, 0, rng.randrange(0, have // 3, 100)])
            for i, part in enumerate(_split(rng, have - keep, rng.randint(1, max_split))):
                draw = rng.random()
                if draw < outside:
                    target = b.account("")
                elif draw < outside + merge and [a for a in nxt if a not in ancestors[account.number]]:
                    target = rng.choice(nxt)
                elif draw < outside + merge + cycle and ancestors[account.number]:
                    target = rng.choice(ancestors[account.number])
                else:
                    target = b.account(rng.choice(BANKS))
                    nxt.append(target)
                    ancestors[target.number] = [*ancestors[account.number], account]
                b.send(account, target, part, when - timedelta(seconds=10 * i))
        layers.append(nxt)
    return b.graph(root, amount)


def chain_graph(*, salt: int, hops: int, amount: int = 6_000_000, keep: int = 100_000) -> MoneyGraph:
    """A single path of ``hops`` transfers across the four banks; every account keeps ``keep``."""
    b = _Builder(f"chain-{hops}", salt)
    victim = b.account("")
    accounts = [b.account(BANKS[i % len(BANKS)]) for i in range(hops + 1)]
    start = _HOP * (hops + 2)
    b.send(victim, accounts[0], amount, start)
    for depth in range(1, hops + 1):
        source = accounts[depth - 1]
        b.send(source, accounts[depth], b.balance[source.number] - keep, start - _HOP * depth)
    return b.graph(accounts[0], amount)


def fan_graph(*, salt: int) -> MoneyGraph:
    """One of everything, small enough to know every amount by hand (minor units)::

    victim -> R 60,000 at icbc, R keeps 5,000
      R -> A 20,000 (ccb)        A keeps 2,000; A -> C 9,000 (merge); A -> X 9,000 (outside)
      R -> B 25,000 (abc)        B keeps 1,000; B -> C 14,000 (merge); B -> R 10,000 (cycle)
      R -> S   500 (cmb)         S keeps it all (below a 1,000.00 minimum)
      R -> D 9,500 (cmb)         D -> E 9,000 (icbc), D keeps 500; E keeps 9,000
      C (cmb) receives 23,000 and keeps it.
    """
    b = _Builder("fan", salt)
    victim = b.account("")
    r = b.account("bank-icbc")
    a, bb, s, d = b.account("bank-ccb"), b.account("bank-abc"), b.account("bank-cmb"), b.account("bank-cmb")
    c, x, e = b.account("bank-cmb"), b.account(""), b.account("bank-icbc")
    minute = timedelta(minutes=1)
    b.send(victim, r, 6_000_000, 60 * minute)
    b.send(r, a, 2_000_000, 50 * minute)
    b.send(r, bb, 2_500_000, 49 * minute)
    b.send(r, s, 50_000, 48 * minute)
    b.send(r, d, 950_000, 47 * minute)
    b.send(a, c, 900_000, 40 * minute)
    b.send(a, x, 900_000, 39 * minute)
    b.send(bb, c, 1_400_000, 38 * minute)
    b.send(bb, r, 1_000_000, 37 * minute)
    b.send(d, e, 900_000, 30 * minute)
    return b.graph(r, 6_000_000)


def seed_graph(cores: Mapping[str, BankCore], graph: MoneyGraph, *, anchor: datetime) -> None:
    """Open the graph's accounts at their banks and book every transfer at both ends, oldest first."""
    for bank, core in cores.items():
        mine = [a for a in graph.accounts if a.bank == bank]
        touching = [t for t in graph.transfers if bank in (t.source.bank, t.target.bank)]
        if not mine:
            continue
        with core.batch():
            for account in mine:
                core.open_account(account.number, account.holder, opened_at=anchor - timedelta(days=30))
            for t in touching:
                core.transfer(
                    t.source.number,
                    t.target.number,
                    t.target.bank,
                    t.amount,
                    anchor - t.before,
                    t.transfer_id,
                    to_bank_code=t.target.bank_code,
                    from_bank=t.source.bank,
                    to_holder=t.target.holder,
                )


def root_request(graph: MoneyGraph, case_number: str, *, police: str = POLICE) -> requests_pb2.Request:
    """The police's stop-payment on the account the victim paid into, for what the victim paid."""
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=case_number,
            issuing_agency=police,
            legal_instrument_id=f"沪公(浦)急止字[2026]{case_number}号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(
                account_number=graph.root.number, holder_name=graph.root.holder
            ),
            amount=common_pb2.Money(currency="CNY", minor_units=graph.amount),
            fraud_transfer_id=graph.fraud_transfer_id,
        ),
    )


# -- what chasing guarantees --------------------------------------------------------------------------

_HOLDING = {
    common_pb2.REQUEST_STATE_EXECUTED,
    common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
    common_pb2.REQUEST_STATE_EXTENDED,
}
_L = trail_pb2
_WRONG = {
    results_pb2.REASON_CODE_MISMATCH,
    results_pb2.REASON_CODE_NOT_FOUND,
    results_pb2.REASON_CODE_INVALID_REQUEST,
    results_pb2.REASON_CODE_ACCOUNT_CLOSED,
}


def check_trail(
    trail: trail_pb2.Trail,
    *,
    graph: MoneyGraph,
    cores: Mapping[str, BankCore],
    statuses: Mapping[str, lifecycle_pb2.RequestStatus],
    accounts: Mapping[str, common_pb2.BankAccountRef],
    directory_banks: Sequence[str] = BANKS,
) -> None:
    """Assert the guarantees of chasing on a settled trail, against the banks' own records.

    ``statuses`` holds every request of the trail as the bus reports it (with its result);
    ``accounts`` the opened account of every node (node id -> account).
    """
    bounds = trail.bounds
    minimum = {m.currency: m.minor_units for m in bounds.min_amounts}
    entries = {r.request_id: (n, r) for n in trail.nodes for r in n.requests}
    chases = [(n, r) for n in trail.nodes for r in n.requests if r.role == _L.TRAIL_ROLE_CHASE]
    transfers = {t.transfer_id: t for t in graph.transfers}
    assert trail.settled, f"{graph.name}: the chase did not settle"
    assert all(r.request_id for _, r in entries.values()), f"{graph.name}: a stop-payment was never sent"
    for _, request in entries.values():
        # The broker's orders name the account, holder and amount right: the banks act on them.
        assert request.reason not in _WRONG, f"{graph.name}: a bank answered {request.reason}"

    # The chase stops at the bounds.
    assert len(trail.nodes) <= bounds.max_accounts, graph.name
    assert len(chases) <= bounds.max_requests, graph.name
    for node, request in entries.values():
        assert request.hop <= bounds.max_depth, f"{graph.name}: hop {request.hop} beyond the bound"
        assert node.depth <= request.hop
    for _, request in chases:
        assert request.asked.minor_units >= minimum.get(request.asked.currency, 1), graph.name

    # No account is held twice for the same path; nothing asked beyond what was traced.
    paths = [(r.parent_id, r.transfer_id) for _, r in chases]
    assert len(paths) == len(set(paths)), f"{graph.name}: a path was chased twice"
    for node, request in chases:
        parent_node, parent = entries[request.parent_id]
        transfer = transfers[request.transfer_id]
        assert transfer.source.number == accounts[parent_node.node_id].account_number
        assert transfer.target.number == accounts[node.node_id].account_number
        assert request.asked.minor_units <= transfer.amount
        assert request.asked.minor_units <= parent.asked.minor_units - parent.held.minor_units
    through: dict[tuple[str, str], int] = {}
    for _, request in chases:
        key = (entries[request.parent_id][0].node_id, request.transfer_id)
        through[key] = through.get(key, 0) + request.asked.minor_units
    for (_, transfer_id), total in through.items():
        assert total <= transfers[transfer_id].amount, f"{graph.name}: {transfer_id} traced beyond itself"

    # The banks' records: one hold per request, never over what was asked, never over the balance;
    # an account with money left had every request on it held in full.
    for node in trail.nodes:
        account = accounts[node.node_id]
        core = cores[node.bank]
        holds = {h.request_id: h for h in core.holds_on(account.account_number)}
        ours = [r for r in node.requests if r.request_id in holds]
        assert len(holds) == len(ours), f"{graph.name}: a hold no request of the trail placed"
        held_now = 0
        for request in node.requests:
            hold = holds.get(request.request_id)
            amount = hold.amount if hold is not None else 0
            assert amount == request.held.minor_units, f"{graph.name}: trail and bank disagree"
            assert amount <= request.asked.minor_units, f"{graph.name}: held more than traced"
            if request.state in _HOLDING:
                held_now += amount
        assert held_now <= core.balance(account.account_number), f"{graph.name}: held beyond the balance"
        assert node.held.minor_units == held_now
        if core.available(account.account_number) > 0:
            for request in node.requests:
                if request.type == common_pb2.REQUEST_TYPE_STOP_PAYMENT and request.state in _HOLDING:
                    assert request.held.minor_units == request.asked.minor_units, (
                        f"{graph.name}: money left on an account asked for more"
                    )

    # Everything a bank listed was chased, traced in full by another path, or is a lead whose
    # reason holds.
    leads = {(lead.from_request_id, lead.transfer_id): lead for lead in trail.leads}
    chased = set(paths)
    for request_id, (node, request) in entries.items():
        status = statuses[request_id]
        for onward in status.result.onward_transfers:
            key = (request_id, onward.transfer_id)
            if key in chased:
                continue
            lead = leads.get(key)
            if lead is None:
                traced = through.get((node.node_id, onward.transfer_id), 0)
                remainder = request.asked.minor_units - request.held.minor_units
                assert traced >= onward.amount.minor_units or remainder <= 0, (
                    f"{graph.name}: transfer {onward.transfer_id} neither chased nor a lead"
                )
                continue
            target = transfers[onward.transfer_id].target
            if lead.reason == _L.LEAD_REASON_OUTSIDE_DIRECTORY:
                assert target.bank not in directory_banks
            else:
                assert target.bank in directory_banks, f"{graph.name}: a directory bank called outside"
            if lead.reason == _L.LEAD_REASON_DEPTH:
                assert lead.hop == bounds.max_depth + 1
            if lead.reason == _L.LEAD_REASON_BELOW_MINIMUM:
                assert lead.amount.minor_units < minimum[lead.amount.currency]
            if lead.reason == _L.LEAD_REASON_ACCOUNT_LIMIT:
                assert len(trail.nodes) == bounds.max_accounts
            if lead.reason == _L.LEAD_REASON_CYCLE:
                on_path = set()
                current = request_id
                while current in entries:
                    on_path.add(entries[current][0].node_id)
                    current = entries[current][1].parent_id
                assert lead.node_id in on_path, f"{graph.name}: a cycle lead off its path"
            assert lead.reason not in (_L.LEAD_REASON_NOT_SENT, _L.LEAD_REASON_INCOMPLETE), graph.name


# -- the stack --------------------------------------------------------------------------------------


def wired() -> bool:
    """Whether the broker serves the money trail itself (the lead's wiring is in)."""
    return BusServicer.GetTrail is not bus_pb2_grpc.BusServiceServicer.GetTrail


@dataclass
class _Wiring:
    recorder: TrailRecorder
    chaser: TrailChaser


_WIRINGS: list[_Wiring] = []
_BROKER_DECRYPTION: list[x25519.X25519PrivateKey] = []


class _TrailIntake(Intake):
    """Stand-in for the lead's Intake change: seed the statuses of holds for the trail."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        recorder = TrailRecorder.for_broker(
            store=TrailStore(kwargs["js"]),
            registry=kwargs["registry"],
            policy=kwargs["policy"],
            broker_key=kwargs["broker_key"],
            clock=kwargs["clock"],
        )
        chaser = TrailChaser(
            recorder=recorder,
            requests=kwargs["requests"],
            sender=self,
            source=sealed_onward_transfers(_BROKER_DECRYPTION[-1]),
        )
        _WIRINGS.append(_Wiring(recorder=recorder, chaser=chaser))
        self._trail = recorder  # seeds the statuses of holds, as the broker's own intake does


class _TrailHolds(HoldLifecycle):
    """Stand-in for the lead's EventProcessor change: chase after every outcome."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._chaser = _WIRINGS[-1].chaser

    async def after_outcome(self, status: lifecycle_pb2.RequestStatus) -> None:
        # Both idempotent: if either fails the event comes back and both run again.
        await asyncio.gather(super().after_outcome(status), self._chaser.after_outcome(status))


class _TrailBus(BusServicer):
    """Stand-in for the lead's BusServicer change: GetTrail and SetChasing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._trail = TrailService(auth=kwargs["auth"], chaser=_WIRINGS[-1].chaser, policy=kwargs["policy"])

    async def GetTrail(
        self, request: bus_pb2.GetTrailRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.GetTrailResponse:
        return await self._trail.GetTrail(request, context)

    async def SetChasing(
        self, request: bus_pb2.SetChasingRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.SetChasingResponse:
        return await self._trail.SetChasing(request, context)


_STAND_INS = {"Intake": _TrailIntake, "HoldLifecycle": _TrailHolds, "BusServicer": _TrailBus}


@contextlib.contextmanager
def _stand_in_wiring() -> Iterator[None]:
    """The broker module builds its parts by these names while it starts: swap them meanwhile."""
    saved = {name: getattr(_server, name) for name in _STAND_INS}
    for name, stand_in in _STAND_INS.items():
        setattr(_server, name, stand_in)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(_server, name, original)


@contextlib.asynccontextmanager
async def trail_stack(config: StackConfig) -> AsyncIterator[Stack]:
    """``agencies.Stack`` whose broker chases money trails (stand-in wiring until it is wired)."""
    if wired():
        async with Stack(config) as stack:
            yield stack
        return
    ensure_agency_keys(config.directory, config.keys_dir, clock=config.clock)
    _BROKER_DECRYPTION.append(load_broker_encryption_key(config.keys_dir))
    with _stand_in_wiring():
        stack = Stack(config)
        await stack.__aenter__()
    try:
        yield stack
    finally:
        await stack.__aexit__(None, None, None)


def bank_cores(stack: Stack) -> dict[str, BankCore]:
    cores: dict[str, BankCore] = {}
    for agency_id, reference in stack.agencies.items():
        if isinstance(reference.core, BankCore):
            cores[agency_id] = reference.core
    return cores


async def wait_settled(
    stack: Stack,
    key: SigningKey,
    case_number: str,
    *,
    police: str = POLICE,
    within: float = 20.0,
    poll: float = 0.05,
) -> trail_pb2.Trail:
    """Poll GetTrail until every request of the case's trail has an outcome."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            trail = await fetch_trail(
                stack.broker_address, agency_id=police, signing_key=key, case_number=case_number
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            if trail.settled and trail.nodes:
                return trail
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the chase of {case_number} did not settle within {within} s")
        await asyncio.sleep(poll)
