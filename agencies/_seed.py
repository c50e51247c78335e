"""Deterministic demo data for the sample directory: one fraud case, told consistently by everyone.

The story (fictional people only): 陈某某, a customer of bank-cmb, is talked by phone into paying
50,000.00 CNY to a "safe account", 6222020200001234567 at bank-icbc held by 李某. Before the police
react, that account moves 20,000.00 on to bank-ccb and 15,000.00 to bank-abc, keeping 15,000.00.
The bank-ccb account moves 12,000.00 on to another bank-icbc account (which passes 4,000.00 on to a
second bank-ccb account) and 5,000.00 to a bank outside the directory; the bank-abc account moves
9,000.00 to a bank-cmb account. Chasing it takes stop-payments at four levels (hops 0 to 3) over four
banks, and secures 45,000.00: everything but the 5,000.00 that left the directory.

Meanwhile 李某's phone (carrier-cmcc), which talked the victim into paying, keeps calling a potential
victim, 周某, on carrier-ctcc; and 李某's platform-wechat account, which posed as customer service,
keeps logging in. 周某 has a platform-wechat account too, where a warning can reach her. Another
potential victim, 孙某 (``UNREACHABLE_PHONE``, carrier-ctcc), cannot be reached: her phone is off, and
the carrier records the line unreachable, so a warning to her ends UNREACHABLE. The carriers
know their cells and where each line was last seen: 李某's phone on the cell of its latest call
(``FRAUDSTER_CELL``), two minutes before the anchor.

Account numbers and phone numbers route by the directory's bank prefixes and number segments
(``agencies/directory.toml``). Every seed function inserts only the rows of one agency, and every
transfer is the same (id, amount, time) at the paying and the receiving bank. Times are relative to
an anchor (``at``, default: the core's clock, floored to the minute); give every agency the same
anchor and their records line up exactly. Seeding an agency twice inserts nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from agencies._common import Reach
from agencies.bank import BankCore
from agencies.carrier import CarrierCore, Cell
from agencies.platform import PlatformCore

__all__ = [
    "ACCOUNTS",
    "CALLS",
    "CELLS",
    "FRAUDSTER_CELL",
    "FRAUDSTER_ICCID",
    "FRAUDSTER_IMEI",
    "FRAUDSTER_IMSI",
    "FRAUDSTER_PHONE",
    "FRAUDSTER_WECHAT_ID",
    "FRAUD_ACCOUNT",
    "FRAUD_AMOUNT",
    "FRAUD_BANK",
    "FRAUD_HOLDER",
    "FRAUD_MINUTES_BEFORE",
    "FRAUD_TRANSFER_ID",
    "LAST_SEEN",
    "LINES",
    "MULE_ABC_ACCOUNT",
    "MULE_ABC_HOLDER",
    "MULE_CCB2_ACCOUNT",
    "MULE_CCB2_HOLDER",
    "MULE_CCB_ACCOUNT",
    "MULE_CCB_HOLDER",
    "MULE_CMB_ACCOUNT",
    "MULE_CMB_HOLDER",
    "MULE_ICBC_ACCOUNT",
    "MULE_ICBC_HOLDER",
    "OUTSIDE_ACCOUNT",
    "OUTSIDE_BANK_CODE",
    "PLATFORM_ACCOUNTS",
    "POTENTIAL_VICTIM_HOLDER",
    "POTENTIAL_VICTIM_PHONE",
    "POTENTIAL_VICTIM_WECHAT_ID",
    "TRANSFERS",
    "UNREACHABLE_HOLDER",
    "UNREACHABLE_PHONE",
    "VICTIM_ACCOUNT",
    "VICTIM_BANK",
    "VICTIM_HOLDER",
    "VICTIM_PHONE",
    "WECHAT",
    "SeedAccount",
    "SeedCall",
    "SeedCell",
    "SeedLastSeen",
    "SeedLine",
    "SeedPlatformAccount",
    "SeedTransfer",
    "seed_anchor",
    "seed_bank",
    "seed_carrier",
    "seed_platform",
]

CURRENCY = "CNY"
_ID_CARD = "居民身份证"

# -- the people's accounts --------------------------------------------------------------------------

VICTIM_BANK = "bank-cmb"
VICTIM_ACCOUNT = "6225880137706512"
VICTIM_HOLDER = "陈某某"
FRAUD_BANK = "bank-icbc"
FRAUD_ACCOUNT = "6222020200001234567"
FRAUD_HOLDER = "李某"
MULE_CCB_ACCOUNT = "6217000010087654321"
MULE_CCB_HOLDER = "王某某"
MULE_ABC_ACCOUNT = "6228480018812345670"
MULE_ABC_HOLDER = "张某"
MULE_ICBC_ACCOUNT = "6202000000076543210"
MULE_ICBC_HOLDER = "赵某"
MULE_CMB_ACCOUNT = "6214830123456789"
MULE_CMB_HOLDER = "刘某某"
MULE_CCB2_ACCOUNT = "4367420011223344556"
MULE_CCB2_HOLDER = "吴某"
OUTSIDE_ACCOUNT = "6230580000123456789"
"""An account at a bank outside the directory: the trail ends there for the bus."""
OUTSIDE_BANK_CODE = "307584007998"
"""CNAPS clearing code of that bank."""
FRAUD_AMOUNT = 5_000_000
"""50,000.00 CNY in minor units: what the victim paid."""
FRAUD_TRANSFER_ID = "CMB7730000001"
"""The victim's payment, as bank-cmb and bank-icbc both record it."""
FRAUD_MINUTES_BEFORE = 120
"""How long before the anchor the victim's payment reached the fraud account."""

# -- the phones and platform accounts ---------------------------------------------------------------

FRAUDSTER_PHONE = "+8615012340001"
FRAUDSTER_ICCID = "89860012345678901234"
FRAUDSTER_IMSI = "460001234567890"
FRAUDSTER_IMEI = "356938035643809"
VICTIM_PHONE = "+8613712340003"
POTENTIAL_VICTIM_PHONE = "+8618912340002"
POTENTIAL_VICTIM_HOLDER = "周某"
WECHAT = "wechat"
FRAUDSTER_WECHAT_ID = "wxid_k7m2q9x4a1b2"
POTENTIAL_VICTIM_WECHAT_ID = "wxid_p3n8v2c6d0e4"
UNREACHABLE_PHONE = "+8618912340009"
"""Another potential victim on carrier-ctcc, 孙某, whose phone is off: the carrier records the line
unreachable, so a warning to it ends UNREACHABLE and the broker asks the police of her region to
dissuade her in person (DISSUASION)."""
UNREACHABLE_HOLDER = "孙某"
FRAUDSTER_CELL = "460-00-22801-40962"
"""Where the network last saw the fraudster's line: the cell of its latest call."""


@dataclass(frozen=True, kw_only=True)
class SeedAccount:
    """A bank account of the story."""

    bank: str
    """Agency id of the bank that holds it."""
    number: str
    """Account number (routes to ``bank`` by prefix)."""
    holder: str
    """Holder name as the bank records it."""
    opening_balance: int
    """Minor units on the account before the story starts."""
    id_number: str
    """Fictional identity card number."""
    phone: str
    """Contact number on file."""
    opened_days_before: int
    """How long before the anchor the account was opened."""


@dataclass(frozen=True, kw_only=True)
class SeedTransfer:
    """A transfer of the story, recorded alike at the paying and the receiving bank."""

    transfer_id: str
    """Clearing reference, the same at both banks."""
    from_bank: str
    """Paying bank's agency id; empty for a bank outside the directory."""
    from_account: str
    """Paying account."""
    to_bank: str
    """Receiving bank's agency id; empty for a bank outside the directory."""
    to_account: str
    """Receiving account."""
    amount: int
    """Minor units."""
    minutes_before: int
    """How long before the anchor the money moved."""
    to_bank_code: str = ""
    """Receiving bank's clearing code when it is outside the directory."""


ACCOUNTS: tuple[SeedAccount, ...] = (
    SeedAccount(
        bank=VICTIM_BANK,
        number=VICTIM_ACCOUNT,
        holder=VICTIM_HOLDER,
        opening_balance=8_000_000,
        id_number="440305198804120026",
        phone=VICTIM_PHONE,
        opened_days_before=2900,
    ),
    SeedAccount(
        bank=FRAUD_BANK,
        number=FRAUD_ACCOUNT,
        holder=FRAUD_HOLDER,
        opening_balance=0,
        id_number="450481199506300017",
        phone=FRAUDSTER_PHONE,
        opened_days_before=19,
    ),
    SeedAccount(
        bank="bank-ccb",
        number=MULE_CCB_ACCOUNT,
        holder=MULE_CCB_HOLDER,
        opening_balance=0,
        id_number="350583199901150035",
        phone="+8613512340004",
        opened_days_before=33,
    ),
    SeedAccount(
        bank="bank-abc",
        number=MULE_ABC_ACCOUNT,
        holder=MULE_ABC_HOLDER,
        opening_balance=0,
        id_number="522401200002080041",
        phone="+8618212340005",
        opened_days_before=12,
    ),
    SeedAccount(
        bank=FRAUD_BANK,
        number=MULE_ICBC_ACCOUNT,
        holder=MULE_ICBC_HOLDER,
        opening_balance=0,
        id_number="431102199807070059",
        phone="+8615112340006",
        opened_days_before=26,
    ),
    SeedAccount(
        bank="bank-ccb",
        number=MULE_CCB2_ACCOUNT,
        holder=MULE_CCB2_HOLDER,
        opening_balance=0,
        id_number="420117199712240073",
        phone="+8613912340008",
        opened_days_before=9,
    ),
    SeedAccount(
        bank=VICTIM_BANK,
        number=MULE_CMB_ACCOUNT,
        holder=MULE_CMB_HOLDER,
        opening_balance=0,
        id_number="360730199611210062",
        phone="+8613012340007",
        opened_days_before=41,
    ),
)

TRANSFERS: tuple[SeedTransfer, ...] = (
    # Salary, ten days earlier, from an employer banking outside the directory.
    SeedTransfer(
        transfer_id="CMB7729990417",
        from_bank="",
        from_account="4400123456789012345",
        to_bank=VICTIM_BANK,
        to_account=VICTIM_ACCOUNT,
        amount=1_500_000,
        minutes_before=10 * 24 * 60,
    ),
    SeedTransfer(
        transfer_id=FRAUD_TRANSFER_ID,
        from_bank=VICTIM_BANK,
        from_account=VICTIM_ACCOUNT,
        to_bank=FRAUD_BANK,
        to_account=FRAUD_ACCOUNT,
        amount=FRAUD_AMOUNT,
        minutes_before=FRAUD_MINUTES_BEFORE,
    ),
    SeedTransfer(
        transfer_id="ICBC5520000001",
        from_bank=FRAUD_BANK,
        from_account=FRAUD_ACCOUNT,
        to_bank="bank-ccb",
        to_account=MULE_CCB_ACCOUNT,
        amount=2_000_000,
        minutes_before=112,
    ),
    SeedTransfer(
        transfer_id="ICBC5520000002",
        from_bank=FRAUD_BANK,
        from_account=FRAUD_ACCOUNT,
        to_bank="bank-abc",
        to_account=MULE_ABC_ACCOUNT,
        amount=1_500_000,
        minutes_before=105,
    ),
    SeedTransfer(
        transfer_id="CCB3300000001",
        from_bank="bank-ccb",
        from_account=MULE_CCB_ACCOUNT,
        to_bank=FRAUD_BANK,
        to_account=MULE_ICBC_ACCOUNT,
        amount=1_200_000,
        minutes_before=95,
    ),
    SeedTransfer(
        transfer_id="ABC1100000001",
        from_bank="bank-abc",
        from_account=MULE_ABC_ACCOUNT,
        to_bank=VICTIM_BANK,
        to_account=MULE_CMB_ACCOUNT,
        amount=900_000,
        minutes_before=88,
    ),
    SeedTransfer(
        transfer_id="CCB3300000002",
        from_bank="bank-ccb",
        from_account=MULE_CCB_ACCOUNT,
        to_bank="",
        to_account=OUTSIDE_ACCOUNT,
        amount=500_000,
        minutes_before=80,
        to_bank_code=OUTSIDE_BANK_CODE,
    ),
    SeedTransfer(
        transfer_id="ICBC5520000003",
        from_bank=FRAUD_BANK,
        from_account=MULE_ICBC_ACCOUNT,
        to_bank="bank-ccb",
        to_account=MULE_CCB2_ACCOUNT,
        amount=400_000,
        minutes_before=70,
    ),
)


@dataclass(frozen=True, kw_only=True)
class SeedLine:
    """A phone line of the story."""

    carrier: str
    """Agency id of the carrier (the number routes to it by segment)."""
    e164: str
    """The number."""
    iccid: str
    """SIM serial."""
    imsi: str
    """Subscriber identity."""
    imei: str
    """Handset last seen with the SIM."""
    subscriber: str
    """Real-name registration."""
    id_number: str
    """Fictional identity card number."""
    activated_days_before: int
    """How long before the anchor the line was activated."""
    reach: Reach | None = None
    """What the carrier knows of reaching the subscriber: a warning to the line ends UNREACHABLE
    or CONTINUING; None: reached and dissuaded."""


@dataclass(frozen=True, kw_only=True)
class SeedCall:
    """A call of the story; each carrier records the side of its own line."""

    caller: str
    """Calling number."""
    callee: str
    """Called number."""
    minutes_before: int
    """How long before the anchor the call started."""
    duration_s: int
    """Seconds connected."""
    caller_cell: str
    """Serving cell of the caller."""


@dataclass(frozen=True, kw_only=True)
class SeedCell:
    """A cell of a carrier's network (fictional coordinates in Shenzhen)."""

    carrier: str
    """Agency id of the carrier that runs it."""
    cell: Cell
    """The cell."""


@dataclass(frozen=True, kw_only=True)
class SeedLastSeen:
    """Where and when a carrier's network last saw one of its lines active."""

    e164: str
    """The line."""
    cell_id: str
    """Its serving cell then."""
    minutes_before: int
    """How long before the anchor."""


@dataclass(frozen=True, kw_only=True)
class SeedPlatformAccount:
    """A platform account of the story, with its logins."""

    platform_agency: str
    """Agency id of the platform."""
    platform: str
    """Platform code."""
    account_id: str
    """The platform's account identifier."""
    display_name: str
    """Name shown to other users."""
    real_name: str
    """Real-name verification."""
    id_number: str
    """Fictional identity card number."""
    phone: str
    """Bound phone number."""
    registered_days_before: int
    """How long before the anchor it was registered."""
    logins: tuple[tuple[str, int], ...] = ()
    """(IP address, minutes before the anchor); documentation addresses (RFC 5737) only."""


LINES: tuple[SeedLine, ...] = (
    SeedLine(
        carrier="carrier-cmcc",
        e164=FRAUDSTER_PHONE,
        iccid=FRAUDSTER_ICCID,
        imsi=FRAUDSTER_IMSI,
        imei=FRAUDSTER_IMEI,
        subscriber=FRAUD_HOLDER,
        id_number="450481199506300017",
        activated_days_before=21,
    ),
    SeedLine(
        carrier="carrier-cmcc",
        e164=VICTIM_PHONE,
        iccid="89860098765432101234",
        imsi="460009876543210",
        imei="868123045678912",
        subscriber=VICTIM_HOLDER,
        id_number="440305198804120026",
        activated_days_before=3100,
    ),
    SeedLine(
        carrier="carrier-ctcc",
        e164=POTENTIAL_VICTIM_PHONE,
        iccid="89860312345678905678",
        imsi="460110123456789",
        imei="861234567890123",
        subscriber=POTENTIAL_VICTIM_HOLDER,
        id_number="440304196703150048",
        activated_days_before=4200,
    ),
    SeedLine(
        carrier="carrier-ctcc",
        e164=UNREACHABLE_PHONE,
        iccid="89860312345678909012",
        imsi="460110123456790",
        imei="861234567890456",
        subscriber=UNREACHABLE_HOLDER,
        id_number="440303195811200021",
        activated_days_before=5100,
        reach=Reach.UNREACHABLE,
    ),
)

CALLS: tuple[SeedCall, ...] = (
    # The call that talked the victim into paying, ending shortly before the payment.
    SeedCall(
        caller=FRAUDSTER_PHONE,
        callee=VICTIM_PHONE,
        minutes_before=170,
        duration_s=2820,
        caller_cell="460-00-22801-40961",
    ),
    # Now the next one: the potential victim the police want warned.
    SeedCall(
        caller=FRAUDSTER_PHONE,
        callee=POTENTIAL_VICTIM_PHONE,
        minutes_before=40,
        duration_s=415,
        caller_cell="460-00-22801-40961",
    ),
    SeedCall(
        caller=FRAUDSTER_PHONE,
        callee=POTENTIAL_VICTIM_PHONE,
        minutes_before=12,
        duration_s=604,
        caller_cell="460-00-22801-40962",
    ),
)


def _cell(carrier: str, cell_id: str, base_station: str, lat: float, lon: float, accuracy_m: int) -> SeedCell:
    return SeedCell(
        carrier=carrier,
        cell=Cell(
            cell_id=cell_id,
            base_station_id=base_station,
            location_area=cell_id.rsplit("-", 1)[0],
            latitude=lat,
            longitude=lon,
            accuracy_m=accuracy_m,
        ),
    )


CELLS: tuple[SeedCell, ...] = (
    # Two sectors of one base station: the fraudster's calls came from both.
    _cell("carrier-cmcc", "460-00-22801-40961", "CMCC-SZ-eNB-160", 22.543096, 114.057865, 350),
    _cell("carrier-cmcc", FRAUDSTER_CELL, "CMCC-SZ-eNB-160", 22.544210, 114.059930, 300),
    # The victim's home cell.
    _cell("carrier-cmcc", "460-00-22805-11201", "CMCC-SZ-eNB-043", 22.533013, 113.930476, 500),
    # The potential victim's cell on carrier-ctcc.
    _cell("carrier-ctcc", "460-11-33012-20481", "CTCC-SZ-eNB-080", 22.548457, 114.131249, 450),
)

LAST_SEEN: tuple[SeedLastSeen, ...] = (
    # The end of the fraudster's latest call (12 minutes before the anchor, 604 s long).
    SeedLastSeen(e164=FRAUDSTER_PHONE, cell_id=FRAUDSTER_CELL, minutes_before=2),
    SeedLastSeen(e164=VICTIM_PHONE, cell_id="460-00-22805-11201", minutes_before=25),
    SeedLastSeen(e164=POTENTIAL_VICTIM_PHONE, cell_id="460-11-33012-20481", minutes_before=2),
    # 孙某's phone went off five hours ago.
    SeedLastSeen(e164=UNREACHABLE_PHONE, cell_id="460-11-33012-20481", minutes_before=300),
)

PLATFORM_ACCOUNTS: tuple[SeedPlatformAccount, ...] = (
    SeedPlatformAccount(
        platform_agency="platform-wechat",
        platform=WECHAT,
        account_id=FRAUDSTER_WECHAT_ID,
        display_name="客服-小李",
        real_name=FRAUD_HOLDER,
        id_number="450481199506300017",
        phone=FRAUDSTER_PHONE,
        registered_days_before=18,
        logins=(
            ("203.0.113.45", 3 * 24 * 60),
            ("198.51.100.23", 24 * 60),
            ("203.0.113.45", 190),
            ("192.0.2.77", 20),
        ),
    ),
    SeedPlatformAccount(
        platform_agency="platform-wechat",
        platform=WECHAT,
        account_id=POTENTIAL_VICTIM_WECHAT_ID,
        display_name="周姐",
        real_name=POTENTIAL_VICTIM_HOLDER,
        id_number="440304196703150048",
        phone=POTENTIAL_VICTIM_PHONE,
        registered_days_before=2600,
        logins=(("198.51.100.140", 6 * 60),),
    ),
)


# Beneficiary names travel with payment instructions: the paying bank records them.
_HOLDERS = {a.number: a.holder for a in ACCOUNTS}


def seed_anchor(now: datetime) -> datetime:
    """The story's "now": ``now`` floored to the minute, so agencies seeded moments apart agree."""
    return now.replace(second=0, microsecond=0)


def seed_bank(core: BankCore, agency_id: str, *, at: datetime | None = None) -> int:
    """Open the story's accounts held by ``agency_id`` and book its transfers; rows inserted."""
    anchor = at or seed_anchor(core.clock.now())
    mine = [a for a in ACCOUNTS if a.bank == agency_id]
    if not mine or core.account(mine[0].number) is not None:
        return 0
    with core.batch():
        return _book(core, agency_id, anchor, mine)


def _book(core: BankCore, agency_id: str, anchor: datetime, mine: list[SeedAccount]) -> int:
    for a in mine:
        core.open_account(
            a.number,
            a.holder,
            currency=CURRENCY,
            balance=a.opening_balance,
            id_type=_ID_CARD,
            id_number=a.id_number,
            phone=a.phone,
            opened_at=anchor - timedelta(days=a.opened_days_before),
        )
    booked = 0
    # Oldest first, so every debit finds the money its credits brought.
    for t in sorted(TRANSFERS, key=lambda t: -t.minutes_before):
        if agency_id not in (t.from_bank, t.to_bank):
            continue
        core.transfer(
            t.from_account,
            t.to_account,
            t.to_bank,
            t.amount,
            anchor - timedelta(minutes=t.minutes_before),
            t.transfer_id,
            to_bank_code=t.to_bank_code,
            from_bank=t.from_bank,
            to_holder=_HOLDERS.get(t.to_account, ""),
        )
        booked += 1
    return len(mine) + booked


def seed_carrier(core: CarrierCore, agency_id: str, *, at: datetime | None = None) -> int:
    """Register the story's lines on ``agency_id`` with their side of each call, its cells and where
    each line was last seen; rows inserted."""
    anchor = at or seed_anchor(core.clock.now())
    mine = {ln.e164: ln for ln in LINES if ln.carrier == agency_id}
    if not mine or core.line(next(iter(mine))) is not None:
        return 0
    with core.batch():
        return _register_lines(core, anchor, mine)


def _register_lines(core: CarrierCore, anchor: datetime, mine: dict[str, SeedLine]) -> int:
    for ln in mine.values():
        core.register_line(
            ln.e164,
            iccid=ln.iccid,
            imsi=ln.imsi,
            imei=ln.imei,
            subscriber_name=ln.subscriber,
            id_type=_ID_CARD,
            id_number=ln.id_number,
            activated_at=anchor - timedelta(days=ln.activated_days_before),
        )
        if ln.reach is not None:
            core.set_reach(ln.e164, ln.reach)
    recorded = 0
    for call in CALLS:
        started = anchor - timedelta(minutes=call.minutes_before)
        if call.caller in mine:
            core.record_call(
                call.caller,
                call.callee,
                direction="out",
                started_at=started,
                duration_s=call.duration_s,
                cell_id=call.caller_cell,
            )
            recorded += 1
        if call.callee in mine:
            core.record_call(
                call.callee, call.caller, direction="in", started_at=started, duration_s=call.duration_s
            )
            recorded += 1
    located = 0
    for seed_cell in CELLS:
        if seed_cell.carrier in {ln.carrier for ln in mine.values()}:
            core.add_cell(seed_cell.cell)
            located += 1
    for seen in LAST_SEEN:
        if seen.e164 in mine:
            core.record_last_seen(seen.e164, seen.cell_id, anchor - timedelta(minutes=seen.minutes_before))
            located += 1
    return len(mine) + recorded + located


def seed_platform(core: PlatformCore, agency_id: str, *, at: datetime | None = None) -> int:
    """Register the story's accounts on ``agency_id`` with their logins; rows inserted."""
    anchor = at or seed_anchor(core.clock.now())
    mine = [p for p in PLATFORM_ACCOUNTS if p.platform_agency == agency_id]
    if not mine or core.account(mine[0].platform, mine[0].account_id) is not None:
        return 0
    with core.batch():
        return _register_accounts(core, anchor, mine)


def _register_accounts(core: PlatformCore, anchor: datetime, mine: list[SeedPlatformAccount]) -> int:
    inserted = 0
    for p in mine:
        core.register_account(
            p.platform,
            p.account_id,
            display_name=p.display_name,
            real_name=p.real_name,
            id_number=p.id_number,
            registered_phone=p.phone,
            registered_at=anchor - timedelta(days=p.registered_days_before),
        )
        inserted += 1
        for ip, minutes in p.logins:
            core.record_login(
                p.platform, p.account_id, ip, at=anchor - timedelta(minutes=minutes), device="Android"
            )
            inserted += 1
    return inserted
