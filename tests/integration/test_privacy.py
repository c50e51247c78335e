"""After the demo, nothing personal is in clear on the bus or in the logs.

The demo runs in-process against a nats-server of this test, so its store outlives the run; every
structlog event (debug and up) and every stdlib log record is captured meanwhile. Then every
message of every stream on that server is read back by sequence (the GC_* streams, the KV_*
streams behind the KV buckets, the ledger) and its subject, headers and data searched, as are the
logs and nats-server's own log files, for each name, account number, phone number, id number,
SIM / handset identifier, platform account id, login address, cell, base station and coordinates of
the demo's story
(agencies/_seed.py). A hit is reported by stream, sequence and kind, the item masked.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nats.js.errors
import pytest
import structlog
from greenchannel.v1 import common_pb2, envelope_pb2, requests_pb2

from agencies import _seed as seed
from agencies.demo import DemoConfig, run_demo
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.protocol import INBOX_STREAM, NatsSettings, connect

pytestmark = pytest.mark.integration

WRONG_HOLDER = "张某某"
"""The demo's stop-payment naming the wrong holder: a name too, though not one of the seed's."""


@dataclass(frozen=True)
class Item:
    """One piece of personal data to look for."""

    kind: str
    text: str

    @property
    def needle(self) -> bytes:
        return self.text.encode("utf-8")

    @property
    def masked(self) -> str:
        keep = 1 if len(self.text) <= 4 else 4
        return self.text[:keep] + "*" * (len(self.text) - keep)


def personal_data() -> list[Item]:
    """Every personal datum of the story, once each."""
    found: dict[str, Item] = {}

    def add(kind: str, text: str) -> None:
        # Phone numbers without the "+": also finds them wherever the "+" was dropped.
        text = text.removeprefix("+") if kind == "phone number" else text
        if text:
            found.setdefault(text, Item(kind, text))

    for account in seed.ACCOUNTS:
        add("name", account.holder)
        add("account number", account.number)
        add("id number", account.id_number)
        add("phone number", account.phone)
    for transfer in seed.TRANSFERS:
        add("account number", transfer.from_account)
        add("account number", transfer.to_account)
    for line in seed.LINES:
        add("phone number", line.e164)
        add("name", line.subscriber)
        add("id number", line.id_number)
        add("ICCID", line.iccid)
        add("IMSI", line.imsi)
        add("IMEI", line.imei)
    for call in seed.CALLS:
        add("phone number", call.caller)
        add("phone number", call.callee)
        add("cell id", call.caller_cell)
    for seed_cell in seed.CELLS:
        add("cell id", seed_cell.cell.cell_id)
        add("base station", seed_cell.cell.base_station_id)
        # As the carrier writes them in a location answer.
        add("coordinates", f"{seed_cell.cell.latitude:.6f}")
        add("coordinates", f"{seed_cell.cell.longitude:.6f}")
    for platform_account in seed.PLATFORM_ACCOUNTS:
        add("platform account id", platform_account.account_id)
        add("name", platform_account.real_name)
        add("name", platform_account.display_name)
        add("id number", platform_account.id_number)
        add("phone number", platform_account.phone)
        for address, _minutes in platform_account.logins:
            add("login address", address)
    add("name", seed.POTENTIAL_VICTIM_HOLDER)
    add("name", WRONG_HOLDER)
    return list(found.values())


ITEMS = personal_data()


def hits(blob: bytes) -> list[Item]:
    return [item for item in ITEMS if item.needle in blob]


def describe(where: str, found: list[Item]) -> str:
    return f"{where}: " + ", ".join(f"{item.kind} {item.masked}" for item in found)


# -- capturing every log line ---------------------------------------------------------------------


@contextmanager
def all_logs() -> Iterator[io.StringIO]:
    """structlog at debug level, rendered as the entry points do (key/value JSON, names unescaped),
    and stdlib logging from info up (below that only grpc's event-loop chatter), into one buffer;
    the previous configuration is restored after."""
    sink = io.StringIO()
    previous = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(sink),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    handler = logging.StreamHandler(sink)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield sink
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        structlog.configure(**previous)


# -- reading back every stream --------------------------------------------------------------------


@dataclass
class Scan:
    messages: dict[str, int]
    """Messages read per stream."""
    findings: list[str]
    sealed_inbox: int = 0
    """Inbox envelopes whose request body travelled sealed."""


async def scan_streams(url: str) -> Scan:
    nc = await connect(NatsSettings(servers=(url,), name="privacy-scan", initial_connect_timeout=5))
    scan = Scan(messages={}, findings=[])
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            assert name is not None
            state = info.state
            scan.messages[name] = 0
            if not state.messages:
                continue
            for seq in range(state.first_seq, state.last_seq + 1):
                try:
                    msg = await js.get_msg(name, seq)
                except nats.js.errors.NotFoundError:
                    continue  # deleted: acked work-queue entries, superseded KV revisions
                scan.messages[name] += 1
                headers = "".join(f"{k}: {v}\n" for k, v in (msg.headers or {}).items())
                blob = (msg.subject or "").encode() + b"\n" + headers.encode() + b"\n" + (msg.data or b"")
                if found := hits(blob):
                    scan.findings.append(describe(f"stream {name} seq {seq}", found))
                if name == INBOX_STREAM and envelope_pb2.Envelope.FromString(msg.data or b"").HasField(
                    "sealed_body"
                ):
                    scan.sealed_inbox += 1
    finally:
        await nc.drain()
    return scan


# -- the test -------------------------------------------------------------------------------------


def test_the_scanner_finds_personal_data_in_clear_requests() -> None:
    """A control: the same search does see the story's data where it is in clear."""
    account = common_pb2.BankAccountRef(account_number=seed.FRAUD_ACCOUNT, holder_name=seed.FRAUD_HOLDER)
    stop = requests_pb2.Request(stop_payment=requests_pb2.StopPayment(account=account))
    block = requests_pb2.Request(
        number_block=requests_pb2.NumberBlock(phone=common_pb2.PhoneRef(e164=seed.FRAUDSTER_PHONE))
    )
    kinds = {item.kind for item in hits(stop.SerializeToString() + block.SerializeToString())}
    assert kinds == {"name", "account number", "phone number"}
    assert len(ITEMS) > 40


async def test_after_the_demo_no_personal_data_is_in_clear_on_nats_or_in_the_logs(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    said: list[str] = []
    with all_logs() as logs:
        async with EmbeddedNats(EmbeddedNatsConfig(store_dir=store)) as server:
            report = await run_demo(
                DemoConfig(state_dir=tmp_path / "state", nats_url=server.url), say=said.append
            )
            scan = await scan_streams(server.url)
    # The demo's own outcome is test_demo's business; here it only has to have run.
    assert report.requests, said

    # What was scanned: every stream the demo wrote, the KV buckets and the ledger among them.
    # At least the demo's requests delivered to an agency (a split batch's parent is addressed to
    # the bus itself and never put on an inbox), and whatever the broker sent on its own (a chase).
    delivered = [r for r in report.requests if r.recipient != "greenchannel-broker"]
    assert scan.messages[INBOX_STREAM] >= len(delivered)
    # The risk registry's marks and case linkage's index and links (串并) are scanned too.
    for stream in ("GC_EVENTS", "GC_WATCH", "KV_gc_risk_marks", "KV_gc_identifier_cases", "KV_gc_case_links"):
        assert scan.messages.get(stream, 0) > 0, scan.messages
    assert any(name.startswith("GC_LEDGER") and count for name, count in scan.messages.items()), scan.messages

    logged = logs.getvalue()
    assert "adapter.answered" in logged  # the capture did see the adapters at work
    findings = list(scan.findings)
    if found := hits(logged.encode("utf-8")):
        findings.append(describe("structlog / logging output", found))
    for path in sorted(store.rglob("*")):
        if path.is_file() and path.suffix in {".log", ".out"} and (found := hits(path.read_bytes())):
            findings.append(describe(f"nats-server file {path.name}", found))
    assert not findings, "personal data in clear:\n" + "\n".join(findings)
    assert scan.sealed_inbox == scan.messages[INBOX_STREAM]  # every request body travelled sealed
