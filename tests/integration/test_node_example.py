"""The Node.js example (examples/node): a police client and a bank in another language, on the real bus.

A ``greenchannel broker`` process (embedded NATS, per-agency users), the Node bank implementing
``BankService`` as bank-icbc's own system, ``greenchannel adapter`` in front of it configured by
its file alone, and the Node police client, which loads the contract from the shipped descriptor
set, mints its own bearer tokens and signs its own request with jose. The client prints JSON; the
assertions are on what it saw and verified, and on what the bank did.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from greenchannel.v1 import agency_pb2, bank_pb2, bank_pb2_grpc, common_pb2, requests_pb2, results_pb2

from broker.protocol import KeyUse, key_overlay_path, load_agency_signing_key, read_overlay

from .adapter_process import BrokerProcess, adapter_process, adapter_toml, broker_process, key_file
from .broker_world import BANK, FRAUD_ACCOUNT, POLICE
from .node_process import LINE_TIMEOUT as _LINE_TIMEOUT
from .node_process import NODE as _NODE
from .node_process import installed_node_example, node_bank

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node_example() -> Path:
    return installed_node_example()


def _broker_signing_kids(broker: BrokerProcess) -> set[str]:
    """The kids of the broker's signing keys, read from the operator's overlay (not from the bus).

    The client asks the broker for its keys; this is the independent answer it is checked against.
    """
    kids = {
        entry.key.kid
        for entry in read_overlay(key_overlay_path(broker.state_dir))
        if entry.agency is None and entry.key.use is KeyUse.SIG
    }
    assert kids
    return kids


async def _police(example: Path, broker: BrokerProcess, *, holder: str) -> dict[str, Any]:
    assert _NODE is not None
    key = key_file(broker.state_dir, POLICE, load_agency_signing_key(broker.state_dir, POLICE).kid)
    police = await asyncio.create_subprocess_exec(
        _NODE,
        "police.js",
        "--broker", broker.address,
        "--agency", POLICE,
        "--key", str(key),
        "--account", FRAUD_ACCOUNT,
        "--holder", holder,
        "--amount-minor", "1000000",
        cwd=example,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(police.communicate(), _LINE_TIMEOUT)
    assert out, err.decode()
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


async def _read_orders(
    bank: asyncio.subprocess.Process, until: object, into: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Read the bank's order lines up to one for ``until`` into ``into``; those of ``until``.

    The police client returns only after the request's terminal state, which the bank's answer
    produced: that line is already written.
    """
    assert bank.stdout is not None
    while not any(order["request_id"] == until for order in into):
        into.append(json.loads(await asyncio.wait_for(bank.stdout.readline(), _LINE_TIMEOUT)))
    return [order for order in into if order["request_id"] == until]


async def test_node_police_and_node_bank_through_greenchannel_adapter(
    node_example: Path, tmp_path: Path
) -> None:
    async with broker_process(tmp_path / "operator") as broker, node_bank(node_example) as (address, bank):
        config = tmp_path / "bank" / "adapter.toml"
        config.parent.mkdir()
        config.write_text(adapter_toml(broker, BANK, target=address, journal=tmp_path / "bank" / "journal"))
        async with adapter_process(config) as adapter:
            report = await _police(node_example, broker, holder="李某")
            assert "error" not in report, report
            assert report["state"] == "REQUEST_STATE_EXECUTED"
            assert report["states_seen"][-1] == "REQUEST_STATE_EXECUTED"
            assert report["recipient"] == BANK
            # Both signatures verified, each with the key it should have been made with.
            assert report["notarization"]["verified"] is True
            assert report["notarization"]["kid"] in _broker_signing_kids(broker)
            assert report["result_signature"] == {
                "verified": True,
                "signer": BANK,
                "kid": load_agency_signing_key(broker.state_dir, BANK).kid,
            }
            assert report["result"] == {
                "outcome": "REQUEST_STATE_EXECUTED",
                "amount_held": {"currency": "CNY", "minor_units": "1000000"},
            }
            lines: list[dict[str, Any]] = []
            orders = await _read_orders(bank, report["request_id"], lines)
            assert [(o["order"], o["outcome"], o["replayed"]) for o in orders] == [
                ("StopPayment", "REQUEST_STATE_EXECUTED", False)
            ]

            # A wrong holder name: the bank answers MISMATCH and holds nothing; still signed by it.
            refused = await _police(node_example, broker, holder="王某")
            assert refused["state"] == "REQUEST_STATE_REJECTED", refused
            assert refused["result"]["reason"] == "REASON_CODE_MISMATCH"
            assert refused["result_signature"]["verified"] is True
            orders = await _read_orders(bank, refused["request_id"], lines)
            assert [(o["order"], o["outcome"], o["replayed"]) for o in orders] == [
                ("StopPayment", "REQUEST_STATE_REJECTED", False)
            ]
            # The stop-payment was executed once: any later call for it would have been a replay.
            executed = [o for o in lines if o["request_id"] == report["request_id"] and not o["replayed"]]
            assert len(executed) == 1

            assert await adapter.stop() == 0


async def test_the_node_bank_executes_each_request_id_once_and_checks_the_holder(node_example: Path) -> None:
    """The Node bank's BankService semantics, called as an adapter calls it (and a redelivery)."""

    def order(
        request_id: str, *, holder: str = "李某", units: int = 1_000_000
    ) -> bank_pb2.StopPaymentRequest:
        return bank_pb2.StopPaymentRequest(
            context=agency_pb2.OrderContext(request_id=request_id, sender=POLICE),
            order=requests_pb2.StopPayment(
                account=common_pb2.BankAccountRef(account_number=FRAUD_ACCOUNT, holder_name=holder),
                amount=common_pb2.Money(currency="CNY", minor_units=units),
            ),
        )

    first, second, wrong = (str(uuid.uuid4()) for _ in range(3))
    async with node_bank(node_example) as (address, bank), grpc.aio.insecure_channel(address) as channel:
        stub = bank_pb2_grpc.BankServiceStub(channel)
        answer = (await stub.StopPayment(order(first), timeout=10)).result
        again = (await stub.StopPayment(order(first), timeout=10)).result
        assert answer.outcome == common_pb2.REQUEST_STATE_EXECUTED
        assert answer.amount_held.minor_units == 1_000_000
        assert again == answer  # the same answer, the same hold

        # 50,000.00 on the account, 10,000.00 held: a second order for 45,000.00 gets the rest.
        partial = (await stub.StopPayment(order(second, units=4_500_000), timeout=10)).result
        assert partial.outcome == common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED
        assert partial.reason == results_pb2.REASON_CODE_INSUFFICIENT_FUNDS
        assert partial.amount_held.minor_units == 4_000_000

        mismatch = (await stub.StopPayment(order(wrong, holder="王某"), timeout=10)).result
        assert mismatch.outcome == common_pb2.REQUEST_STATE_REJECTED
        assert mismatch.reason == results_pb2.REASON_CODE_MISMATCH
        assert not mismatch.HasField("amount_held")

        released = await stub.ReleaseHold(
            bank_pb2.ReleaseHoldRequest(
                context=agency_pb2.OrderContext(request_id=str(uuid.uuid4()), sender=POLICE),
                order=requests_pb2.Release(target_request_id=first),
            ),
            timeout=10,
        )
        assert released.result.outcome == common_pb2.REQUEST_STATE_EXECUTED
        assert released.result.agency_reference == answer.agency_reference

        lines: list[dict[str, Any]] = []
        for request_id in (first, second, wrong):
            await _read_orders(bank, request_id, lines)
        assert [(o["outcome"], o["replayed"]) for o in lines if o["request_id"] == first] == [
            ("REQUEST_STATE_EXECUTED", False),
            ("REQUEST_STATE_EXECUTED", True),
        ]
